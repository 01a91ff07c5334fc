"""Building blocks shared by the slice CNN and the contextual model.

Everything here is written with `keras` and `keras.ops` only, so it runs on any Keras backend, and
every layer is registered under the package name ``pancseg_tf`` so that models holding it load with
``keras.saving.load_model(path, safe_mode=True)`` (no ``Lambda`` layers anywhere).

Shapes are channels-last: a slice batch is ``(N, H, W, C)``, a slice window ``(B, T, H, W, C)``.
"""

from __future__ import annotations

import copy
from typing import Any

import keras
from keras import ops

from pancseg_tf.errors import PancsegError, check_positive_int  # noqa: F401 - models import it here

# One default so every conv of the package is initialised the same way; He init suits ReLU nets
# trained from scratch, which is how the paper trains its CNN.
KERNEL_INITIALIZER = "he_normal"

# Batch-norm moving statistics follow the weights within about 10 steps. Keras' default, 0.99,
# averages over about 100 steps: trained from scratch at a high learning rate on a few dozen
# steps per epoch, the statistics then lag the weights, and whole-volume validation in inference
# mode swings from epoch to epoch (measured: DSC 0.24-0.46 with the lagging statistics where the
# same weights with current statistics gave 0.74-0.79).
BN_MOMENTUM = 0.9


def conv_block(
    x: Any,
    filters: int,
    name: str,
    num_convs: int = 2,
    kernel_size: int = 3,
    dtype: Any = None,
) -> Any:
    """Applies ``num_convs`` times Conv2D (no bias) -> BatchNormalization -> ReLU.

    The convolutions carry no bias because the batch normalisation right after them has its own
    offset. Layer names are ``{name}_conv{j}``, ``{name}_bn{j}`` and ``{name}_relu{j}`` with
    ``j = 1..num_convs``, so weight paths are stable across builds.

    Args:
        x: symbolic tensor `(N, H, W, C_in)`.
        filters: output channels of every convolution.
        name: prefix of the layer names.
        num_convs: number of conv -> BN -> ReLU units.
        kernel_size: spatial size of the square kernels.
        dtype: dtype policy for the layers (``None``: the global policy).

    Returns:
        Symbolic tensor `(N, H, W, filters)`.
    """
    for j in range(1, num_convs + 1):
        x = keras.layers.Conv2D(
            filters,
            kernel_size,
            padding="same",
            use_bias=False,
            kernel_initializer=KERNEL_INITIALIZER,
            dtype=dtype,
            name=f"{name}_conv{j}",
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, dtype=dtype, name=f"{name}_bn{j}"
        )(x)
        x = keras.layers.ReLU(dtype=dtype, name=f"{name}_relu{j}")(x)
    return x


