"""The benchmark harness: every measurement of issue 10 in one run, one JSON, one table.

Parts (``--only`` takes their names, comma-separated):

==================  ===========================================================================
roofline            1. a float32 3x3 conv at the model's typical width (the machine's peak for
                    this workload) vs whole-volume inference of the default model on a
                    256 x 256 x 200 volume: fraction of the peak; CNN and ConvLSTM shares of time
                    and FLOPs (`model_cost.roofline`)
one_pass            2. one pass vs stride-1 windows of the training length T: time and DSC on
                    held-out synthetic CTs; DSC against chunk length
                    (`predict_bench.compare_one_pass`, trained quick model)
time_distributed    3. the contextual model with the CNN batched over all slices vs wrapped in
                    ``TimeDistributed``: seconds per window, forward and training step
                    (`network_speed.batched_vs_time_distributed`)
pipeline            4. tf.data windows per second alone; training fed by the pipeline vs the same
                    windows cached in memory (`data_pipeline.measure_pipeline`)
memory              5. peak RSS of ``pancseg predict`` on a synthetic 512 x 512 x 600 CT, from
                    outside the process (`predict_bench.predict_from_outside`)
end_to_end          6. ``pancseg predict`` on a synthetic 512 x 512 x 200 CT (0.8 x 0.8 x 2.5 mm),
                    reading to writing, with the trained quick model; the paper-size model too
                    (run under the full harness, estimated from a few slices under ``--quick``)
real_case           6b. ``pancseg predict`` on the real NIH Pancreas-CT case 0002 (DICOM, 512 x
                    512 x 195, ../shared/data or $PANCSEG_TEST_DATA) with the trained quick
                    model and with the random-weight paper-size model, each in its own process
                    (skipped where the data is missing)
serving             7. that volume through the gRPC test server vs in process: time ratio, bytes
                    on the wire (`serving.measure_serving`)
options             8. XLA on / off, ``mixed_bfloat16`` on / off, as speed ratios
                    (`network_speed.option_ratios`)
bf16                8b. the trained quick model rebuilt in ``mixed_bfloat16`` with the same
                    weights, through `Segmenter` on the held-out synthetic cases: per-case DSC
                    change and the network's CPU time ratio (`bf16_inference.compare`)
peer                9. MONAI ``SliceInferer`` + ``BasicUNet`` on the same volume beside ours
                    (`peer_monai`, its own process; skipped when torch or monai is missing)
gpu                 10. training step and inference with Keras 3's JAX backend on a GPU
                    (`gpu_jax`, its own process; skipped without a visible GPU). A GPU machine
                    without TensorFlow runs ``gpu_jax.py --json FILE`` itself, and
                    ``--gpu-json FILE`` puts that result into this report
==================  ===========================================================================

The JSON (``--json``): top-level *figures*, each ``{"value", "unit", "target", "met",
"status"[, "note"]}`` (``target`` a readable condition or null, ``met`` true / false / null,
``status`` ``ok``, ``estimated``, ``skipped``, ``failed`` or ``not run``); every figure of
`FIGURES` is always present (null where its part did not run), so the shape never changes.
Beside them: ``machine`` (cores, memory, CPU model, TensorFlow and Keras versions, load average
at start and end), ``model_config`` (the trained quick model's resolved config and how it was
trained), ``parts`` (per part: status, seconds, reason or error, and its full details),
``targets`` (each target with met / missed and the cause recorded for a miss), ``command``,
``mode`` and ``seconds``. The Markdown table (``--md``, and printed): figure, value, unit,
target, met.

The DSC-based parts need a trained quick model: the harness trains one on a seeded synthetic
cohort with ``pancseg synth``, ``prepare`` and ``train`` (the quick config; fewer cases and
epochs under ``--quick``) in ``--work`` (default: ``pancseg-bench`` in the system's temporary
folder) and reuses it, and the synthetic CTs, on every later run.

All ratios come from alternating rounds inside one run: the machine this was written on is
shared with other jobs, and absolute times do not hold from run to run.

Usage::

    python benchmarks/run.py --quick --json benchmarks/results/latest.json \\
        --md benchmarks/results/latest.md --readme README.md \\
        --peer-python /path/to/torch-venv/bin/python
    python benchmarks/run.py --only roofline,options
    python benchmarks/run.py --tiny --only roofline,time_distributed --json /tmp/b.json
    python benchmarks/run.py --render benchmarks/results/latest.json --md latest.md  # table only
    python benchmarks/run.py --render benchmarks/results/latest.json --readme README.md

``--readme`` replaces the README's block between `README_BEGIN` and `README_END` with the table
of the report (a test checks that the block is exactly what ``latest.json`` renders to). The
report holds ``commit``, ``config_sha256`` (the trained quick model's ``config.yaml``) and
``provenance`` (`bench_common.provenance`) beside ``command``.

Timing rule: comparisons inside this process (roofline, one pass vs windows, batched vs
``TimeDistributed``, XLA, bfloat16, MONAI vs ours) are read in CPU seconds of the process, all
threads, which other jobs on a shared machine do not change; wall-clock ratios are beside them
in the details. Times that cross processes or that a user waits for (``pancseg predict``,
serving, training throughput) are wall clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import (  # noqa: E402
    figure,
    load_average,
    machine_info,
    pancseg,
    provenance,
)

#: The README's generated block: `write_readme_block` replaces what lies between these lines
#: with `markdown` of a report, so no figure in it is copied by hand.
README_BEGIN = (
    "<!-- benchmarks:begin (generated by benchmarks/run.py --readme from "
    "benchmarks/results/latest.json: edit nothing inside) -->"
)
README_END = "<!-- benchmarks:end -->"

PARTS = (
    "roofline",
    "one_pass",
    "time_distributed",
    "pipeline",
    "memory",
    "end_to_end",
    "real_case",
    "serving",
    "options",
    "bf16",
    "peer",
    "gpu",
)

#: Every top-level figure: (part, unit, target or None). The first nine are the issue's.
FIGURES: dict[str, tuple[str, str, str | None]] = {
    "roofline_fraction": ("roofline", "fraction of peak (FLOPs per CPU second)", ">= 0.70"),
    "one_pass_speedup": ("one_pass", "x (windows CPU time / one-pass CPU time)", ">= T - 1"),
    "one_pass_dsc_delta": ("one_pass", "DSC (one pass - windows)", ">= -0.005"),
    "batched_vs_timedistributed_speedup": (
        "time_distributed",
        "x (TimeDistributed CPU time / batched CPU time), forward",
        None,
    ),
    "pipeline_overhead": ("pipeline", "fraction of training throughput lost", "<= 0.15"),
    "predict_peak_rss_gib": ("memory", "GiB (peak RSS, 512x512x600 CT)", "< 4"),
    "serving_time_ratio": ("serving", "x (gRPC time / in-process time)", "<= 1.3"),
    "serving_bytes_per_volume": ("serving", "bytes (requests + responses)", None),
    "ct_512x512x200_seconds": ("end_to_end", "s (quick model, reading to writing)", "<= 4"),
    "nih_0002_seconds": ("real_case", "s (quick model, NIH 0002, reading to writing)", None),
    "nih_0002_seconds_paper": (
        "real_case",
        "s (paper-size model, NIH 0002, reading to writing)",
        None,
    ),
    "roofline_fraction_wall": ("roofline", "fraction of peak (FLOPs per wall second)", None),
    "roofline_useful_flop_fraction": (
        "roofline",
        "fraction of the network's FLOPs on the volume's own slices (chunks share slices)",
        None,
    ),
    "cnn_time_share": ("roofline", "fraction of inference CPU time", None),
    "cnn_flop_share": ("roofline", "fraction of inference FLOPs", None),
    "convlstm_time_share": ("roofline", "fraction of inference CPU time", None),
    "convlstm_flop_share": ("roofline", "fraction of inference FLOPs", None),
    "one_pass_speedup_wall": ("one_pass", "x (windows time / one-pass time, wall clock)", None),
    "dsc_one_pass": ("one_pass", "DSC (held-out synthetic CT)", None),
    "batched_vs_timedistributed_train_speedup": (
        "time_distributed",
        "x (TimeDistributed CPU time / batched CPU time), training step",
        None,
    ),
    "pipeline_windows_per_s": ("pipeline", "windows/s (pipeline alone)", None),
    "ct_512x512x200_process_seconds": ("end_to_end", "s (whole process, quick model)", None),
    "ct_512x512x200_process_cpu_seconds": (
        "end_to_end",
        "CPU s (whole process, all threads, quick model)",
        None,
    ),
    "ct_512x512x200_seconds_paper": (
        "end_to_end",
        "s (paper-size model, reading to writing)",
        None,
    ),
    "xla_forward_speedup": ("options", "x (XLA off CPU time / on CPU time)", None),
    "xla_train_step_speedup": ("options", "x (XLA off CPU time / on CPU time)", None),
    "bf16_forward_speedup": ("options", "x (float32 CPU time / mixed_bfloat16 CPU time)", None),
    "bf16_train_step_speedup": ("options", "x (float32 CPU time / mixed_bfloat16 CPU time)", None),
    "bf16_inference_speedup": (
        "bf16",
        "x (float32 CPU time / mixed_bfloat16 CPU time, trained model, network)",
        None,
    ),
    "bf16_dsc_max_abs_delta": (
        "bf16",
        "DSC (largest per-case |mixed_bfloat16 - float32|, held-out synthetic CTs)",
        "<= 0.001",
    ),
    "peer_time_ratio": ("peer", "x (MONAI CPU time / our CPU time, same volume)", None),
    "peer_fraction_of_peak": ("peer", "fraction of our conv peak per CPU second (MONAI)", None),
    "peer_train_speedup": (
        "peer",
        "x (our CNN's training slices per CPU s / MONAI BasicUNet's, equal FLOPs per slice)",
        None,
    ),
    "gpu_train_windows_per_s": ("gpu", "windows/s (quick model, JAX, GPU)", None),
    "gpu_inference_slices_per_s": ("gpu", "slices/s (quick model, JAX, GPU)", None),
}

# Tolerance of "equal DSC" for the one-pass target: DSC is a mean over a few cases, and a mask's
# boundary voxels move with the float32 summation order of the two ways.
DSC_TOLERANCE = 0.005


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each part runs; one instance per mode (`SIZES`)."""

    preset: str  # the default model of parts 1, 3, 8, 9
    preset_size: int | None  # its input size (None: the preset's own; the quick config's 128)
    volume_slices: int  # slices of the part 1 / part 9 volume
    repeats: int  # alternating timed rounds
    one_pass_cases: int
    window: int  # parts 3 and 8: slices per window
    batch: int  # parts 3 and 8: windows per batch
    pipeline_steps: int
    pipeline_rounds: int
    pipeline_batches: int
    memory_shape: tuple[int, int, int]
    memory_spacing: tuple[float, float, float]
    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    paper_sample_slices: int | None  # None: run the paper model through `pancseg predict`
    paper_preset: str
    peer_slices: int
    train_cases: int
    heldout_cases: int
    train_overrides: tuple[str, ...]


