"""Batch prediction on Apache Beam: ``pancseg predict MODEL INPUT... -o OUT --runner R``.

The same cases, `Segmenter` and writer as the in-process ``pancseg predict``
(`pancseg_tf.predict_io`), run as a Beam pipeline (`pancseg_tf.beam.pipeline`) on the
DirectRunner (this machine's cores), Dataflow, Flink or Spark. Inputs may also be globs and,
with the ``gcp`` extra of Beam, ``gs://`` URLs; a case whose mask is already in the output is
skipped, so a rerun writes only what is missing; a case that fails is listed with a one-line
reason in ``OUT/failures.tsv`` while the others are written; ``OUT/summary.json`` counts them.
With ``--output-format dicom-seg`` each DICOM series input gives ``OUT/<case>.dcm``, the DICOM
SEG the in-process command writes (its inputs refused alike, before any worker starts).
``--series`` and ``--allow-uneven`` reach each worker's read of a DICOM series, as they do the
in-process command's.

This module imports Apache Beam only when a pipeline is run: ``pip install "pancseg-tf[beam]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import uuid

from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import error_summary, short_message

log = logging.getLogger("pancseg_tf")

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Longest `PancsegError` text kept in a failed pipeline's error line.
_PIPELINE_REASON_CHARS = 400
# The line a Python traceback ends with: ``[module.]SomeError: message``.
_RAISED = re.compile(r"^((?:\w+\.)*\w+(?:Error|Exception|Exit|Interrupt)): ?(.*)$", re.MULTILINE)


def pipeline_options(runner: str, items: list[str], *, debug: bool = False):
    """Beam `PipelineOptions` for ``runner`` from ``KEY=VALUE`` strings (a bare ``KEY`` sets a
    flag such as ``save_main_session``). Workers log errors only, unless ``debug`` or the items
    set ``default_sdk_harness_log_level``.

    Raises:
        PancsegError: an unknown runner, a malformed item, or a key Beam does not know.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    if runner not in RUNNERS:
        raise PancsegError(f"--runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    flags = [f"--runner={runner}"]
    if not debug and not any(i.startswith("default_sdk_harness_log_level") for i in items):
        # Workers log each bundle at INFO; errors still show (and each case's in failures.tsv).
        flags.append("--default_sdk_harness_log_level=ERROR")
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not _KEY.fullmatch(key):
            raise PancsegError(f"--pipeline-option expects KEY=VALUE, got {item!r}")
        flags.append(f"--{key}={value}" if sep else f"--{key}")
    options = PipelineOptions(flags)
    known = options.get_all_options()
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(known)
    if unknown:
        raise PancsegError(
            f"unknown Beam pipeline option(s): {', '.join(sorted(unknown))} "
            "(see Beam's PipelineOptions for the names, e.g. direct_num_workers, project)"
        )
    return options


def _pipeline_error(err: BaseException) -> str:
    """One line for a failed pipeline: the last ``PancsegError: ...`` in Beam's (often nested)
    error text; else the last ``SomeError: message`` line of a worker's traceback in it (a
    remote runner's); else the error itself (the DirectRunner raises the worker's exception).
    An unexpected error is shown as `pancseg_tf.messages.error_summary` shows it: its message
    may print a whole array over many lines."""
    text = str(err)
    found = re.findall(r"PancsegError: (.+)", text)
    if found:
        return short_message(found[-1], _PIPELINE_REASON_CHARS)
    raised = _RAISED.findall(text)
    if raised:
        name, message = raised[-1]
        message = short_message(message)
        return f"{name.rpartition('.')[2]}: {message}" if message else name.rpartition(".")[2]
    return error_summary(err)


def _check_model(model: str) -> str:
    """``model`` as the workers get it (a local one absolute); raises if it is not there."""
    from pancseg_tf.beam import files

    if files.is_remote(model):
        files.remote_model_files(model)
        return model
    from pancseg_tf.inference import resolve_model_path

    resolve_model_path(model)
    return os.path.abspath(model)


def predict_with_beam(args: argparse.Namespace, *, read_options: dict | None = None) -> int:
    """``pancseg predict`` with ``--runner``: builds and runs the pipeline, prints the summary.

    Args:
        args: ``pancseg predict``'s parsed arguments.
        read_options: how each worker reads a DICOM series input, ``series`` and
            ``allow_uneven`` (`pancseg_tf.cli.options.dicom_options`); default: the series with
            most slices, evenly spaced.

    Returns:
        0 when every case is written (or was already), 1 when some failed.

    Raises:
        PancsegError: Beam is not installed, a bad option, no input, an input the output format
            cannot take (a NIfTI file for a DICOM SEG, or highdicom missing: the in-process
            command's line), ``--series`` without a DICOM series folder input, a model that is
            not there, or a pipeline that failed as a whole (nothing ran: status 2).
    """
    if importlib.util.find_spec("apache_beam") is None:
        raise PancsegError('--runner needs Apache Beam: pip install "pancseg-tf[beam]"')
    if not args.debug:
        # Beam logs warnings about optional clients on import, INFO lines per bundle, and a
        # worker's error with its traceback: the error is reported below as one line.
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    import apache_beam as beam

    from pancseg_tf.beam import files
    from pancseg_tf.beam.pipeline import SUMMARY_NAME, CaseTask, build_pipeline
    from pancseg_tf.predict_io import (
        check_dicom_seg_inputs,
        check_outputs_spare_inputs,
        check_series_inputs,
        segmenter_options_from_args,
        written_summary,
    )

    options = segmenter_options_from_args(args)
    beam_options = pipeline_options(args.runner, args.pipeline_option, debug=args.debug)
    items = files.expand_inputs(args.inputs)  # (case name, source), checked below
    if not items:
        raise PancsegError("no input volumes found")
    tasks = [CaseTask(name, source) for name, source in items]
    read_options = dict(read_options or {})
    check_series_inputs(items, read_options.get("series"))
    dicom_seg = args.output_format == "dicom-seg"
    if dicom_seg:
        # Here, before the model is looked at or a worker starts; each worker reads its series'
        # headers from the series itself (ReadCase), nothing of them is shipped from here.
        check_dicom_seg_inputs(items)
    check_outputs_spare_inputs(
        items, args.output, probabilities=args.probabilities, dicom_seg=dicom_seg
    )
    model = _check_model(args.model)
    out = str(args.output)
    if not files.is_remote(out):
        import pathlib

        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    log.info("%d case(s) on %s", len(tasks), args.runner)
    pipeline = beam.Pipeline(options=beam_options)
    build_pipeline(
        pipeline,
        tasks,
        model=model,
        out=out,
        options=options,
        run_id=run_id,
        unsafe=args.unsafe,
        probabilities=args.probabilities,
        dicom_seg=dicom_seg,
        read_options=read_options,
    )
    try:
        pipeline.run().wait_until_finish()
    except Exception as err:  # noqa: BLE001 - Beam wraps worker errors in many types
        raise PancsegError(
            f"the {args.runner} pipeline failed: {_pipeline_error(err)} (masks already written "
            "are complete; a rerun skips them)"
        ) from err
    text = files.read_text(files.join(out, SUMMARY_NAME))
    summary = json.loads(text) if text else {}
    if summary.get("run_id") != run_id:
        raise PancsegError(f"the {args.runner} pipeline finished without writing its summary")
    failures = _failures(files.read_text(files.join(out, "failures.tsv")) or "")
    for case, reason in failures:
        log.error("%s failed: %s", case, reason)
    print(
        f"{written_summary(summary['written'], summary['cases'], out, dicom_seg=dicom_seg)} "
        f"({summary['skipped']} already there, {summary['failed']} failed)"
    )
    return 1 if summary["failed"] else 0


def _failures(text: str) -> list[tuple[str, str]]:
    rows = [line.split("\t", 1) for line in text.splitlines()[1:] if line]
    return [(row[0], row[1] if len(row) > 1 else "") for row in rows]