@keras.saving.register_keras_serializable(package="pancseg_tf")
class FoldTime(keras.layers.Layer):
    """Folds the slice axis into the batch axis: `(B, T, ...)` -> `(B * T, ...)`.

    With it a 2D network runs on every slice of every window as one batched call, so batch
    normalisation sees all ``B * T`` slices at once (``keras.layers.TimeDistributed`` instead calls
    the network ``T`` times on ``B`` slices each). ``B`` and ``T`` may be dynamic (``None``); the
    inverse is `UnfoldTime`.

    Call arguments:
        inputs: tensor `(B, T, d1, ..., dk)` with k >= 1.

    Returns:
        Tensor `(B * T, d1, ..., dk)`, slice ``t`` of window ``b`` at row ``b * T + t``.

    Example:
    ```python
    x = keras.ops.ones((2, 7, 16, 16, 1))
    FoldTime()(x).shape  # (14, 16, 16, 1)
    ```
    """

    def __init__(self, **kwargs: Any):
        # A pure reshape: keep the input's dtype (a float32 probability stays float32 under a
        # mixed precision policy).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs: Any) -> Any:
        shape = ops.shape(inputs)
        # -1 lets the backend work out B * T when either is only known at run time.
        return ops.reshape(inputs, (-1, *shape[2:]))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if len(input_shape) < 3:
            raise ValueError(
                f"FoldTime expects a tensor (batch, time, ...) of rank >= 3, got shape "
                f"{tuple(input_shape)}"
            )
        batch, time = input_shape[0], input_shape[1]
        folded = None if batch is None or time is None else batch * time
        return (folded, *input_shape[2:])

    def compute_output_spec(self, inputs: Any) -> keras.KerasTensor:
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="pancseg_tf")
class UnfoldTime(keras.layers.Layer):
    """Restores the slice axis that `FoldTime` folded: `(B * T, ...)` -> `(B, T, ...)`.

    ``B`` and ``T`` are read at run time from a reference tensor of shape `(B, T, ...)` (usually
    the window `FoldTime` folded), so they may be dynamic; the trailing dimensions come from the
    folded tensor and may differ from the reference's (another resolution or channel count).

    Call arguments:
        inputs: list ``[folded, reference]``: `folded` `(B * T, d1, ..., dk)` and `reference`
            `(B, T, ...)`.

    Returns:
        Tensor `(B, T, d1, ..., dk)`.

    Example:
    ```python
    window = keras.ops.ones((2, 7, 16, 16, 1))
    probs = keras.ops.ones((14, 4, 4, 3))
    UnfoldTime()([probs, window]).shape  # (2, 7, 4, 4, 3)
    ```
    """

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs: list) -> Any:
        folded, reference = inputs
        time = ops.shape(reference)[1]
        return ops.reshape(folded, (-1, time, *ops.shape(folded)[1:]))

    def compute_output_shape(self, input_shape: list) -> tuple:
        folded_shape, reference_shape = input_shape
        if len(reference_shape) < 2:
            raise ValueError(
                f"UnfoldTime expects a reference (batch, time, ...), got shape "
                f"{tuple(reference_shape)}"
            )
        return (reference_shape[0], reference_shape[1], *folded_shape[1:])

    def compute_output_spec(self, inputs: list) -> keras.KerasTensor:
        folded, reference = inputs
        shape = self.compute_output_shape([folded.shape, reference.shape])
        return keras.KerasTensor(shape, dtype=folded.dtype)


def downsample_mask(mask: Any, factor: int) -> Any:
    """Area-downsamples a mask by an integer factor (the fraction of foreground in each cell).

    Deep-supervision side outputs are trained against the mask at their own resolution; the area
    average keeps a thin pancreas visible at 1/8 or 1/16 scale, where nearest-neighbour sampling
    would drop it, and gives soft targets in [0, 1] that both cross-entropy and the Jaccard loss
    accept.

    Args:
        mask: tensor `(N, H, W, C)` with H and W divisible by ``factor``.
        factor: downsampling factor (1 returns the mask as float32).

    Returns:
        Float32 tensor `(N, H / factor, W / factor, C)`.
    """
    mask = ops.cast(mask, "float32")
    if factor == 1:
        return mask
    return ops.average_pool(mask, pool_size=factor, strides=factor, padding="valid")


def normalise_input_size(input_size: Any, depth: int) -> tuple[int, int] | None:
    """Checks a slice size for a network with ``depth`` 2x2 poolings.

    Args:
        input_size: ``None``, one integer (a square) or a pair ``(H, W)``.
        depth: number of 2x2 poolings; both sides must be multiples of ``2**depth``.

    Returns:
        ``(H, W)`` as a tuple, or ``None``.

    Raises:
        PancsegError: for anything else, or a side that is not a multiple of ``2**depth``.
    """
    if input_size is None:
        return None
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        size = tuple(input_size)
    else:
        raise PancsegError(
            f"input_size must be an integer, a pair (H, W) or None, got {input_size!r}"
        )
    stride = 2**depth
    for side in size:
        if isinstance(side, bool) or not isinstance(side, int) or side < stride or side % stride:
            raise PancsegError(
                f"input_size must be a multiple of 2**depth = {stride} (depth={depth} poolings), "
                f"got {input_size!r}"
            )
    return size


def preset_kwargs(cls: type, preset: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model class's named size (``cls.presets[preset]``) with ``kwargs`` over it.

    Raises:
        PancsegError: for an unknown preset name.
    """
    if preset not in cls.presets:
        raise PancsegError(
            f"unknown {cls.__name__} preset {preset!r}; expected one of {sorted(cls.presets)}"
        )
    return {**copy.deepcopy(cls.presets[preset]), **kwargs}


def base_model_config(model: keras.Model) -> dict[str, Any]:
    """The name, trainable flag and dtype policy of a model's ``get_config``.

    Our models' configs are not chained to ``super()``: a functional model's config is a layer
    graph, which cannot be passed back to their constructors.
    """
    return {
        "name": model.name,
        "trainable": model.trainable,
        "dtype": keras.dtype_policies.serialize(model.dtype_policy),
    }
