"""The network parts of inference: `ChunkNetwork` (the served computation), the compiled
whole-volume calls (`compiled_call`, `run_slice_cnn`, `run_contextual`) and `check_model_fits`.

TensorFlow and Keras are imported inside the functions that need them.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from pancseg_tf.config import PreprocessConfig
from pancseg_tf.errors import PancsegError
from pancseg_tf.inference.signature import MASK, PERCENTILES, PROBABILITIES, SLICE_COUNT, SLICES


class ChunkNetwork:
    """The per-chunk computation of the serving contract, shared by `Segmenter` and the export.

    ``serve`` is what the exported SavedModel's ``serving_default`` signature runs and what
    `Segmenter` runs for ``chunk=N``: the same ``tf.function`` code, so ``pancseg query`` and
    ``pancseg predict --chunk N`` get the same bits. Per call it takes ``B`` independent chunks
    of raw intensities (``(B, chunk, H, W)``, int16 HU for CT, float32 for MRI with per-chunk
    percentiles ``(B, 2)``) and ``slice_count`` ``(B,)``, normalises them with the shared
    intensity module and runs the model's inference form (batch norms folded into their
    convolutions, `pancseg_tf.models.folding`) on each chunk on its own (``tf.map_fn`` over the
    batch axis), so a chunk's result never depends on the other chunks of the batch: TF
    Serving's batching may join chunks of several requests (and pad with copies of the first
    row) without changing a bit, and never runs one ConvLSTM sequence across two volumes.

    Args:
        model: a `ContextualSegmenter` or a `SliceCNN` (built).
        preprocess: the run's preprocessing (modality, HU window, in-plane size).
        chunk: slices per chunk ``T``, fixed for the signature.
        threshold: probability at or above which the ``mask`` output is 1.

    Raises:
        PancsegError: a chunk under 1, or a model whose input size is not ``preprocess.size``.
    """

    def __init__(self, model, preprocess: PreprocessConfig, *, chunk: int, threshold: float = 0.5):
        import tensorflow as tf

        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise PancsegError(f"chunk must be an integer >= 1 slice, got {chunk!r}")
        if not 0.0 < threshold < 1.0:
            raise PancsegError(f"threshold must be in (0, 1), got {threshold}")
        from pancseg_tf.models.folding import inference_graph

        height, width = (int(v) for v in preprocess.size)
        check_model_fits(model, preprocess)
        #: The model's inference form (`pancseg_tf.models.folding.inference_graph`: batch
        #: norms folded into their convolutions, over the model's own live variables).
        self.model = inference_graph(model)
        self.preprocess = preprocess
        self.chunk = chunk
        self.threshold = float(threshold)
        self.size = (height, width)
        self.contextual = len(model.inputs[0].shape) == 5
        shape = (None, chunk, height, width)
        wire = tf.int16 if preprocess.modality == "ct" else tf.float32
        self.input_signature = [
            tf.TensorSpec(shape, wire, name=SLICES),
            tf.TensorSpec((None,), tf.int32, name=SLICE_COUNT),
        ]
        if preprocess.modality == "mri":
            self.input_signature.append(tf.TensorSpec((None, 2), tf.float32, name=PERCENTILES))
            self.serve_fn = self._serve_mri
        else:
            self.serve_fn = self._serve_ct
        #: ``serve(slices, slice_count[, percentiles]) -> {"probabilities", "mask"}``.
        self.serve = tf.function(
            self.serve_fn, input_signature=self.input_signature, autograph=False
        )
        #: ``from_normalized(x (B, chunk, H, W) in [0, 1], slice_count) -> probabilities``.
        self.from_normalized = tf.function(
            self._probabilities,
            input_signature=[
                tf.TensorSpec(shape, tf.float32, name="normalized"),
                tf.TensorSpec((None,), tf.int32, name=SLICE_COUNT),
            ],
            autograph=False,
        )

    def _serve_ct(self, slices, slice_count):
        return self._serve(slices, slice_count, None)

    def _serve_mri(self, slices, slice_count, percentiles):
        return self._serve(slices, slice_count, percentiles)

    def _serve(self, slices, slice_count, percentiles):
        import tensorflow as tf

        from pancseg_tf.preprocessing.intensity import normalize_intensity

        batch = tf.shape(slices)[0]
        # Assert ops: a malformed request fails with INVALID_ARGUMENT, never a wrong answer.
        checks = [
            tf.debugging.assert_positive(
                batch, message=f"'{SLICES}' must hold at least one chunk (axis 0 >= 1)"
            ),
            tf.debugging.assert_equal(
                tf.shape(slice_count)[0],
                batch,
                message=f"'{SLICE_COUNT}' must have one value per chunk of '{SLICES}'",
            ),
            tf.debugging.assert_greater_equal(
                slice_count, 1, message=f"'{SLICE_COUNT}' values must be >= 1"
            ),
            tf.debugging.assert_less_equal(
                slice_count,
                self.chunk,
                message=f"'{SLICE_COUNT}' values must be <= the chunk length {self.chunk}",
            ),
        ]
        pair = None
        if percentiles is not None:
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(percentiles)[0],
                    batch,
                    message=f"'{PERCENTILES}' must have one row per chunk of '{SLICES}'",
                )
            )
            percentiles = tf.debugging.assert_all_finite(
                percentiles, f"'{PERCENTILES}' must be finite"
            )
            pair = (percentiles[:, 0, None, None, None], percentiles[:, 1, None, None, None])
        with tf.control_dependencies(checks):
            slices = tf.identity(slices)
        p = self.preprocess
        normalized = normalize_intensity(slices, p.modality, window=p.hu_window, percentiles=pair)
        probabilities = self._probabilities(normalized, slice_count)
        mask = tf.cast(probabilities >= self.threshold, tf.uint8)
        return {PROBABILITIES: probabilities, MASK: mask}

    def _probabilities(self, normalized, slice_count):
        import tensorflow as tf

        chunk, (height, width) = self.chunk, self.size

        def one_chunk(args):
            x, count = args
            x = x[:count]
            if self.contextual:
                prob = _main_output(self.model(x[None, :, :, :, None], training=False))[0]
            else:
                prob = _main_output(self.model(x[:, :, :, None], training=False))
            prob = tf.cast(prob[:, :, :, 0], tf.float32)
            return tf.pad(prob, [[0, chunk - count], [0, 0], [0, 0]])

        # One chunk per iteration, in order: memory of one chunk, whatever the batch.
        return tf.map_fn(
            one_chunk,
            (tf.cast(normalized, tf.float32), slice_count),
            fn_output_signature=tf.TensorSpec((chunk, height, width), tf.float32),
            parallel_iterations=1,
            name="chunks",
        )


def check_model_fits(model, preprocess: PreprocessConfig) -> None:
    """Refuses, in one line naming both sizes, a model whose fixed slice size is not the
    preprocessing's plane size (a model given another run's config, or none).

    Raises:
        PancsegError: the two sizes differ.
    """
    model_size = getattr(model, "input_size", None)
    if model_size is None:  # a Keras model of ours without the attribute: its input shape
        shape = tuple(model.inputs[0].shape)[-3:-1]
        model_size = shape if None not in shape else None
    size = tuple(int(v) for v in preprocess.size)
    if model_size is not None and tuple(model_size) != size:
        raise PancsegError(
            f"the model takes slices of {tuple(model_size)} pixels but the preprocessing gives "
            f"{size}: the preprocessing (the model's card, or the config given) does not "
            "belong to this model; give the config it was trained with"
        )


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_call(model, part: str):
    """``model`` (``part="model"``) or one of its parts (``slice_encoder``,
    ``sequence_context``, ``slice_head``) as an inference call, compiled once per model.

    The call runs the part's inference form (`pancseg_tf.models.folding.inference_graph`:
    batch norms folded into their convolutions, computed from the live weights at each call),
    as `ChunkNetwork` does.

    With the TensorFlow backend the call goes through a ``tf.function`` traced once for the
    model's input shapes with the batch and slice counts open: Keras models called eagerly run the
    bidirectional ConvLSTM's recurrence step by step in Python, which cost a third of the
    CPU time of a volume (`benchmarks/run.py`, roofline part). Other backends call the model
    as it is. The output equals the eager call's up to float rounding (the fold).

    A size-agnostic model (height and width ``None``: a CNN trained on ``data.crop_size``
    crops) is traced once per slice size, the height and width fixed from the input of the
    first call of that size: layers such as bilinear ``UpSampling2D`` cannot be traced with an
    open plane size.
    """
    calls = _COMPILED.setdefault(model, {})
    if part not in calls:
        import keras

        from pancseg_tf.models.folding import inference_graph

        layer = model if part == "model" else getattr(model, part)
        inputs = layer.inputs[0] if part == "model" else layer.input
        graph = inference_graph(layer)
        # Weak references: the cache (weak on the model) must not keep a model (a fold's, an
        # epoch's) alive. The inference form shares the model's layers and variables but is
        # another object, held by the call; a model without one is the model itself.
        ref = weakref.ref(graph) if graph is layer else (lambda: graph)
        del layer

        def call(x):
            return ref()(x, training=False)

        if keras.backend.backend() == "tensorflow":
            call = _traced_per_plane_size(call, inputs)
        calls[part] = call
    return calls[part]


def _traced_per_plane_size(call, inputs):
    """``call`` as ``tf.function``: one trace for the model's input shapes with the batch and
    slice counts open, or, where the plane's height or width (axes -3 and -2, channels last)
    is open, one trace per plane size seen."""
    import tensorflow as tf

    def spec(t, plane=None):
        shape = list(t.shape)
        if plane is not None:
            fixed = shape[-3:-1]
            shape[-3:-1] = [seen if size is None else size for size, seen in zip(fixed, plane)]
        return tf.TensorSpec(shape, t.dtype)

    flat = tf.nest.flatten(inputs)
    if all(None not in tuple(t.shape)[-3:-1] for t in flat):
        # The model's own input shapes, batch and slice counts left open: one trace for every
        # volume (a retrace per shape would cost time and print TF warnings).
        signature = [tf.nest.map_structure(spec, inputs)]
        return tf.function(call, input_signature=signature, autograph=False)

    traces: dict[tuple, Any] = {}

    def per_size(x):
        planes = tuple(tuple(int(v) for v in tuple(a.shape)[-3:-1]) for a in tf.nest.flatten(x))
        if planes not in traces:
            signature = [
                tf.nest.pack_sequence_as(inputs, [spec(t, p) for t, p in zip(flat, planes)])
            ]
            traces[planes] = tf.function(call, input_signature=signature, autograph=False)
        return traces[planes](x)

    return per_size


def run_slice_cnn(model, slices: np.ndarray, slice_batch: int) -> np.ndarray:
    """``(N, H, W, 1)`` slices -> ``(N, H, W, 1)`` probabilities of a `SliceCNN`, compiled
    (`compiled_call`), ``slice_batch`` slices per call."""
    run = compiled_call(model, "model")
    outs = []
    for start in range(0, slices.shape[0], slice_batch):
        out = run(slices[start : start + slice_batch])
        outs.append(np.asarray(_main_output(out)))
    return np.concatenate(outs, axis=0)


def run_contextual(model, slices: np.ndarray, slice_batch: int) -> np.ndarray:
    """``(T, H, W, 1)`` -> ``(T, H, W, 1)``: CNN in slice batches, ConvLSTM in one pass.

    Uses the contextual model's three parts (`slice_encoder` per batch of slices,
    `sequence_context` once over the whole sequence of CNN probabilities, `slice_head` per
    batch), which compose to the full model: the CNN's activations are never held for more
    than ``slice_batch`` slices at once. A model without those parts runs whole.
    """
    if not hasattr(model, "slice_encoder"):
        return np.asarray(_main_output(compiled_call(model, "model")(slices[None])))[0]
    encoder = compiled_call(model, "slice_encoder")
    sequence_context = compiled_call(model, "sequence_context")
    head = compiled_call(model, "slice_head")
    batches = range(0, slices.shape[0], slice_batch)
    contexts = [
        np.asarray(encoder(slices[start : start + slice_batch])["context"]) for start in batches
    ]
    sequence = np.asarray(sequence_context(np.concatenate(contexts, axis=0)[None]))[0]
    return np.concatenate(
        [np.asarray(head(sequence[start : start + slice_batch])) for start in batches], axis=0
    )


def _main_output(out):
    """The full-resolution probability map of a model's output (dict, list or tensor)."""
    if isinstance(out, dict):
        return out["prob"] if "prob" in out else next(iter(out.values()))
    if isinstance(out, list | tuple):
        return out[0]
    return out
