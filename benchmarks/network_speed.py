"""The contextual model's speed per training window, built two ways and run with two options.

1. Batched CNN vs ``TimeDistributed`` (`batched_vs_time_distributed`): the
   `ContextualSegmenter` as built (the slice axis folded into the batch: the CNN runs on all
   ``B x T`` slices of a window as one call, the package's way) against its twin built here from
   the same model's parts and weights (`time_distributed_twin`: ``keras.layers.TimeDistributed``
   around the per-slice parts, the textbook way); both must give the same probabilities before
   they are timed. Time per window of a compiled forward pass (``predict_on_batch``, inference
   mode) and of a compiled training step (``train_on_batch``: forward, backward and an SGD
   update) on ``(batch, window, H, W, 1)``.
2. Options (`option_ratios`): XLA (``jit_compile=True``) against off, and the
   ``mixed_bfloat16`` dtype policy against float32, on the same forward pass and training step.

Each comparison builds both models, then times them in alternating rounds (the best round of
each is kept), so the ratios hold on a shared, noisy machine. A ratio is
``seconds(reference) / seconds(candidate)``: above 1, the candidate is faster; ``*_cpu`` ratios
use this process's CPU seconds (all threads), which other jobs on the machine do not change.

Usage::

    python benchmarks/network_speed.py                         # quick at 256 x 256, both parts
    python benchmarks/network_speed.py --preset tiny --size 64 --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, interleaved_best  # noqa: E402

from pancseg_tf.models import ContextualSegmenter, SliceCNN  # noqa: E402
from pancseg_tf.models.contextual import CONTEXT  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)


def build(preset: str, size: int | None, *, dtype: str | None = None) -> ContextualSegmenter:
    """A `ContextualSegmenter` preset at ``size`` x ``size`` (None: the preset's own size)."""
    size_kw = {} if size is None else {"input_size": (size, size)}
    cnn = SliceCNN.from_preset(preset, dtype=dtype, **size_kw)
    return ContextualSegmenter.from_preset(preset, slice_cnn=cnn, dtype=dtype)


def time_distributed_twin(model: ContextualSegmenter) -> keras.Model:
    """``model`` rebuilt the textbook way, sharing its layers (and so its weights).

    ``keras.layers.TimeDistributed`` around the per-slice encoder (reduced to its ``"context"``
    output: TimeDistributed wraps single-output layers), the model's own `sequence_context`,
    then ``TimeDistributed`` around `slice_head`. Same computation as ``model``'s ``"prob"``
    (batch normalisation aside in training mode: there it sees one slice position at a time).

    Returns:
        A functional model ``(B, T, H, W, 1) -> {"prob": (B, T, H, W, 1)}``.
    """
    height, width = model.input_size
    slice_in = keras.Input((height, width, 1), name="slice")
    context_of = keras.Model(slice_in, model.slice_encoder(slice_in)[CONTEXT], name="slice_context")
    slices = keras.Input((None, height, width, 1), name="slices")
    context = keras.layers.TimeDistributed(context_of, name="td_slice_context")(slices)
    sequence = model.sequence_context(context)
    prob = keras.layers.TimeDistributed(model.slice_head, name="td_slice_head")(sequence)
    return keras.Model(slices, {"prob": prob}, name="time_distributed_twin")


def random_windows(
    model: keras.Model, batch: int, window: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One random window batch ``(batch, window, H, W, 1)`` in [0, 1] and a sparse {0, 1} mask."""
    height, width = model.input_shape[-3:-1]
    rng = np.random.default_rng(seed)
    x = rng.random((batch, window, height, width, 1), dtype=np.float32)
    y = (rng.random(x.shape) > 0.9).astype(np.float32)
    return x, y


def window_calls(
    model: keras.Model, batch: int, window: int, *, jit_compile: bool = False, seed=0
) -> dict[str, Any]:
    """The compiled forward pass and training step of ``model`` on one random window batch.

    Returns:
        ``{"forward": fn, "train_step": fn}``, functions of no argument.
    """
    x, y = random_windows(model, batch, window, seed)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss={"prob": keras.losses.BinaryCrossentropy()},
        jit_compile=jit_compile,
    )
    return {
        "forward": lambda: model.predict_on_batch(x),
        "train_step": lambda: model.train_on_batch(x, {"prob": y}),
    }


def _compare(
    reference: dict[str, Any], candidate: dict[str, Any], names: tuple[str, str], repeats: int
) -> dict[str, Any]:
    """Times two models' forward and training step side by side; ratios reference/candidate."""
    ref_name, cand_name = names
    functions = {}
    for call in ("forward", "train_step"):
        functions[f"{ref_name}_{call}"] = reference[call]
        functions[f"{cand_name}_{call}"] = candidate[call]
    best = interleaved_best(functions, repeats)
    result: dict[str, Any] = {"seconds": {k: round(v["wall_s"], 4) for k, v in best.items()}}
    result["cpu_seconds"] = {k: round(v["cpu_s"], 4) for k, v in best.items()}
    for call in ("forward", "train_step"):
        ref, cand = best[f"{ref_name}_{call}"], best[f"{cand_name}_{call}"]
        result[f"{call}_ratio"] = round(ref["wall_s"] / cand["wall_s"], 3)
        result[f"{call}_ratio_cpu"] = round(ref["cpu_s"] / cand["cpu_s"], 3)
    return result


def batched_vs_time_distributed(
    preset: str = "quick",
    size: int | None = None,
    window: int = 5,
    batch: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """Batched CNN vs ``TimeDistributed``: seconds per window, forward and training step.

    Both are the same model (`time_distributed_twin` shares its weights); their forward passes
    must agree (largest difference at most 1e-5) before anything is timed. Each has its own
    optimizer, so their training steps move their shared weights alternately: the speed does not
    depend on the values.

    Returns:
        ``forward_speedup`` and ``train_step_speedup`` (TimeDistributed seconds / batched
        seconds; above 1 the batched model is faster), the seconds per call of both, the
        largest difference between their outputs, and the shapes.

    Raises:
        AssertionError: when the two builds' probabilities differ.
    """
    model = build(preset, size)
    twin = time_distributed_twin(model)
    x, _ = random_windows(model, batch, window)
    difference = float(
        np.max(np.abs(model.predict_on_batch(x)["prob"] - twin.predict_on_batch(x)["prob"]))
    )
    if not difference <= 1e-5:
        raise AssertionError(
            f"the TimeDistributed twin differs from the batched model by {difference:g} "
            "(expected the same output, up to 1e-5)"
        )
    batched = window_calls(model, batch, window)
    distributed = window_calls(twin, batch, window)
    compared = _compare(distributed, batched, ("time_distributed", "batched"), repeats)
    return {
        "preset": preset,
        "input_shape": list(x.shape),
        "repeats": repeats,
        "max_abs_difference": difference,
        "forward_speedup": compared["forward_ratio"],
        "train_step_speedup": compared["train_step_ratio"],
        "forward_speedup_cpu": compared["forward_ratio_cpu"],
        "train_step_speedup_cpu": compared["train_step_ratio_cpu"],
        "seconds_per_window": {k: round(v / batch, 4) for k, v in compared["seconds"].items()},
        "cpu_seconds_per_window": {
            k: round(v / batch, 4) for k, v in compared["cpu_seconds"].items()
        },
        "train_step": "train_on_batch: forward, backward, SGD update (compiled, float32)",
        "forward": "predict_on_batch (compiled, inference mode, float32)",
    }


def option_ratios(
    preset: str = "quick",
    size: int | None = None,
    window: int = 5,
    batch: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """XLA on vs off and ``mixed_bfloat16`` vs float32, each as a speed ratio (off / on).

    Returns:
        ``{"xla": {...}, "mixed_bfloat16": {...}}``, each with ``forward_speedup`` and
        ``train_step_speedup`` (seconds off / seconds on: above 1 the option is faster).
    """
    out: dict[str, Any] = {"preset": preset, "batch": batch, "window": window, "repeats": repeats}
    plain = window_calls(build(preset, size), batch, window)
    xla = window_calls(build(preset, size), batch, window, jit_compile=True)
    compared = _compare(plain, xla, ("off", "on"), repeats)
    out["xla"] = {
        "forward_speedup": compared["forward_ratio"],
        "train_step_speedup": compared["train_step_ratio"],
        "forward_speedup_cpu": compared["forward_ratio_cpu"],
        "train_step_speedup_cpu": compared["train_step_ratio_cpu"],
        "seconds": compared["seconds"],
        "cpu_seconds": compared["cpu_seconds"],
        "option": "model.compile(jit_compile=True) vs False",
    }
    bf16 = window_calls(build(preset, size, dtype="mixed_bfloat16"), batch, window)
    compared = _compare(plain, bf16, ("off", "on"), repeats)
    out["mixed_bfloat16"] = {
        "forward_speedup": compared["forward_ratio"],
        "train_step_speedup": compared["train_step_ratio"],
        "forward_speedup_cpu": compared["forward_ratio_cpu"],
        "train_step_speedup_cpu": compared["train_step_ratio_cpu"],
        "seconds": compared["seconds"],
        "cpu_seconds": compared["cpu_seconds"],
        "option": "dtype='mixed_bfloat16' (the ConvLSTM stays float32) vs float32",
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="ContextualSegmenter preset")
    parser.add_argument("--size", type=int, default=None, help="square input size")
    parser.add_argument("--window", type=int, default=5, help="slices per window (default 5)")
    parser.add_argument("--batch", type=int, default=2, help="windows per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--part", choices=("time_distributed", "options", "both"), default="both")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    kwargs = dict(
        preset=args.preset,
        size=args.size,
        window=args.window,
        batch=args.batch,
        repeats=args.repeats,
    )
    result: dict[str, Any] = {}
    if args.part in ("time_distributed", "both"):
        result["batched_vs_time_distributed"] = batched_vs_time_distributed(**kwargs)
    if args.part in ("options", "both"):
        result["options"] = option_ratios(**kwargs)
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
