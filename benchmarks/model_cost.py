"""Parameters, FLOPs and activation memory per slice of the network: CNN, ConvLSTM, head.

Counts are static, from the layers' shapes: FLOPs of convolutions only (multiply-add = 2 FLOPs;
batch norm, activations, pooling, upsampling and the LSTM gate arithmetic are left out), per
slice of the given input size; activation memory is the float32 layer outputs a training step
keeps for the backward pass, per slice (for the ConvLSTM: its four gates, cell and hidden state
per step and direction). The parts are the `ContextualSegmenter`'s three: "CNN" is
`slice_encoder` (the `SliceCNN` and the pooling of its probability), "ConvLSTM" is
`sequence_context` (the bidirectional ConvLSTM), "head" is `slice_head` (upsampling, the 1x1
``head_conv``, the sigmoid).

With ``--time`` it also measures, in CPU seconds of this process (robust on a shared machine),
forward passes (compiled, inference mode) of each part and a training step on one window of
``--window`` slices at the quick CNN's 256 x 256, for several ConvLSTM resolutions, and a plain
3x3 convolution as the machine's conv reference, so each part's FLOP rate can be compared.

With ``--roofline`` it measures the machine's peak for this workload (a float32 3x3 convolution
at the model's typical width, `conv_peak`) against the FLOP rate that whole-volume inference
(`pancseg_tf.inference.Segmenter`, what ``pancseg predict`` runs) achieves on a
``--slices``-slice volume, timed side by side (`roofline`); ``benchmarks/run.py`` part 1.

Usage::

    python benchmarks/model_cost.py                # the presets' tables (about a minute)
    python benchmarks/model_cost.py --time         # + design options and forward timings
    python benchmarks/model_cost.py --time --json benchmarks/results/model_cost.json
    python benchmarks/model_cost.py --roofline --slices 200
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import interleaved_best, timed  # noqa: E402

from pancseg_tf.models import ContextualSegmenter, SliceCNN  # noqa: E402
from pancseg_tf.models.blocks import FoldTime, UnfoldTime  # noqa: E402
from pancseg_tf.models.contextual import CONTEXT  # noqa: E402

# Each model's first predict traces a new function; TensorFlow's retracing notice is noise here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

BYTES = 4  # float32 activations
# Layers whose outputs are views or are not kept for the backward pass.
_NOT_STORED = (keras.layers.InputLayer, FoldTime, UnfoldTime)
#: The model's three parts, as `preset_costs` and `roofline` name them, and the attribute of each.
PARTS = {"cnn": "slice_encoder", "convlstm": "sequence_context", "head": "slice_head"}
#: Each preset at the sizes its numbers are quoted for (README, model docstring).
PRESET_SIZES = (("quick", 128), ("quick", 256), ("paper", 512))


def _pixels(shape: tuple) -> int:
    """Spatial size of a per-slice tensor `(N, H, W, C)` or a sequence `(B, T, H, W, C)`."""
    return int(shape[-3] * shape[-2])


def layer_costs(model: keras.Model) -> tuple[int, int]:
    """Conv FLOPs and stored activation bytes per slice of a functional model (recursive).

    Args:
        model: a built functional model with static spatial sizes.

    Returns:
        ``(flops, activation_bytes)`` per slice.
    """
    flops = 0
    memory = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            sub_flops, sub_memory = layer_costs(layer)
            flops += sub_flops
            memory += sub_memory
            continue
        if isinstance(layer, _NOT_STORED):
            continue
        out_shape = tuple(layer.output.shape)
        in_shape = tuple(layer.input.shape) if not isinstance(layer.input, list) else None
        if isinstance(layer, keras.layers.Bidirectional):
            cell = layer.forward_layer
            filters = cell.filters
            kernel = math.prod(cell.kernel_size)
            channels_in = in_shape[-1]
            per_pixel = 2 * kernel * (channels_in + filters) * 4 * filters
            flops += 2 * per_pixel * _pixels(out_shape)
            # Per step and direction: 4 gates, cell and hidden state, kept for backprop in time.
            memory += 2 * 6 * filters * _pixels(out_shape) * BYTES
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            kernel = math.prod(layer.kernel_size)
            flops += 2 * kernel * in_shape[-1] * out_shape[-1] * _pixels(in_shape)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv3D)):
            kernel = math.prod(layer.kernel_size)
            flops += 2 * kernel * in_shape[-1] * out_shape[-1] * _pixels(out_shape)
        memory += math.prod(out_shape[-3:]) * BYTES
    return flops, memory


def preset_costs(name: str, input_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Static costs of a `ContextualSegmenter` preset, per part (`PARTS`).

    Args:
        name: the preset.
        input_size: square slice size (None: the preset's own).
        **overrides: `ContextualSegmenter` keywords on top of the preset (``lstm_resolution``...).

    Returns:
        ``{part}_params``, ``{part}_gflops_per_slice`` and ``{part}_activation_mb_per_slice`` for
        ``cnn``, ``convlstm`` and ``head``, and ``sequence_inference_gb_per_600_slices``.
    """
    model = build_preset(name, input_size, **overrides)
    row: dict[str, Any] = {
        "preset": name,
        "overrides": overrides,
        "input_size": list(model.input_size),
    }
    total_flops = 0
    for part, attribute in PARTS.items():
        sub_model = getattr(model, attribute)
        flops, memory = layer_costs(sub_model)
        total_flops += flops
        row[f"{part}_params"] = sub_model.count_params()
        row[f"{part}_gflops_per_slice"] = flops / 1e9
        row[f"{part}_activation_mb_per_slice"] = memory / 2**20
    if total_flops != layer_costs(model)[0]:  # the three parts are the whole model
        raise AssertionError("the parts' FLOPs do not add up to the model's")
    # Inference over a whole volume: the bidirectional pass holds the sequence part for every
    # slice at once (its input and both directions' outputs).
    sequence = model.sequence_context
    sequence_elements = sum(
        math.prod(tuple(tensor.shape)[-3:]) for tensor in [*sequence.inputs, *_outputs(sequence)]
    )
    row["sequence_inference_gb_per_600_slices"] = 600 * sequence_elements * BYTES / 2**30
    return row


