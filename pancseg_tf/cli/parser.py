"""The ``pancseg`` argparse tree: every subcommand, its flags and their help, nothing else.

Option groups that several commands share are declared in `pancseg_tf.cli.options`; each
subcommand's function lives in its command module. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse

from pancseg_tf._version import __version__
from pancseg_tf.cli.data_commands import cmd_convert, cmd_info, cmd_prepare, cmd_synth
from pancseg_tf.cli.demo_command import cmd_demo
from pancseg_tf.cli.evaluate_command import cmd_evaluate
from pancseg_tf.cli.options import (
    add_cohort_arguments,
    add_config_arguments,
    add_dicom_flags,
    add_model_arguments,
    add_training_arguments,
    add_volume_flags,
)
from pancseg_tf.cli.predict_command import cmd_predict
from pancseg_tf.cli.serving_commands import cmd_export, cmd_query
from pancseg_tf.cli.train_commands import cmd_cv, cmd_train


def build_parser() -> argparse.ArgumentParser:
    """The ``pancseg`` parser; each subcommand sets ``func``, the function that runs it."""
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
    for add in (
        _add_info,
        _add_convert,
        _add_synth,
        _add_prepare,
        _add_train,
        _add_cv,
        _add_predict,
        _add_evaluate,
        _add_export,
        _add_query,
        _add_demo,
    ):
        add(sub)
    return parser


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="shape, spacing, orientation, affine and intensity range of a volume",
        description="Prints a volume's geometry and intensity range; never a patient field.",
    )
    p.add_argument("path", help="a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_volume_flags(p)
    p.set_defaults(func=cmd_info)


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="DICOM series or NIfTI to NIfTI on the input's own grid (HU for CT)",
        description="Writes the volume as NIfTI: same grid, same affine; HU for CT.",
    )
    p.add_argument("input", help="a NIfTI file or a DICOM series folder")
    p.add_argument("output", help="the NIfTI file to write (.nii.gz or .nii)")
    add_volume_flags(p)
    p.set_defaults(func=cmd_convert)


def _add_synth(sub) -> None:
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
    add_cohort_arguments(p)
    p.set_defaults(func=cmd_synth)


def _add_prepare(sub) -> None:
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
    add_config_arguments(p, "YAML config (its preprocess section is used)")
    p.add_argument("--workers", type=int, default=1, help="cases prepared in parallel processes")
    p.add_argument(
        "--skip-bad", action="store_true", help="report and skip cases that cannot be read"
    )
    p.add_argument("--num-shards", type=int, help="prepare one slice of K of the cohort ...")
    p.add_argument("--shard-index", type=int, help="... namely slice I (0 <= I < K)")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
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
    add_config_arguments(p, "YAML config, e.g. training/configs/quick.yaml")
    p.add_argument("--stage", choices=("1", "2", "both"), default="both", help="default both")
    add_training_arguments(
        p,
        strategies=("auto", "none", "mirrored", "multiworker"),
        strategy_help="auto: mirrored on several GPUs, multiworker when TF_CONFIG is set, "
        "else none",
        seed_help="seeds split, weights and data order",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="fixed data order and deterministic ops (slower; for exact resumption)",
    )
    p.set_defaults(func=cmd_train)


def _add_cv(sub) -> None:
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
    add_config_arguments(p, "YAML config or a named one (quick, paper)")
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
    add_training_arguments(
        p,
        strategies=("auto", "none", "mirrored"),
        strategy_help="training strategy, as for pancseg train (one machine)",
        seed_help="seeds the folds, splits and training",
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
    p.set_defaults(func=cmd_cv)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment NIfTI / DICOM volumes or a cohort; masks land on each input's grid",
        description=(
            "Segments each input: the CNN once per slice, the bidirectional ConvLSTM over the "
            "whole slice sequence in one pass (or in chunks), threshold, post-processing, back "
            "to the input's own grid. Writes OUT/<case>.nii.gz (uint8). Exit status 0 when all "
            "cases are written, 1 when some failed, 2 when nothing could run. A full disk "
            "stops the run (status 2 if no mask was written yet); a case is written whole "
            "(mask and probabilities) or not at all. --series and --allow-uneven apply to every "
            "DICOM series folder input, in this process or with --runner; a cohort's cases are "
            "read as the cohort lays them out (--allow-uneven applies to its DICOM series, "
            "--series to none)."
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
        "of each DICOM series input, in this process or with --runner (needs "
        "pancseg-tf[dicom-seg], on Beam's workers too); the one output that copies the patient "
        "and study identifiers, as a SEG filed beside its series must",
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
    add_dicom_flags(p)
    add_model_arguments(p)
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
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub) -> None:
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
        "preset (msd, nih, totalsegmentator); default every non-zero value. A manifest "
        "case with its own label_values cell is read with those",
    )
    p.add_argument("--images", help="folder of images for the montages (paired by file name)")
    p.set_defaults(func=cmd_evaluate)


def _add_export(sub) -> None:
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
    add_model_arguments(p)
    p.set_defaults(func=cmd_export)


def _add_query(sub) -> None:
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
    add_volume_flags(p)
    p.set_defaults(func=cmd_query)


def _add_demo(sub) -> None:
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
    add_cohort_arguments(p)
    p.set_defaults(func=cmd_demo)
