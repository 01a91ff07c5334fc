"""What the model `pancseg demo` ships, trained on synthetic phantoms alone, marks in the chest
of a real CT, per training seed.

The scan is NIH Pancreas-CT 0002 from ``../shared/data`` (read in place). Its chest here is the
slices 45 mm and more above the pancreas of its manual label (slices 0-18 of 195, looked at: the
heart, alone above the liver on 0-2 and beside the liver's dome down to about slice 13; the
liver dome from slice 3; the lung bases, the spine and the chest wall). A mark there is not the
heart by itself: where it lies is looked at (the README says what was seen). Per seed,
`pancseg_tf.demo.run_demo` trains the demo as ``pancseg demo --seed S`` does (one held-out
phantom instead of four: the held-out cases are scored, never trained on), then the model
segments the scan twice: with its post-processing (threshold, largest connected component: what
``pancseg predict`` writes) and without it (every voxel the network marks). Recorded per seed:
voxels marked in all and in the chest, the chest's share, the median HU of the chest's marked
voxels, the first and last slice marked, the scan's DSC, and what the run shipped.

A demo folder that exists is resumed, not retrained (as ``pancseg demo`` resumes). Synthetic
training is no evidence on patients: this measures how often the chest (the heart above all, as
bright as the pancreas on this scan) is taken for pancreas, not accuracy.

Usage::

    python benchmarks/demo_real_ct.py --work /tmp/demo_real_ct --seeds 0 1 2 3 \\
        --json benchmarks/results/demo_real_ct.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, provenance  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih_pancreas_ct"
CHEST_MARGIN_MM = 45.0


def chest_slices(volume, label):
    """The axial slices (a boolean per k) whose world z lies 45 mm or more above the label's
    top slice."""
    import numpy as np

    if not np.allclose(volume.affine[2, :2], 0.0):
        raise SystemExit("the scan is not axial: its slices' z depends on more than k")
    z = volume.affine[2, 2] * np.arange(volume.array.shape[2]) + volume.affine[2, 3]
    return z >= z[label.any(axis=(0, 1))].max() + CHEST_MARGIN_MM


def measure(mask, volume, label, chest) -> dict:
    import numpy as np

    from pancseg_tf.evaluation.metrics import dice

    marked = mask > 0
    in_chest = marked[:, :, chest]
    hu = volume.array[:, :, chest][in_chest]
    slices = np.flatnonzero(marked.any(axis=(0, 1)))
    total, there = int(marked.sum()), int(in_chest.sum())
    return {
        "marked_voxels": total,
        "chest_voxels": there,
        "chest_share": round(there / total, 4) if total else 0.0,
        "chest_median_hu": float(np.median(hu)) if hu.size else None,
        "slices": [int(slices.min()), int(slices.max())] if slices.size else None,
        "dsc": round(dice(marked, label), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=pathlib.Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--json", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)

    import nibabel as nib
    import numpy as np

    from pancseg_tf.demo import run_demo
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.io import read_dicom_series

    started_at = provenance()  # the commit the code was loaded from
    series = next((NIH / "Pancreas-CT" / "PANCREAS_0002").glob("*/*"))
    volume = read_dicom_series(series)
    label_path = NIH / "TCIA_pancreas_labels-02-05-2017" / "label0002.nii.gz"
    label = np.asarray(nib.load(label_path).dataobj) > 0
    if label.shape != volume.array.shape:
        raise SystemExit(f"label {label.shape} and scan {volume.array.shape} differ")
    chest = chest_slices(volume, label)
    runs = {}
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        resumed = (out / "run" / "model.keras").exists()
        start = time.perf_counter()
        run_demo(out, heldout_cases=1, seed=seed)
        row = {"resumed": resumed, "demo_seconds": round(time.perf_counter() - start, 1)}
        state = json.loads((out / "run" / "state.json").read_text())
        row["shipped"] = state.get("shipped")
        for name, post in (("shipped_mask", True), ("network_marks", False)):
            mask = Segmenter.from_path(out / "run", postprocess=post).segment(volume).mask
            row[name] = measure(mask, volume, label, chest)
        runs[str(seed)] = row
        print(json.dumps({seed: row}), flush=True)
    report = {
        "what": "the pancseg demo model (synthetic phantoms only) on NIH Pancreas-CT 0002: "
        "voxels it marks in the chest (slices 45 mm and more above the pancreas), per seed",
        "chest_slices": [int(k) for k in np.flatnonzero(chest)],
        "seeds": runs,
        "seeds_with_chest_voxels_shipped": sum(
            r["shipped_mask"]["chest_voxels"] > 0 for r in runs.values()
        ),
        "largest_network_chest_share": max(
            r["network_marks"]["chest_share"] for r in runs.values()
        ),
        "provenance": provenance(args.work / f"seed{args.seeds[0]}" / "run" / "config.yaml"),
        "provenance_at_start": {
            k: started_at[k] for k in ("git_commit", "git_dirty_paths", "date_utc")
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    emit_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
