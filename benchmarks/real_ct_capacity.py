"""Capacity on a real scan: the quick config trained on NIH Pancreas-CT 0002 alone, scored on it.

The recipe of the CI test ``test_capacity_quick_config_fits_one_real_nih_scan`` in
`tests/test_real_ct.py` (which calls `capacity_run` here, so the two cannot drift apart),
recorded per seed. It is the training scan: this says that the geometry, the HU window, the
crops and the labels line up on a real scan (a network whose data is misaligned cannot learn
even the one case it sees), nothing about accuracy. NIH 0002 is read in place from
``../shared/data``. The commands, per seed::

    pancseg prepare NIH WORK/prepared --config quick                      (once)
    pancseg train WORK/prepared WORK/seedS/run --config quick --seed S RECIPE
    pancseg predict WORK/seedS/run/stage1.keras NIH -o WORK/seedS/pred_stage1
    pancseg predict WORK/seedS/run NIH -o WORK/seedS/pred_shipped
    pancseg evaluate WORK/seedS/pred_stage1 NIH -o WORK/seedS/report_stage1 --gt-labels 1
    pancseg evaluate WORK/seedS/pred_shipped NIH -o WORK/seedS/report_shipped --gt-labels 1

Recorded per seed: `pancseg evaluate`'s DSC for stage 1 and the shipped model, the run's own
validation DSC of each (``state.json``: the same computation, which must read the same), what
the run shipped; once: the prepared plane of the case. CPU training is not bit-reproducible:
a seed names a run, not a result.

Usage::

    python benchmarks/real_ct_capacity.py --work /tmp/capacity --seeds 0 1 2 \\
        --json benchmarks/results/real_ct_capacity.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import emit_json, pancseg, provenance  # noqa: E402
from real_ct_transfer import SHARED_DATA, TEST_COHORT, case_rows  # noqa: E402

CASE = "PANCREAS_0002"
#: The training recipe: the quick config's own stage 1 (8 epochs of 40 steps: 320) and one
#: stage-2 epoch, no augmentation, and no held-out case (one case: validation runs on it).
#: With 24 steps an epoch (192) seed 1 stopped at 0.76
#: (`results/archive/real_ct_capacity_192_steps.json`).
RECIPE = (
    "--config", "quick",
    "--set", "train.validation_fraction=0",
    "--set", "train.stage1_epochs=8", "--set", "train.stage2_epochs=1",
    "--set", "data.augment=false",
)  # fmt: skip


def capacity_run(nih_root: pathlib.Path, work: pathlib.Path, seed: int) -> dict:
    """Prepares NIH 0002 into ``work/prepared`` (once), trains ``work/seed{seed}/run`` with
    `RECIPE` and scores stage 1 and the shipped model on the scan's own grid.

    Returns:
        ``{"seed", "commands", "entry", "splits", "shipped", "dsc": {"stage1", "shipped"},
        "validation_dsc": {"stage1", "shipped"}}``; ``entry`` is the case's prepared index
        entry (its plane's ``size``, ``body_box``, ``label_outside_field_voxels``).

    Raises:
        RuntimeError: a command failed (with the end of its stderr).
    """
    nih, data, out = str(nih_root), work / "prepared", work / f"seed{seed}"
    commands = []
    if not (data / "index.json").is_file():
        commands.append(pancseg("prepare", nih, str(data), "--config", "quick", quiet=True))
    run = out / "run"
    commands.append(pancseg("train", str(data), str(run), "--seed", str(seed), *RECIPE, quiet=True))
    dsc = {}
    for name, model in (("stage1", run / "stage1.keras"), ("shipped", run)):
        pred, report = out / f"pred_{name}", out / f"report_{name}"
        commands.append(pancseg("predict", str(model), nih, "-o", str(pred), quiet=True))
        commands.append(
            pancseg("evaluate", str(pred), nih, "-o", str(report), "--gt-labels", "1", quiet=True)
        )
        summary = json.loads((report / "summary.json").read_text())
        if summary["num_cases"]["evaluated"] != 1 or summary["failed"]:
            raise RuntimeError(f"pancseg evaluate did not score {CASE}: {summary['failed']}")
        dsc[name] = case_rows(report)[CASE]["dsc"]
    state = json.loads((run / "state.json").read_text())
    (entry,) = json.loads((data / "index.json").read_text())["cases"]
    return {
        "seed": seed,
        "commands": commands,
        "entry": {k: entry[k] for k in ("size", "body_box", "label_outside_field_voxels")},
        "splits": json.loads((run / "splits.json").read_text()),
        "shipped": state["shipped"],
        "dsc": dsc,
        "validation_dsc": {
            "stage1": state["stage1_cases"][CASE],
            "shipped": state[f"{state['shipped']}_cases"][CASE],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--data", type=pathlib.Path, default=SHARED_DATA)
    args = parser.parse_args(argv)

    started_at = provenance()  # the commit the code was loaded from
    runs = []
    for seed in args.seeds:
        runs.append(capacity_run(args.data.resolve() / TEST_COHORT, args.work, seed))
        print(json.dumps({k: runs[-1][k] for k in ("seed", "dsc", "validation_dsc")}), flush=True)
    report = {
        "what": "the quick config trained on NIH Pancreas-CT 0002 alone (the CI capacity "
        "test's recipe), scored on that same scan: capacity, not accuracy",
        "recipe": list(RECIPE),
        "runs": runs,
        "min_dsc": {name: min(r["dsc"][name] for r in runs) for name in ("stage1", "shipped")},
        "max_validation_minus_predict": max(
            abs(r["validation_dsc"][n] - r["dsc"][n]) for r in runs for n in ("stage1", "shipped")
        ),
        "provenance": provenance(args.work / f"seed{args.seeds[0]}" / "run" / "config.yaml"),
        "provenance_at_start": {
            k: started_at[k] for k in ("git_commit", "git_dirty_paths", "date_utc")
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
