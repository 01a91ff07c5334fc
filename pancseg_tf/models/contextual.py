"""The contextual model: the slice CNN on every slice, then a bidirectional ConvLSTM along the
slice axis, fine-tuned end to end (stage 2).

Reference:
    Cai J., Lu L., Xie Y., Xing F., Yang L. "Improving Deep Pancreas Segmentation in CT and MRI
    Images via Recurrent Neural Contextual Learning and Direct Loss Function." MICCAI 2017,
    arXiv:1707.04912; bidirectional version in arXiv:1803.11303 (2018).
"""

from __future__ import annotations

import copy
from typing import Any

import keras
from keras import ops

from pancseg_tf.errors import PancsegError
from pancseg_tf.models.blocks import (
    FoldTime,
    NeighbourRangeGate,
    SliceChannels,
    UnfoldTime,
    downsample_mask,
    neighbour_range_gate,
    normalise_input_size,
)
from pancseg_tf.models.slice_cnn import FEATURES, LOGIT, PROB, SliceCNN

#: Named sizes, each on top of the `SliceCNN` preset of the same name. `ContextualSegmenter()`
#: with no arguments is ``"quick"``. Costs per slice: ``python benchmarks/model_cost.py``.
CONTEXTUAL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "slice_cnn": "tiny",
        "context_channels": 2,
        "lstm_filters": 4,
        "lstm_kernel_size": 3,
        "lstm_resolution": 2,
        "fusion_channels": 2,
    },
    "quick": {
        "slice_cnn": "quick",
        "context_channels": 8,
        "lstm_filters": 16,
        "lstm_kernel_size": 3,
        "lstm_resolution": 4,
        "fusion_channels": 4,
    },
    "paper": {
        "slice_cnn": "paper",
        "context_channels": 8,
        "lstm_filters": 32,
        "lstm_kernel_size": 3,
        "lstm_resolution": 4,
        "fusion_channels": 4,
    },
}