_QUICK_TRAIN = (
    "train.stage1_epochs=6",
    "train.stage2_epochs=2",
    "train.freeze_cnn_epochs=1",
    "train.steps_per_epoch=25",
    "train.validation_cases=2",
)
_TINY_TRAIN = (
    "preprocess.size=[64, 64]",
    "preprocess.spacing_mm=2.4",
    "model.preset=tiny",
    "train.stage1_epochs=1",
    "train.stage2_epochs=1",
    "train.freeze_cnn_epochs=0",
    "train.steps_per_epoch=2",
    "train.validation_cases=1",
)

#: The shipped quick config's model grid (``configs/quick.yaml``: 128 x 128): the quick model
#: as `pancseg predict` runs it, not the preset's own default size.
QUICK_GRID = 128

_PAPER_CT = dict(
    memory_shape=(512, 512, 600),
    memory_spacing=(0.8, 0.8, 1.0),
    ct_shape=(512, 512, 200),
    ct_spacing=(0.8, 0.8, 2.5),
)
SIZES = {
    "full": Sizes(
        preset="quick", preset_size=QUICK_GRID, volume_slices=200, repeats=3, one_pass_cases=4,
        window=5, batch=2, pipeline_steps=15, pipeline_rounds=3, pipeline_batches=30,
        **_PAPER_CT, paper_sample_slices=None, paper_preset="paper", peer_slices=200,
        train_cases=16, heldout_cases=6, train_overrides=(),
    ),
    "quick": Sizes(
        preset="quick", preset_size=QUICK_GRID, volume_slices=200, repeats=2, one_pass_cases=2,
        window=5, batch=2, pipeline_steps=8, pipeline_rounds=3, pipeline_batches=20,
        **_PAPER_CT, paper_sample_slices=4, paper_preset="paper", peer_slices=48,
        train_cases=8, heldout_cases=2, train_overrides=_QUICK_TRAIN,
    ),
    "tiny": Sizes(
        preset="tiny", preset_size=None, volume_slices=16, repeats=1, one_pass_cases=1,
        window=3, batch=1, pipeline_steps=2, pipeline_rounds=1, pipeline_batches=3,
        memory_shape=(96, 96, 40), memory_spacing=(2.4, 2.4, 2.5), ct_shape=(96, 96, 24),
        ct_spacing=(2.4, 2.4, 2.5), paper_sample_slices=2, paper_preset="tiny", peer_slices=16,
        train_cases=3, heldout_cases=1, train_overrides=_TINY_TRAIN,
    ),
}  # fmt: skip


