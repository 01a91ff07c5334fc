"""Prediction: one pass against naive overlapping windows, DSC against chunk length, and peak
memory of ``pancseg predict`` on a 512 x 512 x 600 CT, measured from outside the process.

Usage:
    python benchmarks/predict_bench.py RUN COHORT [--cases N] [--memory] [--json OUT]

``RUN`` is a trained run folder (a contextual ``model.keras``), ``COHORT`` held-out labelled
cases (e.g. ``pancseg synth heldout --cases 4 --seed 1001``). All numbers come from one run, side
by side, since this machine is shared and absolute times do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np


def naive_windows(model, image: np.ndarray, window: int) -> np.ndarray:
    """Every window position (stride 1) through the whole model, the CNN re-run each time;
    a slice's probability is the mean over the windows that contain it."""
    slices = np.moveaxis(image, 2, 0)[..., None]
    total = np.zeros(slices.shape[:3], np.float32)
    count = np.zeros(slices.shape[0], np.float32)
    for start in range(0, max(1, slices.shape[0] - window + 1)):
        chunk = slices[start : start + window][None]
        prob = np.asarray(model(chunk, training=False)["prob"])[0, ..., 0]
        total[start : start + window] += prob
        count[start : start + window] += 1
    return np.moveaxis(total / count[:, None, None], 0, 2)


def peak_rss_of_predict(run: pathlib.Path, work: pathlib.Path) -> dict:
    """`pancseg predict`'s peak RSS on a synthetic 512 x 512 x 600 CT, from outside.

    The phantom is written by one child process and predicted by another; ``os.wait4`` gives
    the second child's own peak (``RUSAGE_CHILDREN`` would mix in the first). Run this before
    the calling process grows, so nothing of it is counted.
    """
    path = work / "big_ct.nii.gz"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import numpy as np, nibabel as nib; from pancseg_tf.synthetic import make_phantom; "
            "img, _, _ = make_phantom(np.random.default_rng(7), shape=(512, 512, 600), "
            "spacing=(0.8, 0.8, 1.0)); "
            f"nib.save(nib.Nifti1Image(img, np.diag([0.8, 0.8, 1.0, 1.0])), {str(path)!r})",
        ],
        check=True,
    )
    start = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pancseg_tf.cli",
            "predict",
            str(run),
            str(path),
            "-o",
            str(work / "out"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if status != 0:
        raise RuntimeError(proc.stderr.read().decode())
    return {
        "predict_peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
        "seconds": round(seconds, 1),
        "shape": [512, 512, 600],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("cohort", type=pathlib.Path)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also the 512x512x600 RSS test")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    memory = None
    if args.memory:  # first, while this process is small
        with tempfile.TemporaryDirectory() as tmp:
            memory = peak_rss_of_predict(args.run, pathlib.Path(tmp))

    from pancseg_tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from pancseg_tf.evaluation.metrics import dice
    from pancseg_tf.inference import Segmenter, finish_segmentation
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.preprocessing.labels import map_labels

    base = Segmenter.from_path(args.run)
    import yaml

    window = int(yaml.safe_load((args.run / "config.yaml").read_text())["data"]["window"])
    chunks = (None, 8, 16, 32)
    rows = []
    for case in discover_cohort(args.cohort)[: args.cases]:
        volume = case.load_image()
        gt = map_labels(case.load_label().array, None)
        plan = base.plan(volume)
        image = base.normalize(plan.forward(volume.array), volume)
        row = {"case": case.case_id, "slices": int(image.shape[2])}
        for chunk in chunks:
            seg = Segmenter(base.model, base.preprocess, chunk=chunk)
            start = time.monotonic()
            prob = seg._predict_once(image)
            row[f"seconds_chunk_{chunk or 'one_pass'}"] = time.monotonic() - start
            mask = finish_segmentation(plan, prob, threshold=0.5, postprocess=True).mask
            row[f"dsc_chunk_{chunk or 'one_pass'}"] = float(dice(mask, gt))
        start = time.monotonic()
        prob = naive_windows(base.model, image, window)
        row["seconds_naive_windows"] = time.monotonic() - start
        mask = finish_segmentation(plan, prob, threshold=0.5, postprocess=True).mask
        row["dsc_naive_windows"] = float(dice(mask, gt))
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key):
        return float(np.mean([r[key] for r in rows]))

    result = {
        "window": window,
        "cases": rows,
        "one_pass_speedup": mean("seconds_naive_windows") / mean("seconds_chunk_one_pass"),
        "one_pass_dsc_delta": mean("dsc_chunk_one_pass") - mean("dsc_naive_windows"),
        "dsc_by_chunk": {
            str(c or "one_pass"): mean(f"dsc_chunk_{c or 'one_pass'}") for c in chunks
        },
    }
    if memory is not None:
        result["memory"] = memory
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
