"""`Segmenter`: a volume in, a mask on the volume's own grid out.

One code path for ``pancseg predict``, validation during training and the serving client:

1. host geometry (`pancseg_tf.preprocessing.geometry.plan_geometry`): canonical orientation,
   fixed in-plane spacing, slice-spacing policy, crop or pad around the body;
2. intensity normalisation (`pancseg_tf.preprocessing.intensity`, the same ``keras.ops`` code the
   training pipeline and the exported graph run);
3. the network: for a contextual model the CNN runs once per slice, in batches of slices, and the
   bidirectional ConvLSTM runs over the whole slice sequence in one pass; or over chunks of
   ``chunk`` slices blended by `blend_chunks` when memory requires it or the user asks. Chunks
   run through `ChunkNetwork`, the computation the exported SavedModel serves, on the request's
   wire intensities (int16 HU for CT), so ``pancseg predict --chunk N`` and ``pancseg query``
   against an export of ``N``-slice chunks write the same mask, bit for bit;
4. back to the volume's own grid (linear interpolation of probabilities, then threshold);
5. post-processing: the largest 3D connected component, holes filled.

The chunk rule (shared with the serving client): chunks of ``chunk`` slices start every
``chunk - overlap`` slices, the last one is moved back to end on the last slice; in each chunk a
slice's weight rises linearly over the first ``overlap`` slices and falls over the last
``overlap`` (weights ``(i + 1) / (overlap + 1)``), except at the volume's two ends, where it is 1;
the blended probability is the weighted mean of the chunks that contain the slice.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import weakref
from typing import Any

import numpy as np
from scipy import ndimage

from pancseg_tf.config import Config, PreprocessConfig
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import Volume

log = logging.getLogger("pancseg_tf.inference")

DEFAULT_OVERLAP_FRACTION = 0.25


# === Chunks ===


def chunk_spans(num_slices: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """Start and stop of each chunk of ``chunk`` slices over ``num_slices`` slices.

    Args:
        num_slices: slices in the volume (on the model grid).
        chunk: slices per chunk; a volume no longer than that is one chunk.
        overlap: slices shared by consecutive chunks, ``0 <= overlap < chunk``.

    Returns:
        ``[(start, stop), ...]`` covering ``range(num_slices)``, each ``stop - start == chunk``
        except for a volume shorter than one chunk.

    Raises:
        PancsegError: on a chunk under 1 or an overlap outside ``[0, chunk)``.
    """
    if chunk < 1:
        raise PancsegError(f"chunk must be >= 1 slice, got {chunk}")
    if not 0 <= overlap < chunk:
        raise PancsegError(f"chunk overlap must be in [0, {chunk}), got {overlap}")
    if num_slices <= chunk:
        return [(0, num_slices)]
    step = chunk - overlap
    spans = []
    start = 0
    while True:
        stop = start + chunk
        if stop >= num_slices:
            spans.append((num_slices - chunk, num_slices))
            break
        spans.append((start, stop))
        start += step
    return spans


def chunk_weights(span: tuple[int, int], num_slices: int, overlap: int) -> np.ndarray:
    """Per-slice blending weights of one chunk (see the module docstring), float32."""
    start, stop = span
    length = stop - start
    weights = np.ones(length, dtype=np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
    if overlap and start > 0:
        n = min(overlap, length)
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if overlap and stop < num_slices:
        n = min(overlap, length)
        weights[length - n :] = np.minimum(weights[length - n :], ramp[:n][::-1])
    return weights


def blend_chunks(
    chunks: list[np.ndarray], spans: list[tuple[int, int]], num_slices: int, overlap: int
) -> np.ndarray:
    """Weighted mean of per-chunk probabilities ``(H, W, length)`` into ``(H, W, num_slices)``."""
    height, width = chunks[0].shape[:2]
    total = np.zeros((height, width, num_slices), dtype=np.float32)
    norm = np.zeros(num_slices, dtype=np.float32)
    for probs, span in zip(chunks, spans):
        weights = chunk_weights(span, num_slices, overlap)
        total[:, :, span[0] : span[1]] += probs * weights
        norm[span[0] : span[1]] += weights
    return total / norm


# === In-plane tiles: a body wider than the model's field ===


def tile_spans(
    extent: tuple[int, int], size: tuple[int, int], overlap: tuple[int, int]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Overlapping in-plane tiles of the model's ``size`` over a field of ``extent`` pixels.

    Each axis is cut by the chunk rule (`chunk_spans`); the tiles are every pair.

    Args:
        extent: ``(H', W')`` of the field, each at least the model's size.
        size: ``(H, W)``, the model's slice size.
        overlap: pixels shared by neighbouring tiles on each axis.

    Returns:
        ``[((h0, h1), (w0, w1)), ...]``; one tile ``((0, H), (0, W))`` when ``extent == size``.

    Raises:
        PancsegError: a field smaller than the model's size, or an overlap outside ``[0, size)``.
    """
    if extent[0] < size[0] or extent[1] < size[1]:
        raise PancsegError(f"tiles of {tuple(size)} pixels do not fit a field of {tuple(extent)}")
    rows = chunk_spans(extent[0], size[0], overlap[0])
    cols = chunk_spans(extent[1], size[1], overlap[1])
    return [(row, col) for row in rows for col in cols]