def _outputs(model: keras.Model) -> list:
    """Output tensors of every layer of a functional model (not its input layers)."""
    return [
        layer.output for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
    ]


def _best_time(function: Any, repeats: int) -> float:
    """Least CPU seconds (all threads of this process) of ``repeats`` calls, after a warm-up.

    CPU time rather than wall time: on a machine shared with other jobs it still measures this
    process's work, so the parts can be compared with each other and with the conv reference.
    """
    function()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def conv_reference_gflops(repeats: int) -> float:
    """FLOPs per CPU second of a plain 3x3 conv 64 -> 64, batch 4 at 256 x 256."""
    inputs = keras.Input((256, 256, 64))
    model = keras.Model(inputs, keras.layers.Conv2D(64, 3, padding="same")(inputs))
    x = np.random.default_rng(0).random((4, 256, 256, 64), dtype=np.float32)
    seconds = _best_time(lambda: model.predict_on_batch(x), repeats)
    return 2 * 9 * 64 * 64 * 256 * 256 * 4 / seconds / 1e9


def build_preset(
    preset: str, input_size: int | None = None, **overrides: Any
) -> ContextualSegmenter:
    """A `ContextualSegmenter` preset, at its own input size or at ``input_size`` (square);
    ``overrides`` are `ContextualSegmenter` keywords on top of the preset."""
    if input_size is None:
        return ContextualSegmenter.from_preset(preset, **overrides)
    cnn = SliceCNN.from_preset(preset, input_size=(input_size, input_size))
    return ContextualSegmenter.from_preset(preset, slice_cnn=cnn, **overrides)


def perturb_context(model: ContextualSegmenter, scale: float = 0.05, seed: int = 0) -> None:
    """Adds Gaussian noise (standard deviation ``scale``) to the ConvLSTM's and the head's weights.

    A random-weight model as built is `ContextualSegmenter.start_as_cnn`'s: the head reads one
    unit per direction, and that unit has no recurrent weights. Training moves every weight, so
    a benchmark model that stands for a trained one gets them all non-zero: every unit's state
    then reaches the output, through the recurrence along the slices.
    """
    rng = np.random.default_rng(seed)
    for part in (model.sequence_context, model.slice_head):
        for weight in part.weights:
            value = keras.ops.convert_to_numpy(weight)
            weight.assign(value + rng.normal(0.0, scale, value.shape).astype(value.dtype))


