"""`SegmenterHandler`: the RunInference `ModelHandler` that segments whole volumes.

RunInference loads the model once per worker process (``load_model``, kept by Beam between
bundles) and calls ``run_inference`` with batches of cases. The model is the `Segmenter` of
``pancseg predict``, built by the same `Segmenter.from_path` with the same options
(`pancseg_tf.predict_io.segmenter_options`), so the pipeline's masks are the in-process
command's, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pancseg_tf.beam.files import staged_model


@dataclasses.dataclass
class LoadedCase:
    """A case read and ready to segment: its task (id and source), its volume and, for a DICOM
    SEG, its series' slice headers.

    The headers are read on the worker from the case's own files
    (`pancseg_tf.beam.pipeline.ReadCase`), never shipped from the launcher; they hold patient
    and study fields, so they are left out of the repr that Beam may put in an error message.
    """

    task: Any
    volume: Any
    headers: list | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class SegmentationFailure:
    """What ``run_inference`` returns for a case that could not be segmented."""

    error: BaseException


class SegmenterHandler(ModelHandler):
    """Loads a run folder or ``.keras`` file once per worker and segments `LoadedCase` batches.

    One volume per batch: volumes differ in shape and each is already a batch of slices for
    the network. A case whose segmentation raises gets a `SegmentationFailure` as its
    inference, so that one bad case does not fail the others' bundle; the pipeline routes it to
    the failures output. The model is not shared across processes: it is small, and each worker
    process keeps its own copy (``share_model_across_processes`` is False).

    Args:
        model: a run folder or a ``.keras`` file, local or a URL (``gs://``; copied to a local
            temporary folder to load, see `pancseg_tf.beam.files.staged_model`).
        unsafe: load Lambda layers and unregistered classes (``--unsafe``).
        options: `Segmenter.from_path` keyword arguments (`segmenter_options`).
    """

    def __init__(self, model: str, *, unsafe: bool = False, options: dict | None = None):
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.model = str(model)
        self.unsafe = unsafe
        self.options = dict(options or {})

    def load_model(self):
        """The `Segmenter` (TensorFlow is imported here, on the worker, without its start-up
        lines)."""
        from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

        import_tensorflow_quietly()
        from pancseg_tf.inference import Segmenter

        with staged_model(self.model) as local:
            return Segmenter.from_path(local, unsafe=self.unsafe, **self.options)

    def run_inference(
        self,
        batch: Sequence[LoadedCase],
        model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """``PredictionResult(case, Segmentation or SegmentationFailure)`` for each case."""
        results = []
        for case in batch:
            try:
                inference = model.segment(case.volume)
            except Exception as err:  # noqa: BLE001 - a failed case goes to the failures output
                inference = SegmentationFailure(err)
            results.append(PredictionResult(case, inference))
        return results

    def get_num_bytes(self, batch: Sequence[LoadedCase]) -> int:
        """The voxel bytes of the batch (what RunInference reports as its data size)."""
        return sum(int(case.volume.array.nbytes) for case in batch)

    def get_metrics_namespace(self) -> str:
        return "pancseg"
