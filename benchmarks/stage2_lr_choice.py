"""Development check: quick's stage-2 learning rate (0.0005) against half and twice it, on
validation cases (`benchmarks/PROTOCOL.md`, amendment 2026-12-06 (d)).

The cohorts, stage-1 runs and scoring are `warmup_choice.py`'s (amendment (c)), in the same work
folder: the ``quick`` arm is its ``warmup`` run folder (quick as committed), and ``half`` and
``double`` are copies of the stage-1 folder that train stage 2 with
``train.stage2_learning_rate`` 0.00025 and 0.001. Each arm's ``stage2.keras`` (its best stage-2
epoch on validation) is scored on the run's validation cases the way the trainer scores
validation. Only validation cases are read: this decides a default, it reports no accuracy.

Usage::

    python benchmarks/stage2_lr_choice.py --work /tmp/warmup --json /tmp/warmup/stage2_lr.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, provenance  # noqa: E402
from paired_stats import paired_comparison  # noqa: E402
from warmup_choice import COHORTS, score_arms, train_arms  # noqa: E402

from pancseg_tf.config import load_config  # noqa: E402

#: arm -> (run folder suffix, stage-2 learning rate); ``quick`` is the committed value.
ARMS = {
    "quick": ("warmup", 0.0005),
    "half": ("lr_half", 0.00025),
    "double": ("lr_double", 0.001),
}


def run_cohort(work: pathlib.Path, modality: str) -> dict:
    arms = {
        arm: (folder, [] if arm == "quick" else [f"train.stage2_learning_rate={rate}"])
        for arm, (folder, rate) in ARMS.items()
    }
    data, base, seconds = train_arms(work, modality, arms)
    models = {}
    for arm, (folder, rate) in ARMS.items():
        run = work / f"{modality}_{folder}"
        trained = load_config(run / "config.yaml").train.stage2_learning_rate
        if trained != rate:  # a stale or foreign run folder would answer another question
            raise SystemExit(f"{run} trained stage 2 at {trained}, arm {arm} is {rate}")
        models[arm] = run / "stage2.keras"
    result, _ = score_arms(data, base, modality, models)
    return {**result, "stage2_seconds": seconds}


def decide(results: dict[str, dict]) -> dict:
    """The amendment's rule: an alternative replaces ``quick`` only if its paired interval over
    all validation cases lies above 0 and its mean beats ``quick``'s on every cohort."""
    comparisons, winners = {}, {}
    for arm in ARMS:
        if arm == "quick":
            continue
        alt, cur = [], []
        for result in results.values():
            for case in result["validation_cases"]:
                alt.append(result["per_case_dsc"][arm][case])
                cur.append(result["per_case_dsc"]["quick"][case])
        comparison = paired_comparison(alt, cur)
        comparisons[f"{arm} - quick"] = comparison
        better_everywhere = all(
            r["mean_dsc"][arm] > r["mean_dsc"]["quick"] for r in results.values()
        )
        if comparison["ci_low"] > 0 and better_everywhere:
            winners[arm] = comparison["mean_difference"]
    choice = max(winners, key=winners.get) if winners else "quick"
    return {
        "comparisons": comparisons,
        "decision": f"train.stage2_learning_rate {ARMS[choice][1]}"
        + (" stays (no difference)" if choice == "quick" else f" ({choice}): recipe v3"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--json", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {modality: run_cohort(args.work, modality) for modality in COHORTS}
    report = {
        "question": "quick's stage-2 learning rate (0.0005, chosen on held-out phantoms before "
        "the protocol) against half (0.00025) and twice (0.001) it, on validation cases",
        "rule": "an alternative replaces 0.0005 only if its paired bootstrap 95 % interval "
        "over the 6 validation cases lies above 0 and its mean wins on both cohorts "
        "(PROTOCOL.md amendment 2026-12-06 (d))",
        "quick_arm": "warmup_choice.py's warmup run folder: quick as committed, trained at "
        "the commit benchmarks/results/warmup_choice.json names",
        "cohorts": results,
        **decide(results),
        "provenance": provenance(args.work / "ct_lr_half" / "config.yaml"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
