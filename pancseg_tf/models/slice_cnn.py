"""The 2D CNN sub-network: a U-Net-like encoder-decoder with deep supervision and multi-scale
feature aggregation, trained from scratch on single slices (stage 1).

Reference:
    Cai J., Lu L., Xing F., Yang L. "Pancreas Segmentation in CT and MRI Images via Domain Specific
    Network Designing and Recurrent Neural Contextual Learning", arXiv:1803.11303 (2018): the CNN
    sub-network uses deep supervision and multi-scale feature-map aggregation so that it trains
    from scratch on a few dozen volumes.
"""

from __future__ import annotations

from typing import Any

import keras

from pancseg_tf.errors import PancsegError
from pancseg_tf.models.blocks import (
    BN_MOMENTUM,
    KERNEL_INITIALIZER,
    base_model_config,
    check_positive_int,
    conv_block,
    downsample_mask,
    normalise_input_size,
    preset_kwargs,
)

#: Named sizes. ``"tiny"`` is for tests and smoke runs (seconds); ``"quick"`` trains on two CPU
#: cores in minutes at 256 x 256; ``"paper"`` is the GPU size at 512 x 512 (filters capped at 512
#: like nnU-Net's 2D networks). `SliceCNN()` with no arguments is ``"quick"``. Costs per slice:
#: ``python benchmarks/model_cost.py``.
SLICE_CNN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "base_filters": 4,
        "depth": 3,
        "input_size": (64, 64),
        "deep_supervision": True,
        "dropout": 0.0,
        "aggregation_filters": 4,
        "max_filters": 512,
    },
    "quick": {
        "base_filters": 16,
        "depth": 4,
        "input_size": (256, 256),
        "deep_supervision": True,
        "dropout": 0.1,
        "aggregation_filters": 16,
        "max_filters": 512,
    },
    "paper": {
        "base_filters": 32,
        "depth": 5,
        "input_size": (512, 512),
        "deep_supervision": True,
        "dropout": 0.2,
        "aggregation_filters": 16,
        "max_filters": 512,
    },
}

#: Output keys. Stable: losses, metrics and the contextual model refer to them.
PROB = "prob"
LOGIT = "logit"
FEATURES = "features"


def side_output_name(scale: int) -> str:
    """Name of the deep-supervision output at 1 / 2**scale resolution (``"side_1"``, ...)."""
    return f"side_{scale}"


