"""Throughput of the tf.data window pipeline, alone and as a cost on training.

Measures, on prepared data (a folder from ``pancseg prepare``, or a synthetic CT cohort prepared
into a temporary folder with the default preprocessing, 256 x 256 planes at 0.8 mm, 2.5 mm
slices):

1. the pipeline alone: stage-2 windows per second (``data.window`` slices, augmentation on) and
   stage-1 slices per second;
2. training throughput of a `ContextualSegmenter` (``--model`` preset) fed by the pipeline vs fed
   the same windows cached in memory (the same first batches of the same seeded pipeline,
   materialised once, so the model sees identical data), ``train_on_batch`` on batches pulled
   from one long-lived iterator of each (as ``fit`` pulls them). Rounds alternate between the
   two to spread the noise of a shared machine; the medians give the pipeline's cost:
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
import itertools
import logging
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json  # noqa: E402

from pancseg_tf.config import Config, apply_overrides, config_from_dict  # noqa: E402
from pancseg_tf.data import (  # noqa: E402
    load_index,
    make_training_dataset,
    num_windows,
    prepare_cohort,
)
from pancseg_tf.models import ContextualSegmenter, SliceCNN  # noqa: E402
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


def train_rate(model: keras.Model, batches: Iterator, steps: int) -> tuple[float, float]:
    """Steps per second and CPU seconds of this process per step, over ``steps`` training steps
    on batches pulled from ``batches`` as training needs them (as ``fit`` does)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        image, targets = next(batches)
        model.train_on_batch(image, targets)
    return steps / (time.perf_counter() - wall), (time.process_time() - cpu) / steps


def contextual_model(preset: str, size: tuple[int, int] | None) -> keras.Model:
    """A `ContextualSegmenter` preset for ``size`` slices (None: the preset's own size)."""
    if size is None:
        return ContextualSegmenter.from_preset(preset)
    cnn = SliceCNN.from_preset(preset, input_size=tuple(size))
    return ContextualSegmenter.from_preset(preset, slice_cnn=cnn)


def measure_pipeline(
    data: pathlib.Path,
    config: Config,
    model: keras.Model,
    *,
    steps: int = 15,
    rounds: int = 3,
    batches: int = 30,
) -> dict:
    """The pipeline alone, and training fed by it vs by the same windows cached in memory.

    Args:
        data: a prepared folder (``pancseg prepare``).
        config: the config whose ``data`` section drives the pipeline (its preprocessing must
            be the folder's).
        model: a `ContextualSegmenter` taking the pipeline's windows (compiled here).
        steps: training steps per round and input.
        rounds: alternating rounds (pipeline, cached, pipeline, ...).
        batches: batches timed for the pipeline alone (after 3 warm-up batches).

    Returns:
        ``{"pipeline_alone": {...}, "training": {...}}``; ``training["pipeline_cost"]`` is
        ``1 - steps_per_s(pipeline) / steps_per_s(cached)`` from the rounds' medians.
    """
    d = config.data
    result: dict = {}
    # 1. The pipeline alone.
    stage2 = make_training_dataset(data, config, stage=2, seed=0)
    stage1 = make_training_dataset(data, config, stage=1, seed=0)
    result["pipeline_alone"] = {
        "windows": pipeline_rate(stage2, batches, d.batch_size),
        "slices": pipeline_rate(stage1, batches, d.slice_batch_size),
    }

    # 2. Training: pipeline vs the same windows cached in memory. One iterator of each lives
    # through all rounds, as one over the endless stream lives through a whole `fit`: a new
    # iterator per round would refill the shuffle buffer every round, a start-up cost training
    # pays once per data epoch.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"prob": "binary_crossentropy"})
    live = iter(make_training_dataset(data, config, stage=2, seed=0).map(as_model_targets))
    first = make_training_dataset(data, config, stage=2, seed=0).map(as_model_targets)
    cached = itertools.cycle(list(first.take(steps)))  # the same first batches, in memory
    train_rate(model, live, 3)  # trace, warm up and fill the shuffle buffer
    train_rate(model, cached, 3)
    rates: dict[str, list[float]] = {"pipeline": [], "cached": []}
    cpu: dict[str, list[float]] = {"pipeline": [], "cached": []}
    for _ in range(rounds):
        for name, batches_in in (("pipeline", live), ("cached", cached)):
            rate, cpu_per_step = train_rate(model, batches_in, steps)
            rates[name].append(rate)
            cpu[name].append(cpu_per_step)
    median = {k: statistics.median(v) for k, v in rates.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result["training"] = {
        "model": model.name,
        "input_size": list(model.input_size),
        "steps_per_round": steps,
        "rounds": rounds,
        "steps_per_s": {k: [round(r, 3) for r in v] for k, v in rates.items()},
        "median_steps_per_s": {k: round(v, 3) for k, v in median.items()},
        "windows_per_s_pipeline": round(median["pipeline"] * d.batch_size, 2),
        "windows_per_s_cached": round(median["cached"] * d.batch_size, 2),
        "pipeline_cost": round(1.0 - median["pipeline"] / median["cached"], 3),
        # CPU seconds of this process per step: robust to other processes on the machine.
        "median_cpu_s_per_step": {k: round(v, 4) for k, v in median_cpu.items()},
        "pipeline_cpu_share": round(1.0 - median_cpu["cached"] / median_cpu["pipeline"], 3),
        "target_cost": 0.15,
    }
    result["training"]["within_target"] = result["training"]["pipeline_cost"] <= 0.15
    return result


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
        size = tuple(d.crop_size) if d.crop_size else tuple(config.preprocess.size)
        model = contextual_model(args.model, size)
        result.update(
            measure_pipeline(
                data, config, model, steps=args.steps, rounds=args.rounds, batches=args.batches
            )
        )
        result["training"]["model"] = f"ContextualSegmenter.from_preset({args.model!r})"
    emit_json(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
