"""`Segmenter`: a volume in, a mask on the volume's own grid out.

One code path for ``pancseg predict``, validation during training and the serving client:

1. host geometry (`pancseg_tf.preprocessing.geometry.plan_geometry`): canonical orientation,
   fixed in-plane spacing, slice-spacing policy, crop or pad around the body;
2. intensity normalisation (`pancseg_tf.preprocessing.intensity`, the same ``keras.ops`` code the
   training pipeline and the exported graph run);
3. the network: for a contextual model the CNN runs once per slice, in batches of slices, and the
   bidirectional ConvLSTM runs over the whole slice sequence in one pass; or over chunks of
   ``chunk`` slices blended by `blend_chunks` when memory requires it or the user asks;
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
from typing import Any

import numpy as np
from scipy import ndimage

from pancseg_tf.config import Config, PreprocessConfig, load_config
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


# === Post-processing ===


def postprocess_mask(mask: np.ndarray, *, largest_component: bool = True) -> np.ndarray:
    """Keeps the largest 3D connected component (26-connected) and fills its holes.

    Works on the mask's bounding box only, so a 512 x 512 x 600 mask costs little memory.

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
            sizes = np.bincount(labels.ravel())[1:]
            sub = labels == (int(np.argmax(sizes)) + 1)
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

    ``safe_mode`` is on unless ``unsafe``: a file with a ``Lambda`` layer or an unregistered
    class is refused rather than executing code from the file.

    Raises:
        PancsegError: the path is not a model this package can load.
    """
    import keras

    import pancseg_tf.losses  # noqa: F401 - registers the serialisable classes
    import pancseg_tf.metrics  # noqa: F401
    import pancseg_tf.models  # noqa: F401

    path = resolve_model_path(path)
    try:
        return keras.saving.load_model(str(path), safe_mode=not unsafe, compile=False)
    except Exception as err:  # keras raises many types for a bad file
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise PancsegError(f"cannot load a model from {path}: {reason}") from None


def load_run_config(model_path: pathlib.Path) -> Config:
    """The ``config.yaml`` beside a model (its run folder), else the defaults."""
    for candidate in (model_path.parent / "config.yaml", model_path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate)
    log.info("no config.yaml beside %s: using the default preprocessing", model_path.name)
    return Config()


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


class Segmenter:
    """Segments whole volumes with a `SliceCNN` or a `ContextualSegmenter`.

    Args:
        model: a loaded Keras model: a `ContextualSegmenter` (input ``(B, T, H, W, 1)``) or a
            `SliceCNN` (input ``(B, H, W, 1)``: each slice on its own, the paper's baseline).
        preprocess: geometry and intensity settings the model was trained with.
        threshold: probability at or above which a voxel is pancreas.
        postprocess: keep the largest connected component and fill holes.
        chunk: slices per ConvLSTM pass; ``None`` runs the whole volume in one pass.
        overlap: slices shared by consecutive chunks (default a quarter of ``chunk``).
        slice_batch: slices per CNN call.

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
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise PancsegError(f"threshold must be in (0, 1), got {threshold}")
        self.model = model
        self.preprocess = preprocess or PreprocessConfig()
        self.threshold = threshold
        self.postprocess = postprocess
        self.chunk = chunk
        if chunk is not None and overlap is None:
            overlap = int(chunk * DEFAULT_OVERLAP_FRACTION)
        self.overlap = overlap or 0
        if chunk is not None:
            chunk_spans(chunk + 1, chunk, self.overlap)  # validates chunk and overlap
        self.slice_batch = slice_batch
        self.contextual = len(model.inputs[0].shape) == 5

    @classmethod
    def from_path(cls, path: str | pathlib.Path, *, unsafe: bool = False, **kwargs) -> Segmenter:
        """A run folder or ``.keras`` file, with the run's preprocessing and post-processing."""
        model_path = resolve_model_path(path)
        cfg = load_run_config(model_path)
        model = load_model(model_path, unsafe=unsafe)
        return cls(model, cfg.preprocess, **kwargs)

    # --- host steps ---

    def plan(self, volume: Volume):
        from pancseg_tf.preprocessing.geometry import plan_geometry

        p = self.preprocess
        return plan_geometry(
            volume,
            spacing_mm=p.spacing_mm,
            slice_spacing_mm=p.slice_spacing_mm,
            size=tuple(p.size),
        )

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
        """Probabilities for a normalised ``(H, W, K)`` model-grid volume, same shape, float32."""
        num_slices = image.shape[2]
        slices = np.ascontiguousarray(np.moveaxis(image, 2, 0)[..., None], dtype=np.float32)
        if not self.contextual:
            probs = self._run_cnn(slices)
        elif self.chunk is None:
            probs = self._run_contextual(slices)
        else:
            spans = chunk_spans(num_slices, self.chunk, self.overlap)
            parts = [np.moveaxis(self._run_contextual(slices[a:b]), 0, 2)[..., 0] for a, b in spans]
            return blend_chunks(parts, spans, num_slices, self.overlap)
        return np.moveaxis(probs[..., 0], 0, 2).astype(np.float32)

    def _run_cnn(self, slices: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, slices.shape[0], self.slice_batch):
            out = self.model(slices[start : start + self.slice_batch], training=False)
            outs.append(np.asarray(_main_output(out)))
        return np.concatenate(outs, axis=0)

    def _run_contextual(self, slices: np.ndarray) -> np.ndarray:
        """``(T, H, W, 1)`` -> ``(T, H, W, 1)``: CNN in slice batches, ConvLSTM in one pass.

        Uses the contextual model's three parts (`slice_encoder` per batch of slices,
        `sequence_context` once over the whole low-resolution sequence, `slice_fusion` per
        batch), which compose to the full model: the CNN's full-resolution activations are
        never held for more than ``slice_batch`` slices at once.
        """
        model = self.model
        if not hasattr(model, "slice_encoder"):
            return np.asarray(_main_output(model(slices[None], training=False)))[0]
        batches = range(0, slices.shape[0], self.slice_batch)
        logits, contexts = [], []
        for start in batches:
            encoded = model.slice_encoder(slices[start : start + self.slice_batch], training=False)
            logits.append(np.asarray(encoded["logit"]))
            contexts.append(np.asarray(encoded["context"]))
        sequence = np.concatenate(contexts, axis=0)[None]
        context = np.asarray(model.sequence_context(sequence, training=False))[0]
        probs = []
        for i, start in enumerate(batches):
            stop = start + self.slice_batch
            fused = model.slice_fusion(
                {"logit": logits[i], "context": context[start:stop]}, training=False
            )
            probs.append(np.asarray(fused))
        return np.concatenate(probs, axis=0)

    # --- the whole volume ---

    def segment(self, volume: Volume) -> Segmentation:
        """Segments one volume; the mask lands on the volume's own grid (shape and affine)."""
        if volume.modality != self.preprocess.modality:
            log.warning(
                "the model was trained on %s but the volume is %s",
                self.preprocess.modality.upper(),
                volume.modality.upper(),
            )
        plan = self.plan(volume)
        image = self.normalize(plan.forward(volume.array), volume)
        model_probs = self.predict_model_grid(image)
        probs = plan.inverse(model_probs)
        mask = (probs >= self.threshold).astype(np.uint8)
        if self.postprocess:
            mask = postprocess_mask(mask)
        return Segmentation(mask, probs, model_probs, plan)


def _main_output(out):
    """The full-resolution probability map of a model's output (dict, list or tensor)."""
    if isinstance(out, dict):
        return out["prob"] if "prob" in out else next(iter(out.values()))
    if isinstance(out, list | tuple):
        return out[0]
    return out
