"""Prediction: one pass against naive overlapping windows, DSC against chunk length, and peak
memory and wall time of ``pancseg predict`` on large synthetic CTs, measured from outside the
process.

Usage:
    python benchmarks/predict_bench.py RUN COHORT [--cases N] [--memory] [--json OUT]

``RUN`` is a trained run folder (a contextual ``model.keras``), ``COHORT`` held-out labelled
cases (e.g. ``pancseg synth heldout --cases 4 --seed 1001``). All numbers come from one run, side
by side, since this machine is shared and absolute times do not carry over. ``benchmarks/run.py``
uses `compare_one_pass` (part 2), `write_phantom` and `predict_from_outside` (parts 5 and 6).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Chunk lengths compared with the one pass (None) in `compare_one_pass`.
CHUNKS = (None, 8, 16, 32)

# A process that starts `pancseg predict` and reports the child's own peak RSS. It imports the
# standard library only and runs with ``-S``: on Linux a child's ru_maxrss starts from the
# high-water mark of the process it was spawned from (exec keeps the larger of the two), so
# spawning from a benchmark that holds TensorFlow and models would count the benchmark's memory.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
start = time.monotonic()
with open(sys.argv[1], "wb") as err:
    child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"exit": child.returncode, "seconds": time.monotonic() - start,
                  "maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

# `pancseg predict`'s per-case line: "[1/1] big_ct: 12345 voxels (6.2 s)" (read to written).
_CASE_LINE = re.compile(r"\[\d+/\d+\] \S+: \d+ voxels \(([0-9.]+) s\)")


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


def write_phantom(
    path: pathlib.Path,
    shape: Sequence[int],
    spacing: Sequence[float],
    seed: int = 7,
) -> pathlib.Path:
    """Writes a synthetic CT (`pancseg_tf.synthetic.make_phantom`, int16 HU) as NIfTI, once.

    Runs in a child process, so the caller does not grow by the volume; an existing file is
    kept (the phantom is a function of its arguments).
    """
    path = pathlib.Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".partial-" + path.name)
    code = (
        "import numpy as np, nibabel as nib; from pancseg_tf.synthetic import make_phantom; "
        f"img, _, _ = make_phantom(np.random.default_rng({int(seed)}), "
        f"shape={tuple(int(s) for s in shape)}, spacing={tuple(float(s) for s in spacing)}); "
        f"affine = np.diag([*{[float(s) for s in spacing]}, 1.0]); "
        f"nib.save(nib.Nifti1Image(img, affine), {str(partial)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    partial.rename(path)
    return path


def predict_from_outside(
    run: pathlib.Path,
    volume: pathlib.Path,
    out: pathlib.Path,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs ``pancseg predict RUN VOLUME -o OUT`` and measures it from outside the process.

    A small launcher process (`_LAUNCHER`) starts the command and reads its rusage with
    ``os.wait4``: the peak resident memory is the command's own.

    Returns:
        ``{"peak_rss_gib", "process_seconds", "process_cpu_seconds", "case_seconds"}``: the
        whole process (Python and TensorFlow start-up, model loading included; wall clock and
        CPU seconds of all its threads) and ``pancseg predict``'s own per-case wall time from
        reading the volume to writing the mask (None if its log line is missing).

    Raises:
        RuntimeError: the command failed (with the end of its stderr).
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stderr_path = out / "predict.stderr"
    command = [sys.executable, "-m", "pancseg_tf.cli", "predict", str(run), str(volume)]
    command += ["-o", str(out), *extra]
    launched = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, str(stderr_path), *command],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(launched.stdout.strip().splitlines()[-1])
    stderr = stderr_path.read_text(errors="replace")
    if report["exit"] != 0:
        raise RuntimeError(f"pancseg predict exited {report['exit']}: {stderr[-2000:]}")
    match = _CASE_LINE.search(stderr)
    return {
        "peak_rss_gib": round(report["maxrss_kib"] / 2**20, 3),
        "process_seconds": round(report["seconds"], 2),
        "process_cpu_seconds": round(report["cpu_s"], 2),
        "case_seconds": float(match.group(1)) if match else None,
    }


def step_split(run: pathlib.Path, volume: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """Where ``pancseg predict``'s time goes for one volume, step by step, in this process.

    The steps are the ones `pancseg_tf.cli.predict_command` runs, called one by one on the
    same objects: read the file, preprocess (plan, resample to the model grid, quantise), the
    network (`Segmenter.predict_intensities`), finish (resample the probabilities back to the
    input's grid, threshold, largest component) and write the mask. One warm-up volume first
    (graph tracing is a first-call cost, not a per-volume one), then the best of two rounds.

    Returns:
        ``{"seconds": {step: wall s}, "cpu_seconds": {step: CPU s}, "total_seconds",
        "shares": {step: fraction of the total wall time}, "model_grid_shape", "tiles",
        "chunk", "chunk_overlap", "network_slice_passes"}`` (how many model-size tiles and
        chunks the network ran, and so how many model-size slices).
    """
    from pancseg_tf.inference import Segmenter, finish_segmentation, request_intensities
    from pancseg_tf.inference.chunks import tile_layout
    from pancseg_tf.predict_io import load_case_volume, write_case

    segmenter = Segmenter.from_path(run)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ("read", "preprocess", "network", "finish", "write")

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    best: dict[str, tuple[float, float]] = {}
    for round_ in range(3):
        marks = [now()]  # then one after each step
        vol = load_case_volume(volume)
        marks.append(now())
        plan = segmenter.plan(vol)
        image, percentiles = request_intensities(vol, plan, segmenter.preprocess)
        marks.append(now())
        probs = segmenter.predict_intensities(image, percentiles)
        marks.append(now())
        result = finish_segmentation(
            plan, probs, threshold=segmenter.threshold, postprocess=segmenter.postprocess
        )
        marks.append(now())
        write_case(result, vol, out, "case", probabilities=False)
        marks.append(now())
        for name, (w0, c0), (w1, c1) in zip(names, marks[:-1], marks[1:], strict=True):
            if round_ > 0 and (name not in best or w1 - w0 < best[name][0]):
                best[name] = (w1 - w0, c1 - c0)
    from bench_common import network_spans

    spans, _ = tile_layout(image.shape[:2], segmenter.preprocess.size)
    chunks = network_spans(int(image.shape[2]), segmenter.chunk, segmenter.overlap)
    passes_per_tile = sum(stop - start for start, stop in chunks)
    total = sum(w for w, _ in best.values())
    return {
        "model_grid_shape": list(image.shape),
        "tiles": len(spans),
        "chunk": segmenter.chunk,
        "chunk_overlap": segmenter.overlap,
        # Slices of the model's size the network ran: tiles x the slices of every chunk.
        "network_slice_passes": len(spans) * passes_per_tile,
        "seconds": {k: round(w, 3) for k, (w, _) in best.items()},
        "cpu_seconds": {k: round(c, 3) for k, (_, c) in best.items()},
        "total_seconds": round(total, 3),
        "shares": {k: round(w / total, 3) for k, (w, _) in best.items()},
        "rounds": "a warm-up volume, then the best of 2 rounds per step",
    }


def peak_rss_of_predict(
    run: pathlib.Path,
    work: pathlib.Path,
    shape: Sequence[int] = (512, 512, 600),
    spacing: Sequence[float] = (0.8, 0.8, 1.0),
) -> dict[str, Any]:
    """`pancseg predict`'s peak RSS and time on a synthetic CT (default 512 x 512 x 600)."""
    path = write_phantom(work / f"ct_{'x'.join(str(s) for s in shape)}.nii.gz", shape, spacing)
    measured = predict_from_outside(run, path, work / "out")
    return {
        "predict_peak_rss_gib": measured["peak_rss_gib"],
        "seconds": measured["process_seconds"],
        "case_seconds": measured["case_seconds"],
        "shape": list(shape),
        "spacing_mm": list(spacing),
    }


def compare_one_pass(
    run: pathlib.Path,
    cohort: pathlib.Path,
    cases: int = 3,
    chunks: Sequence[int | None] = CHUNKS,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """One pass vs naive stride-1 windows vs chunks: time and DSC on held-out cases.

    Per case, on the model grid: the one pass and each chunk length through `Segmenter` (the
    network step of ``pancseg predict [--chunk N]``), and every stride-1 window of the run's
    training length ``T`` through the whole model (`naive_windows`); each mask goes back to the
    case's grid with the same post-processing and is scored against its label.

    Times are CPU seconds of this process (all threads: other jobs on a shared machine do not
    change them) and wall-clock seconds.

    Returns:
        ``window``, per-case rows, ``one_pass_speedup`` (mean naive CPU time / mean one-pass CPU
        time; ``one_pass_speedup_wall`` the same in wall-clock time),
        ``one_pass_dsc_delta`` (mean one-pass DSC - mean naive DSC), ``dsc_by_chunk``,
        ``seconds_by_chunk``.
    """
    from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    import yaml

    from pancseg_tf.evaluation.metrics import dice
    from pancseg_tf.inference import Segmenter, finish_segmentation
    from pancseg_tf.inference.chunks import run_in_tiles
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.preprocessing.labels import map_labels

    run = pathlib.Path(run)
    base = Segmenter.from_path(run)
    window = int(yaml.safe_load((run / "config.yaml").read_text())["data"]["window"])
    rows = []
    for case in discover_cohort(cohort)[:cases]:
        volume = case.load_image()
        gt = map_labels(case.load_label().array, None)
        plan = base.plan(volume)
        image = base.normalize(plan.forward(volume.array), volume)
        row: dict[str, Any] = {"case": case.case_id, "slices": int(image.shape[2])}
        for chunk in chunks:
            seg = Segmenter(base.model, base.preprocess, chunk=chunk)
            seg._predict_once(image[:, :, : min(image.shape[2], 2 * (chunk or 8))])  # tracing
            start, cpu = time.perf_counter(), time.process_time()
            prob = seg._predict_once(image)
            row[f"seconds_chunk_{chunk or 'one_pass'}"] = time.perf_counter() - start
            row[f"cpu_seconds_chunk_{chunk or 'one_pass'}"] = time.process_time() - cpu
            mask = finish_segmentation(plan, prob, threshold=0.5, postprocess=True).mask
            row[f"dsc_chunk_{chunk or 'one_pass'}"] = float(dice(mask, gt))
        start, cpu = time.perf_counter(), time.process_time()
        # The same tiles as Segmenter, where a body is wider than the model's plane.
        prob = run_in_tiles(
            image, base.preprocess.size, lambda tile: naive_windows(base.model, tile, window)
        )
        row["seconds_naive_windows"] = time.perf_counter() - start
        row["cpu_seconds_naive_windows"] = time.process_time() - cpu
        mask = finish_segmentation(plan, prob, threshold=0.5, postprocess=True).mask
        row["dsc_naive_windows"] = float(dice(mask, gt))
        rows.append(row)
        if progress:
            progress(json.dumps(row))

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    names = [str(c or "one_pass") for c in chunks]
    return {
        "window": window,
        "cases": rows,
        "one_pass_speedup": mean("cpu_seconds_naive_windows") / mean("cpu_seconds_chunk_one_pass"),
        "one_pass_speedup_wall": mean("seconds_naive_windows") / mean("seconds_chunk_one_pass"),
        "one_pass_dsc_delta": mean("dsc_chunk_one_pass") - mean("dsc_naive_windows"),
        "dsc_one_pass": mean("dsc_chunk_one_pass"),
        "dsc_naive_windows": mean("dsc_naive_windows"),
        "seconds_one_pass": mean("seconds_chunk_one_pass"),
        "seconds_naive_windows": mean("seconds_naive_windows"),
        "dsc_by_chunk": {name: mean(f"dsc_chunk_{name}") for name in names},
        "seconds_by_chunk": {name: mean(f"seconds_chunk_{name}") for name in names},
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
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            memory = peak_rss_of_predict(args.run, pathlib.Path(tmp))
    result = compare_one_pass(args.run, args.cohort, cases=args.cases)
    if memory is not None:
        result["memory"] = memory
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
