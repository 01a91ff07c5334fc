"""The contextual model: the slice CNN on every slice, its probability map read by a
bidirectional ConvLSTM along the slice axis whose output is the segmentation, fine-tuned end to
end (stage 2).

Reference:
    Cai J., Lu L., Xie Y., Xing F., Yang L. "Improving Deep Pancreas Segmentation in CT and MRI
    Images via Recurrent Neural Contextual Learning and Direct Loss Function." MICCAI 2017,
    arXiv:1707.04912; bidirectional version in arXiv:1803.11303 (2018).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from pancseg_tf.errors import PancsegError
from pancseg_tf.models.blocks import (
    FoldTime,
    UnfoldTime,
    base_model_config,
    check_positive_int,
    downsample_mask,
    normalise_input_size,
    preset_kwargs,
)
from pancseg_tf.models.convlstm import FusedConvLSTM2D
from pancseg_tf.models.slice_cnn import PROB, SliceCNN

#: Named sizes, each on top of the `SliceCNN` preset of the same name. `ContextualSegmenter()`
#: with no arguments is ``"quick"``. Costs per slice: ``python benchmarks/model_cost.py``.
CONTEXTUAL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"slice_cnn": "tiny", "lstm_filters": 2, "lstm_kernel_size": 3, "lstm_resolution": 2},
    "quick": {"slice_cnn": "quick", "lstm_filters": 8, "lstm_kernel_size": 3, "lstm_resolution": 1},
    "paper": {"slice_cnn": "paper", "lstm_filters": 8, "lstm_kernel_size": 3, "lstm_resolution": 1},
}

#: Key of the CNN's own probability among the auxiliary outputs.
CNN_PROB = "cnn_prob"
#: Key of the per-slice encoder's output that the ConvLSTM reads (see `slice_encoder`).
CONTEXT = "context"
#: Key of the ConvLSTM's output sequence that `slice_head` reads.
SEQUENCE = "sequence"

# The identity start (`ContextualSegmenter.start_as_cnn`): one unit per direction whose output
# is a monotone function of its own slice's CNN probability, zero at p = 0.5.
_IDENTITY_CANDIDATE_GAIN = 4.0  # tanh(4 p - 2): +-0.96 at p = 1 / 0
_IDENTITY_GATE_BIAS = 3.0  # input and output gates ~0.95, forget gate ~0.05
_IDENTITY_HEAD_GAIN = 2.5  # per direction: logit ~ +-4 at a confident probability


def _resolve_slice_cnn(slice_cnn: Any, dtype: Any) -> SliceCNN:
    """A `SliceCNN` from an instance, a serialised object, a constructor config or a preset."""
    if isinstance(slice_cnn, SliceCNN):
        return slice_cnn
    if slice_cnn is None:
        return SliceCNN(dtype=dtype)
    if isinstance(slice_cnn, str):
        return SliceCNN.from_preset(slice_cnn, dtype=dtype)
    if isinstance(slice_cnn, dict):
        if "class_name" in slice_cnn:
            # What get_config() wrote: keras' serialised form (safe: a registered class).
            model = keras.saving.deserialize_keras_object(slice_cnn)
        else:
            model = SliceCNN(**{"dtype": dtype, **slice_cnn})
        if isinstance(model, SliceCNN):
            return model
    raise PancsegError(
        "slice_cnn must be a SliceCNN, its config dict, a preset name "
        f"{sorted(SliceCNN.presets)} or None, got {type(slice_cnn).__name__}"
    )


@keras.saving.register_keras_serializable(package="pancseg_tf")
class ContextualSegmenter(keras.Model):
    """The paper's contextual model: the slice CNN on every slice, its output map read by a
    bidirectional ConvLSTM along the slice axis, whose output is the segmentation.

    Cai et al.: the CNN sub-network is pre-trained from scratch; "the output layer of this network
    module is then connected to recurrent layers", which segment each slice "by integrating its
    neighbouring slice segmentation predictions"; the whole is fine-tuned end to end. So here:

    1. `slice_encoder`: the nested `SliceCNN` (attribute ``slice_cnn``) on all ``B x T`` slices
       of a window as one batched call (`FoldTime` folds the slice axis into the batch, so batch
       normalisation sees every slice); its probability map, one channel, average-pooled by
       ``lstm_resolution`` when that is above 1, is the ``"context"``;
    2. `sequence_context`: a ``keras.layers.Bidirectional(ConvLSTM2D)`` (`FusedConvLSTM2D`:
       Keras' layer with each step's convolutions fused) over the sequence of
       those maps, top-down and bottom-up, so each slice sees the predictions on all its
       neighbours;
    3. `slice_head`: the ConvLSTM's output (both directions), upsampled bilinearly when
       ``lstm_resolution`` is above 1, through a 1x1 convolution to one logit, and a float32
       sigmoid.

    Nothing goes around the recurrent layers: the CNN's logit and features never reach the output
    except through the ConvLSTM (with the ConvLSTM's weights zeroed the output is a constant).

    Where the ConvLSTM runs: at the model grid's full resolution in the ``quick`` and ``paper``
    presets (``lstm_resolution=1``), so the output has the CNN's boundary detail; it reads one
    channel and keeps ``lstm_filters`` per direction, so it costs little next to the CNN (per
    slice, conv FLOPs with multiply-add = 2: quick at 128 x 128 ~0.17 GFLOP against the CNN's
    ~1.8; paper at 512 x 512 ~2.7 against ~120). At inference it holds
    ``2 * lstm_filters`` float32 channels per pixel for every slice of the volume (paper, 300
    slices of 512 x 512: 5 GB); ``lstm_resolution=2`` divides that by 4, and `Segmenter`'s
    ``chunk`` bounds it.

    Start of stage 2 (`start_as_cnn`, called on construction): one unit of each direction is set
    up so that its output is a monotone function of its own slice's CNN probability, zero at
    0.5, and the head reads only those two units: right after `transfer_stage1_weights` the
    model's mask is the stage-1 CNN's (up to a leak of ~5 % of the previous slice's state), and
    training moves it from there. The other units start from Keras' initialisers, their head
    weights at zero.

    For a whole volume the three parts are usable one by one: `slice_encoder` per chunk of
    slices, `sequence_context` once over all slices, `slice_head` per chunk; composed they equal
    the full model (`Segmenter` runs them so).

    Outputs (a dict):
        - ``"prob"``: `(B, T, H, W, 1)` float32 probability.
        - with ``auxiliary_outputs``: ``"cnn_prob"`` `(B, T, H, W, 1)`, the CNN's own
          probability, and the CNN's deep-supervision outputs ``"side_l"``
          `(B, T, H / 2**l, W / 2**l, 1)`, so stage 2 can keep supervising the CNN
          (`targets` builds their targets).

    Args:
        slice_cnn: the CNN sub-network: a `SliceCNN` (used as is, weights shared), its config (as
            `get_config` or `keras.saving.serialize_keras_object` write it), a preset name or
            ``None`` (the ``"quick"`` CNN).
        input_size: ``(H, W)`` of the slices (or one integer), multiples of ``2**depth``;
            ``None`` takes the CNN's. Required when the CNN has ``input_size=None``:
            ConvLSTM2D needs static spatial dimensions (see `with_input_size`).
        lstm_filters: filters of each direction of the ConvLSTM (>= 1).
        lstm_kernel_size: kernel size of the ConvLSTM's input and recurrent convolutions.
        lstm_resolution: the ConvLSTM runs at ``1 / lstm_resolution`` of the input resolution;
            must divide ``2**slice_cnn.depth``.
        context_window: the number of consecutive slices the recurrence was trained on (the
            trainer sets ``data.window``), or ``None``. It changes nothing in the graph: it tells
            `pancseg_tf.inference.Segmenter` and the export to run the model over overlapping
            chunks of this many slices, blended, instead of one pass over the whole volume. A
            ConvLSTM trained on 5-slice windows does not hold over a volume's 60-150 slices: on
            a validation case of the quick recipe it marked nothing in one pass (DSC 0.00)
            and DSC 0.89 in chunks of 5 (``benchmarks/results/README.md``).
        auxiliary_outputs: also output the CNN's probability and side outputs. Without them the
            CNN's side-output convolutions are unused here and are made non-trainable.
        dtype: dtype policy of the layers (``None``: the global policy when built); also used for
            a CNN built here. The ConvLSTM and the head always compute in float32.
        **kwargs: ``name`` and ``trainable``, forwarded to `keras.Model`.

    Raises:
        PancsegError: for a non-positive size, no fixed input size, an input size the CNN does
            not accept, an ``lstm_resolution`` that does not divide ``2**depth`` or an unknown
            preset.

    Call arguments:
        inputs: `(B, T, H, W, 1)` windows of ``T`` consecutive slices scaled to [0, 1]; ``T`` may
            change from call to call (3 to 9 in training, the whole volume at inference).
        training: run batch norm and dropout in training mode.

    Example:
    ```python
    model = ContextualSegmenter(slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=32),
                                lstm_filters=4)
    model(keras.ops.zeros((1, 7, 32, 32, 1)))["prob"].shape  # (1, 7, 32, 32, 1)
    ```
    """

    presets = CONTEXTUAL_PRESETS

    def __init__(
        self,
        slice_cnn: SliceCNN | dict | str | None = None,
        input_size: int | tuple[int, int] | None = None,
        lstm_filters: int = 8,
        lstm_kernel_size: int = 3,
        lstm_resolution: int = 1,
        context_window: int | None = None,
        auxiliary_outputs: bool = False,
        dtype: Any = None,
        **kwargs: Any,
    ):
        cnn = _resolve_slice_cnn(slice_cnn, dtype)
        if context_window is not None:
            context_window = check_positive_int("context_window", context_window, minimum=2)
        lstm_filters = check_positive_int("lstm_filters", lstm_filters)
        lstm_kernel_size = check_positive_int("lstm_kernel_size", lstm_kernel_size)
        lstm_resolution = check_positive_int("lstm_resolution", lstm_resolution)
        if (2**cnn.depth) % lstm_resolution:
            raise PancsegError(
                f"lstm_resolution must divide 2**depth = {2**cnn.depth} of the slice CNN "
                f"(so every input size the CNN accepts can be pooled), got {lstm_resolution}"
            )
        size = normalise_input_size(
            input_size if input_size is not None else cnn.input_size, cnn.depth
        )
        if size is None:
            raise PancsegError(
                "ContextualSegmenter needs a fixed input_size (H, W): ConvLSTM2D needs static "
                "spatial dimensions, and the slice CNN has input_size=None; pass input_size"
            )
        if cnn.input_size is not None and cnn.input_size != size:
            raise PancsegError(
                f"input_size {size} differs from the slice CNN's {cnn.input_size}; use a CNN "
                "with input_size=None or the same size"
            )
        factor = lstm_resolution
        height, width = size
        low_height, low_width = height // factor, width // factor

        # === Layers ===
        context_pool = (
            keras.layers.AveragePooling2D(factor, dtype=dtype, name="context_pool")
            if factor > 1
            else None
        )
        # float32 whatever the policy: at inference the cell state runs through hundreds of
        # slices, where bfloat16's 8-bit mantissa would drift.
        context_lstm = keras.layers.Bidirectional(
            FusedConvLSTM2D(
                lstm_filters,
                lstm_kernel_size,
                padding="same",
                return_sequences=True,
                dtype="float32",
                name="convlstm",
            ),
            merge_mode="concat",
            dtype="float32",
            name="context_lstm",
        )
        head_up = (
            keras.layers.UpSampling2D(
                factor, interpolation="bilinear", dtype="float32", name="head_up"
            )
            if factor > 1
            else None
        )
        head_conv = keras.layers.Conv2D(
            1, 1, kernel_initializer="zeros", dtype="float32", name="head_conv"
        )

        # === Per-slice encoder: (N, H, W, 1) -> context (N, h, w, 1), the CNN's probability ===
        slice_in = keras.Input(shape=(height, width, 1), name="slice")
        cnn_out = cnn(slice_in)
        context = context_pool(cnn_out[PROB]) if context_pool is not None else cnn_out[PROB]
        encoder_outputs = {CONTEXT: context}
        if auxiliary_outputs:
            encoder_outputs[CNN_PROB] = cnn_out[PROB]
            for key in cnn.side_output_keys:
                encoder_outputs[key] = cnn_out[key]
        slice_encoder = keras.Model(slice_in, encoder_outputs, name="slice_encoder")

        # === Sequence context: (B, T, h, w, 1) -> (B, T, h, w, 2 * lstm_filters) ===
        sequence_in = keras.Input(shape=(None, low_height, low_width, 1), name="context_sequence")
        sequence_context = keras.Model(
            sequence_in, context_lstm(sequence_in), name="sequence_context"
        )

        # === Per-slice head: (N, h, w, 2 * lstm_filters) -> prob (N, H, W, 1) ===
        head_in = keras.Input(shape=(low_height, low_width, 2 * lstm_filters), name=SEQUENCE)
        head_logit = head_conv(head_up(head_in) if head_up is not None else head_in)
        head_prob = keras.layers.Activation("sigmoid", dtype="float32", name=PROB)(head_logit)
        slice_head = keras.Model(head_in, head_prob, name="slice_head")

        # === Functional model ===
        slices = keras.Input(shape=(None, height, width, 1), name="slices")
        encoded = slice_encoder(FoldTime(name="fold_slices")(slices))
        context_sequence = UnfoldTime(name="unfold_context")([encoded[CONTEXT], slices])
        sequence = FoldTime(name="fold_sequence")(sequence_context(context_sequence))
        outputs = {PROB: UnfoldTime(name="unfold_prob")([slice_head(sequence), slices])}
        if auxiliary_outputs:
            for key in [CNN_PROB, *cnn.side_output_keys]:
                outputs[key] = UnfoldTime(name=f"unfold_{key}")([encoded[key], slices])

        kwargs.setdefault("name", "contextual_segmenter")
        super().__init__(inputs=slices, outputs=outputs, **kwargs)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

        # === Sub-models (sharing this model's layers) ===
        self.slice_cnn = cnn
        self.slice_encoder = slice_encoder
        self.sequence_context = sequence_context
        self.slice_head = slice_head

        # === Config ===
        self.input_size = size
        self.lstm_filters = lstm_filters
        self.lstm_kernel_size = lstm_kernel_size
        self.lstm_resolution = lstm_resolution
        self.context_window = context_window
        self.auxiliary_outputs = bool(auxiliary_outputs)

        self._freeze_unused_side_outputs()
        self.start_as_cnn()

    def _freeze_unused_side_outputs(self) -> None:
        # Without auxiliary outputs the CNN's side convs get no gradient here; freezing them keeps
        # Keras from warning "Gradients do not exist" on every fit and leaves them as stage 1 did.
        if self.auxiliary_outputs:
            return
        for key in self.slice_cnn.side_output_keys:
            self.slice_cnn.get_layer(f"{key}_conv").trainable = False

    def start_as_cnn(self) -> None:
        """Sets the recurrent layers and the head so that the model's mask starts as the CNN's.

        Unit 0 of each direction gets constant gates (input and output ~0.95, forget ~0.05:
        no recurrent or cross-unit weights into it) and a candidate ``tanh(4 p - 2)`` of its own
        pixel's CNN probability ``p``, so its output is monotone in ``p`` and zero at 0.5; the
        head adds the two units' outputs (gain 2.5 each) and ignores the others (zero weights),
        so the model's probability is above 0.5 exactly where the CNN's is (up to the ~5 %
        forget-gate leak of the previous slice's state, and pooling when ``lstm_resolution`` is
        above 1). Called on construction; loading a saved model then overwrites these weights.
        """
        import numpy as np

        lstm = self.sequence_context.get_layer("context_lstm")
        centre = self.lstm_kernel_size // 2
        units = self.lstm_filters
        for direction in (lstm.forward_layer, lstm.backward_layer):
            cell = direction.cell
            kernel = np.asarray(keras.ops.convert_to_numpy(cell.kernel), dtype=np.float32)
            recurrent = np.asarray(
                keras.ops.convert_to_numpy(cell.recurrent_kernel), dtype=np.float32
            )
            bias = np.asarray(keras.ops.convert_to_numpy(cell.bias), dtype=np.float32)
            # Gate blocks along the last axis, in Keras' order: input, forget, candidate, output.
            gate_i, gate_f, gate_c, gate_o = (k * units for k in range(4))
            for gate in (gate_i, gate_f, gate_c, gate_o):
                kernel[..., gate] = 0.0
                recurrent[..., gate] = 0.0
            kernel[centre, centre, 0, gate_c] = _IDENTITY_CANDIDATE_GAIN
            bias[gate_c] = -_IDENTITY_CANDIDATE_GAIN / 2
            bias[gate_i] = _IDENTITY_GATE_BIAS
            bias[gate_f] = -_IDENTITY_GATE_BIAS
            bias[gate_o] = _IDENTITY_GATE_BIAS
            cell.kernel.assign(kernel)
            cell.recurrent_kernel.assign(recurrent)
            cell.bias.assign(bias)
        head = self.slice_head.get_layer("head_conv")
        head_kernel = np.zeros(tuple(head.kernel.shape), dtype=np.float32)
        head_kernel[0, 0, 0, 0] = _IDENTITY_HEAD_GAIN  # forward unit 0
        head_kernel[0, 0, units, 0] = _IDENTITY_HEAD_GAIN  # backward unit 0
        head.kernel.assign(head_kernel)
        head.bias.assign(np.zeros(tuple(head.bias.shape), dtype=np.float32))

    def with_input_size(self, input_size: int | tuple[int, int]) -> ContextualSegmenter:
        """The same model, with the same weights, for slices of another size.

        ConvLSTM2D needs static spatial dimensions, so a model trained on crops is rebuilt at the
        full plane size for inference (no weight depends on the spatial size).

        Args:
            input_size: the new ``(H, W)`` (or one integer), multiples of ``2**depth``.

        Returns:
            A new `ContextualSegmenter` holding copies of this model's weights.
        """
        config = self.get_config()
        config["input_size"] = input_size
        cnn_config = config["slice_cnn"]["config"]
        if cnn_config["input_size"] is not None:
            cnn_config["input_size"] = input_size
        clone = type(self).from_config(config)
        clone.set_weights(self.get_weights())
        return clone

    @property
    def loss_keys(self) -> list[str]:
        """Outputs that take a loss: ``"prob"``, plus the CNN's with ``auxiliary_outputs``."""
        if not self.auxiliary_outputs:
            return [PROB]
        return [PROB, CNN_PROB, *self.slice_cnn.side_output_keys]

    def freeze_cnn(self, frozen: bool = True) -> None:
        """Freezes (or unfreezes) the nested CNN, e.g. for the first epochs of stage 2.

        A frozen CNN's batch norm runs in inference mode (Keras does so for non-trainable batch
        norm layers), so its statistics from stage 1 are kept. Compile the model again after
        calling this: Keras fixes the trainable weights at compile time.

        Args:
            frozen: ``True`` freezes the CNN, ``False`` makes it trainable again.
        """
        self.slice_cnn.trainable = not frozen
        if not frozen:
            self._freeze_unused_side_outputs()

    def targets(self, mask: Any) -> dict[str, Any]:
        """Builds the targets of `loss_keys` from full-resolution window masks.

        Works eagerly and inside ``tf.data`` (``keras.ops`` only).

        Args:
            mask: `(B, T, H, W, 1)` {0, 1} masks, any numeric dtype.

        Returns:
            Dict of float32 targets: ``"prob"`` (and ``"cnn_prob"``) `(B, T, H, W, 1)`; ``"side_l"``
            `(B, T, H / 2**l, W / 2**l, 1)`, the fraction of foreground per cell.
        """
        mask = ops.cast(mask, "float32")
        result = {PROB: mask}
        if not self.auxiliary_outputs:
            return result
        result[CNN_PROB] = mask
        shape = ops.shape(mask)
        folded = ops.reshape(mask, (-1, *shape[2:]))
        for level, key in enumerate(self.slice_cnn.side_output_keys, start=1):
            side = downsample_mask(folded, 2**level)
            result[key] = ops.reshape(side, (-1, shape[1], *ops.shape(side)[1:]))
        return result

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> ContextualSegmenter:
        """Builds a named size (``"tiny"``, ``"quick"``, ``"paper"``); ``kwargs`` override it.

        Raises:
            PancsegError: for an unknown preset name.
        """
        return cls(**preset_kwargs(cls, preset, kwargs))

    def get_config(self) -> dict[str, Any]:
        return {
            **base_model_config(self),
            "slice_cnn": keras.saving.serialize_keras_object(self.slice_cnn),
            "input_size": self.input_size,
            "lstm_filters": self.lstm_filters,
            "lstm_kernel_size": self.lstm_kernel_size,
            "lstm_resolution": self.lstm_resolution,
            "context_window": self.context_window,
            "auxiliary_outputs": self.auxiliary_outputs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContextualSegmenter:
        return cls(**config)


def transfer_stage1_weights(slice_cnn: SliceCNN, contextual: ContextualSegmenter) -> None:
    """Copies a stage-1 `SliceCNN`'s weights into the contextual model's nested CNN.

    Weights are matched by layer name and weight name (the CNN's layer names are stable), and
    every shape must agree, so a CNN of another configuration is refused instead of being loaded
    half-way. Batch-norm statistics are copied too: the nested CNN then gives exactly the stage-1
    outputs in inference mode.

    Args:
        slice_cnn: the trained stage-1 CNN.
        contextual: the stage-2 model whose ``slice_cnn`` receives the weights.

    Raises:
        PancsegError: when the two CNNs do not have the same layers, weights and shapes; the
            message lists the differences.
    """
    target = contextual.slice_cnn
    if target is slice_cnn:
        return
    source_layers = {layer.name: layer for layer in slice_cnn.layers if layer.weights}
    target_layers = {layer.name: layer for layer in target.layers if layer.weights}
    problems = []
    missing = [name for name in target_layers if name not in source_layers]
    extra = [name for name in source_layers if name not in target_layers]
    if missing:
        problems.append(f"layers missing from the stage-1 CNN: {missing}")
    if extra:
        problems.append(f"layers the contextual model's CNN lacks: {extra}")
    pairs = []
    for name, target_layer in target_layers.items():
        if name not in source_layers:
            continue
        source_weights = source_layers[name].weights
        source_spec = [(w.name, tuple(w.shape)) for w in source_weights]
        target_spec = [(w.name, tuple(w.shape)) for w in target_layer.weights]
        if source_spec != target_spec:
            problems.append(f"layer {name!r}: stage-1 {source_spec} vs contextual {target_spec}")
        else:
            pairs.extend(zip(source_weights, target_layer.weights))
    if problems:
        # The settings that differ say more than the layer shapes they cause.
        source_config, target_config = slice_cnn.get_config(), target.get_config()
        keys = sorted((set(source_config) | set(target_config)) - {"name", "trainable", "dtype"})
        settings = [
            f"{key}: stage-1 {source_config.get(key)!r} vs contextual {target_config.get(key)!r}"
            for key in keys
            if source_config.get(key) != target_config.get(key)
        ]
        shown = "; ".join(settings + problems[:3])
        more = f" (and {len(problems) - 3} more layers)" if len(problems) > 3 else ""
        raise PancsegError(
            f"cannot transfer the stage-1 CNN weights, the two CNNs differ: {shown}{more}. "
            "Build the contextual model with slice_cnn=<stage-1 CNN>.get_config()"
        )
    for source, destination in pairs:
        destination.assign(source.value)
