"""Development check: does stage 2's frozen-CNN warm-up help, against the paper's end-to-end
stage 2 from the first step? (`benchmarks/PROTOCOL.md`, amendment 2026-12-06 (c).)

Per development cohort (synthetic CT seed 11, synthetic MRI seed 12, 16 cases each, the quick
config, ``--seed 0``): stage 1 is trained once; two copies of that run folder then train stage 2,
one as the recipe has it (``train.freeze_cnn_epochs`` of the config, the ``warmup`` arm) and one
with ``train.freeze_cnn_epochs=0`` (``end_to_end``), same splits, seeds and stage-1 CNN. Each
arm's ``stage2.keras`` (its best stage-2 epoch on validation, as the trainer keeps it) and the
shared ``stage1.keras`` are scored on the run's validation cases the way the trainer scores
validation (`WholeVolumeValidation`). Only validation cases are read: this decides a default,
it reports no accuracy.

Usage::

    python benchmarks/warmup_choice.py --work /tmp/warmup --json /tmp/warmup/warmup_choice.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, pancseg, provenance  # noqa: E402

from pancseg_tf.config import apply_overrides, config_from_dict, save_config  # noqa: E402

COHORTS = {"ct": {"seed": 11, "sets": []}, "mri": {"seed": 12, "sets": ["preprocess.modality=mri"]}}
CASES = 16


def sets(values: list[str]) -> list[str]:
    return [item for value in values for item in ("--set", value)]


def score(model_path: pathlib.Path, data: pathlib.Path, cases: list[str]) -> dict[str, float]:
    from pancseg_tf.config import load_config
    from pancseg_tf.inference import load_model
    from pancseg_tf.training.callbacks import WholeVolumeValidation

    cfg = load_config(model_path.parent / "config.yaml")
    validation = WholeVolumeValidation(
        data,
        cases,
        threshold=cfg.postprocess.threshold,
        largest_component=cfg.postprocess.largest_component,
    )
    return validation.scores(load_model(model_path))


def stage1_run(work: pathlib.Path, modality: str) -> tuple[pathlib.Path, pathlib.Path]:
    """The cohort's prepared data and its stage-1 run folder (made once, then reused)."""
    spec = COHORTS[modality]
    cohort, data = work / f"{modality}_dev", work / f"{modality}_data"
    base = work / f"{modality}_stage1"
    extra = ["--modality", "mri"] if modality == "mri" else []
    if not cohort.exists():
        pancseg("synth", str(cohort), "--cases", str(CASES), "--seed", str(spec["seed"]), *extra)
    if not (data / "index.json").exists():
        pancseg(
            "prepare",
            str(cohort),
            str(data),
            "--config",
            "quick",
            *sets(spec["sets"]),
            "--workers",
            "1",
        )
    if not (base / "stage1.keras").exists():
        pancseg(
            "train",
            str(data),
            str(base),
            "--config",
            "quick",
            "--stage",
            "1",
            "--seed",
            "0",
            *sets(spec["sets"]),
        )
    return data, base


def stage2_arm(
    data: pathlib.Path, base: pathlib.Path, run: pathlib.Path, modality: str, overrides: list[str]
) -> float | None:
    """Trains stage 2 in ``run``, a copy of the stage-1 folder ``base`` with ``overrides`` in
    its config; returns its seconds, None where ``run`` already holds its ``stage2.keras``."""
    if (run / "stage2.keras").exists():
        return None
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run)
    if overrides:
        # The run folder holds its config: the arm's setting goes in it before stage 2,
        # parsed and checked as `--set` parses it, the run's provenance kept.
        path = run / "config.yaml"
        saved = yaml.safe_load(path.read_text())
        config = apply_overrides(config_from_dict(saved), overrides)
        save_config(config, path, extra=saved.get("provenance"))
    start = time.perf_counter()
    pancseg(
        "train",
        str(data),
        str(run),
        "--config",
        "quick",
        "--stage",
        "2",
        "--seed",
        "0",
        *sets(COHORTS[modality]["sets"] + overrides),
    )
    return round(time.perf_counter() - start, 1)


def cohort_name(modality: str) -> str:
    """The command that made the development cohort."""
    suffix = " --modality mri" if modality == "mri" else ""
    return f"pancseg synth --cases {CASES} --seed {COHORTS[modality]['seed']}{suffix}"


def train_arms(
    work: pathlib.Path, modality: str, arms: dict[str, tuple[str, list[str]]]
) -> tuple[pathlib.Path, pathlib.Path, dict[str, float]]:
    """Stage 1 once (`stage1_run`), then each arm's stage 2 (`stage2_arm`) in
    ``WORK/<modality>_<folder>`` with its overrides; ``arms`` maps arm -> (folder, overrides).
    Returns the prepared data, the stage-1 folder and the seconds of the arms trained now."""
    data, base = stage1_run(work, modality)
    seconds = {}
    for arm, (folder, overrides) in arms.items():
        spent = stage2_arm(data, base, work / f"{modality}_{folder}", modality, overrides)
        if spent is not None:
            seconds[arm] = spent
    return data, base, seconds


def score_arms(
    data: pathlib.Path, base: pathlib.Path, modality: str, models: dict[str, pathlib.Path]
) -> tuple[dict, dict[str, float]]:
    """Each model scored on the stage-1 run's validation cases: the cohort's result (its
    command, the cases, per-case and rounded mean DSC) and the unrounded means."""
    cases = list(json.loads((base / "splits.json").read_text())["validation"])
    scores = {arm: score(path, data, cases) for arm, path in models.items()}
    means = {arm: sum(v.values()) / len(v) for arm, v in scores.items()}
    result = {
        "cohort": cohort_name(modality),
        "validation_cases": cases,
        "per_case_dsc": scores,
        "mean_dsc": {arm: round(value, 4) for arm, value in means.items()},
    }
    return result, means


def run_cohort(work: pathlib.Path, modality: str) -> dict:
    arms = {"warmup": [], "end_to_end": ["train.freeze_cnn_epochs=0"]}
    data, base, seconds = train_arms(
        work, modality, {arm: (arm, overrides) for arm, overrides in arms.items()}
    )
    models = {"stage1": base / "stage1.keras"}
    models.update({arm: work / f"{modality}_{arm}" / "stage2.keras" for arm in arms})
    result, means = score_arms(data, base, modality, models)
    return {
        **result,
        "warmup_better": means["warmup"] > means["end_to_end"],
        "stage2_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--json", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {modality: run_cohort(args.work, modality) for modality in COHORTS}
    keep = all(result["warmup_better"] for result in results.values())
    report = {
        "question": "stage 2's frozen-CNN warm-up (quick: freeze_cnn_epochs 3) against "
        "end to end from the first step (freeze_cnn_epochs 0), on validation cases",
        "rule": "the warm-up stays only if its mean validation DSC beats end to end on both "
        "cohorts (PROTOCOL.md amendment 2026-12-06 (c))",
        "cohorts": results,
        "decision": "keep the warm-up" if keep else "end to end (freeze_cnn_epochs 0)",
        "provenance": provenance(args.work / "ct_warmup" / "config.yaml"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
