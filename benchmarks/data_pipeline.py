"""Throughput of the tf.data window pipeline, alone and as a cost on training.

Measures, on prepared data (a folder from ``pancseg prepare``, or a synthetic CT cohort prepared
into a temporary folder with the default preprocessing, 256 x 256 planes at 0.8 mm, 2.5 mm
slices):

1. the pipeline alone: stage-2 windows per second (``data.window`` slices, augmentation on) and
   stage-1 slices per second;
2. training throughput of a `ContextualSegmenter` (``--model`` preset) fed by the pipeline vs fed
   the same windows cached in memory (the same first batches of the same seeded pipeline,
   materialised once, so the model sees identical data). Rounds alternate between the two to
   spread the noise of a shared machine; the medians give the pipeline's cost:
   ``1 - steps_per_s(pipeline) / steps_per_s(cached)`` (target: at most 0.15), and its share
   of this process's CPU time per step, ``1 - cpu_per_step(cached) / cpu_per_step(pipeline)``,
   which other processes on a shared machine disturb less.

Prints one JSON object.

Usage::

    python benchmarks/data_pipeline.py                       # synthetic cohort, quick model
    python benchmarks/data_pipeline.py --data PREPARED_DIR --steps 20 --rounds 3
    python benchmarks/data_pipeline.py --model tiny --crop 64  # a small model on 64 x 64 crops
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pancseg_tf.config import Config, apply_overrides, config_from_dict  # noqa: E402
from pancseg_tf.data import (  # noqa: E402
    load_index,
    make_training_dataset,
    num_windows,
    prepare_cohort,
)
from pancseg_tf.models import ContextualSegmenter  # noqa: E402
from pancseg_tf.synthetic import make_cohort  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)


def pipeline_rate(dataset: tf.data.Dataset, batches: int, per_batch: int) -> dict:
    """Elements per second of iterating ``dataset`` (after a warm-up of 3 batches)."""
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "per_s": round(batches * per_batch / wall, 2),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
    }


def as_model_targets(image: tf.Tensor, mask: tf.Tensor):
    return image, {"prob": mask}


def fit_rate(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> tuple[float, float]:
    """Steps per second and CPU seconds of this process per step, over one ``fit`` epoch."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - wall), (time.process_time() - cpu) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared folder (default: a synthetic cohort)")
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases (default 4)")
    parser.add_argument("--model", default="quick", help="ContextualSegmenter preset")
    parser.add_argument("--crop", type=int, default=None, help="data.crop_size (square)")
    parser.add_argument("--steps", type=int, default=15, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batches", type=int, default=30, help="batches timed, pipeline alone")
    parser.add_argument("--override", action="append", default=[], help="config key=value")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.override)
        if args.crop:
            overrides.append(f"data.crop_size=[{args.crop},{args.crop}]")
        if args.data:
            data = pathlib.Path(args.data)
            # The preprocessing the folder was prepared with (the pipeline checks its hash).
            base = config_from_dict({"preprocess": load_index(data)["preprocess"]})
        else:
            cohort = make_cohort(pathlib.Path(tmp) / "cohort", cases=args.cases, seed=0)
            data = pathlib.Path(tmp) / "prepared"
            base = Config()
            start = time.perf_counter()
            prepare_cohort(cohort, data, config=base, workers=2, progress=False)
            prepare_s = time.perf_counter() - start
        config = apply_overrides(base, overrides)
        d = config.data
        index = load_index(data)
        result: dict = {
            "benchmark": "data_pipeline",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            "data": {
                "source": "prepared folder" if args.data else f"synthetic CT, {args.cases} cases",
                "cases": index["num_cases"],
                "slices": index["num_slices"],
                "plane": index["cases"][0]["size"],
                "crop": list(d.crop_size) if d.crop_size else None,
                "window": d.window,
                "batch_size": d.batch_size,
                "slice_batch_size": d.slice_batch_size,
                "windows_per_epoch": num_windows(data, config, stage=2),
            },
        }
        if not args.data:
            result["data"]["prepare_s"] = round(prepare_s, 2)

        # 1. The pipeline alone.
        stage2 = make_training_dataset(data, config, stage=2, seed=0)
        stage1 = make_training_dataset(data, config, stage=1, seed=0)
        result["pipeline_alone"] = {
            "windows": pipeline_rate(stage2, args.batches, d.batch_size),
            "slices": pipeline_rate(stage1, args.batches, d.slice_batch_size),
        }

        # 2. Training: pipeline vs the same windows cached in memory.
        model = ContextualSegmenter.from_preset(args.model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"prob": "binary_crossentropy"})
        train_stream = make_training_dataset(data, config, stage=2, seed=0)
        live = train_stream.map(as_model_targets)
        cached = train_stream.take(args.steps).cache().map(as_model_targets)
        for _ in cached:  # fill the cache (from the pipeline, outside the timings)
            pass
        cached = cached.repeat().prefetch(2)
        fit_rate(model, live, 3)  # trace and warm up both inputs
        fit_rate(model, cached, 3)
        rates: dict[str, list[float]] = {"pipeline": [], "cached": []}
        cpu: dict[str, list[float]] = {"pipeline": [], "cached": []}
        for _ in range(args.rounds):
            for name, dataset in (("pipeline", live), ("cached", cached)):
                rate, cpu_per_step = fit_rate(model, dataset, args.steps)
                rates[name].append(rate)
                cpu[name].append(cpu_per_step)
        median = {k: statistics.median(v) for k, v in rates.items()}
        median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        result["training"] = {
            "model": f"ContextualSegmenter.from_preset({args.model!r})",
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "steps_per_s": {k: [round(r, 3) for r in v] for k, v in rates.items()},
            "median_steps_per_s": {k: round(v, 3) for k, v in median.items()},
            "windows_per_s_pipeline": round(median["pipeline"] * d.batch_size, 2),
            "pipeline_cost": round(1.0 - median["pipeline"] / median["cached"], 3),
            # CPU seconds of this process per step: robust to other processes on the machine.
            "median_cpu_s_per_step": {k: round(v, 4) for k, v in median_cpu.items()},
            "pipeline_cpu_share": round(1.0 - median_cpu["cached"] / median_cpu["pipeline"], 3),
            "target_cost": 0.15,
        }
        result["training"]["within_target"] = result["training"]["pipeline_cost"] <= 0.15
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