def log(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# === The trained quick model and the synthetic CTs, cached in --work ===


@dataclasses.dataclass
class TrainedModel:
    run: pathlib.Path
    cohort: pathlib.Path
    heldout: pathlib.Path
    prepared: pathlib.Path
    overrides: tuple[str, ...]
    info: dict[str, Any]


class Context:
    """What the parts share: sizes, the work folder, the trained model, results so far."""

    def __init__(self, mode: str, work: pathlib.Path) -> None:
        self.mode = mode
        self.sizes = SIZES[mode]
        self.work = work
        self.results: dict[str, dict[str, Any]] = {}
        self.gpu_json: pathlib.Path | None = None
        self.peer_python: str = sys.executable
        self._trained: TrainedModel | None = None

    def trained_model(self) -> TrainedModel:
        """The quick model trained on a synthetic cohort (trained once, then reused)."""
        if self._trained is not None:
            return self._trained
        s = self.sizes
        folder = self.work / f"model-{self.mode}"
        cohort, heldout = folder / "cohort", folder / "heldout"
        prepared, run = folder / "prepared", folder / "run"
        marker = folder / "trained.json"
        settings = {
            "config": "quick",
            "overrides": list(s.train_overrides),
            "train_cases": s.train_cases,
            "heldout_cases": s.heldout_cases,
            "cohort_seed": 11,
            "heldout_seed": 1011,
        }
        if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
            info = json.loads(marker.read_text())
            info["reused"] = True
        else:
            if folder.exists():
                shutil.rmtree(folder)  # settings changed: nothing of it is valid
            folder.mkdir(parents=True)
            log(f"training the quick model in {folder} (cached for later runs)")
            start = time.perf_counter()
            pancseg("synth", str(cohort), "--cases", str(s.train_cases), "--seed", "11", quiet=True)
            pancseg(
                "synth", str(heldout), "--cases", str(s.heldout_cases), "--seed", "1011", quiet=True
            )
            sets = [item for o in s.train_overrides for item in ("--set", o)]
            # prepare takes the preprocessing; the rest of the config is training's.
            prepare_sets = [
                item
                for o in s.train_overrides
                if o.startswith("preprocess.")
                for item in ("--set", o)
            ]
            pancseg(
                "prepare",
                str(cohort),
                str(prepared),
                "--config",
                "quick",
                "--workers",
                "2",
                *prepare_sets,
                quiet=True,
            )
            pancseg("train", str(prepared), str(run), "--config", "quick", *sets, quiet=True)
            seconds = time.perf_counter() - start
            info = {"settings": settings, "seconds": round(seconds, 1)}
            log_csv = run / "log.csv"
            if log_csv.is_file():
                info["log_csv"] = log_csv.read_text()
            marker.write_text(json.dumps(info, indent=2))
            info["reused"] = False
        self._trained = TrainedModel(run, cohort, heldout, prepared, s.train_overrides, info)
        return self._trained

    def synthetic_ct(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> pathlib.Path:
        """A seeded synthetic CT of ``shape`` (int16 HU, NIfTI), written once."""
        from predict_bench import write_phantom

        name = "ct_" + "x".join(str(v) for v in shape) + "_" + "x".join(f"{v:g}" for v in spacing)
        path = self.work / "volumes" / f"{name}.nii.gz"
        if not path.is_file():
            log(f"writing a synthetic CT {shape} at {spacing} mm (cached)")
        return write_phantom(path, shape, spacing)


# === The parts ===
# Each returns {"figures": {name: figure}, "details": {...}}; a raised exception marks the
# part failed and the harness goes on.


def part_roofline(ctx: Context) -> dict[str, Any]:
    from model_cost import roofline

    s = ctx.sizes
    # The best of three rounds in every mode (each round: the three contenders, ~20 CPU s
    # under --quick): in single rounds the conv reference alone moved from 98 to 81 GFLOP per
    # CPU second between two runs on the same machine (roofline 0.73 and 0.84).
    repeats = max(3, s.repeats)
    # The model as the quick recipe ships it: chunks of its training window (context_window).
    result = roofline(
        s.preset, s.preset_size, slices=s.volume_slices, repeats=repeats, window=s.window
    )
    parts = result["parts"]
    return {
        "figures": {
            "roofline_fraction": result["roofline_fraction"],
            "roofline_fraction_wall": result["roofline_fraction_wall"],
            "roofline_useful_flop_fraction": result["inference"]["useful_flop_fraction"],
            "cnn_time_share": parts["cnn"]["time_share"],
            "cnn_flop_share": parts["cnn"]["flop_share"],
            "convlstm_time_share": parts["convlstm"]["time_share"],
            "convlstm_flop_share": parts["convlstm"]["flop_share"],
        },
        "details": result,
    }


def part_one_pass(ctx: Context) -> dict[str, Any]:
    from predict_bench import compare_one_pass

    trained = ctx.trained_model()
    result = compare_one_pass(
        trained.run, trained.heldout, cases=ctx.sizes.one_pass_cases, progress=None
    )
    window = result["window"]
    speedup_target = window - 1
    return {
        "figures": {
            "one_pass_speedup": (
                result["one_pass_speedup"],
                f">= {speedup_target} (T = {window})",
                result["one_pass_speedup"] >= speedup_target,
            ),
            "one_pass_dsc_delta": result["one_pass_dsc_delta"],
            "one_pass_speedup_wall": result["one_pass_speedup_wall"],
            "dsc_one_pass": result["dsc_one_pass"],
        },
        "details": result,
    }


def part_time_distributed(ctx: Context) -> dict[str, Any]:
    from network_speed import batched_vs_time_distributed

    s = ctx.sizes
    result = batched_vs_time_distributed(
        s.preset, s.preset_size, window=s.window, batch=s.batch, repeats=max(2, s.repeats)
    )
    return {
        "figures": {
            "batched_vs_timedistributed_speedup": result["forward_speedup_cpu"],
            "batched_vs_timedistributed_train_speedup": result["train_step_speedup_cpu"],
        },
        "details": result,
    }


def _trained_config(trained: TrainedModel):
    from pancseg_tf.config import apply_overrides, load_config

    return apply_overrides(load_config("quick"), list(trained.overrides))


def part_pipeline(ctx: Context) -> dict[str, Any]:
    from data_pipeline import contextual_model, measure_pipeline

    s = ctx.sizes
    trained = ctx.trained_model()
    config = _trained_config(trained)
    model = contextual_model(config.model.preset, tuple(config.preprocess.size))
    result = measure_pipeline(
        trained.prepared,
        config,
        model,
        steps=s.pipeline_steps,
        rounds=s.pipeline_rounds,
        batches=s.pipeline_batches,
    )
    return {
        "figures": {
            "pipeline_overhead": result["training"]["pipeline_cost"],
            "pipeline_windows_per_s": result["pipeline_alone"]["windows"]["per_s"],
        },
        "details": result,
    }


def part_memory(ctx: Context) -> dict[str, Any]:
    from predict_bench import predict_from_outside

    s = ctx.sizes
    trained = ctx.trained_model()
    path = ctx.synthetic_ct(s.memory_shape, s.memory_spacing)
    out = ctx.work / "out-memory"
    shutil.rmtree(out, ignore_errors=True)
    result = predict_from_outside(trained.run, path, out)
    result.update(shape=list(s.memory_shape), spacing_mm=list(s.memory_spacing))
    result["measured_by"] = "os.wait4 on the command's process, spawned by a small launcher"
    return {"figures": {"predict_peak_rss_gib": result["peak_rss_gib"]}, "details": result}


def _paper_run(ctx: Context) -> pathlib.Path:
    """A run folder with a random-weight paper-size model and the paper config (cached)."""
    import keras
    from model_cost import build_preset, perturb_context

    from pancseg_tf.config import apply_overrides, load_config, save_config

    run = ctx.work / f"paper-run-{ctx.sizes.paper_preset}"
    if (run / "model.keras").is_file():
        return run
    keras.utils.set_random_seed(0)
    model = build_preset(ctx.sizes.paper_preset)
    perturb_context(model)  # as training leaves it: every unit's weights non-zero
    tmp = run.with_name(run.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.keras")
    size = list(model.input_size)
    save_config(
        apply_overrides(load_config("paper"), [f"preprocess.size={size}"]), tmp / "config.yaml"
    )
    tmp.rename(run)
    return run


def _paper_estimate(ctx: Context, volume_path: pathlib.Path) -> dict[str, Any]:
    """``pancseg predict``'s time with the paper-size model, from its parts in this process.

    The host steps (read, geometry, normalisation, back to the input grid, post-processing,
    write) run in full on the paper config's grid; the network runs on a few slices of it and
    its time per slice is scaled to the volume's slice count on that grid.
    """
    import numpy as np
    from model_cost import build_preset

    from pancseg_tf.config import apply_overrides, load_config
    from pancseg_tf.inference import Segmenter, finish_segmentation
    from pancseg_tf.io import read_volume, write_nifti

    model = build_preset(ctx.sizes.paper_preset)
    preprocess = apply_overrides(
        load_config("paper"), [f"preprocess.size={list(model.input_size)}"]
    ).preprocess
    segmenter = Segmenter(model, preprocess)
    start = time.perf_counter()
    volume = read_volume(volume_path)
    plan = segmenter.plan(volume)
    image = segmenter.normalize(plan.forward(volume.array), volume)
    host = time.perf_counter() - start
    sample = image[:, :, : ctx.sizes.paper_sample_slices]
    segmenter._predict_once(sample)  # warm-up: oneDNN sets up per shape
    start = time.perf_counter()
    segmenter._predict_once(sample)
    per_slice = (time.perf_counter() - start) / sample.shape[2]
    start = time.perf_counter()
    # The network's output is replaced by zeros here: its time is the per-slice time above.
    probabilities = np.zeros(image.shape, dtype=np.float32)
    result = finish_segmentation(plan, probabilities, threshold=0.5, postprocess=True)
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        write_nifti(result.mask, volume, pathlib.Path(tmp) / "mask.nii.gz", dtype="uint8")
    host += time.perf_counter() - start
    slices = int(image.shape[2])
    return {
        "seconds": round(host + per_slice * slices, 1),
        "host_seconds": round(host, 2),
        "network_seconds_per_slice": round(per_slice, 3),
        "model_grid_shape": list(image.shape),
        "sampled_slices": int(sample.shape[2]),
        "method": "estimated: host steps in full + network seconds per slice (timed on "
        f"{sample.shape[2]} slices after a warm-up) x {slices} model-grid slices",
    }


def part_end_to_end(ctx: Context) -> dict[str, Any]:
    from predict_bench import predict_from_outside, step_split

    s = ctx.sizes
    trained = ctx.trained_model()
    path = ctx.synthetic_ct(s.ct_shape, s.ct_spacing)
    out = ctx.work / "out-end-to-end"
    shutil.rmtree(out, ignore_errors=True)
    quick = predict_from_outside(trained.run, path, out / "quick")
    details: dict[str, Any] = {
        "volume": {"shape": list(s.ct_shape), "spacing_mm": list(s.ct_spacing)},
        "quick_model": quick,
        "quick_model_steps": step_split(trained.run, path, out / "steps"),
    }
    figures: dict[str, Any] = {
        "ct_512x512x200_seconds": quick["case_seconds"],
        "ct_512x512x200_process_seconds": quick["process_seconds"],
        "ct_512x512x200_process_cpu_seconds": quick["process_cpu_seconds"],
    }
    if s.paper_sample_slices is None:
        paper = predict_from_outside(_paper_run(ctx), path, out / "paper")
        details["paper_model"] = paper
        figures["ct_512x512x200_seconds_paper"] = paper["case_seconds"]
    else:
        paper = _paper_estimate(ctx, path)
        details["paper_model"] = paper
        figures["ct_512x512x200_seconds_paper"] = (paper["seconds"], "estimated")
    details["paper_model"]["config"] = (
        f"{s.paper_preset} preset, random weights, paper config (0.8 mm, 1 mm slices)"
    )
    return {"figures": figures, "details": details}


def _real_data() -> pathlib.Path:
    """The shared real images: $PANCSEG_TEST_DATA, else ../shared/data beside the repository."""
    default = HERE.parent.parent / "shared" / "data"
    return pathlib.Path(os.environ.get("PANCSEG_TEST_DATA") or default)


def part_real_case(ctx: Context) -> dict[str, Any]:
    from predict_bench import predict_from_outside

    found = sorted((_real_data() / "nih_pancreas_ct" / "Pancreas-CT").glob("PANCREAS_0002/*/*"))
    series = [p for p in found if p.is_dir() and any(p.glob("*.dcm"))]
    if not series:
        return {"skipped": f"NIH Pancreas-CT 0002 not found under {_real_data()}", "details": {}}
    trained = ctx.trained_model()
    out = ctx.work / "out-real-case"
    shutil.rmtree(out, ignore_errors=True)
    quick = predict_from_outside(trained.run, series[0], out / "quick")
    paper = predict_from_outside(_paper_run(ctx), series[0], out / "paper")
    details = {
        "volume": "NIH Pancreas-CT 0002: DICOM series, 512 x 512 x 195, 0.898 mm, 1 mm slices",
        "quick_model": quick,
        "paper_model": paper,
    }
    details["paper_model"]["config"] = (
        f"{ctx.sizes.paper_preset} preset, random weights, paper config"
    )
    return {
        "figures": {
            "nih_0002_seconds": quick["case_seconds"],
            "nih_0002_seconds_paper": paper["case_seconds"],
        },
        "details": details,
    }


def part_serving(ctx: Context) -> dict[str, Any]:
    from pancseg_tf.io import read_volume
    from pancseg_tf.serving.constants import DEFAULT_CHUNK
    from serving import measure_serving

    s = ctx.sizes
    trained = ctx.trained_model()
    volume = read_volume(ctx.synthetic_ct(s.ct_shape, s.ct_spacing))
    work = ctx.work / "serving"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    label = "synthetic CT " + "x".join(str(v) for v in s.ct_shape)
    result = measure_serving(trained.run, volume, DEFAULT_CHUNK, work, label)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "figures": {
            "serving_time_ratio": result["serving_time_ratio"],
            "serving_bytes_per_volume": result["serving_bytes_per_volume"],
        },
        "details": result,
    }


def part_options(ctx: Context) -> dict[str, Any]:
    from network_speed import option_ratios

    s = ctx.sizes
    result = option_ratios(
        s.preset, s.preset_size, window=s.window, batch=s.batch, repeats=max(2, s.repeats)
    )
    return {
        "figures": {
            "xla_forward_speedup": result["xla"]["forward_speedup_cpu"],
            "xla_train_step_speedup": result["xla"]["train_step_speedup_cpu"],
            "bf16_forward_speedup": result["mixed_bfloat16"]["forward_speedup_cpu"],
            "bf16_train_step_speedup": result["mixed_bfloat16"]["train_step_speedup_cpu"],
        },
        "details": result,
    }


def part_bf16(ctx: Context) -> dict[str, Any]:
    from bf16_inference import compare

    trained = ctx.trained_model()
    result = compare(trained.run, trained.heldout, repeats=max(1, ctx.sizes.repeats - 1))
    return {
        "figures": {
            "bf16_inference_speedup": result["network_speedup_cpu"],
            "bf16_dsc_max_abs_delta": result["max_abs_dsc_delta"],
        },
        "details": result,
    }


def _json_child(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a benchmark script in its own process; its last stdout line block is JSON."""
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise RuntimeError(f"{pathlib.Path(command[1]).name} failed: {done.stderr[-2000:]}")
    start = done.stdout.index("{")
    return json.loads(done.stdout[start:])


def part_peer(ctx: Context) -> dict[str, Any]:
    import numpy as np
    from model_cost import build_preset, layer_costs, typical_conv_width

    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import Segmenter

    s = ctx.sizes
    model = build_preset(s.preset, s.preset_size)
    size = model.input_size[0]
    width = typical_conv_width(model.slice_cnn)
    command = [
        ctx.peer_python,
        str(HERE / "peer_monai.py"),
        "--size",
        str(size),
        "--slices",
        str(s.peer_slices),
        "--width",
        str(width),
        "--repeats",
        str(max(1, s.repeats - 1)),
    ]
    image = np.random.default_rng(0).random((size, size, s.peer_slices), dtype=np.float32)
    ours = Segmenter(model, PreprocessConfig(size=(size, size)))
    ours._predict_once(image[:, :, : 16 + (s.peer_slices % 16 or 16)])  # warm-up
    # Ours just before and just after MONAI's process, the best kept: side by side.
    walls, cpus = [], []

    def time_ours() -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        ours._predict_once(image)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)

    time_ours()
    peer = _json_child(command, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    if peer.get("status") != "ok":
        return {"skipped": peer.get("reason", "skipped"), "details": peer}
    time_ours()
    our_gflops = layer_costs(model)[0] * s.peer_slices / 1e9
    ours_report = {
        "model": f"ContextualSegmenter.from_preset({s.preset!r})",
        "path": "Segmenter one pass",
        "seconds": round(min(walls), 3),
        "cpu_seconds": round(min(cpus), 3),
        "rounds": [round(t, 3) for t in walls],
        "gflops": round(our_gflops, 2),
        "gflops_per_s": round(our_gflops / min(walls), 2),
        "gflops_per_cpu_s": round(our_gflops / min(cpus), 2),
    }
    details = {"monai": peer, "ours": ours_report}
    details["time_ratio_wall"] = round(peer["seconds"] / min(walls), 3)
    roofline = ctx.results.get("roofline", {}).get("details")
    if roofline:
        peak = roofline["peak_gflops_per_cpu_s"]
        fraction = peer["gflops_per_cpu_s"] / peak
        details["peak_used"] = f"our TF conv peak from part 1: {peak} GFLOP per CPU second"
        details["ours"]["fraction_of_peak"] = round(ours_report["gflops_per_cpu_s"] / peak, 4)
    else:
        fraction = peer["fraction_of_torch_conv_peak"]
        details["peak_used"] = "torch's own conv reference (part 1 did not run)"
    details["training"] = _peer_training(ctx, model, size)
    return {
        "figures": {
            "peer_time_ratio": peer["cpu_seconds"] / min(cpus),
            "peer_fraction_of_peak": fraction,
            "peer_train_speedup": details["training"]["speedup_cpu"],
        },
        "details": details,
    }


def _peer_training(ctx: Context, model, size: int, batch: int = 16) -> dict[str, Any]:
    """Training steps of our quick CNN (stage 1) beside MONAI's BasicUNet at equal FLOPs.

    Ours: the slice CNN, Adam, binary cross-entropy on its probability output, ``batch``
    random slices per step; MONAI's: `peer_monai.measure_training` with BasicUNet scaled to our
    CNN's forward FLOPs per slice. Ours runs just before and just after MONAI's process (best
    kept). Returns slices per CPU second of each and their ratio (above 1: ours is faster).
    """
    import keras
    import numpy as np
    from bench_common import interleaved_best
    from model_cost import layer_costs

    s = ctx.sizes
    steps = 2 if ctx.mode == "tiny" else 4
    repeats = max(1, s.repeats - 1)
    cnn = model.slice_cnn
    gflops = layer_costs(cnn)[0] / 1e9
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = (rng.random(x.shape) > 0.9).astype(np.float32)
    cnn.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss={"prob": keras.losses.BinaryCrossentropy()}
    )

    def ours() -> None:
        for _ in range(steps):
            cnn.train_on_batch(x, {"prob": y})

    first = interleaved_best({"ours": ours}, repeats, warmup=1)["ours"]
    command = [ctx.peer_python, str(HERE / "peer_monai.py"), "--size", str(size)]
    command += ["--train-gflops-per-slice", f"{gflops:.4f}", "--train-batch", str(batch)]
    command += ["--train-steps", str(steps), "--repeats", str(repeats)]
    peer = _json_child(command, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    second = interleaved_best({"ours": ours}, repeats, warmup=0)["ours"]
    cpu = min(first["cpu_s"], second["cpu_s"])
    wall = min(first["wall_s"], second["wall_s"])
    slices = batch * steps
    ours_report = {
        "network": f"SliceCNN of the {s.preset!r} preset (stage 1)",
        "step": f"Adam, binary cross-entropy on 'prob', batch {batch} of {size} x {size}",
        "gflops_per_slice": round(gflops, 3),
        "slices_timed": slices,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "slices_per_s": round(slices / wall, 2),
        "slices_per_cpu_s": round(slices / cpu, 2),
    }
    return {
        "ours": ours_report,
        "monai": peer,
        "speedup_cpu": round(ours_report["slices_per_cpu_s"] / peer["slices_per_cpu_s"], 3),
        "speedup_wall": round(ours_report["slices_per_s"] / peer["slices_per_s"], 3),
    }


def _gpu_visible() -> str | None:
    """Why no GPU can be used here (None when one is visible)."""
    if shutil.which("nvidia-smi") is None and not pathlib.Path("/dev/nvidia0").exists():
        return "no GPU visible on this machine (no nvidia-smi, no /dev/nvidia0)"
    return None


def part_gpu(ctx: Context) -> dict[str, Any]:
    presets = ["tiny"] if ctx.mode == "tiny" else ["quick", "paper"]
    if ctx.gpu_json is not None:
        # Measured on a GPU machine by `gpu_jax.py --json FILE` (it needs no TensorFlow).
        result = json.loads(ctx.gpu_json.read_text())
        result["source"] = f"read from {ctx.gpu_json.name} (gpu_jax.py run on the GPU machine)"
        presets = [p for p in presets if p in result.get("presets", {})] or presets
    else:
        reason = _gpu_visible()
        if reason:
            return {"skipped": reason, "details": {}}
        result = _json_child(
            [sys.executable, str(HERE / "gpu_jax.py"), "--presets", *presets],
            env={"KERAS_BACKEND": "jax"},
        )
    if result.get("status") != "ok":
        return {"skipped": result.get("reason", "skipped"), "details": result}
    first = result["presets"][presets[0]]
    return {
        "figures": {
            "gpu_train_windows_per_s": first.get("train_windows_per_s"),
            "gpu_inference_slices_per_s": first.get("inference_slices_per_s"),
        },
        "details": result,
    }


PART_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "roofline": part_roofline,
    "one_pass": part_one_pass,
    "time_distributed": part_time_distributed,
    "pipeline": part_pipeline,
    "memory": part_memory,
    "end_to_end": part_end_to_end,
    "real_case": part_real_case,
    "serving": part_serving,
    "options": part_options,
    "bf16": part_bf16,
    "peer": part_peer,
    "gpu": part_gpu,
}


# === Targets, report, table ===


def _met(target: str | None, value: Any) -> bool | None:
    """Evaluates a target of `FIGURES` ('>= 0.5', '< 4', ...) on a value."""
    if target is None or value is None or isinstance(value, str):
        return None
    op, _, number = target.partition(" ")
    try:
        bound = float(number.split()[0])
    except ValueError:
        return None
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound, ">": value > bound}[op]


def _to_figure(name: str, raw: Any, status: str = "ok") -> dict[str, Any]:
    """A part's raw figure (value, or (value, status), or (value, target, met)) as a figure."""
    _, unit, target = FIGURES[name]
    met = None
    if isinstance(raw, tuple) and len(raw) == 3:
        value, target, met = raw
    elif isinstance(raw, tuple):
        value, status = raw
    else:
        value = raw
    if value is not None and isinstance(value, float) and not math.isfinite(value):
        value = None
    if met is None:
        met = _met(target, value)
    if status == "estimated":
        met = None if target is None else met
    return figure(
        value, unit, target=target, met=met, status=status if value is not None else "failed"
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_parts(ctx: Context, names: list[str], report: dict[str, Any], write: Callable) -> None:
    """Runs the named parts in order, filling ``report`` and writing it after each part."""
    for name in names:
        log(f"part {PARTS.index(name) + 1}: {name}")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        entry: dict[str, Any] = {}
        try:
            out = PART_FUNCTIONS[name](ctx)
        except Exception as err:  # noqa: BLE001 - one part's failure must not stop the others
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:3000]}
            entry["traceback"] = traceback.format_exc()[-4000:]
            log(f"part {name} failed: {type(err).__name__}: {str(err)[:300]}")
            for key, (part, unit, target) in FIGURES.items():
                if part == name:
                    report[key] = figure(None, unit, target=target, status="failed")
        else:
            if "skipped" in out:
                entry = {"status": "skipped", "reason": out["skipped"]}
                for key, (part, unit, target) in FIGURES.items():
                    if part == name:
                        report[key] = figure(
                            None, unit, target=target, status="skipped", note=out["skipped"]
                        )
            else:
                entry = {"status": "ok"}
                for key, raw in out["figures"].items():
                    report[key] = _to_figure(key, raw)
            entry["details"] = out.get("details", {})
            ctx.results[name] = entry
        entry["seconds"] = round(time.perf_counter() - start, 1)
        # CPU seconds of this process and its finished children: on a loaded machine the wall
        # time says more about the other jobs; this says what the part costs.
        entry["cpu_seconds"] = round(_cpu_seconds() - cpu_start, 1)
        report["parts"][name] = entry
        log(
            f"part {name}: {entry['status']} in {entry['seconds']} s ({entry['cpu_seconds']} CPU s)"
        )
        write(report)


def _cause(name: str, report: dict[str, Any]) -> str | None:
    """The measured cause of a missed target, from the part's details (None if unknown)."""
    details = report["parts"].get(FIGURES[name][0], {}).get("details", {})
    if name == "roofline_fraction" and details:
        parts = details["parts"]
        return (
            f"the CNN runs at {parts['cnn']['fraction_of_peak']:.0%} of the peak and the "
            f"ConvLSTM at {parts['convlstm']['fraction_of_peak']:.0%} "
            f"({parts['convlstm']['time_share']:.0%} of the CPU time for "
            f"{parts['convlstm']['flop_share']:.0%} of the FLOPs), timed part by part"
        )
    if name == "ct_512x512x200_seconds" and details.get("quick_model_steps"):
        steps = details["quick_model_steps"]
        slowest = max(steps["seconds"], key=steps["seconds"].get)
        text = (
            f"{slowest} takes {steps['shares'][slowest]:.0%} of the steps' "
            f"{steps['total_seconds']:.1f} s ({steps['seconds'][slowest]:.1f} s)"
        )
        if "tiles" not in steps:
            return text
        text += (
            f"; the body fills a {steps['model_grid_shape'][0]} x "
            f"{steps['model_grid_shape'][1]} model grid, run as {steps['tiles']} "
            f"overlapping tiles in chunks of {steps['chunk']} slices"
        )
        roofline = report["parts"].get("roofline", {}).get("details") or {}
        passes = steps.get("network_slice_passes")
        if passes and roofline.get("inference"):
            # The FLOPs the network must run at the peak of every core: the floor of the step.
            per_slice = roofline["inference"]["gflops"] / roofline["inference"]["network_slices"]
            cores = report.get("machine", {}).get("cores") or 1
            floor = passes * per_slice / roofline["peak_gflops_per_cpu_s"] / cores
            target = FIGURES[name][2].split()[-1]  # "<= 4" -> "4"
            height, width = roofline["input_size"]
            text += (
                f": {passes} model-size slice passes, {passes * per_slice:.0f} GFLOP, which "
                f"take {floor:.1f} s at the conv peak on all {cores} cores before any other "
                f"step (the {target} s target counted one {height} x {width} field, "
                f"{steps['model_grid_shape'][2]} passes)"
            )
        return text
    if name == "pipeline_overhead" and details:
        training = details["training"]
        return (
            f"CPU share of the pipeline {training['pipeline_cpu_share']:.0%}; steps/s "
            f"{training['steps_per_s']}: the rounds vary with the machine's load"
        )
    if name == "serving_time_ratio" and details:
        return (
            f"gRPC {details['serving_seconds']} s vs in process {details['in_process_seconds']} s "
            f"for {details['serving_bytes_per_volume'] / 1e6:.1f} MB on the wire"
        )
    return None


def summarize_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name in FIGURES:
        entry = report.get(name)
        if not entry or entry["target"] is None:
            continue
        row = {
            "figure": name,
            "value": entry["value"],
            "target": entry["target"],
            "met": entry["met"],
            "status": entry["status"],
        }
        if entry["met"] is False:
            row["cause"] = _cause(name, report)
        targets.append(row)
    return targets


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _wide_table(head: str, columns: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A Markdown table with one column per name and one row per entry of ``rows``."""
    lines = [f"| {head} | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    return lines + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]


def markdown(report: dict[str, Any]) -> str:
    """The figures as a Markdown table with the command and machine above it."""
    m = report["machine"]
    commit = (report.get("commit") or "unknown")[:7]
    config = (report.get("config_sha256") or "unknown")[:12]
    lines = [
        f"`{report['command']}` ({report['mode']} mode, {report['seconds']:.0f} s, "
        f"{report['finished']}; commit `{commit}`, model config sha256 `{config}`)",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu_model']}; TensorFlow "
        f"{m.get('tensorflow')}, Keras {m.get('keras')}; load average (1, 5, 15 min) "
        f"{m['load_average_start']} at start, {m['load_average_end']} at end.",
        "",
        "| figure | value | unit | target | met |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for name in FIGURES:
        entry = report[name]
        if entry["status"] in ("skipped", "failed", "not run"):
            value = entry["status"]
        else:
            value = _format(entry["value"]) + (" (est.)" if entry["status"] == "estimated" else "")
        met = {True: "yes", False: "**no**", None: "-"}[entry["met"]]
        lines.append(f"| {name} | {value} | {entry['unit']} | {entry['target'] or '-'} | {met} |")
    roofline = report["parts"].get("roofline", {}).get("details")
    if roofline:
        inference = roofline["inference"]
        lines += [
            "",
            f"Roofline parts ({roofline['slices']} slices at "
            f"{roofline['input_size'][0]}x{roofline['input_size'][1]}, conv peak "
            f"{roofline['peak_gflops_per_cpu_s']} GFLOP per CPU second; {inference['path']}: "
            f"{inference['network_slices']} slice passes, {inference['gflops']} GFLOPs): share "
            "of the CPU time, share of the FLOPs and fraction of the peak of each part, timed "
            "part by part in the same composition:",
            "",
            "| part | GFLOPs | time | FLOPs | of peak |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, part in roofline["parts"].items():
            lines.append(
                f"| {name} | {part['gflops']:.1f} | {part['time_share']:.1%} "
                f"| {part['flop_share']:.1%} | {part['fraction_of_peak']:.1%} |"
            )
    end_to_end = report["parts"].get("end_to_end", {}).get("details") or {}
    steps = end_to_end.get("quick_model_steps")
    if steps:
        names = list(steps["seconds"])
        lines += [
            "",
            f"`pancseg predict`'s steps on the {'x'.join(map(str, end_to_end['volume']['shape']))}"
            f" CT with the quick model, in one process ({steps['rounds']}; "
            f"{steps['total_seconds']:.2f} s in all):",
            "",
            *_wide_table(
                "step",
                names,
                {
                    "wall s": [f"{steps['seconds'][n]:.2f}" for n in names],
                    "CPU s": [f"{steps['cpu_seconds'][n]:.2f}" for n in names],
                    "share": [f"{steps['shares'][n]:.0%}" for n in names],
                },
            ),
        ]
    one_pass = report["parts"].get("one_pass", {}).get("details")
    if one_pass:
        chunks = one_pass["dsc_by_chunk"]
        lines += [
            "",
            f"DSC by chunk length ({len(one_pass['cases'])} held-out synthetic CTs; windows: "
            f"T = {one_pass['window']}, stride 1, DSC {one_pass['dsc_naive_windows']:.4f} in "
            f"{one_pass['seconds_naive_windows']:.1f} s per volume):",
            "",
            *_wide_table(
                "chunk",
                list(chunks),
                {
                    "DSC": [f"{v:.4f}" for v in chunks.values()],
                    "s per volume": [f"{v:.2f}" for v in one_pass["seconds_by_chunk"].values()],
                },
            ),
        ]
    skipped = [(k, v) for k, v in report["parts"].items() if v["status"] == "skipped"]
    failed = [(k, v) for k, v in report["parts"].items() if v["status"] == "failed"]
    misses = [t for t in report["targets"] if t["met"] is False]
    if skipped or failed or misses:
        lines.append("")
    for name, entry in skipped:
        lines.append(f"- {name} skipped: {entry['reason']}")
    for name, entry in failed:
        lines.append(f"- {name} failed: {entry['error'][:300]}")
    for row in misses:
        lines.append(f"- {row['figure']} missed ({row['target']}): {row.get('cause') or '?'}")
    return "\n".join(lines) + "\n"


def readme_block(report: dict[str, Any]) -> str:
    """The README's generated block for a report: the markers around `markdown`."""
    return f"{README_BEGIN}\n\n{markdown(report)}\n{README_END}"


def write_readme_block(readme: pathlib.Path, report: dict[str, Any]) -> None:
    """Replaces the README's block between `README_BEGIN` and `README_END` (atomically).

    Raises:
        SystemExit: the README lacks the two markers, in that order, once each.
    """
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin or text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise SystemExit(f"{readme}: no single benchmarks block to replace (its markers)")
    new = text[:begin] + readme_block(report) + text[end + len(README_END) :]
    tmp = readme.with_name(readme.name + ".partial")
    tmp.write_text(new)
    tmp.replace(readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller runs: under 15 minutes on 2 cores"
    )
    size.add_argument(
        "--tiny", action="store_true", help="tiny models and volumes: a smoke test of the harness"
    )
    parser.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS)}")
    parser.add_argument("--json", type=pathlib.Path, help="write the report here")
    parser.add_argument("--md", type=pathlib.Path, help="write the Markdown table here")
    parser.add_argument(
        "--work",
        type=pathlib.Path,
        default=pathlib.Path(tempfile.gettempdir()) / "pancseg-bench",
        help="folder for the trained model, synthetic CTs and scratch (reused; default "
        "<temp>/pancseg-bench)",
    )
    parser.add_argument(
        "--gpu-json",
        type=pathlib.Path,
        help="part 10 from this file: the JSON `gpu_jax.py --json FILE` wrote on a GPU machine",
    )
    parser.add_argument(
        "--render",
        type=pathlib.Path,
        help="measure nothing: rewrite the targets and the table of this report (--md, or print)",
    )
    parser.add_argument(
        "--peer-python",
        type=pathlib.Path,
        help="the Python that runs MONAI's part (part 9; default this one): torch and MONAI "
        "can live in their own environment, they never share a process with TensorFlow",
    )
    parser.add_argument(
        "--readme",
        type=pathlib.Path,
        help="rewrite the generated benchmarks block of this README from the report",
    )
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        report["targets"] = summarize_targets(report)
        args.render.write_text(json.dumps(report, indent=2, default=str) + "\n")
        table = markdown(report)
        if args.md:
            args.md.write_text(table)
        if args.readme:
            write_readme_block(args.readme, report)
        print(table)
        return 0
    names = list(PARTS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in PARTS]
        if unknown or not names:
            parser.error(f"--only: unknown part(s) {unknown}; expected some of {','.join(PARTS)}")
        names = [n for n in PARTS if n in names]  # the order
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    args.work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    machine = machine_info()
    machine["load_average_start"] = load_average()
    from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    import pancseg_tf

    machine.update(
        tensorflow=tf.__version__,
        keras=keras.__version__,
        keras_backend=keras.config.backend(),
        pancseg_tf=pancseg_tf.__version__,
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() or "default",
    )
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {
        "schema": "pancseg_tf benchmarks/run.py report, version 1",
        "command": command.strip(),
        "mode": mode,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    for name, (_, unit, target) in FIGURES.items():
        report[name] = figure(None, unit, target=target, status="not run")
    report.update(machine=machine, model_config=None, sizes=dataclasses.asdict(SIZES[mode]))
    report["parts"] = {}
    ctx = Context(mode, args.work)
    ctx.gpu_json = args.gpu_json
    ctx.peer_python = str(args.peer_python or sys.executable)

    def write(current: dict[str, Any]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".partial")
            tmp.write_text(json.dumps(current, indent=2, default=str) + "\n")
            tmp.replace(args.json)

    run_parts(ctx, names, report, write)
    if ctx._trained is not None:
        from pancseg_tf.config import load_config

        trained = ctx._trained
        report["model_config"] = {
            "trained": trained.info,
            "config": load_config(trained.run / "config.yaml").to_dict(),
        }
    else:
        report["model_config"] = {
            "trained": None,
            "config": _trained_config(
                TrainedModel(
                    args.work, args.work, args.work, args.work, SIZES[mode].train_overrides, {}
                )
            ).to_dict(),
        }
    report["model_config"]["default_model"] = (
        f"ContextualSegmenter.from_preset({SIZES[mode].preset!r}) (parts 1, 3, 8, 9)"
    )
    config_path = None if ctx._trained is None else ctx._trained.run / "config.yaml"
    report["provenance"] = provenance(
        config_path, argv=["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    report["commit"] = report["provenance"]["git_commit"]
    report["config_sha256"] = report["provenance"]["config_sha256"]
    machine["load_average_end"] = load_average()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    report["targets"] = summarize_targets(report)
    write(report)
    table = markdown(report)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    if args.readme:
        write_readme_block(args.readme, report)
    print(table)
    failed = [n for n, p in report["parts"].items() if p["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
