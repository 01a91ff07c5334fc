"""Option groups several ``pancseg`` commands share: each declared once, and read once.

- `add_dicom_flags` / `dicom_options`: which DICOM series to read and whether one with a gap
  may be read (predict, and through `add_volume_flags` info, convert, query);
- `add_volume_flags` / `volume_options`: how to read one volume (info, convert, query): the
  DICOM flags and ``--modality``;
- `add_config_arguments` / `config_from_args`: a training config and its overrides
  (prepare, train, cv);
- `add_model_arguments`: how to load a trained model (predict, export);
- `add_training_arguments`: the seed and the distribution strategy (train, cv);
- `add_cohort_arguments`: a synthetic cohort's modality and seed (synth, demo).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import argparse
from typing import Any

MODALITIES = ("ct", "mri")


def add_dicom_flags(p: argparse.ArgumentParser) -> None:
    """``--series`` and ``--allow-uneven`` (read by `dicom_options`): how a DICOM series folder
    is read, for every such input of the command; a NIfTI file ignores both."""
    p.add_argument(
        "--series",
        type=int,
        default=None,
        metavar="NUMBER",
        help="the DICOM SeriesNumber to read from each DICOM series folder input (default: the "
        "series with most slices, when a folder holds several); a folder without it fails; "
        "NIfTI inputs ignore it",
    )
    p.add_argument(
        "--allow-uneven",
        action="store_true",
        help="read a DICOM series with a missing slice or uneven spacing, at its mean spacing "
        "(warned), instead of failing",
    )


def dicom_options(args: argparse.Namespace) -> dict[str, Any]:
    """`add_dicom_flags`'s flags as the ``series`` / ``allow_uneven`` keyword arguments of
    `pancseg_tf.io.read_volume` and of `pancseg_tf.predict_io`'s readers."""
    return {"series": args.series, "allow_uneven": args.allow_uneven}


def add_volume_flags(p: argparse.ArgumentParser) -> None:
    """`add_dicom_flags` and ``--modality`` (read by `volume_options`)."""
    add_dicom_flags(p)
    p.add_argument(
        "--modality",
        choices=MODALITIES,
        default=None,
        help="modality of a NIfTI input (DICOM says its own; default ct)",
    )


def volume_options(args: argparse.Namespace) -> dict[str, Any]:
    """`add_volume_flags`'s flags as keyword arguments of `pancseg_tf.io.read_volume`."""
    return {"modality": args.modality, **dicom_options(args)}


def add_config_arguments(p: argparse.ArgumentParser, config_help: str) -> None:
    """``--config`` and ``--set`` (read by `config_from_args`)."""
    p.add_argument("--config", help=config_help)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )


def config_from_args(args: argparse.Namespace):
    """The `Config` named by ``--config`` (default the package's), ``--set`` overrides applied.

    Raises:
        PancsegError: a config that cannot be read, or an override that does not apply.
    """
    from pancseg_tf.config import apply_overrides, load_config

    cfg = load_config(getattr(args, "config", None))
    return apply_overrides(cfg, getattr(args, "set", None) or [])


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--config`` (read by `pancseg_tf.model_card`) and ``--unsafe``, for a command that
    loads a model."""
    p.add_argument(
        "--config",
        help="the config a .keras file made elsewhere was trained with (a model pancseg wrote "
        "carries its own: this overrides it)",
    )
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="load models with Lambda layers or unregistered classes (runs code from the file)",
    )


def add_training_arguments(
    p: argparse.ArgumentParser, *, strategies: tuple[str, ...], strategy_help: str, seed_help: str
) -> None:
    """``--seed`` and ``--strategy`` (default auto) for a command that trains."""
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--strategy", choices=strategies, default="auto", help=strategy_help)


def add_cohort_arguments(p: argparse.ArgumentParser) -> None:
    """``--modality`` (default ct) and ``--seed`` (default 0) of a synthetic cohort."""
    p.add_argument("--modality", choices=MODALITIES, default="ct", help="default ct")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
