"""The prediction pipeline: cases -> read -> RunInference -> masks, failures and a summary.

::

    Create(cases) -> ReadCase --volumes--> RunInference(SegmenterHandler) -> WriteCase --> written
                        |--skipped (mask already there)                        |--failed
                        '--failed (unreadable)                                  (segment / write)
    written + skipped + failed -> ToList -> write_summary: OUT/failures.tsv, OUT/summary.json

Each case is one element; Create reshuffles them, so the runner spreads cases over its workers.
The failed outputs are the dead letters: a case that cannot be read, segmented or written is
a record with its id and a one-line reason, and the other cases are written. Messages show an
input by its last component, as the command line does (`pancseg_tf.messages`), a cohort's
found folders as ``<image>``: the failures file names no path beyond the case.

ReadCase reads a DICOM series with the command's ``--series`` and ``--allow-uneven``
(``read_options``). With ``dicom_seg`` (``--output-format dicom-seg``), it also reads the
series' slice headers, on the worker from the case's own files
(`pancseg_tf.predict_io.load_dicom_case`), and WriteCase writes the mask as a DICOM SEG,
``<case>.dcm`` (`pancseg_tf.predict_io.write_case` with those headers): the in-process
command's SEG, built by the same code.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult, RunInference

from pancseg_tf.beam import files
from pancseg_tf.beam.handler import LoadedCase, SegmentationFailure, SegmenterHandler
from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import InputPathDisplay, error_summary, short_message
from pancseg_tf.predict_io import (
    hide_found_paths,
    load_case_volume,
    load_dicom_case,
    output_names,
    write_case,
)

SUMMARY_NAME = "summary.json"
FAILURES_NAME = "failures.tsv"
WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"
#: Longest reason kept in the failures file for a `PancsegError` (ours: it says what is wrong
#: with the case); an unexpected error's message is cut to `INTERNAL_MESSAGE_CHARS`.
MAX_REASON = 500


@dataclasses.dataclass(frozen=True)
class CaseTask:
    """One case to segment: its name and its source (local path, cohort `Case` or
    `pancseg_tf.beam.files.RemoteSource`)."""

    case_id: str
    source: Any


def _source_paths(source: Any) -> list[str]:
    if isinstance(source, files.RemoteSource):
        return [source.url]
    if hasattr(source, "image"):
        return []  # a cohort's found folders become <image> (hide_found_paths)
    return [str(source)]


def failure_reason(err: BaseException, task: CaseTask, local: Any = None) -> str:
    """One line for a failed case: a `PancsegError`'s message, or an unexpected error as
    `error_summary` shows it (its type and the first line of its message, cut to
    `INTERNAL_MESSAGE_CHARS`: the message may hold an array); the input shown by its last
    component, a cohort's folders as ``<image>``, any other path by its file name.

    Args:
        err: the exception.
        task: the case.
        local: the local copy that was read for a remote source, if any.
    """
    shown = _source_paths(task.source)
    if local is not None and local is not task.source and not hasattr(local, "image"):
        shown.append(str(local))
    display = InputPathDisplay(shown)

    def show(text: str) -> str:
        return display(hide_found_paths(text, task.source))

    if isinstance(err, PancsegError):
        return short_message(show(str(err)), MAX_REASON)
    return error_summary(err, show=show)


def _record(case_id: str, status: str, reason: str = "", voxels: int | None = None) -> dict:
    record: dict[str, Any] = {"case": case_id, "status": status}
    if reason:
        record["reason"] = reason
    if voxels is not None:
        record["voxels"] = voxels
    return record


class ReadCase(beam.DoFn):
    """Case -> `LoadedCase`; a case whose files are all written goes to ``skipped``, one that
    cannot be read (or whose name cannot name a file) to ``failed``.

    With ``dicom_seg`` the case is read with its slice headers (`load_dicom_case`, here on the
    worker, from the staged series), and its output is ``<case>.dcm``. ``read_options``
    (``series``, ``allow_uneven``: ``--series``, ``--allow-uneven``) go to either reader.
    """

    def __init__(
        self,
        out: str,
        probabilities: bool,
        dicom_seg: bool = False,
        read_options: dict | None = None,
    ) -> None:
        self.out = out
        self.probabilities = probabilities
        self.dicom_seg = dicom_seg
        self.read_options = dict(read_options or {})

    def process(self, task: CaseTask):
        from pancseg_tf.io.cohorts import check_case_id

        local = None
        try:
            check_case_id(task.case_id)
            names = output_names(
                task.case_id, probabilities=self.probabilities, dicom_seg=self.dicom_seg
            )
            if all(files.exists(files.join(self.out, name)) for name in names):
                yield beam.pvalue.TaggedOutput(SKIPPED, _record(task.case_id, SKIPPED))
                return
            headers = None
            with files.staged_case(task.source) as local:
                if self.dicom_seg:
                    volume, headers = load_dicom_case(local, **self.read_options)
                else:
                    volume = load_case_volume(local, **self.read_options)
        except Exception as err:  # noqa: BLE001 - a failed case goes to the failures output
            reason = failure_reason(err, task, local)
            yield beam.pvalue.TaggedOutput(FAILED, _record(task.case_id, FAILED, reason))
            return
        yield LoadedCase(task, volume, headers)


class WriteCase(beam.DoFn):
    """`PredictionResult` -> the case's mask (and probabilities) in the output, a DICOM SEG when
    the case carries its slice headers; a failed segmentation or write goes to ``failed``."""

    def __init__(self, out: str, probabilities: bool) -> None:
        self.out = out
        self.probabilities = probabilities

    def process(self, result: PredictionResult):
        case: LoadedCase = result.example
        task = case.task
        try:
            if isinstance(result.inference, SegmentationFailure):
                raise result.inference.error
            self._write(result.inference, case)
        except Exception as err:  # noqa: BLE001 - a failed case goes to the failures output
            reason = failure_reason(err, task)
            yield beam.pvalue.TaggedOutput(FAILED, _record(task.case_id, FAILED, reason))
            return
        yield _record(task.case_id, WRITTEN, voxels=int(result.inference.mask.sum()))

    def _write(self, segmentation, case: LoadedCase) -> None:
        name, volume = case.task.case_id, case.volume
        kwargs = {"probabilities": self.probabilities, "headers": case.headers}
        if not files.is_remote(self.out):
            write_case(segmentation, volume, pathlib.Path(self.out), name, **kwargs)
            return
        with tempfile.TemporaryDirectory(prefix="pancseg-beam-") as tmp:
            written = write_case(segmentation, volume, pathlib.Path(tmp), name, **kwargs)
            # The mask last: a rerun skips a case only when its mask is there.
            for path in reversed(written):
                files.upload(path, files.join(self.out, path.name))


def write_summary(records: list[dict], out: str, run_id: str) -> None:
    """Writes ``OUT/failures.tsv`` (case id, tab, reason; header first) and then
    ``OUT/summary.json`` (counts and case ids per status, and ``run_id``), each atomically."""
    records = sorted(records, key=lambda r: r["case"])
    by_status = {s: [r for r in records if r["status"] == s] for s in (WRITTEN, SKIPPED, FAILED)}
    lines = ["case\treason"] + [f"{r['case']}\t{r['reason']}" for r in by_status[FAILED]]
    files.write_text(files.join(out, FAILURES_NAME), "\n".join(lines) + "\n")
    summary = {
        "run_id": run_id,
        "cases": len(records),
        **{status: len(rows) for status, rows in by_status.items()},
        "failed_cases": [r["case"] for r in by_status[FAILED]],
        "written_cases": [r["case"] for r in by_status[WRITTEN]],
    }
    files.write_text(files.join(out, SUMMARY_NAME), json.dumps(summary, indent=2) + "\n")


def build_pipeline(
    pipeline: beam.Pipeline,
    tasks: list[CaseTask],
    *,
    model: str,
    out: str,
    options: dict,
    run_id: str,
    unsafe: bool = False,
    probabilities: bool = False,
    dicom_seg: bool = False,
    read_options: dict | None = None,
) -> None:
    """Adds the prediction to ``pipeline`` (see the module's diagram).

    Args:
        pipeline: the Beam pipeline.
        tasks: the cases (their ids already unique).
        model: run folder or ``.keras`` file, local or remote.
        out: the output folder, local or remote.
        options: `Segmenter.from_path` keyword arguments.
        run_id: written into ``summary.json``, so the launcher reads this run's summary.
        unsafe: load Lambda layers and unregistered classes.
        probabilities: also write ``<case>_prob.nii.gz``.
        dicom_seg: write each mask as a DICOM SEG, ``<case>.dcm`` (every source a DICOM series,
            checked by the caller with `pancseg_tf.predict_io.check_dicom_seg_inputs`).
        read_options: ``series`` and ``allow_uneven`` for each worker's read of a DICOM series
            (`pancseg_tf.predict_io.load_case_volume` / `load_dicom_case`).
    """
    cases = pipeline | "Cases" >> beam.Create(tasks)
    reader = ReadCase(out, probabilities, dicom_seg, read_options)
    read = cases | "Read" >> beam.ParDo(reader).with_outputs(SKIPPED, FAILED, main="volumes")
    handler = SegmenterHandler(model, unsafe=unsafe, options=options)
    segmented = read.volumes | "Segment" >> RunInference(handler)
    written = segmented | "Write" >> beam.ParDo(WriteCase(out, probabilities)).with_outputs(
        FAILED, main="written"
    )
    records = (written.written, read[SKIPPED], read[FAILED], written[FAILED]) | beam.Flatten()
    _ = (
        records
        | "Collect" >> beam.combiners.ToList()
        | "Summary" >> beam.Map(write_summary, out=out, run_id=run_id)
    )
