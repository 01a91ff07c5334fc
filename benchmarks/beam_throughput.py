"""Cases per second (and per worker) of ``pancseg predict --runner DirectRunner`` against the
in-process ``pancseg predict``, on the same inputs, in one run.

Usage:
    python benchmarks/beam_throughput.py RUN INPUT... [--copies N] [--workers 2]
        [--mode multi_processing|multi_threading] [--json OUT]

Each command is timed from outside, whole: process start, TensorFlow import and model load
(once per worker for Beam), reading, segmenting and writing every case. With few cases the
fixed costs dominate; the ratio is what carries over, not the absolute rates (this machine is
shared). ``--copies N`` segments N copies of each NIfTI input (in a temporary folder), so a
run has enough cases for the workers to share. The two commands' masks are compared byte for
byte.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import emit_json, load_average, provenance  # noqa: E402


def timed_predict(run: str, inputs: list[str], out: pathlib.Path, extra: list[str]) -> float:
    """Wall seconds of one ``pancseg predict`` (raises when it does not exit 0)."""
    command = [sys.executable, "-m", "pancseg_tf.cli", "predict", run, *inputs, "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(command + extra, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command + extra)} exited {proc.returncode}: {proc.stderr}")
    return seconds


def run_config(run: str) -> pathlib.Path | None:
    """The config file whose hash the result records: a run folder's ``config.yaml`` (None for
    a bare ``.keras``, whose config is its model card)."""
    config = pathlib.Path(run) / "config.yaml"
    return config if config.is_file() else None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder or .keras model")
    parser.add_argument("inputs", nargs="+", help="NIfTI files or DICOM series folders")
    parser.add_argument("--copies", type=int, default=1, help="copies of each NIfTI input")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner workers")
    parser.add_argument(
        "--mode", choices=("multi_processing", "multi_threading"), default="multi_processing"
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="beam-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        inputs: list[str] = []
        for raw in args.inputs:
            path = pathlib.Path(raw)
            if path.is_file() and args.copies > 1:
                stem = path.name.split(".")[0]
                suffix = path.name[len(stem) :]
                for i in range(args.copies):
                    copy = tmp / "inputs" / f"{stem}_{i:02d}{suffix}"
                    copy.parent.mkdir(exist_ok=True)
                    shutil.copyfile(path, copy)
                    inputs.append(str(copy))
            else:
                inputs.append(str(path))
        beam = [
            "--runner",
            "DirectRunner",
            "--pipeline-option",
            f"direct_num_workers={args.workers}",
            "--pipeline-option",
            f"direct_running_mode={args.mode}",
        ]
        load_start = load_average()
        in_process_s = timed_predict(args.run, inputs, tmp / "in_process", [])
        beam_s = timed_predict(args.run, inputs, tmp / "beam", beam)
        masks = sorted(p.name for p in (tmp / "in_process").glob("*.nii.gz"))
        identical = all(
            (tmp / "in_process" / m).read_bytes() == (tmp / "beam" / m).read_bytes() for m in masks
        )
    cases = len(masks)
    beam_rate = cases / beam_s
    result = {
        "benchmark": "beam_throughput",
        "provenance": provenance(run_config(args.run), ["benchmarks/beam_throughput.py", *argv]),
        "load_average_start": load_start,
        "cases": cases,
        "runner": {"name": "DirectRunner", "workers": args.workers, "mode": args.mode},
        "in_process": {"wall_s": round(in_process_s, 2), "cases_per_s": cases / in_process_s},
        "beam": {
            "wall_s": round(beam_s, 2),
            "cases_per_s": beam_rate,
            "cases_per_s_per_worker": beam_rate / args.workers,
        },
        "beam_over_in_process": (cases / beam_s) / (cases / in_process_s),
        "masks_identical": identical,
        "note": "whole commands timed from outside: process start, TensorFlow import and model "
        "load (once per Beam worker) included",
    }
    emit_json(result, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