def typical_conv_width(model: keras.Model) -> int:
    """FLOP-weighted median output width of the 3x3 `Conv2D` layers of a functional model.

    The width at which a reference convolution stands for the model's bulk: half the model's
    3x3 conv FLOPs are in layers at most this wide.
    """
    rows: list[tuple[int, int]] = []  # (flops per slice, filters)

    def walk(graph: keras.Model) -> None:
        for layer in graph.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (3, 3):
                out_shape = tuple(layer.output.shape)
                flops = 2 * 9 * layer.input.shape[-1] * out_shape[-1] * _pixels(out_shape)
                rows.append((flops, int(out_shape[-1])))

    walk(model)
    if not rows:
        raise ValueError("the model has no 3x3 Conv2D layer")
    rows.sort(key=lambda row: row[1])
    half, running = sum(f for f, _ in rows) / 2, 0
    for flops, width in rows:
        running += flops
        if running >= half:
            return width
    return rows[-1][1]


def conv_peak(width: int, size: tuple[int, int], batch: int = 4, seed: int = 0):
    """The machine's reference for this workload: a float32 3x3 conv ``width -> width``.

    Compiled once (``tf.function``) on a constant ``(batch, H, W, width)`` input whose result
    stays a tensor: nothing but the convolution is timed.

    Returns:
        ``(function, flops)``: the function of no argument and the FLOPs of one call
        (multiply-add = 2).
    """
    import tensorflow as tf

    layer = keras.layers.Conv2D(width, 3, padding="same")
    x = tf.constant(np.random.default_rng(seed).random((batch, *size, width), dtype=np.float32))
    layer.build(x.shape)
    call = tf.function(lambda t: layer(t))
    flops = 2 * 9 * width * width * size[0] * size[1] * batch
    return (lambda: call(x).shape), flops


