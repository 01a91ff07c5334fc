"""Transfer to a real scan never trained on: two real TotalSegmentator CTs -> NIH Pancreas-CT 0002.

The real cases of ``../shared/data`` (read in place, never copied):

- training cohort, a CSV manifest with per-case label values: TotalSegmentator subject s0009
  (``pancreas.nii.gz``, 1; pancreas near -6 HU, cropped field) and TotalSegmentator's 3 mm
  example (``ct_3mm_labels.nii.gz``, a multi-organ map: pancreas 7, every other value is
  another structure);
- the fixed test case: NIH Pancreas-CT 0002 (the paper's dataset: contrast-enhanced, pancreas
  near 100 HU, manual label), never seen by training, checkpoint choice or any setting.

The commands run, in order (printed and recorded in the JSON)::

    pancseg prepare WORK/manifest.csv WORK/prepared --config CONFIG
    pancseg train WORK/prepared WORK/run --config CONFIG --seed S --set train.validation_fraction=0
    pancseg predict WORK/run/stage1.keras NIH -o WORK/pred_stage1
    pancseg predict WORK/run NIH -o WORK/pred_shipped
    pancseg evaluate WORK/pred_stage1 NIH -o WORK/report_stage1 --gt-labels 1
    pancseg evaluate WORK/pred_shipped NIH -o WORK/report_shipped --gt-labels 1

With two training cases, holding one out for validation would train on one scan, so validation
(the checkpoint and the shipped model) runs on the two training cases themselves
(``train.validation_fraction=0``): the NIH case decides nothing. ``--set`` options go to
prepare and train alike (e.g. augmentation measured by leave-one-out among the training cases,
``benchmarks/results/README.md``).

The JSON holds the per-case DSC, JI and HD95 (and the rest of `pancseg evaluate`'s row) for
stage 1 and the shipped model, what the run chose (``state.json``), the cap the quick grid's
round trip alone puts on the NIH case (its label taken to the model grid and back), and
provenance (`bench_common.provenance`: commit, the run's config.yaml sha256, command,
libraries, machine).

Usage::

    python benchmarks/real_ct_transfer.py --work /tmp/real_ct \\
        --json benchmarks/results/real_ct_transfer.json
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import emit_json, pancseg, provenance  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# case id, image, label, label values: paths relative to ../shared/data.
TRAINING_CASES = (
    ("ts_s0009", "totalsegmentator_s0009/ct.nii.gz", "totalsegmentator_s0009/pancreas.nii.gz", "1"),
    (
        "ts_ct3mm",
        "totalsegmentator_example/ct_3mm.nii.gz",
        "totalsegmentator_example/ct_3mm_labels.nii.gz",
        "totalsegmentator",
    ),
)
TEST_COHORT = "nih_pancreas_ct"  # NIH Pancreas-CT layout: case PANCREAS_0002, label 1
TEST_LABELS = "1"


def write_manifest(path: pathlib.Path, data: pathlib.Path) -> None:
    """The training cohort as a CSV manifest of absolute paths into ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [("case_id", "image", "label", "modality", "label_values")]
    for case_id, image, label, values in TRAINING_CASES:
        rows.append((case_id, str(data / image), str(data / label), "ct", values))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def run(args: list[str], log: list[dict]) -> None:
    """Runs ``pancseg ARGS`` (stops the benchmark if it fails), recording it and its time."""
    start = time.monotonic()
    line = pancseg(*args)
    log.append({"command": line, "seconds": round(time.monotonic() - start, 1)})


def case_rows(report: pathlib.Path) -> dict[str, dict]:
    """Per-case rows of `pancseg evaluate`'s ``metrics.csv``, numbers as floats."""
    rows = {}
    with open(report / "metrics.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            case = row.pop("case")
            rows[case] = {k: _number(v) for k, v in row.items()}
    return rows


def _number(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def round_trip_cap(config_path: pathlib.Path, data: pathlib.Path) -> dict:
    """DSC of the NIH label taken to the config's model grid and back: no model can beat it."""
    import numpy as np

    from pancseg_tf.config import load_config
    from pancseg_tf.evaluation.metrics import dice
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.preprocessing.geometry import plan_geometry
    from pancseg_tf.preprocessing.labels import map_labels

    p = load_config(config_path).preprocess
    (case,) = discover_cohort(data / TEST_COHORT)
    image = case.load_image()
    label = map_labels(np.asarray(case.load_label().array), (int(TEST_LABELS),))
    plan = plan_geometry(
        image, spacing_mm=p.spacing_mm, slice_spacing_mm=p.slice_spacing_mm, size=tuple(p.size)
    )
    back = plan.inverse(plan.forward(label, is_label=True).astype(np.float32)) >= 0.5
    return {"case": case.case_id, "dsc": round(float(dice(back, label)), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="working folder (prepared data, run, masks)")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--config", default="quick", help="config name or file (default quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--data", default=str(SHARED_DATA), help="the shared real data folder")
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data).resolve()
    work = pathlib.Path(args.work)
    sets = [item for kv in args.set for item in ("--set", kv)]
    test = str(data / TEST_COHORT)
    commands: list[dict] = []

    # The commit the code was loaded from: a commit landing during the run would otherwise be
    # what the final provenance names.
    started_at = provenance()
    write_manifest(work / "manifest.csv", data)
    prepared, run_dir = work / "prepared", work / "run"
    run(
        [
            "prepare",
            str(work / "manifest.csv"),
            str(prepared),
            "--config",
            args.config,
            *sets,
        ],
        commands,
    )
    run(
        [
            "train",
            str(prepared),
            str(run_dir),
            "--config",
            args.config,
            "--seed",
            str(args.seed),
            "--set",
            "train.validation_fraction=0",
            *sets,
        ],
        commands,
    )
    models = {"stage1": run_dir / "stage1.keras", "shipped": run_dir}
    results = {}
    for name, model in models.items():
        pred, report = work / f"pred_{name}", work / f"report_{name}"
        run(["predict", str(model), test, "-o", str(pred)], commands)
        run(
            ["evaluate", str(pred), test, "-o", str(report), "--gt-labels", TEST_LABELS],
            commands,
        )
        results[name] = case_rows(report)

    state = json.loads((run_dir / "state.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    index = json.loads((prepared / "index.json").read_text())
    result = {
        "what": "quick config trained on 2 real TotalSegmentator CTs (manifest cohort), "
        "scored on NIH Pancreas-CT 0002 (never trained on, decides nothing)",
        "training_cases": {
            e["case_id"]: {
                "pancreas_voxels_model_grid": e["pancreas_voxels"],
                "slices": e["num_slices"],
                "label_values": e.get("label_values"),
            }
            for e in index["cases"]
        },
        "splits": splits,
        "shipped": state.get("shipped"),
        "state": state,
        "test": results,
        "round_trip_cap": round_trip_cap(run_dir / "config.yaml", data),
        "commands": commands,
        "provenance": provenance(config_path=run_dir / "config.yaml"),
        "provenance_at_start": {
            k: started_at[k] for k in ("git_commit", "git_dirty_paths", "date_utc")
        },
    }
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