def blend_tiles(
    tiles: list[np.ndarray],
    spans: list[tuple[tuple[int, int], tuple[int, int]]],
    extent: tuple[int, int],
    overlap: tuple[int, int],
) -> np.ndarray:
    """Weighted mean of per-tile probabilities ``(H, W, K)`` into ``(H', W', K)``.

    A tile's weight at a pixel is the product of `chunk_weights` along the two axes: it rises
    over the first ``overlap`` pixels and falls over the last, except at the field's edges.
    """
    num_slices = tiles[0].shape[2]
    total = np.zeros((extent[0], extent[1], num_slices), dtype=np.float32)
    norm = np.zeros(extent, dtype=np.float32)
    for probs, (row, col) in zip(tiles, spans):
        weights = np.outer(
            chunk_weights(row, extent[0], overlap[0]), chunk_weights(col, extent[1], overlap[1])
        )
        total[row[0] : row[1], col[0] : col[1]] += probs * weights[:, :, None]
        norm[row[0] : row[1], col[0] : col[1]] += weights
    return total / norm[:, :, None]


def run_in_tiles(image: np.ndarray, size: tuple[int, int], run) -> np.ndarray:
    """``run`` on ``image`` ``(H', W', K)`` itself when it is the model's ``size``, else on
    overlapping tiles of that size (a quarter of it shared), blended by `blend_tiles`.

    Shared by `Segmenter` and the serving client (`pancseg query`), so both tile alike.
    """
    size = tuple(int(v) for v in size)
    extent = tuple(int(v) for v in image.shape[:2])
    if extent == size:
        return run(image)
    overlap = tuple(int(v * DEFAULT_OVERLAP_FRACTION) for v in size)
    spans = tile_spans(extent, size, overlap)
    tiles = [run(image[r0:r1, c0:c1]) for (r0, r1), (c0, c1) in spans]
    return blend_tiles(tiles, spans, extent, overlap)


# === The chunk network: one computation for ``predict --chunk N`` and the served SavedModel ===


def plan_volume(volume: Volume, preprocess: PreprocessConfig, *, cover_body: bool = False):
    """The volume's `GeometryPlan` for the run's preprocessing (predict and the serving client).

    Args:
        volume: the input volume.
        preprocess: the run's preprocessing.
        cover_body: widen the in-plane field, where the body's box exceeds the model's size,
            to hold the whole box (`GeometryPlan.covering_body`; the model then runs in
            tiles). The plan is the model-size one whenever the body fits.
    """
    from pancseg_tf.preprocessing.geometry import plan_geometry

    plan = plan_geometry(
        volume,
        spacing_mm=preprocess.spacing_mm,
        slice_spacing_mm=preprocess.slice_spacing_mm,
        size=tuple(preprocess.size),
    )
    return plan.covering_body() if cover_body else plan


def request_intensities(
    volume: Volume, plan: Any, preprocess: PreprocessConfig
) -> tuple[np.ndarray, tuple[np.float32, np.float32] | None]:
    """The host side of a request: model-grid ``(H, W, K)`` wire intensities, MRI percentiles.

    The intensities are prepared data's (`pancseg_tf.preprocessing.quantize`: CT int16 HU, MRI
    float32 at float16 precision), the one set of numbers prediction, validation and the
    served export read. The percentiles are computed on the volume's own grid, as prepare does.

    Raises:
        PancsegError: a CT volume with NaN or infinite intensities.
    """
    from pancseg_tf.preprocessing.intensity import mri_percentiles
    from pancseg_tf.preprocessing.quantize import model_grid_intensities

    image = model_grid_intensities(plan.forward(volume.array), preprocess.modality)
    if preprocess.modality != "mri":
        return image, None
    low, high = mri_percentiles(volume.array, *preprocess.mri_percentiles)
    return image, (np.float32(low), np.float32(high))