def roofline(
    preset: str = "quick",
    input_size: int | None = None,
    slices: int = 200,
    repeats: int = 2,
    slice_batch: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Whole-volume inference's FLOP rate against the conv peak, timed side by side.

    Inference is `Segmenter`'s one pass (what ``pancseg predict`` runs on the model grid: the
    CNN on batches of ``slice_batch`` slices, the bidirectional ConvLSTM once over all slices,
    the head per batch) on a random ``(H, W, slices)`` volume in [0, 1] (dense convolutions
    take as long whatever the values). The same composition is also timed part by part. FLOPs
    are the model's convolutions counted by `layer_costs` (batch norm, activations, pooling
    and the LSTM gates' element-wise arithmetic are work the count leaves out). Rates are per
    CPU second of this process (all threads), so that other jobs on a shared machine do not
    change them; per wall-clock second beside them. The conv
    peak (`conv_peak` at `typical_conv_width`, called as many times as make the inference's
    FLOPs), the inference and its parts run in alternating rounds after a warm-up on a short
    volume; the best round of each is kept.

    Returns:
        A dict with ``roofline_fraction`` (achieved FLOPs per CPU second of this process over
        the peak's, all threads: what other jobs on a shared machine do not change),
        ``roofline_fraction_wall`` (the same per wall-clock second), the peak, the
        inference and, under ``parts``, the CNN (``slice_encoder``), the ConvLSTM
        (``sequence_context``) and the head (``slice_head``), each with its share of time and
        FLOPs, called
        eagerly; under ``compiled`` the same parts as `Segmenter` calls them (each through a
        ``tf.function``), timed in the same rounds.
    """
    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import Segmenter

    model = build_preset(preset, input_size)
    height, width = model.input_size
    conv_width = typical_conv_width(model.slice_cnn)
    peak_call, peak_flops = conv_peak(conv_width, (height, width), seed=seed)
    flops = {part: layer_costs(getattr(model, name))[0] * slices for part, name in PARTS.items()}
    total_flops = sum(flops.values())
    # The reference runs as many FLOPs as the inference, so both see a shared machine's load
    # for as long (a short reference would catch a quiet moment a long inference cannot).
    conv_calls = max(1, round(total_flops / peak_flops))
    image = np.random.default_rng(seed).random((height, width, slices), dtype=np.float32)
    segmenter = Segmenter(model, PreprocessConfig(size=(height, width)), slice_batch=slice_batch)
    ways = {"eager": eager_parts(model), "compiled": compiled_parts(model)}
    part_times: dict[str, dict[str, list[tuple[float, float]]]] = {
        way: {part: [] for part in PARTS} for way in ways
    }

    def by_parts(volume: np.ndarray, way: str) -> None:
        # Segmenter._run_contextual's composition, with a clock around each part.
        encode, sequence_context, head = ways[way]
        times = part_times[way]
        stack = np.ascontiguousarray(np.moveaxis(volume, 2, 0)[..., None])
        batches = range(0, stack.shape[0], slice_batch)
        contexts = []
        wall, cpu, _ = timed(
            lambda: contexts.extend(encode(stack[i : i + slice_batch]) for i in batches)
        )
        times["cnn"].append((wall, cpu))
        context_sequence = np.concatenate(contexts, axis=0)[None]
        wall, cpu, sequence = timed(lambda: sequence_context(context_sequence)[0])
        times["convlstm"].append((wall, cpu))
        wall, cpu, _ = timed(lambda: [head(sequence[i : i + slice_batch]) for i in batches])
        times["head"].append((wall, cpu))

    def peak_block() -> None:
        for _ in range(conv_calls):
            peak_call()

    def compose(way: str, volume: np.ndarray) -> np.ndarray:
        encode, sequence_context, head = ways[way]
        stack = np.ascontiguousarray(np.moveaxis(volume, 2, 0)[..., None])
        starts = range(0, stack.shape[0], slice_batch)
        contexts = [encode(stack[i : i + slice_batch]) for i in starts]
        sequence = sequence_context(np.concatenate(contexts, axis=0)[None])[0]
        probs = [head(sequence[i : i + slice_batch]) for i in starts]
        return np.concatenate(probs, axis=0)[..., 0]

    # Warm up on a short volume with the full one's batch shapes (oneDNN sets up per shape),
    # checking on the way that the compiled parts compute what Segmenter computes.
    short = image[:, :, : slice_batch + (slices % slice_batch or slice_batch)]
    reference = np.moveaxis(segmenter._predict_once(short), 2, 0)
    differences = {way: float(np.max(np.abs(compose(way, short) - reference))) for way in ways}
    for way in ways:
        by_parts(short, way)
        for times in part_times[way].values():
            times.clear()
    peak_call()
    best = interleaved_best(
        {
            "conv_peak": peak_block,
            "inference": lambda: segmenter._predict_once(image),
            "parts": lambda: by_parts(image, "eager"),
            "compiled": lambda: by_parts(image, "compiled"),
        },
        repeats,
        warmup=0,
    )
    peak_flops *= conv_calls
    peak = peak_flops / best["conv_peak"]["wall_s"] / 1e9
    peak_cpu = peak_flops / best["conv_peak"]["cpu_s"] / 1e9
    inference = best["inference"]
    achieved = total_flops / inference["wall_s"] / 1e9
    achieved_cpu = total_flops / inference["cpu_s"] / 1e9
    parts = _part_summary(part_times["eager"], flops, peak_cpu)
    compiled = _part_summary(part_times["compiled"], flops, peak_cpu)
    compiled_wall = sum(part["wall_s"] for part in compiled.values())
    compiled_cpu = sum(part["cpu_s"] for part in compiled.values())
    return {
        "preset": preset,
        "input_size": [height, width],
        "slices": slices,
        "slice_batch": slice_batch,
        "repeats": repeats,
        "conv_reference": {
            "layer": f"Conv2D 3x3, {conv_width} -> {conv_width}, float32, 'same'",
            "input_shape": [4, height, width, conv_width],
            "width_rule": "FLOP-weighted median width of the model's 3x3 convolutions",
            "calls_per_round": conv_calls,
            "gflops": round(peak_flops / 1e9, 3),
            "wall_s": round(best["conv_peak"]["wall_s"], 4),
            "cpu_s": round(best["conv_peak"]["cpu_s"], 4),
        },
        "peak_gflops_per_s": round(peak, 2),
        "peak_gflops_per_cpu_s": round(peak_cpu, 2),
        "inference": {
            "path": "Segmenter one pass (pancseg predict's network step)",
            "gflops": round(total_flops / 1e9, 2),
            "wall_s": round(inference["wall_s"], 3),
            "cpu_s": round(inference["cpu_s"], 3),
            "walls": inference["walls"],
            "gflops_per_s": round(achieved, 2),
            "gflops_per_cpu_s": round(achieved_cpu, 2),
        },
        "roofline_fraction": round(achieved_cpu / peak_cpu, 4),
        "roofline_fraction_wall": round(achieved / peak, 4),
        "parts": parts,
        "parts_wall_s": round(sum(part["wall_s"] for part in parts.values()), 3),
        "parts_max_abs_difference_from_segmenter": differences["eager"],
        "compiled": {
            "path": "the same three parts, each called through a tf.function (graph mode)",
            "wall_s": round(compiled_wall, 3),
            "cpu_s": round(compiled_cpu, 3),
            "roofline_fraction": round(total_flops / compiled_cpu / 1e9 / peak_cpu, 4),
            "roofline_fraction_wall": round(total_flops / compiled_wall / 1e9 / peak, 4),
            "speedup_over_eager": round(inference["wall_s"] / compiled_wall, 3),
            "speedup_over_eager_cpu": round(inference["cpu_s"] / compiled_cpu, 3),
            "max_abs_difference_from_segmenter": differences["compiled"],
            "parts": compiled,
        },
    }


def _part_summary(
    times: dict[str, list[tuple[float, float]]], flops: dict[str, float], peak_cpu: float
) -> dict[str, dict[str, float]]:
    """Per part: best wall / CPU seconds; share of the CPU time and of the FLOPs; GFLOPs per
    CPU second and its fraction of the peak's (``peak_cpu``)."""
    wall = {k: min(w for w, _ in v) for k, v in times.items()}
    cpu = {k: min(c for _, c in v) for k, v in times.items()}
    total_cpu, total_flops = sum(cpu.values()), sum(flops.values())
    summary = {}
    for name in flops:
        rate = flops[name] / cpu[name] / 1e9
        summary[name] = {
            "gflops": round(flops[name] / 1e9, 3),
            "wall_s": round(wall[name], 4),
            "cpu_s": round(cpu[name], 4),
            "time_share": round(cpu[name] / total_cpu, 4),
            "flop_share": round(flops[name] / total_flops, 4),
            "gflops_per_cpu_s": round(rate, 2),
            "fraction_of_peak": round(rate / peak_cpu, 4),
        }
    return summary


def eager_parts(model: ContextualSegmenter):
    """``(encode, sequence_context, head)`` as Keras models called eagerly (how `Segmenter`
    called them before it compiled its parts: kept as the comparison). ``encode`` returns the
    ``"context"`` that the ConvLSTM reads."""

    def encode(x):
        return np.asarray(model.slice_encoder(x, training=False)[CONTEXT])

    def sequence_context(x):
        return np.asarray(model.sequence_context(x, training=False))

    def head(x):
        return np.asarray(model.slice_head(x, training=False))

    return encode, sequence_context, head


def compiled_parts(model: ContextualSegmenter):
    """The same three calls as `Segmenter` makes them: through
    `pancseg_tf.inference.compiled_call` (a ``tf.function`` per part, shape-generic)."""
    from pancseg_tf.inference import compiled_call

    encoder = compiled_call(model, "slice_encoder")
    sequence = compiled_call(model, "sequence_context")
    head = compiled_call(model, "slice_head")
    return (
        lambda x: np.asarray(encoder(x)[CONTEXT]),
        lambda x: np.asarray(sequence(x)),
        lambda x: np.asarray(head(x)),
    )


def time_parts(model: ContextualSegmenter, window: int, repeats: int) -> dict[str, float]:
    """CPU seconds of each part of the model, and of a training step, on one window
    `(1, window, H, W, 1)`."""
    height, width = model.input_size
    rng = np.random.default_rng(0)
    slices = rng.random((window, height, width, 1), dtype=np.float32)
    masks = (slices > 0.9).astype(np.float32)
    context_sequence = model.slice_encoder.predict_on_batch(slices)[CONTEXT][None]
    sequence = model.sequence_context.predict_on_batch(context_sequence)[0]
    seconds = {
        "cnn_s": _best_time(lambda: model.slice_encoder.predict_on_batch(slices), repeats),
        "convlstm_s": _best_time(
            lambda: model.sequence_context.predict_on_batch(context_sequence), repeats
        ),
        "head_s": _best_time(lambda: model.slice_head.predict_on_batch(sequence), repeats),
        "forward_s": _best_time(lambda: model.predict_on_batch(slices[None]), repeats),
    }
    model.compile(optimizer="adam", loss={"prob": keras.losses.BinaryCrossentropy()})
    seconds["train_step_s"] = _best_time(
        lambda: model.train_on_batch(slices[None], {"prob": masks[None]}), repeats
    )
    return seconds


def _table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `preset_costs` rows: params, GFLOPs and activations per part."""
    lines = [
        "| model | input | params CNN | params ConvLSTM | params head "
        "| GFLOPs/slice CNN | GFLOPs/slice ConvLSTM | GFLOPs/slice head "
        "| activations MB/slice CNN | activations MB/slice ConvLSTM | activations MB/slice head "
        "| ConvLSTM part, 600-slice volume, inference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        label = row["preset"] + "".join(f" {k}={v}" for k, v in row["overrides"].items())
        lines.append(
            f"| {label} | {row['input_size'][0]}x{row['input_size'][1]} "
            f"| {row['cnn_params'] / 1e6:.2f} M | {row['convlstm_params'] / 1e3:.2f} k "
            f"| {row['head_params']} "
            f"| {row['cnn_gflops_per_slice']:.2f} | {row['convlstm_gflops_per_slice']:.3f} "
            f"| {row['head_gflops_per_slice']:.4f} "
            f"| {row['cnn_activation_mb_per_slice']:.1f} "
            f"| {row['convlstm_activation_mb_per_slice']:.2f} "
            f"| {row['head_activation_mb_per_slice']:.2f} "
            f"| {row['sequence_inference_gb_per_600_slices']:.2f} GB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--time", action="store_true", help="also time forward passes of ConvLSTM design options"
    )
    parser.add_argument("--window", type=int, default=8, help="slices per timed window (default 8)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats, the best is kept (default 3)"
    )
    parser.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="ConvLSTM downsampling factors compared (table; timed with --time) (default 1 2 4)",
    )
    parser.add_argument(
        "--roofline",
        action="store_true",
        help="also measure whole-volume inference's FLOP rate against the conv peak",
    )
    parser.add_argument(
        "--slices", type=int, default=200, help="slices of the --roofline volume (default 200)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.window < 1 or args.repeats < 1:
        parser.error("--window and --repeats must be >= 1")

    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "keras": keras.__version__,
            "backend": keras.config.backend(),
        },
        "presets": [preset_costs(name, size) for name, size in PRESET_SIZES],
    }
    print("Default models (per slice; conv FLOPs, float32 activations kept for training):\n")
    print(_table(results["presets"]))

    options = [preset_costs("quick", lstm_resolution=r) for r in args.resolutions]
    paper_options = [preset_costs("paper", lstm_resolution=r) for r in args.resolutions]
    results["options"] = options + paper_options
    print("\nConvLSTM resolution options:\n")
    print(_table(options + paper_options))

    if args.time:
        reference = conv_reference_gflops(args.repeats)
        results["conv_reference_gflops_per_s"] = reference
        print(f"\nconv reference (3x3, 64->64, 4x256x256): {reference:.1f} GFLOP per CPU second")
        print(
            f"\nCPU ms per slice (all threads), one window of {args.window} slices at 256x256, "
            f"best of {args.repeats}; GFLOP per CPU second and share of the conv reference:\n"
        )
        print(
            "| lstm_resolution | CNN | ConvLSTM | head | whole forward "
            "| training step | CNN GFLOP/s | ConvLSTM GFLOP/s |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        timings = []
        for r, option in zip(args.resolutions, options):
            model = ContextualSegmenter.from_preset("quick", lstm_resolution=r)
            seconds = time_parts(model, args.window, args.repeats)
            lstm_flops = layer_costs(model.sequence_context)[0]
            cnn_rate = option["cnn_gflops_per_slice"] * args.window / seconds["cnn_s"]
            lstm_rate = lstm_flops * args.window / 1e9 / seconds["convlstm_s"]
            timings.append(
                {
                    "lstm_resolution": r,
                    **seconds,
                    "cnn_gflops_per_cpu_s": cnn_rate,
                    "convlstm_gflops_per_cpu_s": lstm_rate,
                }
            )
            per = 1e3 / args.window
            print(
                f"| {r} | {seconds['cnn_s'] * per:.1f} | {seconds['convlstm_s'] * per:.1f} "
                f"| {seconds['head_s'] * per:.1f} | {seconds['forward_s'] * per:.1f} "
                f"| {seconds['train_step_s'] * per:.1f} "
                f"| {cnn_rate:.1f} ({cnn_rate / reference:.0%}) "
                f"| {lstm_rate:.1f} ({lstm_rate / reference:.0%}) |"
            )
        results["timings"] = {"window": args.window, "rows": timings}

    if args.roofline:
        result = roofline("quick", slices=args.slices, repeats=args.repeats)
        results["roofline"] = result
        print(
            f"\nroofline: inference {result['inference']['gflops_per_cpu_s']:.1f} GFLOP per CPU "
            f"second against a conv peak of {result['peak_gflops_per_cpu_s']:.1f}: "
            f"{result['roofline_fraction']:.0%} "
            f"(per wall-clock second: {result['roofline_fraction_wall']:.0%})"
        )
        for name, part in result["parts"].items():
            print(
                f"  {name}: {part['time_share']:.0%} of the time, {part['flop_share']:.0%} of "
                f"the FLOPs, {part['fraction_of_peak']:.0%} of the peak"
            )

    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