#: Key of the CNN's own probability among the auxiliary outputs.
CNN_PROB = "cnn_prob"
#: Keys of the per-slice encoder's outputs (see `ContextualSegmenter.slice_encoder`).
CONTEXT = "context"
#: Key of `slice_fusion`'s gate input (models with ``fusion_gate``).
GATE = "gate"
#: Values of ``fusion_gate``.
FUSION_GATES = (None, "range")


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


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PancsegError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@keras.saving.register_keras_serializable(package="pancseg_tf")
class ContextualSegmenter(keras.Model):
    """Slice CNN + bidirectional ConvLSTM over the slice axis (the paper's contextual model).

    The nested `SliceCNN` (attribute ``slice_cnn``) runs on all ``B x T`` slices of a window as one
    batched call (`FoldTime` folds the slice axis into the batch, so batch normalisation sees every
    slice); its probability and its fused features, reduced by a 1x1 conv to
    ``context_channels``, are average-pooled by ``lstm_resolution`` and unfolded back into
    sequences. A ``keras.layers.Bidirectional(ConvLSTM2D)`` runs over them top-down and bottom-up
    (each slice sees the CNN's predictions on all its neighbours), a 1x1x1 Conv3D projects its
    output to ``fusion_channels``, which are upsampled bilinearly to full resolution and fused
    with the CNN's full-resolution logit by a 3x3 conv that is *added* to that logit (residual);
    a float32 sigmoid gives the probability.

    Why the ConvLSTM runs at 1/4 resolution on ``1 + context_channels`` channels: it cannot be
    batched over slices (a recurrence of small convolutions plus memory-bound gate arithmetic),
    and the bidirectional pass must hold its sequence for a whole volume at once, whereas the CNN
    can run on chunks of slices. Costs per slice from ``python benchmarks/model_cost.py`` (conv
    FLOPs, multiply-add = 2; float32 activations a training step keeps; the last column is what
    the sequence part holds for a 600-slice volume at inference):

    =================  ==========  ==============  ================  ==============
    preset             GFLOPs CNN  GFLOPs context  MB CNN / context  600 slices, GB
    =================  ==========  ==============  ================  ==============
    quick (256, r=4)   7.30        0.26            162 / 11          0.41
    quick, r=1         7.30        3.81            162 / 63          6.59
    paper (512, r=4)   120.3       3.19            1166 / 58         2.82
    paper, r=1         120.3       49.8            1166 / 477        45.1
    =================  ==========  ==============  ================  ==============

    Measured on the 2-core CPU (quick, window of 8 slices, CPU ms per slice): at full resolution
    the ConvLSTM took 60 ms next to the CNN's 84 ms, ran at 53 % of a plain conv's FLOP rate
    (the CNN at 74 %), and a training step cost 489 ms; at 1/4 resolution it takes 5.6 ms and a
    training step 307 ms. The residual fusion keeps the CNN's full-resolution boundary detail,
    so the ConvLSTM only has to carry the between-slice context, which is coarse.

    With ``context_channels=0`` the ConvLSTM reads the CNN probability alone (the paper's design),
    and with ``fusion_gate="range"`` the fusion's correction of each pixel is scaled by how far the
    CNN's probability there lies outside the range of the two neighbouring slices'
    (`neighbour_range_gate`): the context then fixes what a slice alone gets wrong against both
    neighbours and cannot recalibrate the whole mask, which is what the ungated layers mostly
    learned on the quick budget (``benchmarks/results/README.md``). The quick config uses both.

    The fusion conv starts at zero, so right after `transfer_stage1_weights` the model's output is
    the stage-1 CNN's logit plus an exact zero: fine-tuning starts from stage 1's quality (the
    ConvLSTM receives gradients from the second step on).

    For a whole volume the three parts are also usable one by one: `slice_encoder` per chunk of
    slices, `sequence_context` once over all slices (low resolution, fits a 600-slice volume) and
    `slice_fusion` per chunk; composed they equal the full model.

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
        context_channels: channels the CNN's features are reduced to before the ConvLSTM (it also
            gets the CNN probability: ``1 + context_channels`` input channels); 0: the
            probability alone, as in the paper (see `context_head`).
        lstm_filters: filters of each direction of the ConvLSTM.
        lstm_kernel_size: kernel size of the ConvLSTM's input and recurrent convolutions.
        input_size: ``(H, W)`` of the slices (or one integer), multiples of ``2**depth``;
            ``None`` takes the CNN's. Required when the CNN has ``input_size=None``:
            ConvLSTM2D needs static spatial dimensions (see `with_input_size`).
        lstm_resolution: the ConvLSTM runs at ``1 / lstm_resolution`` of the input resolution;
            must divide ``2**slice_cnn.depth``.
        fusion_channels: channels of the ConvLSTM output that are upsampled and fused.
        fusion_gate: ``None``, or ``"range"``: the fusion's correction of each pixel is scaled by
            how far the CNN's probability there lies outside the range of the two neighbouring
            slices' (`neighbour_range_gate`), so the context corrects a slice where it disagrees
            with both neighbours and cannot recalibrate the whole mask (measured in
            ``benchmarks/results/README.md``). `slice_fusion` then takes a ``"gate"`` input,
            computed over the whole sequence (`fusion_gate_of`).
        auxiliary_outputs: also output the CNN's probability and side outputs. Without them the
            CNN's side-output convolutions are unused here and are made non-trainable.
        time_distributed: build the per-slice parts with ``keras.layers.TimeDistributed``
            instead of folding the slice axis into the batch (same weights; for benchmarks: the
            CNN is then called ``T`` times on ``B`` slices). Not with ``auxiliary_outputs``.
        dtype: dtype policy of the layers (``None``: the global policy when built); also used for
            a CNN built here. The ConvLSTM always computes in float32.
        **kwargs: ``name`` and ``trainable``, forwarded to `keras.Model`.

    Raises:
        PancsegError: for a non-positive size, no fixed input size, an input size the CNN does
            not accept, an ``lstm_resolution`` that does not divide ``2**depth``, an unknown preset
            or ``time_distributed`` with ``auxiliary_outputs``.

    Call arguments:
        inputs: `(B, T, H, W, 1)` windows of ``T`` consecutive slices scaled to [0, 1]; ``T`` may
            change from call to call (3 to 9 in training, the whole volume at inference).
        training: run batch norm and dropout in training mode.

    Example:
    ```python
    model = ContextualSegmenter(slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=32),
                                lstm_filters=4, lstm_resolution=2)
    model(keras.ops.zeros((1, 7, 32, 32, 1)))["prob"].shape  # (1, 7, 32, 32, 1)
    ```
    """

    presets = CONTEXTUAL_PRESETS

    def __init__(
        self,
        slice_cnn: SliceCNN | dict | str | None = None,
        input_size: int | tuple[int, int] | None = None,
        context_channels: int = 8,
        lstm_filters: int = 16,
        lstm_kernel_size: int = 3,
        lstm_resolution: int = 4,
        fusion_channels: int = 4,
        fusion_gate: str | None = None,
        auxiliary_outputs: bool = False,
        time_distributed: bool = False,
        dtype: Any = None,
        **kwargs: Any,
    ):
        cnn = _resolve_slice_cnn(slice_cnn, dtype)
        context_channels = _check_positive_int("context_channels", context_channels, minimum=0)
        lstm_filters = _check_positive_int("lstm_filters", lstm_filters)
        lstm_kernel_size = _check_positive_int("lstm_kernel_size", lstm_kernel_size)
        lstm_resolution = _check_positive_int("lstm_resolution", lstm_resolution)
        fusion_channels = _check_positive_int("fusion_channels", fusion_channels)
        if (2**cnn.depth) % lstm_resolution:
            raise PancsegError(
                f"lstm_resolution must divide 2**depth = {2**cnn.depth} of the slice CNN "
                f"(so every input size the CNN accepts can be pooled), got {lstm_resolution}"
            )
        if time_distributed and auxiliary_outputs:
            raise PancsegError("time_distributed=True does not support auxiliary_outputs=True")
        if fusion_gate not in FUSION_GATES:
            raise PancsegError(
                f"fusion_gate must be one of {list(FUSION_GATES)}, got {fusion_gate!r}"
            )
        if time_distributed and fusion_gate:
            raise PancsegError("time_distributed=True does not support a fusion_gate")
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
        context_reduce = (
            keras.layers.Conv2D(context_channels, 1, dtype=dtype, name="context_reduce")
            if context_channels
            else None
        )
        context_concat = keras.layers.Concatenate(dtype=dtype, name="context_concat")
        context_pool = (
            keras.layers.AveragePooling2D(factor, dtype=dtype, name="context_pool")
            if factor > 1
            else None
        )
        # float32 whatever the policy: at inference the cell state runs through hundreds of
        # slices, where bfloat16's 8-bit mantissa would drift; at 1/4 resolution it is cheap.
        context_lstm = keras.layers.Bidirectional(
            keras.layers.ConvLSTM2D(
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
        context_project = keras.layers.Conv3D(
            fusion_channels, (1, 1, 1), dtype=dtype, name="context_project"
        )
        fusion_up = (
            keras.layers.UpSampling2D(
                factor, interpolation="bilinear", dtype=dtype, name="fusion_up"
            )
            if factor > 1
            else None
        )
        # Zero init: the correction starts at 0, so the model starts as the stage-1 CNN.
        fusion_conv = keras.layers.Conv2D(
            1,
            3,
            padding="same",
            kernel_initializer="zeros",
            dtype=dtype,
            name="fusion_conv",
        )

        # === Per-slice encoder: (N, H, W, 1) -> logit (N, H, W, 1), context (N, h, w, 1 + c) ===
        slice_in = keras.Input(shape=(height, width, 1), name="slice")
        cnn_out = cnn(slice_in)
        context_full = (
            context_concat([cnn_out[PROB], context_reduce(cnn_out[FEATURES])])
            if context_reduce is not None
            else cnn_out[PROB]
        )
        context = context_pool(context_full) if context_pool is not None else context_full
        encoder_outputs = {LOGIT: cnn_out[LOGIT], CONTEXT: context}
        if auxiliary_outputs:
            encoder_outputs[CNN_PROB] = cnn_out[PROB]
            for key in cnn.side_output_keys:
                encoder_outputs[key] = cnn_out[key]
        slice_encoder = keras.Model(slice_in, encoder_outputs, name="slice_encoder")

        # === Sequence context: (B, T, h, w, 1 + c) -> (B, T, h, w, fusion_channels) ===
        sequence_in = keras.Input(
            shape=(None, low_height, low_width, 1 + context_channels), name="context_sequence"
        )
        sequence_out = context_project(context_lstm(sequence_in))
        sequence_context = keras.Model(sequence_in, sequence_out, name="sequence_context")

        # === Per-slice fusion: logit (N, H, W, 1) + context (N, h, w, k) -> prob (N, H, W, 1) ===
        fusion_logit = keras.Input(shape=(height, width, 1), name=LOGIT)
        fusion_context = keras.Input(shape=(low_height, low_width, fusion_channels), name=CONTEXT)
        fusion_inputs = {LOGIT: fusion_logit, CONTEXT: fusion_context}
        upsampled = fusion_up(fusion_context) if fusion_up is not None else fusion_context
        correction = fusion_conv(
            keras.layers.Concatenate(dtype=dtype, name="fusion_concat")([fusion_logit, upsampled])
        )
        if fusion_gate:
            # The correction only where the slice disagrees with both neighbours (see
            # `neighbour_range_gate`): the context cannot recalibrate the whole mask.
            fusion_inputs[GATE] = keras.Input(shape=(height, width, 1), name=GATE)
            correction = keras.layers.Multiply(dtype="float32", name="fusion_gate")(
                [fusion_inputs[GATE], correction]
            )
        # float32 residual and sigmoid: the CNN logit keeps its precision under mixed precision.
        fused_logit = keras.layers.Add(dtype="float32", name="fusion_add")(
            [fusion_logit, correction]
        )
        fused_prob = keras.layers.Activation("sigmoid", dtype="float32", name=PROB)(fused_logit)
        slice_fusion = keras.Model(fusion_inputs, fused_prob, name="slice_fusion")

        # === Functional model ===
        slices = keras.Input(shape=(None, height, width, 1), name="slices")
        outputs = {}
        if not time_distributed:
            encoded = slice_encoder(FoldTime(name="fold_slices")(slices))
            context_sequence = UnfoldTime(name="unfold_context")([encoded[CONTEXT], slices])
            projected = FoldTime(name="fold_context")(sequence_context(context_sequence))
            fusion_args = {LOGIT: encoded[LOGIT], CONTEXT: projected}
            if fusion_gate:
                cnn_prob = keras.layers.Activation("sigmoid", dtype="float32", name="gate_prob")(
                    encoded[LOGIT]
                )
                prob_sequence = UnfoldTime(name="unfold_gate_prob")([cnn_prob, slices])
                fusion_args[GATE] = FoldTime(name="fold_gate")(
                    NeighbourRangeGate(name="neighbour_range_gate")(prob_sequence)
                )
            prob = slice_fusion(fusion_args)
            outputs[PROB] = UnfoldTime(name="unfold_prob")([prob, slices])
            if auxiliary_outputs:
                for key in [CNN_PROB, *cnn.side_output_keys]:
                    outputs[key] = UnfoldTime(name=f"unfold_{key}")([encoded[key], slices])
        else:
            # Same layers, applied slice by slice. TimeDistributed wraps single-tensor layers, so
            # the encoder's logit and full-resolution context travel as one float32 tensor.
            packed = keras.layers.Concatenate(dtype="float32", name="packed_concat")(
                [cnn_out[LOGIT], context_full]
            )
            packed_encoder = keras.Model(slice_in, packed, name="packed_encoder")
            packed_seq = keras.layers.TimeDistributed(packed_encoder, name="td_slice_encoder")(
                slices
            )
            logit_seq = SliceChannels(0, 1, name="td_logit")(packed_seq)
            context_seq = SliceChannels(1, None, name="td_context")(packed_seq)
            if context_pool is not None:
                context_seq = keras.layers.TimeDistributed(context_pool, name="td_context_pool")(
                    context_seq
                )
            projected_seq = sequence_context(context_seq)
            if fusion_up is not None:
                projected_seq = keras.layers.TimeDistributed(fusion_up, name="td_fusion_up")(
                    projected_seq
                )
            correction_seq = keras.layers.TimeDistributed(fusion_conv, name="td_fusion_conv")(
                keras.layers.Concatenate(dtype=dtype, name="td_fusion_concat")(
                    [logit_seq, projected_seq]
                )
            )
            fused_seq = keras.layers.Add(dtype="float32", name="td_fusion_add")(
                [logit_seq, correction_seq]
            )
            outputs[PROB] = keras.layers.Activation("sigmoid", dtype="float32", name="td_prob")(
                fused_seq
            )

        kwargs.setdefault("name", "contextual_segmenter")
        super().__init__(inputs=slices, outputs=outputs, **kwargs)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

        # === Sub-models (sharing this model's layers) ===
        self.slice_cnn = cnn
        self.slice_encoder = slice_encoder
        self.sequence_context = sequence_context
        self.slice_fusion = slice_fusion

        # === Config ===
        self.input_size = size
        self.context_channels = context_channels
        self.lstm_filters = lstm_filters
        self.lstm_kernel_size = lstm_kernel_size
        self.lstm_resolution = lstm_resolution
        self.fusion_channels = fusion_channels
        self.fusion_gate = fusion_gate
        self.auxiliary_outputs = bool(auxiliary_outputs)
        self.time_distributed = bool(time_distributed)

        self._freeze_unused_side_outputs()

    def _freeze_unused_side_outputs(self) -> None:
        # Without auxiliary outputs the CNN's side convs get no gradient here; freezing them keeps
        # Keras from warning "Gradients do not exist" on every fit and leaves them as stage 1 did.
        if self.auxiliary_outputs:
            return
        for key in self.slice_cnn.side_output_keys:
            self.slice_cnn.get_layer(f"{key}_conv").trainable = False

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

    def context_head(self, logit: Any, prob: Any, windows: int, training: bool = False) -> Any:
        """The model after its CNN, from a CNN's outputs on folded windows.

        Only for ``context_channels=0``, where the ConvLSTM sees the CNN's probability alone (the
        paper's design: each slice is segmented from its neighbours' predictions): then any CNN
        of the same input size can feed this model's context layers. Stage 2's cross-fitted
        training (`pancseg_tf.training.crossfit`) feeds it CNNs that did not see the window's
        case. With the model's own CNN it equals calling the model.

        Args:
            logit: `(B * T, H, W, 1)` CNN logits of ``B`` windows of ``T`` slices, folded
                window-major (as `FoldTime` folds them).
            prob: the matching `(B * T, H, W, 1)` CNN probabilities.
            windows: ``B``.
            training: run the context layers in training mode.

        Returns:
            `(B, T, H, W, 1)` float32 probabilities, the model's ``"prob"`` output.

        Raises:
            PancsegError: when the model's context also reads CNN features.
        """
        if self.context_channels:
            raise PancsegError(
                "context_head needs a model whose context is the CNN probability alone "
                f"(context_channels=0), this one has context_channels={self.context_channels}"
            )
        logit, prob = ops.convert_to_tensor(logit), ops.convert_to_tensor(prob)
        height, width = self.input_size
        factor = self.lstm_resolution
        context = ops.average_pool(prob, factor, factor, "valid") if factor > 1 else prob
        low = ops.shape(context)
        sequence = ops.reshape(context, (windows, -1, low[1], low[2], low[3]))
        projected = self.sequence_context(sequence, training=training)
        folded = ops.reshape(projected, (-1, low[1], low[2], self.fusion_channels))
        fusion_args = {LOGIT: logit, CONTEXT: folded}
        if self.fusion_gate:
            sequence = ops.reshape(logit, (windows, -1, height, width, 1))
            gate = neighbour_range_gate(ops.sigmoid(ops.cast(sequence, "float32")))
            fusion_args[GATE] = ops.reshape(gate, (-1, height, width, 1))
        fused = self.slice_fusion(fusion_args, training=training)
        return ops.reshape(fused, (windows, -1, height, width, 1))

    def fusion_gate_of(self, logit: Any) -> Any:
        """`slice_fusion`'s ``"gate"`` input for the CNN logits `(T, H, W, 1)` of one whole
        sequence of slices (what the model computes inside; for running its parts one by one).
        """
        prob = ops.sigmoid(ops.cast(logit, "float32"))
        return neighbour_range_gate(prob[None])[0]

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
        if preset not in cls.presets:
            raise PancsegError(
                f"unknown ContextualSegmenter preset {preset!r}; expected one of "
                f"{sorted(cls.presets)}"
            )
        return cls(**{**copy.deepcopy(cls.presets[preset]), **kwargs})

    def get_config(self) -> dict[str, Any]:
        # Not chained to super(): a functional model's config is a layer graph.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "slice_cnn": keras.saving.serialize_keras_object(self.slice_cnn),
            "input_size": self.input_size,
            "context_channels": self.context_channels,
            "lstm_filters": self.lstm_filters,
            "lstm_kernel_size": self.lstm_kernel_size,
            "lstm_resolution": self.lstm_resolution,
            "fusion_channels": self.fusion_channels,
            "fusion_gate": self.fusion_gate,
            "auxiliary_outputs": self.auxiliary_outputs,
            "time_distributed": self.time_distributed,
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
