"""The paper's stage ablation, measured: stage 1 (CNN alone) vs stage 2 (CNN + bidirectional
ConvLSTM) of one run, on held-out cases of a synthetic cohort.

Both models segment every held-out case through `pancseg_tf.inference.Segmenter` (what
``pancseg predict`` runs; masks on each case's own grid) and are scored with
`pancseg_tf.evaluation.metrics`: DSC on the whole volume, DSC on the cohort's ambiguous slices
alone (``ambiguous_slices.json``: slices whose pancreas cannot be told from a touching look-alike
without its neighbours), and slice consistency (0 = no more flicker between slices than the
anatomy has).

Usage:
    python benchmarks/stage_ablation.py RUN COHORT [--cases id,id] [--json OUT.json]

``COHORT`` is a synthetic cohort whose cases the run never trained on (a second ``pancseg
synth`` with another seed), or the run's own cohort with ``--validation`` to use the run's
validation split.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np


def ambiguous_dice(pred: np.ndarray, gt: np.ndarray, slices: list[int]) -> float:
    """DSC over the given axial slices only (pooled voxels), 1.0 when both are empty there."""
    from pancseg_tf.evaluation.metrics import dice

    if not slices:
        return float("nan")
    return float(dice(pred[:, :, slices], gt[:, :, slices]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("cohort", type=pathlib.Path)
    parser.add_argument("--validation", action="store_true", help="use the run's validation cases")
    parser.add_argument("--cases", help="comma-separated case ids (default: all)")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    args = parser.parse_args(argv)

    from pancseg_tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from pancseg_tf.evaluation.metrics import evaluate_case, summarize
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.io.cohorts import ambiguous_slices, discover_cohort
    from pancseg_tf.preprocessing.labels import map_labels

    cases = discover_cohort(args.cohort)
    wanted = None
    if args.validation:
        wanted = set(json.loads((args.run / "splits.json").read_text())["validation"])
    if args.cases:
        wanted = set(args.cases.split(","))
    if wanted is not None:
        cases = [c for c in cases if c.case_id in wanted]
    ambiguous = ambiguous_slices(args.cohort)
    models = {"stage1": args.run / "stage1.keras", "stage2": args.run / "model.keras"}
    results: dict[str, dict] = {}
    for name, path in models.items():
        segmenter = Segmenter.from_path(path)
        rows = []
        start = time.monotonic()
        for case in cases:
            volume = case.load_image()
            gt = map_labels(case.load_label().array, None)
            mask = segmenter.segment(volume).mask
            row = evaluate_case(mask, gt, volume.spacing)
            row["case"] = case.case_id
            row["dsc_ambiguous"] = ambiguous_dice(mask, gt, ambiguous.get(case.case_id, []))
            rows.append(row)
        summary = summarize(rows, keys=("dsc", "ji", "dsc_ambiguous", "slice_consistency"))
        results[name] = {
            "summary": summary,
            "cases": rows,
            "seconds": round(time.monotonic() - start, 1),
        }
        print(
            f"{name}: DSC {summary['dsc']['mean']:.4f}  ambiguous-slice DSC "
            f"{summary['dsc_ambiguous']['mean']:.4f}  slice consistency "
            f"{summary['slice_consistency']['mean']:.4f}  ({len(rows)} cases)"
        )
    report = {
        "run": str(args.run),
        "cohort": str(args.cohort),
        "cases": [c.case_id for c in cases],
        "log": (args.run / "log.csv").read_text(),
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
