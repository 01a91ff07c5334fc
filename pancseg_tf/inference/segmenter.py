"""`Segmenter`: a volume in, a mask on the volume's own grid out.

It composes the package's steps (see `pancseg_tf.inference`): the host steps (`host`), the
network (`network`: whole-volume compiled calls, or `ChunkNetwork` over chunks cut and blended
by `chunks`), test-time augmentation (`tta`) and the way back to the volume's grid
(`postprocess.finish_segmentation`).
"""

from __future__ import annotations

import pathlib

import numpy as np

from pancseg_tf.config import Config, PreprocessConfig
from pancseg_tf.errors import PancsegError
from pancseg_tf.inference.chunks import (
    DEFAULT_OVERLAP_FRACTION,
    blend_chunks,
    chunk_spans,
    run_in_tiles,
    stack_chunks,
    unstack_chunks,
)
from pancseg_tf.inference.host import check_modality, plan_volume, request_intensities
from pancseg_tf.inference.loading import load_model, resolve_model_path
from pancseg_tf.inference.network import (
    ChunkNetwork,
    check_model_fits,
    run_contextual,
    run_slice_cnn,
)
from pancseg_tf.inference.postprocess import Segmentation, finish_segmentation
from pancseg_tf.inference.signature import PROBABILITIES
from pancseg_tf.inference.tta import tta_mean
from pancseg_tf.io.volume import Volume


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
        return tta_mean(image, self._predict_once)

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
        return run_slice_cnn(self.model, slices, self.slice_batch)

    def _run_contextual(self, slices: np.ndarray) -> np.ndarray:
        """``(T, H, W, 1)`` -> ``(T, H, W, 1)``: `network.run_contextual` (CNN in slice
        batches, ConvLSTM in one pass)."""
        return run_contextual(self.model, slices, self.slice_batch)

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