def stack_chunks(
    image: np.ndarray, spans: list[tuple[int, int]], chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts ``(H, W, K)`` into the ``(B, chunk, H, W)`` rows of a request.

    A span shorter than ``chunk`` (a volume shorter than one chunk) is padded with zeros after
    its slices; ``slice_count`` says how many are real.

    Returns:
        ``(slices, slice_count)``: ``(B, chunk, H, W)`` in ``image``'s dtype and ``(B,)`` int32.
    """
    height, width = image.shape[:2]
    slices = np.zeros((len(spans), chunk, height, width), dtype=image.dtype)
    counts = np.zeros(len(spans), dtype=np.int32)
    for row, (start, stop) in enumerate(spans):
        slices[row, : stop - start] = np.moveaxis(image[:, :, start:stop], 2, 0)
        counts[row] = stop - start
    return slices, counts


def unstack_chunks(probabilities: np.ndarray, spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """``(B, chunk, H, W)`` rows back to `blend_chunks`'s ``(H, W, length)`` parts."""
    return [
        np.moveaxis(np.asarray(row, dtype=np.float32)[: stop - start], 0, 2)
        for row, (start, stop) in zip(probabilities, spans)
    ]


class ChunkNetwork:
    """The per-chunk computation of the serving contract, shared by `Segmenter` and the export.

    ``serve`` is what the exported SavedModel's ``serving_default`` signature runs and what
    `Segmenter` runs for ``chunk=N``: the same ``tf.function`` code, so ``pancseg query`` and
    ``pancseg predict --chunk N`` get the same bits. Per call it takes ``B`` independent chunks
    of raw intensities (``(B, chunk, H, W)``, int16 HU for CT, float32 for MRI with per-chunk
    percentiles ``(B, 2)``) and ``slice_count`` ``(B,)``, normalises them with the shared
    intensity module and runs the model on each chunk on its own (``tf.map_fn`` over the
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

        from pancseg_tf.serving import constants as names

        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise PancsegError(f"chunk must be an integer >= 1 slice, got {chunk!r}")
        if not 0.0 < threshold < 1.0:
            raise PancsegError(f"threshold must be in (0, 1), got {threshold}")
        height, width = (int(v) for v in preprocess.size)
        check_model_fits(model, preprocess)
        self.model = model
        self.preprocess = preprocess
        self.chunk = chunk
        self.threshold = float(threshold)
        self.size = (height, width)
        self.contextual = len(model.inputs[0].shape) == 5
        self._names = names
        shape = (None, chunk, height, width)
        wire = tf.int16 if preprocess.modality == "ct" else tf.float32
        self.input_signature = [
            tf.TensorSpec(shape, wire, name=names.SLICES),
            tf.TensorSpec((None,), tf.int32, name=names.SLICE_COUNT),
        ]
        if preprocess.modality == "mri":
            self.input_signature.append(
                tf.TensorSpec((None, 2), tf.float32, name=names.PERCENTILES)
            )
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
                tf.TensorSpec((None,), tf.int32, name=names.SLICE_COUNT),
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

        n = self._names
        batch = tf.shape(slices)[0]
        # Assert ops: a malformed request fails with INVALID_ARGUMENT, never a wrong answer.
        checks = [
            tf.debugging.assert_positive(
                batch, message=f"'{n.SLICES}' must hold at least one chunk (axis 0 >= 1)"
            ),
            tf.debugging.assert_equal(
                tf.shape(slice_count)[0],
                batch,
                message=f"'{n.SLICE_COUNT}' must have one value per chunk of '{n.SLICES}'",
            ),
            tf.debugging.assert_greater_equal(
                slice_count, 1, message=f"'{n.SLICE_COUNT}' values must be >= 1"
            ),
            tf.debugging.assert_less_equal(
                slice_count,
                self.chunk,
                message=f"'{n.SLICE_COUNT}' values must be <= the chunk length {self.chunk}",
            ),
        ]
        pair = None
        if percentiles is not None:
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(percentiles)[0],
                    batch,
                    message=f"'{n.PERCENTILES}' must have one row per chunk of '{n.SLICES}'",
                )
            )
            percentiles = tf.debugging.assert_all_finite(
                percentiles, f"'{n.PERCENTILES}' must be finite"
            )
            pair = (percentiles[:, 0, None, None, None], percentiles[:, 1, None, None, None])
        with tf.control_dependencies(checks):
            slices = tf.identity(slices)
        p = self.preprocess
        normalized = normalize_intensity(slices, p.modality, window=p.hu_window, percentiles=pair)
        probabilities = self._probabilities(normalized, slice_count)
        mask = tf.cast(probabilities >= self.threshold, tf.uint8)
        return {n.PROBABILITIES: probabilities, n.MASK: mask}

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


# === Post-processing ===


def postprocess_mask(mask: np.ndarray, *, largest_component: bool = True) -> np.ndarray:
    """Keeps the largest 3D connected component (26-connected) and fills its holes.

    Works on the mask's bounding box only, so a 512 x 512 x 600 mask costs little memory.
    Components tied for the largest size are all kept: picking one would depend on the order
    in which the voxel axes are scanned, so the same anatomy stored in another orientation
    could keep another one.

    Args:
        mask: binary array of any shape (3D).
        largest_component: keep only the largest component; holes are filled either way.

    Returns:
        ``uint8`` {0, 1} array of the same shape.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return out
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    if largest_component:
        labels, count = ndimage.label(sub, structure=np.ones((3, 3, 3), bool))
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            sub = sizes[labels] == sizes.max()
    sub = ndimage.binary_fill_holes(sub)
    out[box] = sub
    return out


# === Model loading ===


def resolve_model_path(path: str | pathlib.Path) -> pathlib.Path:
    """A run folder (its ``model.keras``, else ``stage1.keras``) or a ``.keras`` file."""
    path = pathlib.Path(path)
    if path.is_dir():
        for name in ("model.keras", "stage1.keras"):
            if (path / name).is_file():
                return path / name
        raise PancsegError(f"no model.keras or stage1.keras in the run folder {path}")
    if not path.exists():
        raise PancsegError(f"model not found: {path}")
    if path.suffix != ".keras":
        raise PancsegError(f"expected a run folder or a .keras model file, got {path}")
    return path


def load_model(path: str | pathlib.Path, *, unsafe: bool = False):
    """Loads a SliceCNN or ContextualSegmenter saved as ``.keras``.

    Safe by default: before Keras reads the file, its ``config.json`` is searched for what would
    run code from outside Keras and this package, and such a file is refused with one line
    naming it: a ``Lambda`` layer holding a Python lambda (its bytecode is in the file), or a
    class that neither Keras nor pancseg_tf registers (Keras could only get it by importing the
    module the file names). Keras' own ``safe_mode`` stays on as a second guard.

    With ``unsafe`` (``--unsafe``) both load: lambdas are deserialised and the modules the file
    names are imported, so the module must be importable here. Only for files you trust.

    Args:
        path: a run folder or a ``.keras`` file (see `resolve_model_path`).
        unsafe: load Lambda layers and unregistered classes.

    Returns:
        The Keras model, uncompiled.

    Raises:
        PancsegError: the path is not a model this package can load, holds a Lambda layer or
            an unregistered class (unless ``unsafe``), or names a module that cannot be
            imported (with ``unsafe``).
    """
    import keras

    import pancseg_tf.losses  # noqa: F401 - registers the serialisable classes
    import pancseg_tf.metrics  # noqa: F401
    import pancseg_tf.models  # noqa: F401

    path = resolve_model_path(path)
    foreign = _code_from_outside(path)
    custom_objects = None
    if foreign and not unsafe:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise PancsegError(
            f"refusing to load {path}: {foreign[0][0]}{more}; loading it would run code from "
            "outside Keras and pancseg_tf: pass --unsafe (unsafe=True) only for a file you trust"
        )
    if foreign:
        custom_objects = _import_classes(path, foreign)
    try:
        return keras.saving.load_model(
            str(path), safe_mode=not unsafe, compile=False, custom_objects=custom_objects
        )
    except Exception as err:  # keras raises many types for a bad file
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise PancsegError(f"cannot load a model from {path}: {reason}") from None


# Packages whose classes Keras imports by itself when a file names them.
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")


def _code_from_outside(path: pathlib.Path) -> list[tuple[str, str | None, str | None]]:
    """What in a ``.keras`` file would run code from outside Keras and pancseg_tf.

    Returns:
        ``(description, module, class name)`` per finding: module and class name for an
        unregistered class, None for a lambda. Empty for a file that is not a readable
        ``.keras`` archive (Keras reports those itself).
    """
    import json
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[tuple[str, str | None, str | None]] = []

    def visit(node: Any, layer: str | None) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, layer)
            return
        if not isinstance(node, dict):
            return
        class_name, module = node.get("class_name"), node.get("module")
        inner = node.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            layer = inner["name"]
        if class_name == "__lambda__":
            found.append((f"its Lambda layer {layer!r} holds Python code", None, None))
        elif (
            isinstance(class_name, str)
            and isinstance(module, str)
            and module.split(".")[0] not in (*_KERAS_PACKAGES, "builtins")
            and keras.saving.get_registered_object(node.get("registered_name") or class_name)
            is None
        ):
            found.append(
                (
                    f"its class {class_name!r} comes from module {module!r}, which neither Keras "
                    "nor pancseg_tf registers",
                    module,
                    class_name,
                )
            )
        for key, value in node.items():
            if key != "class_name":
                visit(value, layer)

    visit(config, None)
    return found


