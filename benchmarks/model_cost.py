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
of the quick recipe's model (`pancseg_tf.inference.Segmenter` in chunks of the recipe's
window, what ``pancseg predict`` runs) achieves on a ``--slices``-slice volume, timed side by
side (`roofline`); ``benchmarks/run.py`` part 1.

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
from bench_common import interleaved_best, network_spans, timed  # noqa: E402

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
    window: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Whole-volume inference's FLOP rate against the conv peak, timed side by side.

    Inference is `Segmenter`'s network step (what ``pancseg predict`` runs on the model grid)
    on a random ``(H, W, slices)`` volume in [0, 1] (dense convolutions take as long whatever
    the values), for the model as the recipe ships it: with ``window`` (the recipe's
    ``data.window``, the model's ``context_window``) in overlapping chunks of that many slices
    through `ChunkNetwork`, the served computation; without, in one pass (the CNN on batches of
    ``slice_batch`` slices, the ConvLSTM once over all slices). The same composition is also
    timed part by part (CNN, ConvLSTM, head, each compiled as `Segmenter` runs it). FLOPs are
    the model's convolutions counted by `layer_costs` (batch norm, activations, pooling and the
    LSTM gates' element-wise arithmetic are work the count leaves out) for every slice the
    network runs: a slice shared by two chunks counts twice (``useful_flop_fraction`` says
    how much of it is the volume's own). Rates are per CPU second of this process (all
    threads), so that other jobs on a shared machine do not change them; per wall-clock second
    beside them. The conv peak (`conv_peak` at `typical_conv_width`, called as many times as
    make the inference's FLOPs), the inference and its parts run in alternating rounds after a
    warm-up; the best round of each is kept.

    Returns:
        A dict with ``roofline_fraction`` (achieved FLOPs per CPU second of this process over
        the peak's, all threads), ``roofline_fraction_wall`` (the same per wall-clock second),
        the peak, the inference (``chunk``, ``chunks``, ``network_slices``,
        ``useful_flop_fraction``) and, under ``parts``, the CNN (``slice_encoder``), the
        ConvLSTM (``sequence_context``) and the head (``slice_head``), each with its share of
        time and FLOPs and its fraction of the peak.
    """
    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import Segmenter, compiled_call

    model = build_preset(preset, input_size, context_window=window)
    height, width = model.input_size
    conv_width = typical_conv_width(model.slice_cnn)
    peak_call, peak_flops = conv_peak(conv_width, (height, width), seed=seed)
    image = np.random.default_rng(seed).random((height, width, slices), dtype=np.float32)
    segmenter = Segmenter(model, PreprocessConfig(size=(height, width)), slice_batch=slice_batch)
    chunk, overlap = segmenter.chunk, segmenter.overlap
    spans = network_spans(slices, chunk, overlap)
    network_slices = sum(stop - start for start, stop in spans)
    per_slice = {part: layer_costs(getattr(model, name))[0] for part, name in PARTS.items()}
    flops = {part: cost * network_slices for part, cost in per_slice.items()}
    total_flops = sum(flops.values())
    # The reference runs as many FLOPs as the inference, so both see a shared machine's load
    # for as long (a short reference would catch a quiet moment a long inference cannot).
    conv_calls = max(1, round(total_flops / peak_flops))
    encode = compiled_call(model, "slice_encoder")
    sequence_context = compiled_call(model, "sequence_context")
    head = compiled_call(model, "slice_head")
    part_times: dict[str, list[tuple[float, float]]] = {part: [] for part in PARTS}

    def by_parts(volume: np.ndarray, record: bool = True) -> np.ndarray:
        # Segmenter's composition (per chunk, or whole), with a clock around each part.
        stack = np.ascontiguousarray(np.moveaxis(volume, 2, 0)[..., None])
        pieces = network_spans(stack.shape[0], chunk, overlap)
        clocks = {part: [0.0, 0.0] for part in PARTS}
        outs = []
        for start, stop in pieces:
            batches = range(start, stop, slice_batch)
            wall, cpu, contexts = timed(
                lambda b=batches, e=stop: [
                    np.asarray(encode(stack[i : min(i + slice_batch, e)])[CONTEXT]) for i in b
                ]
            )
            clocks["cnn"][0] += wall
            clocks["cnn"][1] += cpu
            wall, cpu, sequence = timed(
                lambda c=contexts: np.asarray(sequence_context(np.concatenate(c)[None]))[0]
            )
            clocks["convlstm"][0] += wall
            clocks["convlstm"][1] += cpu
            wall, cpu, probs = timed(
                lambda q=sequence: [
                    np.asarray(head(q[i : i + slice_batch])) for i in range(0, len(q), slice_batch)
                ]
            )
            clocks["head"][0] += wall
            clocks["head"][1] += cpu
            outs.append(np.concatenate(probs)[..., 0])
        if record:
            for part, (wall, cpu) in clocks.items():
                part_times[part].append((wall, cpu))
        return outs

    def peak_block() -> None:
        for _ in range(conv_calls):
            peak_call()

    # Warm up on a short volume with the full one's shapes (oneDNN sets up per shape),
    # checking on the way that the parts compute what Segmenter computes.
    short = image[:, :, : max(2 * (chunk or slice_batch), slice_batch + 1)]
    reference = np.moveaxis(segmenter._predict_once(short), 2, 0)
    parts_out = by_parts(short, record=False)
    if chunk:
        from pancseg_tf.inference.chunks import blend_chunks

        short_spans = network_spans(short.shape[2], chunk, overlap)
        composed = blend_chunks(
            [np.moveaxis(p, 0, 2) for p in parts_out], short_spans, short.shape[2], overlap
        )
        composed = np.moveaxis(composed, 2, 0)
    else:
        composed = parts_out[0]
    difference = float(np.max(np.abs(composed - reference)))
    peak_call()
    best = interleaved_best(
        {
            "conv_peak": peak_block,
            "inference": lambda: segmenter._predict_once(image),
            "parts": lambda: by_parts(image),
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
    parts = _part_summary(part_times, flops, peak_cpu)
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
            "path": (
                f"Segmenter in chunks of {chunk} slices ({overlap} shared), ChunkNetwork (the "
                "served computation): pancseg predict's network step for the shipped model"
                if chunk
                else "Segmenter one pass (pancseg predict's network step)"
            ),
            "chunk": chunk,
            "chunk_overlap": overlap if chunk else None,
            "chunks": len(spans),
            "network_slices": network_slices,
            "useful_flop_fraction": round(slices / network_slices, 4),
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
        "parts_path": "the same composition, each part through its compiled call "
        "(pancseg_tf.inference.compiled_call), one clock per part",
        "parts_roofline_fraction": round(
            total_flops / sum(part["cpu_s"] for part in parts.values()) / 1e9 / peak_cpu, 4
        ),
        "parts_max_abs_difference_from_segmenter": difference,
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
        from pancseg_tf.config import load_config

        # The quick recipe's model: 128 x 128 (its config's grid), chunks of its 5-slice window.
        quick = load_config("quick")
        result = roofline(
            "quick",
            int(quick.preprocess.size[0]),
            slices=args.slices,
            repeats=args.repeats,
            window=quick.data.window,
        )
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
