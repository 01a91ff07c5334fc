"""The ``pancseg`` command.

Each subcommand parses and validates its flags, calls the library and prints a short summary.
Problems with the user's input, and a full disk, end as one line, ``pancseg: error: <message>``,
with exit status 2; ``--debug`` (before the subcommand) shows the traceback as well. Messages
show an input path by its last component only (`InputPathDisplay`), and an error any other path
too (`file_names_only`: folders may name a patient). Commands that do not need
TensorFlow never import it, and TensorFlow's start-up log lines are kept off the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import traceback

# Before anything can import TensorFlow: its C++ start-up lines are not for the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

from pancseg_tf._version import __version__  # noqa: E402
from pancseg_tf.errors import PancsegError  # noqa: E402
from pancseg_tf.messages import (  # noqa: E402
    INTERNAL_MESSAGE_CHARS,  # noqa: F401 - importable from here, as before
    InputPathDisplay,
    error_summary,
    file_names_only,
    one_line,
)
from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

log = logging.getLogger("pancseg_tf")


# === Subcommands ===


def _cmd_info(args: argparse.Namespace) -> int:
    from pancseg_tf.io import read_volume

    volume = read_volume(
        args.path, modality=args.modality, series=args.series, allow_uneven=args.allow_uneven
    )
    info = volume_summary(volume)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        # The last path component only: TCIA folder names above a series carry the study date.
        print(f"name         {pathlib.Path(args.path).name}")
        print(f"modality     {info['modality']}")
        print(f"shape        {' x '.join(str(s) for s in info['shape'])}")
        print(f"spacing_mm   {' x '.join(f'{s:.4g}' for s in info['spacing_mm'])}")
        print(f"orientation  {''.join(info['orientation'])}")
        print(f"dtype        {info['dtype']}")
        print(f"range        {info['min']:.6g} .. {info['max']:.6g}")
        print(f"sheared      {info['sheared']}")
        print("affine")
        for row in info["affine"]:
            print("  " + " ".join(f"{v:12.6f}" for v in row))
    return 0


def volume_summary(volume) -> dict:
    """Geometry and intensity facts of a volume, never a patient field."""
    import numpy as np

    return {
        "modality": volume.modality,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": list(volume.orientation),
        "affine": np.round(volume.affine, 6).tolist(),
        "dtype": str(volume.array.dtype),
        "min": float(np.min(volume.array)),
        "max": float(np.max(volume.array)),
        "sheared": volume.is_sheared,
    }


def _cmd_convert(args: argparse.Namespace) -> int:
    from pancseg_tf.io import read_volume, write_volume

    out = pathlib.Path(args.output)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise PancsegError(f"output must end in .nii.gz or .nii, got {out.name!r}")
    src = pathlib.Path(args.input)
    if src.exists() and out.resolve() == src.resolve():
        raise PancsegError(f"output {out} is the input: refusing to overwrite it")
    volume = read_volume(
        args.input, modality=args.modality, series=args.series, allow_uneven=args.allow_uneven
    )
    write_volume(volume, out)
    print(f"wrote {out} ({' x '.join(str(s) for s in volume.shape)}, {volume.array.dtype})")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pancseg_tf.synthetic import make_cohort

    if args.cases < 1:
        raise PancsegError(f"--cases must be >= 1, got {args.cases}")
    out = make_cohort(args.out, cases=args.cases, modality=args.modality, seed=args.seed)
    print(f"wrote a synthetic {args.modality.upper()} cohort of {args.cases} cases to {out}")
    return 0


def _load_config(args: argparse.Namespace):
    from pancseg_tf.config import apply_overrides, load_config

    cfg = load_config(getattr(args, "config", None))
    return apply_overrides(cfg, getattr(args, "set", None) or [])


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pancseg_tf.data.prepare import prepare_cohort

    if (args.num_shards is None) != (args.shard_index is None):
        raise PancsegError("--num-shards and --shard-index go together")
    cfg = _load_config(args)
    index = prepare_cohort(
        args.cohort,
        args.out,
        config=cfg,
        format=args.format,
        workers=args.workers,
        skip_bad=args.skip_bad,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
    )
    skipped = index.get("skipped", [])
    print(
        f"prepared {len(index.get('cases', []))} case(s) into {args.out}"
        + (f"; skipped {len(skipped)} (see index.json)" if skipped else "")
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_config(args)  # before TensorFlow's start-up: config errors come at once
    import_tensorflow_quietly()
    from pancseg_tf.training.trainer import Trainer

    trainer = Trainer(
        args.data,
        args.run,
        cfg,
        seed=args.seed,
        deterministic=args.deterministic,
        strategy=args.strategy,
    )
    result = trainer.run(args.stage)
    best = ", ".join(f"{k} val DSC {v:.4f}" for k, v in sorted(result.best.items()))
    print(f"run folder {result.run_dir}: {best or 'no validation score'}")
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from pancseg_tf.training.cv import CrossValidation, write_summary

    cfg = _load_config(args)
    losses = tuple(x.strip() for x in args.losses.split(",") if x.strip()) if args.losses else None
    cv = CrossValidation(
        pathlib.Path(args.cohort),
        pathlib.Path(args.out),
        cfg,
        folds=args.folds,
        losses=losses,
        stages=args.stages,
        seed=args.seed,
        strategy=args.strategy,
        folds_file=pathlib.Path(args.folds_file) if args.folds_file else None,
        workers=args.workers,
        data_dir=pathlib.Path(args.data) if args.data else None,
    )
    if args.summary_only:
        summary = write_summary(cv.out)
    else:
        cv.setup(args.fold)  # before TensorFlow starts: prepare's worker processes
        if args.prepare_only:
            print(f"prepared {cv.data_dir}; folds in {cv.out / 'folds.json'}")
            return 0
        import_tensorflow_quietly()
        summary = cv.run(args.fold)
    print((cv.out / "cv_summary.md").read_text().strip())
    print(f"\n{len(summary.get('experiments', {}))} experiment(s); everything is in {cv.out}")
    return 0


def _safe_case_name(name: str) -> str:
    """A case name usable as a file name inside the output folder: the rule of `check_case_id`."""
    from pancseg_tf.io.cohorts import check_case_id

    return check_case_id(name)


def _check_dicom_seg_inputs(items: list[tuple[str, object]]) -> None:
    """Refuses ``--output-format dicom-seg`` for an input that is not a DICOM series folder
    (a SEG references the series it segments), and without highdicom, before any model loads."""
    from pancseg_tf.io.dicom_seg import import_highdicom

    for name, source in items:
        image = pathlib.Path(getattr(source, "image", source))
        if not image.is_dir():
            raise PancsegError(
                f"--output-format dicom-seg needs DICOM series input, got the file {image.name} "
                f"(case {name}); a DICOM SEG references the DICOM series it segments: use "
                "--output-format nifti for NIfTI input"
            )
    import_highdicom()


def _read_dicom_case(source: object) -> tuple:
    """A case's DICOM series as ``(volume, slice headers)`` for its SEG (a cohort case keeps
    its modality, as `Case.load_image` does)."""
    import dataclasses

    from pancseg_tf.io.dicom import read_dicom_series_with_headers

    volume, headers = read_dicom_series_with_headers(getattr(source, "image", source))
    modality = getattr(source, "modality", None)
    if modality is not None and modality != volume.modality:
        volume = dataclasses.replace(volume, modality=modality)
    return volume, headers


def _write_dicom_seg_case(
    result, volume, headers, out: pathlib.Path, case: str, *, probabilities: bool
) -> list[pathlib.Path]:
    """``OUT/<case>.dcm`` (and the probabilities as NIfTI), whole or not at all."""
    from pancseg_tf.io import write_nifti
    from pancseg_tf.io.dicom_seg import write_segmentation

    written = [write_segmentation(result.mask, volume, headers, out / f"{case}.dcm")]
    try:
        if probabilities:
            written.append(
                write_nifti(
                    result.probabilities,
                    volume,
                    out / f"{case}_prob.nii.gz",
                    dtype="float32",
                    protect=[volume.source],
                )
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _cmd_predict(args: argparse.Namespace) -> int:
    import time

    from pancseg_tf.predict_io import (
        hide_found_paths,
        load_case_volume,
        predict_inputs,
        segmenter_options_from_args,
        write_case,
    )

    if args.runner is not None and args.output_format != "nifti":
        raise PancsegError(
            f"--output-format {args.output_format} runs in this process only, not with --runner"
        )
    if args.runner is not None:
        from pancseg_tf.beam import predict_with_beam  # inputs may be globs or gs:// there

        return predict_with_beam(args)
    if args.pipeline_option:
        raise PancsegError("--pipeline-option needs --runner (a Beam runner to pass it to)")
    items = predict_inputs(args.inputs)
    if not items:
        raise PancsegError("no input volumes found")
    if args.output_format == "dicom-seg":
        _check_dicom_seg_inputs(items)
    options = segmenter_options_from_args(args)
    import_tensorflow_quietly()
    from pancseg_tf.inference import Segmenter

    segmenter = Segmenter.from_path(args.model, unsafe=args.unsafe, **options)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for i, (name, source) in enumerate(items, start=1):
        start = time.monotonic()
        try:
            case = _safe_case_name(name)
            if args.output_format == "dicom-seg":
                volume, headers = _read_dicom_case(source)
            else:
                volume = load_case_volume(source)
            result = segmenter.segment(volume)
            # A case is written whole or not at all: no mask without the probabilities asked for.
            if args.output_format == "dicom-seg":
                _write_dicom_seg_case(
                    result, volume, headers, out, case, probabilities=args.probabilities
                )
            else:
                write_case(result, volume, out, case, probabilities=args.probabilities)
            log.info(
                "[%d/%d] %s: %d voxels (%.1f s)",
                i,
                len(items),
                case,
                int(result.mask.sum()),
                time.monotonic() - start,
            )
        except PancsegError as err:
            failed += 1
            message = hide_found_paths(str(err), source)
            full = storage_full_error(err)
            if full is not None and failed == i:
                raise PancsegError(f"{message} (no mask written)") from None
            shown = name if name.isprintable() else repr(name)  # a newline would split the line
            log.error("[%d/%d] %s failed: %s", i, len(items), shown, message)
            if full is not None:
                # Every later case would fail the same way, after its whole computation.
                log.error(
                    "error: the output is full (%s): stopped with %d case(s) not attempted",
                    full.strerror,
                    len(items) - i,
                )
                break
    print(f"wrote {i - failed} of {len(items)} mask(s) to {out}")
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pancseg_tf.evaluation.report import evaluate_predictions, outside_field_note
    from pancseg_tf.io.label_values import parse_label_values

    labels = parse_label_values(args.gt_labels) if args.gt_labels else None
    summary = evaluate_predictions(
        args.pred,
        args.gt,
        args.output,
        gt_labels=labels,
        images=args.images,
        prepared=args.prepared,
    )
    dsc = summary["metrics"]["dsc"]
    counts = summary["num_cases"]
    print(
        f"DSC {100 * dsc['mean']:.1f} ± {100 * (dsc['std'] or 0):.1f} % over {dsc['n']} case(s); "
        f"report in {args.output}/index.html"
    )
    problems = (
        counts.get("failed", 0)
        + counts.get("prediction_only", 0)
        + counts.get("ground_truth_only", 0)
    )
    if problems:
        print(f"{problems} case(s) unpaired or failed: see {args.output}/summary.md")
    field_note = outside_field_note(summary)
    if field_note is not None:
        print(field_note)
    return 1 if counts.get("failed", 0) else 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.chunk is not None and args.chunk < 2:
        raise PancsegError(f"--chunk must be >= 2 slices, got {args.chunk}")
    config = None
    if args.config is not None:  # read before TensorFlow starts: config errors come at once
        from pancseg_tf.config import load_config

        config = load_config(args.config)
    import_tensorflow_quietly()
    from pancseg_tf.serving.export import export_model

    path = export_model(
        args.model,
        args.base,
        name=args.name,
        chunk=args.chunk,
        overlap=args.overlap,
        unsafe=args.unsafe,
        config=config,
    )
    print(f"exported to {path} (TF Serving model {args.name!r}, version {path.name})")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    import_tensorflow_quietly()
    from pancseg_tf.serving.client import query_file

    result = query_file(
        args.input,
        args.output,
        server=args.server,
        rest=args.rest,
        model=args.model,
        version=args.version,
        modality=args.modality,
        series=args.series,
        allow_uneven=args.allow_uneven,
        timeout_s=args.timeout,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
    )
    print(
        f"wrote {args.output} ({int(result.segmentation.mask.sum())} voxels; model "
        f"{result.served.name!r} version {result.served.version}; {result.chunks} chunks in "
        f"{result.requests} requests)"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import_tensorflow_quietly()
    from pancseg_tf.demo import print_demo_summary, run_demo

    out = pathlib.Path(args.out)
    summary = run_demo(out, modality=args.modality, seed=args.seed)
    print_demo_summary(out, summary)
    return 0


# === Parser ===


def _add_volume_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--series",
        type=int,
        default=None,
        metavar="NUMBER",
        help="DICOM SeriesNumber to read when a folder holds several (default: most slices)",
    )
    p.add_argument(
        "--allow-uneven",
        action="store_true",
        help="read a DICOM series with a missing slice or uneven spacing instead of failing",
    )
    p.add_argument(
        "--modality",
        choices=("ct", "mri"),
        default=None,
        help="modality of a NIfTI input (DICOM says its own; default ct)",
    )


def _add_model_config_argument(p: argparse.ArgumentParser) -> None:
    """``--config`` for a command that loads a model (read by `pancseg_tf.model_card`)."""
    p.add_argument(
        "--config",
        help="the config a .keras file made elsewhere was trained with (a model pancseg wrote "
        "carries its own: this overrides it)",
    )


def _add_config_arguments(p: argparse.ArgumentParser, config_help: str) -> None:
    """``--config`` and ``--set`` (read by `_load_config`), as prepare, train and cv take them."""
    p.add_argument("--config", help=config_help)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pancseg",
        description="Pancreas segmentation in CT and MRI (CNN + bidirectional ConvLSTM).",
    )
    parser.add_argument("--version", action="version", version=f"pancseg_tf {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "info",
        help="shape, spacing, orientation, affine and intensity range of a volume",
        description="Prints a volume's geometry and intensity range; never a patient field.",
    )
    p.add_argument("path", help="a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_volume_flags(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "convert",
        help="DICOM series or NIfTI to NIfTI on the input's own grid (HU for CT)",
        description="Writes the volume as NIfTI: same grid, same affine; HU for CT.",
    )
    p.add_argument("input", help="a NIfTI file or a DICOM series folder")
    p.add_argument("output", help="the NIfTI file to write (.nii.gz or .nii)")
    _add_volume_flags(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "synth",
        help="write a seeded synthetic CT or MRI cohort (MSD layout)",
        description=(
            "Writes seeded abdominal CT- or MRI-like volumes with a pancreas and its label as an "
            "MSD-layout cohort, and OUT/ambiguous_slices.json. Same seed, same bytes."
        ),
    )
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    p.add_argument("--modality", choices=("ct", "mri"), default="ct", help="default ct")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "prepare",
        help="turn a cohort into TFRecord shards and OUT/index.json (resumable)",
        description=(
            "Runs every case through the geometry (canonical orientation, fixed spacing, body "
            "crop) into TFRecord shards; a rerun skips finished cases."
        ),
    )
    p.add_argument("cohort", help="MSD folder, NIH Pancreas-CT folder or CSV manifest")
    p.add_argument("out", help="output folder for shards and index.json")
    p.add_argument(
        "--format",
        choices=("auto", "msd", "nih", "manifest"),
        default="auto",
        help="cohort layout (default: detected)",
    )
    _add_config_arguments(p, "YAML config (its preprocess section is used)")
    p.add_argument("--workers", type=int, default=1, help="cases prepared in parallel processes")
    p.add_argument(
        "--skip-bad", action="store_true", help="report and skip cases that cannot be read"
    )
    p.add_argument("--num-shards", type=int, help="prepare one slice of K of the cohort ...")
    p.add_argument("--shard-index", type=int, help="... namely slice I (0 <= I < K)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser(
        "train",
        help="two-stage training (CNN, then CNN + bidirectional ConvLSTM) into a run folder",
        description=(
            "Stage 1 trains the slice CNN alone; stage 2 the contextual model initialised from "
            "the best stage-1 weights, end to end. Rerun the same command to resume."
        ),
    )
    p.add_argument("data", help="a folder written by pancseg prepare")
    p.add_argument("run", help="the run folder (created; rerun to resume)")
    _add_config_arguments(p, "YAML config, e.g. training/configs/quick.yaml")
    p.add_argument("--stage", choices=("1", "2", "both"), default="both", help="default both")
    p.add_argument(
        "--strategy",
        choices=("auto", "none", "mirrored", "multiworker"),
        default="auto",
        help="auto: mirrored on several GPUs, multiworker when TF_CONFIG is set, else none",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds split, weights and data order")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="fixed data order and deterministic ops (slower; for exact resumption)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation: both stages per fold, held-out scores, the paper's table",
        description=(
            "Assigns folds (OUT/folds.json: NIH Pancreas-CT with 4 folds by case number 1-20, "
            "21-40, 41-61, 62-82; otherwise seeded by case id), prepares the cohort once, and "
            "for each fold trains on the others, chooses post-processing on validation, "
            "segments and scores the held-out cases. Folds are numbered from 0; finished "
            "folds are skipped on a rerun; OUT/cv_summary.md is rebuilt from the folds done."
        ),
    )
    p.add_argument("cohort", help="labelled cohort: MSD / nnU-Net folder, NIH download, CSV")
    p.add_argument("out", help="the output folder (rerun to resume)")
    p.add_argument("--folds", type=int, default=4, help="number of folds (default 4)")
    p.add_argument("--fold", type=int, help="run only this fold (0-based), e.g. in a job array")
    p.add_argument("--folds-file", help='a JSON fold assignment to use ({"folds": [[ids]]})')
    _add_config_arguments(p, "YAML config or a named one (quick, paper)")
    p.add_argument(
        "--losses",
        help="compare these losses, comma-separated (bce, weighted_bce, dice, "
        "jaccard_per_sample, jaccard, jaccard_bce); default the config's train.loss",
    )
    p.add_argument(
        "--stages",
        choices=("1", "both"),
        default="both",
        help="both (default) or 1: stage 1 alone, e.g. for a loss ablation on the CNN",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the folds, splits and training")
    p.add_argument(
        "--strategy",
        choices=("auto", "none", "mirrored"),
        default="auto",
        help="training strategy, as for pancseg train (one machine)",
    )
    p.add_argument("--workers", type=int, default=2, help="processes preparing cases")
    p.add_argument("--data", help="where the prepared cohort goes (default OUT/data)")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write folds.json and prepare the cohort, then stop (before a job array)",
    )
    p.add_argument(
        "--summary-only", action="store_true", help="rebuild the summary from the folds done"
    )
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser(
        "predict",
        help="segment NIfTI / DICOM volumes or a cohort; masks land on each input's grid",
        description=(
            "Segments each input: the CNN once per slice, the bidirectional ConvLSTM over the "
            "whole slice sequence in one pass (or in chunks), threshold, post-processing, back "
            "to the input's own grid. Writes OUT/<case>.nii.gz (uint8). Exit status 0 when all "
            "cases are written, 1 when some failed, 2 when nothing could run. A full disk "
            "stops the run (status 2 if no mask was written yet); a case is written whole "
            "(mask and probabilities) or not at all."
        ),
    )
    p.add_argument("model", help="a run folder or a .keras model (a stage-1 CNN works too)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="NIfTI file, DICOM series folder, folder of NIfTI files, or cohort (MSD, NIH, CSV)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--probabilities", action="store_true", help="also write OUT/<case>_prob.nii.gz")
    p.add_argument(
        "--output-format",
        choices=("nifti", "dicom-seg"),
        default="nifti",
        help="nifti: OUT/<case>.nii.gz (default); dicom-seg: OUT/<case>.dcm, a DICOM Segmentation "
        "of each DICOM series input (needs pancseg-tf[dicom-seg]); the one output that copies "
        "the patient and study identifiers, as a SEG filed beside its series must",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="probability threshold (default: the run's)"
    )
    p.add_argument(
        "--no-postprocess",
        action="store_true",
        help="keep every connected component (default: the run's choice)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        metavar="N",
        help=(
            "run the ConvLSTM over chunks of N slices, blended (default: chunks of the window "
            "the model was trained on, data.window; one pass for a model without one)"
        ),
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="slices shared by chunks (default N // 4)"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over in-plane shifts and scales (5x the time)",
    )
    _add_model_config_argument(p)
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="load models with Lambda layers or unregistered classes (runs code from the file)",
    )
    p.add_argument(
        "--runner",
        choices=("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner"),
        default=None,
        help="run as an Apache Beam pipeline on this runner (needs pancseg-tf[beam]); inputs "
        "may then be globs and gs:// paths, written cases are skipped, failures go to "
        "OUT/failures.tsv and counts to OUT/summary.json (default: in this process)",
    )
    p.add_argument(
        "--pipeline-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Beam pipeline option, e.g. direct_num_workers=2 or project=my-project "
        "(repeatable; a bare KEY sets a flag); only with --runner",
    )
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="per-case DSC, JI, HD95, ASSD, ... against ground truth; paper-style table, report",
        description=(
            "Pairs predictions with ground truth (by file name, or by case id in a cohort) and "
            "writes REPORT/metrics.csv, summary.json, summary.md, montages and index.html. "
            "Exit status 1 when a case failed (e.g. grids differ), 2 when nothing could run."
        ),
    )
    p.add_argument("pred", help="folder of predicted masks <case>.nii.gz")
    p.add_argument("gt", help="folder of label files, or a cohort (MSD, NIH, CSV manifest)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument(
        "--gt-labels",
        default=None,
        help="label values that are pancreas, e.g. 1,2 (MSD) or 7 (TotalSegmentator), or a "
        "preset (msd, nih, totalsegmentator); default every non-zero value",
    )
    p.add_argument("--images", help="folder of images for the montages (paired by file name)")
    p.add_argument(
        "--prepared",
        metavar="DATA",
        help="a prepared folder (pancseg prepare, the model's preprocessing) holding these "
        "cases: lists those whose pancreas lies partly outside the model's in-plane field, "
        "with the fraction lost (default: not stated)",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="SavedModel for TensorFlow Serving: BASE/<name>/<version>/ (+ warm-up, config)",
        description=(
            "Exports a run's model with the serving contract of serving/CONTRACT.md to the next "
            "free version folder (written under a temporary name, then renamed)."
        ),
    )
    p.add_argument("model", help="a run folder or a .keras model")
    p.add_argument("base", help="TF Serving's model base folder")
    p.add_argument("--name", default="pancseg", help="model name (default pancseg)")
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="slices per chunk (default: the window the model's ConvLSTM was trained on, else 16)",
    )
    p.add_argument("--overlap", type=int, default=None, help="chunk overlap (default chunk // 4)")
    _add_model_config_argument(p)
    p.add_argument("--unsafe", action="store_true", help="load models with Lambda layers")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "query",
        help="segment a volume with a TF Serving model over gRPC (or REST)",
        description=(
            "Reads a NIfTI file or DICOM series, does the host geometry, sends chunks to TF "
            "Serving, blends and writes the mask on the input's own grid: the same bytes "
            "pancseg predict --chunk N writes."
        ),
    )
    p.add_argument("input", help="NIfTI file or DICOM series folder")
    p.add_argument("output", help="mask to write (.nii.gz)")
    p.add_argument("--server", required=True, help="HOST:PORT (gRPC 8500, REST 8501)")
    p.add_argument("--rest", action="store_true", help="use the REST :predict API")
    p.add_argument("--model", default="pancseg", help="served model name (default pancseg)")
    p.add_argument("--version", type=int, default=None, help="model version (default latest)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument(
        "--max-request-mb", type=float, default=4.0, help="largest request, MiB (default 4)"
    )
    _add_volume_flags(p)
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser(
        "demo",
        help="the whole path on a synthetic cohort: synth, prepare, train, predict, evaluate, "
        "export (CPU, minutes)",
        description=(
            "Makes a small synthetic cohort, prepares it, trains both stages, segments held-out "
            "cases, evaluates them (paper-style table and HTML report) and exports a SavedModel. "
            "Offline, on CPU; rerun to resume."
        ),
    )
    p.add_argument("--out", default="pancseg_demo", help="output folder (default pancseg_demo)")
    p.add_argument("--modality", choices=("ct", "mri"), default="ct", help="default ct")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_demo)

    return parser


# === Errors and paths in messages ===

#: Arguments that name where a command writes, in the order a message should name them.
_OUTPUT_ARGS = ("output", "out", "base", "run")


class _ShowInputs(logging.Filter):
    """Rewrites each log record's message with `InputPathDisplay` (the CLI's handler only);
    a warning or an error (a case that failed: a library's message) shows every other path by
    its last component too (`file_names_only`)."""

    def __init__(self, display: InputPathDisplay) -> None:
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.display(record.getMessage())
        if record.levelno >= logging.WARNING:
            record.msg = file_names_only(record.msg)
        record.args = None
        return True


def _os_error_in_chain(err: BaseException | None, errnos: set[int]) -> OSError | None:
    """The first `OSError` with one of ``errnos`` in ``err`` and its cause / context chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in errnos:
            return err
        err = err.__cause__ or err.__context__
    return None


def storage_full_error(err: BaseException | None) -> OSError | None:
    """The `OSError` behind ``err`` that says the output's storage is full, else None.

    Looks at ``err`` itself, then its ``__cause__`` / ``__context__`` chain (a `PancsegError`
    raised while handling an `OSError` keeps it as its context). Full means: no space left on
    the device (``ENOSPC``), the disk quota is exceeded (``EDQUOT``), or a file grew past the
    largest size allowed (``EFBIG``: ``ulimit -f``, or the file system's largest file).
    """
    import errno

    return _os_error_in_chain(err, {errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def access_error(err: BaseException | None) -> OSError | None:
    """The `OSError` behind ``err`` that says a path may not be read or written (permission
    denied, operation not permitted, read-only file system), else None."""
    import errno

    return _os_error_in_chain(err, {errno.EACCES, errno.EPERM, errno.EROFS})


def _storage_full_message(error: OSError, args: argparse.Namespace) -> str:
    """One line for a full disk: which file (or output) and the system's reason."""
    reason = error.strerror or os.strerror(error.errno or 0)
    if error.filename:
        return f"could not write {error.filename}: {reason}"
    outputs = [getattr(args, key) for key in _OUTPUT_ARGS if getattr(args, key, None)]
    return f"could not write into {outputs[0]}: {reason}" if outputs else f"{reason}"


def _configure_logging(debug: bool, display: InputPathDisplay | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pancseg: %(message)s"))
    if display is not None:
        handler.addFilter(_ShowInputs(display))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Runs the ``pancseg`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    display = InputPathDisplay.from_args(args)
    _configure_logging(args.debug, display)

    def show(text: str) -> str:
        # An error names no folder: typed inputs by their last component, any other path too.
        return file_names_only(display(text))

    try:
        return int(args.func(args) or 0)
    except PancsegError as err:
        if args.debug:
            traceback.print_exc()
        print(f"pancseg: error: {one_line(show(str(err)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pancseg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into a line
        if args.debug:
            traceback.print_exc()
        full = storage_full_error(err)
        if full is not None:
            # A full disk is the user's to fix, not a bug: one line, status 2.
            message = one_line(show(_storage_full_message(full, args)))
            print(f"pancseg: error: {message}", file=sys.stderr)
            return 2
        denied = access_error(err)
        if denied is not None:
            # Likewise a path the user may not write (or read): which one, and why.
            reason = denied.strerror or os.strerror(denied.errno or 0)
            where = f"cannot access {denied.filename}" if denied.filename else "cannot access"
            print(f"pancseg: error: {one_line(show(f'{where}: {reason}'))}", file=sys.stderr)
            return 2
        print(internal_error_line(err, show), file=sys.stderr)
        return 1


def internal_error_line(err: BaseException, show=str) -> str:
    """The one line an unexpected exception gets: `error_summary` (its type and the first line
    of its message, cut to `INTERNAL_MESSAGE_CHARS`: a message can hold a whole array, and
    image data must not reach a terminal or a log through it), after ``show`` (the command's
    input paths by their last component)."""
    return (
        f"pancseg: error: internal error: {error_summary(err, show=show)} "
        "(rerun with --debug for the traceback)"
    )


if __name__ == "__main__":
    sys.exit(main())