def _import_classes(
    path: pathlib.Path, foreign: list[tuple[str, str | None, str | None]]
) -> dict[str, Any]:
    """The unregistered classes a file names, imported from their modules (``--unsafe``)."""
    import importlib

    classes: dict[str, Any] = {}
    for _, module, class_name in foreign:
        if module is None or class_name is None:
            continue
        try:
            found = getattr(importlib.import_module(module), class_name)
        except (ImportError, AttributeError) as err:
            raise PancsegError(
                f"cannot load a model from {path}: its class {class_name!r} of module "
                f"{module!r} cannot be imported here ({err})"
            ) from None
        classes[class_name] = found
    return classes


# === Segmenter ===


@dataclasses.dataclass
class Segmentation:
    """What `Segmenter.segment` returns.

    Attributes:
        mask: ``uint8`` {0, 1} on the input volume's own grid.
        probabilities: float32 probabilities on the input's own grid.
        model_probabilities: float32 ``(H, W, K')`` on the model grid.
        plan: the `GeometryPlan` that maps the two grids.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    plan: Any


def finish_segmentation(
    plan: Any, model_probabilities: np.ndarray, *, threshold: float, postprocess: bool
) -> Segmentation:
    """Model-grid probabilities -> the volume's own grid, threshold, post-processing.

    The last steps of `Segmenter.segment`, shared with the serving client.
    """
    probs = plan.inverse(model_probabilities)
    mask = (probs >= threshold).astype(np.uint8)
    if postprocess:
        mask = postprocess_mask(mask)
    return Segmentation(mask, probs, model_probabilities, plan)


class Segmenter:
    """Segments whole volumes with a `SliceCNN` or a `ContextualSegmenter`.

    Args:
        model: a loaded Keras model: a `ContextualSegmenter` (input ``(B, T, H, W, 1)``) or a
            `SliceCNN` (input ``(B, H, W, 1)``: each slice on its own, the paper's baseline).
        preprocess: geometry and intensity settings the model was trained with.
        threshold: probability at or above which a voxel is pancreas.
        postprocess: keep the largest connected component and fill holes.
        chunk: slices per ConvLSTM pass; ``None`` runs the whole volume in one pass, except for
            a contextual model with a ``context_window`` (the window length it was trained
            on), which then runs in chunks of that many slices.
        overlap: slices shared by consecutive chunks (default a quarter of ``chunk``).
        slice_batch: slices per CNN call.
        tta: test-time augmentation: the mean of the probabilities over `TTA_TRANSFORMS`, small
            in-plane shifts and zooms of the kind training augments with (no flips: training
            has none). Costs one network pass per transform (5x).

    Example:
        >>> seg = Segmenter.from_path("runs/demo")
        >>> result = seg.segment(read_volume("ct.nii.gz"))
        >>> write_nifti(result.mask, volume, "ct_mask.nii.gz")
    """

    def __init__(
        self,
        model,
        preprocess: PreprocessConfig | None = None,
        *,
        threshold: float = 0.5,
        postprocess: bool = True,
        chunk: int | None = None,
        overlap: int | None = None,
        slice_batch: int = 16,
        tta: bool = False,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise PancsegError(f"threshold must be in (0, 1), got {threshold}")
        self.model = model
        self.preprocess = preprocess or PreprocessConfig()
        self.threshold = threshold
        self.postprocess = postprocess
        if chunk is None and len(model.inputs[0].shape) == 5:
            # A recurrence trained on short windows does not hold over a whole volume.
            chunk = getattr(model, "context_window", None)
        self.chunk = chunk
        if chunk is not None and overlap is None:
            overlap = int(chunk * DEFAULT_OVERLAP_FRACTION)
        self.overlap = overlap or 0
        if chunk is not None:
            chunk_spans(chunk + 1, chunk, self.overlap)  # validates chunk and overlap
        self.slice_batch = slice_batch
        self.tta = tta
        check_model_fits(model, self.preprocess)
        self.contextual = len(model.inputs[0].shape) == 5
        self._chunk_network: ChunkNetwork | None = None

    @classmethod
    def from_path(
        cls,
        path: str | pathlib.Path,
        *,
        unsafe: bool = False,
        config: str | pathlib.Path | Config | None = None,
        **kwargs,
    ) -> Segmenter:
        """A run folder or ``.keras`` file, with the run's preprocessing, threshold and
        post-processing (``postprocess.threshold`` and ``postprocess.largest_component`` of its
        config) unless ``kwargs`` gives them.

        The config comes from the file's model card (`pancseg_tf.model_card.describe_model`),
        so a file copied away from its run segments like the run; ``config`` (a YAML path, a
        shipped name or a `Config`) is for a file made elsewhere, which carries none.
        """
        from pancseg_tf.model_card import describe_model

        model_path = resolve_model_path(path)
        # The model first: a file that is no model is refused before anything is said of its
        # preprocessing.
        model = load_model(model_path, unsafe=unsafe)
        cfg = describe_model(model_path, config).config
        kwargs.setdefault("threshold", cfg.postprocess.threshold)
        kwargs.setdefault("postprocess", cfg.postprocess.largest_component)
        return cls(model, cfg.preprocess, **kwargs)

    # --- host steps ---

    def plan(self, volume: Volume):
        """The volume's plan, its field widened to the body's box where that is wider."""
        return plan_volume(volume, self.preprocess, cover_body=True)

    def normalize(self, image: np.ndarray, volume: Volume | None = None) -> np.ndarray:
        """Model-grid intensities -> [0, 1] float32 through the shared intensity module."""
        import keras

        from pancseg_tf.preprocessing.intensity import mri_percentiles, normalize_intensity

        p = self.preprocess
        percentiles = None
        if p.modality == "mri":
            source = volume.array if volume is not None else image
            percentiles = mri_percentiles(source, *p.mri_percentiles)
        out = normalize_intensity(image, p.modality, window=p.hu_window, percentiles=percentiles)
        return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)

    # --- the network ---

    def predict_model_grid(self, image: np.ndarray) -> np.ndarray:
        """Probabilities for a normalised ``(H, W, K)`` model-grid volume, same shape, float32.

        A field wider than the model's size (a plan from `GeometryPlan.covering_body`) runs in
        overlapping tiles of the model's size, blended by `blend_tiles`.
        """
        if not self.tta:
            return self._predict_once(image)
        total = np.zeros(image.shape, dtype=np.float32)
        for zoom, shift in TTA_TRANSFORMS:
            moved = _inplane_transform(image, zoom, shift)
            total += _inplane_transform(self._predict_once(moved), zoom, shift, inverse=True)
        return total / np.float32(len(TTA_TRANSFORMS))

    def _in_tiles(self, image: np.ndarray, run) -> np.ndarray:
        return run_in_tiles(image, self.preprocess.size, run)

    def _predict_once(self, image: np.ndarray) -> np.ndarray:
        return self._in_tiles(image, self._predict_tile)

    def _predict_tile(self, image: np.ndarray) -> np.ndarray:
        slices = np.ascontiguousarray(np.moveaxis(image, 2, 0)[..., None], dtype=np.float32)
        if not self.contextual:
            probs = self._run_cnn(slices)
        elif self.chunk is None:
            probs = self._run_contextual(slices)
        else:
            return self._run_chunks(image, normalized=True)
        return np.moveaxis(probs[..., 0], 0, 2).astype(np.float32)

    @property
    def chunk_network(self) -> ChunkNetwork:
        """The `ChunkNetwork` of ``chunk`` slices (the served computation), built on first use."""
        if self.chunk is None:
            raise PancsegError("chunk_network needs a Segmenter with chunk=N")
        if self._chunk_network is None:
            self._chunk_network = ChunkNetwork(
                self.model, self.preprocess, chunk=self.chunk, threshold=self.threshold
            )
        return self._chunk_network

    def predict_chunks(
        self, image: np.ndarray, percentiles: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Probabilities for raw model-grid intensities, exactly as a served export computes them.

        Args:
            image: ``(H, W, K)`` model-grid intensities in the wire dtype (`request_intensities`).
            percentiles: the volume's MRI ``(p_low, p_high)`` (`request_intensities`); None for CT.

        Returns:
            ``(H, W, K)`` float32: `ChunkNetwork.serve` on each chunk, blended by `blend_chunks`;
            a field wider than the model's size runs in tiles (`blend_tiles`).
        """
        return self._in_tiles(
            image, lambda tile: self._run_chunks(tile, percentiles=percentiles, normalized=False)
        )

    def _run_chunks(self, image, percentiles=None, *, normalized: bool) -> np.ndarray:
        from pancseg_tf.serving.constants import PROBABILITIES

        net = self.chunk_network
        num_slices = image.shape[2]
        spans = chunk_spans(num_slices, self.chunk, self.overlap)
        rows = []
        # One chunk per call keeps memory at one chunk; each chunk's bits do not depend on the
        # grouping (see ChunkNetwork), so this equals what a server computes for any request.
        for span in spans:
            slices, counts = stack_chunks(image, [span], self.chunk)
            if normalized:
                out = net.from_normalized(slices, counts)
            elif percentiles is None:
                out = net.serve(slices, counts)[PROBABILITIES]
            else:
                pair = np.asarray([percentiles], dtype=np.float32)
                out = net.serve(slices, counts, pair)[PROBABILITIES]
            rows.append(np.asarray(out)[0])
        return blend_chunks(unstack_chunks(rows, spans), spans, num_slices, self.overlap)

    def _run_cnn(self, slices: np.ndarray) -> np.ndarray:
        run = compiled_call(self.model, "model")
        outs = []
        for start in range(0, slices.shape[0], self.slice_batch):
            out = run(slices[start : start + self.slice_batch])
            outs.append(np.asarray(_main_output(out)))
        return np.concatenate(outs, axis=0)

    def _run_contextual(self, slices: np.ndarray) -> np.ndarray:
        """``(T, H, W, 1)`` -> ``(T, H, W, 1)``: CNN in slice batches, ConvLSTM in one pass.

        Uses the contextual model's three parts (`slice_encoder` per batch of slices,
        `sequence_context` once over the whole sequence of CNN probabilities, `slice_head` per
        batch), which compose to the full model: the CNN's activations are never held for more
        than ``slice_batch`` slices at once.
        """
        model = self.model
        if not hasattr(model, "slice_encoder"):
            return np.asarray(_main_output(compiled_call(model, "model")(slices[None])))[0]
        encoder = compiled_call(model, "slice_encoder")
        sequence_context = compiled_call(model, "sequence_context")
        head = compiled_call(model, "slice_head")
        batches = range(0, slices.shape[0], self.slice_batch)
        contexts = [
            np.asarray(encoder(slices[start : start + self.slice_batch])["context"])
            for start in batches
        ]
        sequence = np.asarray(sequence_context(np.concatenate(contexts, axis=0)[None]))[0]
        return np.concatenate(
            [np.asarray(head(sequence[start : start + self.slice_batch])) for start in batches],
            axis=0,
        )

    def predict_intensities(
        self, image: np.ndarray, percentiles: tuple[float, float] | None = None
    ) -> np.ndarray:
        """Probabilities for model-grid intensities as prepared data holds them.

        The one path from intensities to probabilities of `segment` (``pancseg predict``),
        training's validation (`pancseg_tf.training.callbacks.validation_probabilities`) and,
        with chunks, the served export: with ``chunk`` and no test-time augmentation, the
        served computation itself (`predict_chunks`, what ``pancseg query`` gets back);
        otherwise normalised here and run by `predict_model_grid`.

        Args:
            image: ``(H, W, K)`` model-grid intensities (`request_intensities`; CT HU of any
                dtype holding whole numbers, MRI float32).
            percentiles: the volume's MRI ``(p_low, p_high)``; None for CT.
        """
        from pancseg_tf.preprocessing.intensity import normalize_intensity
        from pancseg_tf.preprocessing.quantize import model_grid_intensities

        p = self.preprocess
        if p.modality == "ct":
            image = model_grid_intensities(image, "ct")  # whole HU: unchanged, as int16
        if self.chunk is not None and not self.tta:
            return self.predict_chunks(image, percentiles)
        normalized = normalize_intensity(
            np.asarray(image, dtype=np.float32),
            p.modality,
            window=p.hu_window,
            percentiles=percentiles,
        )
        return self.predict_model_grid(np.asarray(normalized, dtype=np.float32))

    # --- the whole volume ---

    def segment(self, volume: Volume) -> Segmentation:
        """Segments one volume; the mask lands on the volume's own grid (shape and affine)."""
        check_modality(volume, self.preprocess.modality)
        plan = self.plan(volume)
        image, percentiles = request_intensities(volume, plan, self.preprocess)
        model_probs = self.predict_intensities(image, percentiles)
        return finish_segmentation(
            plan, model_probs, threshold=self.threshold, postprocess=self.postprocess
        )


def check_modality(volume: Volume, modality: str) -> bool:
    """Warns when the volume does not look like what the model was trained on; True if it does.

    A NIfTI file carries no modality, so the intensity range decides: CT in Hounsfield units
    has air near -1000 HU, MRI has no negative values to speak of.
    """
    low = float(np.min(volume.array))
    looks_ct = low < -500.0
    if volume.modality != modality or (modality == "ct") != looks_ct:
        seen = "CT (HU)" if looks_ct else "not CT in HU (MRI?)"
        log.warning(
            "the model was trained on %s but %s looks %s (minimum %.0f): check the input",
            modality.upper(),
            pathlib.Path(volume.source).name or "the volume",
            seen,
            low,
        )
        return False
    return True


#: (zoom, (shift_h, shift_w) in pixels) of test-time augmentation: identity, two diagonal
#: shifts and a 0.93 / 1.07 zoom, inside training's augmentation range (zoom 0.9-1.1, crops).
TTA_TRANSFORMS = (
    (1.0, (0.0, 0.0)),
    (1.0, (6.0, 6.0)),
    (1.0, (-6.0, -6.0)),
    (0.93, (0.0, 0.0)),
    (1.07, (0.0, 0.0)),
)


def _inplane_transform(
    volume: np.ndarray, zoom: float, shift: tuple[float, float], *, inverse: bool = False
) -> np.ndarray:
    """Zooms about the plane's centre and shifts every slice of ``(H, W, K)`` alike (linear)."""
    if zoom == 1.0 and shift == (0.0, 0.0):
        return volume
    height, width = volume.shape[:2]
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    shift_arr = np.asarray(shift, dtype=np.float64)
    # Output pixel u samples input x = (u - c - t) / zoom + c (forward) or x = zoom (u - c) + c + t.
    if inverse:
        matrix, offset = zoom, centre - zoom * centre + shift_arr
    else:
        matrix, offset = 1.0 / zoom, centre - (centre + shift_arr) / zoom
    out = np.empty_like(volume, dtype=np.float32)
    for k in range(volume.shape[2]):
        out[:, :, k] = ndimage.affine_transform(
            volume[:, :, k], np.array([matrix, matrix]), offset=offset, order=1, mode="nearest"
        )
    return out


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_call(model, part: str):
    """``model`` (``part="model"``) or one of its parts (``slice_encoder``,
    ``sequence_context``, ``slice_head``) as an inference call, compiled once per model.

    With the TensorFlow backend the call goes through a ``tf.function`` traced once for the
    model's input shapes with the batch and slice counts open: Keras models called eagerly run the
    bidirectional ConvLSTM's recurrence step by step in Python, which cost a third of the
    CPU time of a volume (`benchmarks/run.py`, roofline part). Other backends call the model
    as it is. The output equals the eager call's.

    A size-agnostic model (height and width ``None``: a CNN trained on ``data.crop_size``
    crops) is traced once per slice size, the height and width fixed from the input of the
    first call of that size: layers such as bilinear ``UpSampling2D`` cannot be traced with an
    open plane size.
    """
    calls = _COMPILED.setdefault(model, {})
    if part not in calls:
        import keras

        # A weak reference: the cache must not keep a model (a fold's, an epoch's) alive.
        ref = weakref.ref(model if part == "model" else getattr(model, part))

        def call(x):
            return ref()(x, training=False)

        if keras.backend.backend() == "tensorflow":
            layer = ref()
            inputs = layer.inputs[0] if part == "model" else layer.input
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


def _main_output(out):
    """The full-resolution probability map of a model's output (dict, list or tensor)."""
    if isinstance(out, dict):
        return out["prob"] if "prob" in out else next(iter(out.values()))
    if isinstance(out, list | tuple):
        return out[0]
    return out