@keras.saving.register_keras_serializable(package="pancseg_tf")
class SliceCNN(keras.Model):
    """2D CNN sub-network: encoder-decoder with deep supervision and multi-scale aggregation.

    The encoder has ``depth`` levels of two 3x3 conv -> batch norm -> ReLU units and a 2x2 max
    pool; level ``l`` has ``min(base_filters * 2**l, max_filters)`` filters and the bottleneck one
    level more (with spatial dropout). The decoder mirrors it with 2x2 transposed convolutions and
    skip connections. Then:

    - **Deep supervision**: every decoder level ``l = 1 .. depth - 1`` (resolution ``1 / 2**l``)
      has its own 1x1 conv + sigmoid output ``side_l``, trained against the area-downsampled mask
      (`targets` builds them), which gives the early layers a short gradient path: this is how the
      paper's CNN trains from scratch on small data.
    - **Multi-scale aggregation**: every decoder level is projected by a 1x1 conv to
      ``aggregation_filters`` channels, upsampled bilinearly to full resolution, concatenated and
      fused by a 3x3 conv -> batch norm -> ReLU (the ``features`` output); a 1x1 conv gives the
      ``logit`` and a sigmoid the probability ``prob``.

    Under a mixed precision policy the ``logit``, ``prob`` and side outputs are float32 (their
    last layers have ``dtype="float32"``); ``features`` stays in the compute dtype, as it only feeds
    the contextual model.

    Outputs (a dict; keys are stable, see `output_keys`):
        - ``"prob"``: `(N, H, W, 1)` float32 foreground probability.
        - ``"logit"``: `(N, H, W, 1)` float32 logit of ``prob`` (the contextual model adds its
          correction to it).
        - ``"features"``: `(N, H, W, aggregation_filters)` fused multi-scale features (input of
          the contextual model's ConvLSTM branch).
        - ``"side_l"`` for ``l = 1 .. depth - 1`` when ``deep_supervision``: `(N, H / 2**l,
          W / 2**l, 1)` float32 probabilities.

    For stage 1 compile with a loss per supervised output and no loss for ``logit`` and
    ``features`` (every weight still gets a gradient through ``prob``)::

        model.compile(optimizer="adam",
                      loss={k: keras.losses.BinaryCrossentropy() for k in model.loss_keys},
                      loss_weights={k: 1.0 if k == "prob" else 0.5 for k in model.loss_keys})
        model.fit(slices, model.targets(masks))

    Args:
        base_filters: filters of the first encoder level.
        depth: number of 2x2 poolings (encoder levels); the bottleneck is at ``1 / 2**depth``.
        input_size: ``(H, W)`` (or one integer for a square) of the input slices, both multiples
            of ``2**depth``; ``None`` accepts any such size at run time.
        deep_supervision: add the ``side_l`` outputs.
        dropout: spatial dropout rate after the bottleneck (0 for none).
        aggregation_filters: channels of each projected decoder level and of the fused
            ``features``; ``None`` means ``base_filters``.
        max_filters: cap on the filters of any level.
        dtype: dtype policy of the layers (``None``: the global policy when built).
        **kwargs: ``name`` and ``trainable``, forwarded to `keras.Model`.

    Raises:
        PancsegError: for a non-positive size, a dropout outside [0, 1) or an input size that is
            not a multiple of ``2**depth``.

    Call arguments:
        inputs: `(N, H, W, 1)` float slices scaled to [0, 1].
        training: run batch norm and dropout in training mode.

    Example:
    ```python
    cnn = SliceCNN(base_filters=4, depth=2, input_size=32)
    out = cnn(keras.ops.zeros((2, 32, 32, 1)))
    out["prob"].shape, out["side_1"].shape  # (2, 32, 32, 1), (2, 16, 16, 1)
    ```
    """

    presets = SLICE_CNN_PRESETS

    def __init__(
        self,
        base_filters: int = 16,
        depth: int = 4,
        input_size: int | tuple[int, int] | None = (256, 256),
        deep_supervision: bool = True,
        dropout: float = 0.1,
        aggregation_filters: int | None = None,
        max_filters: int = 512,
        dtype: Any = None,
        **kwargs: Any,
    ):
        base_filters = check_positive_int("base_filters", base_filters)
        depth = check_positive_int("depth", depth)
        max_filters = check_positive_int("max_filters", max_filters)
        if aggregation_filters is None:
            aggregation_filters = base_filters
        aggregation_filters = check_positive_int("aggregation_filters", aggregation_filters)
        size = normalise_input_size(input_size, depth)
        if not 0.0 <= float(dropout) < 1.0:
            raise PancsegError(f"dropout must be in [0, 1), got {dropout!r}")

        def level_filters(level: int) -> int:
            return min(base_filters * 2**level, max_filters)

        # === Layers and functional model ===
        height, width = size if size is not None else (None, None)
        inputs = keras.Input(shape=(height, width, 1), name="image")

        x = inputs
        skips = []
        for level in range(depth):
            x = conv_block(x, level_filters(level), name=f"enc{level}", dtype=dtype)
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"enc{level}_pool")(x)
        x = conv_block(x, level_filters(depth), name="bottleneck", dtype=dtype)
        if dropout > 0:
            x = keras.layers.SpatialDropout2D(dropout, dtype=dtype, name="bottleneck_dropout")(x)

        decoder = {}
        for level in reversed(range(depth)):
            x = keras.layers.Conv2DTranspose(
                level_filters(level),
                2,
                strides=2,
                kernel_initializer=KERNEL_INITIALIZER,
                dtype=dtype,
                name=f"dec{level}_up",
            )(x)
            x = keras.layers.Concatenate(dtype=dtype, name=f"dec{level}_concat")([skips[level], x])
            x = conv_block(x, level_filters(level), name=f"dec{level}", dtype=dtype)
            decoder[level] = x

        outputs = {}
        if deep_supervision:
            for level in range(1, depth):
                side = keras.layers.Conv2D(1, 1, dtype=dtype, name=f"side_{level}_conv")(
                    decoder[level]
                )
                # float32 so the loss sees full-precision probabilities under mixed precision.
                outputs[side_output_name(level)] = keras.layers.Activation(
                    "sigmoid", dtype="float32", name=side_output_name(level)
                )(side)

        projected = []
        for level in range(depth):
            p = keras.layers.Conv2D(aggregation_filters, 1, dtype=dtype, name=f"agg{level}_conv")(
                decoder[level]
            )
            if level > 0:
                p = keras.layers.UpSampling2D(
                    2**level, interpolation="bilinear", dtype=dtype, name=f"agg{level}_up"
                )(p)
            projected.append(p)
        x = keras.layers.Concatenate(dtype=dtype, name="agg_concat")(projected)
        x = keras.layers.Conv2D(
            aggregation_filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=KERNEL_INITIALIZER,
            dtype=dtype,
            name="fuse_conv",
        )(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, dtype=dtype, name="fuse_bn")(x)
        features = keras.layers.ReLU(dtype=dtype, name=FEATURES)(x)
        logit = keras.layers.Conv2D(1, 1, dtype=dtype, name="logit_conv")(features)
        logit = keras.layers.Activation("linear", dtype="float32", name=LOGIT)(logit)
        outputs[PROB] = keras.layers.Activation("sigmoid", dtype="float32", name=PROB)(logit)
        outputs[LOGIT] = logit
        outputs[FEATURES] = features

        kwargs.setdefault("name", "slice_cnn")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

        # === Config ===
        self.base_filters = base_filters
        self.depth = depth
        self.input_size = size
        self.deep_supervision = bool(deep_supervision)
        self.dropout = float(dropout)
        self.aggregation_filters = aggregation_filters
        self.max_filters = max_filters

    @property
    def side_output_keys(self) -> list[str]:
        """Names of the deep-supervision outputs, coarsest last (empty without supervision)."""
        if not self.deep_supervision:
            return []
        return [side_output_name(level) for level in range(1, self.depth)]

    @property
    def loss_keys(self) -> list[str]:
        """Outputs that take a loss in stage 1: ``"prob"`` and the side outputs."""
        return [PROB, *self.side_output_keys]

    @property
    def output_keys(self) -> list[str]:
        """Every output key: `loss_keys` plus ``"logit"`` and ``"features"``."""
        return [*self.loss_keys, LOGIT, FEATURES]

    def targets(self, mask: Any) -> dict[str, Any]:
        """Builds the stage-1 targets for `loss_keys` from full-resolution masks.

        Works eagerly and inside ``tf.data`` (``keras.ops`` only).

        Args:
            mask: `(N, H, W, 1)` {0, 1} mask, any numeric dtype.

        Returns:
            Dict ``{"prob": (N, H, W, 1), "side_l": (N, H / 2**l, W / 2**l, 1)}``, float32; the
            side targets are the fraction of foreground per cell (see `downsample_mask`).
        """
        result = {PROB: downsample_mask(mask, 1)}
        for level, key in enumerate(self.side_output_keys, start=1):
            result[key] = downsample_mask(mask, 2**level)
        return result

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> SliceCNN:
        """Builds a named size (``"tiny"``, ``"quick"``, ``"paper"``); ``kwargs`` override it.

        Raises:
            PancsegError: for an unknown preset name.
        """
        return cls(**preset_kwargs(cls, preset, kwargs))

    def get_config(self) -> dict[str, Any]:
        return {
            **base_model_config(self),
            "base_filters": self.base_filters,
            "depth": self.depth,
            "input_size": self.input_size,
            "deep_supervision": self.deep_supervision,
            "dropout": self.dropout,
            "aggregation_filters": self.aggregation_filters,
            "max_filters": self.max_filters,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SliceCNN:
        return cls(**config)
