"""Parameters, FLOPs and activation memory per slice of the network, CNN vs ConvLSTM.

Counts are static, from the layers' shapes: FLOPs of convolutions only (multiply-add = 2 FLOPs;
batch norm, activations and the LSTM gate arithmetic are left out), per slice of the preset's
input size; activation memory is the float32 layer outputs a training step keeps for the backward
pass, per slice (for the ConvLSTM: its four gates, cell and hidden state per step and direction).
"CNN" is the `SliceCNN`; "context" is everything the `ContextualSegmenter` adds (feature
reduction, bidirectional ConvLSTM, projection, full-resolution fusion).

With ``--time`` it also measures, in CPU seconds of this process (robust on a shared machine),
forward passes (compiled, inference mode) of each part and a training step on one window of
``--window`` slices at the quick CNN's 256 x 256, for several ConvLSTM resolutions, and a plain
3x3 convolution as the machine's conv reference, so each part's FLOP rate can be compared.

Usage::

    python benchmarks/model_cost.py                # the presets' table
    python benchmarks/model_cost.py --time         # + design options and forward timings
    python benchmarks/model_cost.py --time --json benchmarks/results/model_cost.json
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

from pancseg_tf.models import ContextualSegmenter  # noqa: E402
from pancseg_tf.models.blocks import FoldTime, SliceChannels, UnfoldTime  # noqa: E402

# Each model's first predict traces a new function; TensorFlow's retracing notice is noise here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

BYTES = 4  # float32 activations
# Layers whose outputs are views or are not kept for the backward pass.
_NOT_STORED = (keras.layers.InputLayer, FoldTime, UnfoldTime, SliceChannels)


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


def preset_costs(name: str, **overrides: Any) -> dict[str, Any]:
    """Static costs of a `ContextualSegmenter` preset, split into CNN and context parts."""
    model = ContextualSegmenter.from_preset(name, **overrides)
    cnn_flops, cnn_memory = layer_costs(model.slice_cnn)
    all_flops, all_memory = layer_costs(model)
    cnn_params = model.slice_cnn.count_params()
    # Inference over a whole volume: the bidirectional pass holds the sequence part for every
    # slice at once (its input, both directions' outputs, the projection).
    sequence = model.sequence_context
    sequence_elements = sum(
        math.prod(tuple(tensor.shape)[-3:]) for tensor in [*sequence.inputs, *_outputs(sequence)]
    )
    return {
        "preset": name,
        "overrides": overrides,
        "input_size": list(model.input_size),
        "cnn_params": cnn_params,
        "context_params": model.count_params() - cnn_params,
        "cnn_gflops_per_slice": cnn_flops / 1e9,
        "context_gflops_per_slice": (all_flops - cnn_flops) / 1e9,
        "cnn_activation_mb_per_slice": cnn_memory / 2**20,
        "context_activation_mb_per_slice": (all_memory - cnn_memory) / 2**20,
        "sequence_inference_gb_per_600_slices": 600 * sequence_elements * BYTES / 2**30,
    }


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


def time_parts(model: ContextualSegmenter, window: int, repeats: int) -> dict[str, float]:
    """CPU seconds of each part of the model, and of a training step, on one window
    `(1, window, H, W, 1)`."""
    height, width = model.input_size
    rng = np.random.default_rng(0)
    slices = rng.random((window, height, width, 1), dtype=np.float32)
    masks = (slices > 0.9).astype(np.float32)
    encoded = model.slice_encoder.predict_on_batch(slices)
    sequence = encoded["context"][None]
    projected = model.sequence_context.predict_on_batch(sequence)[0]
    fusion_in = {"logit": encoded["logit"], "context": projected}
    seconds = {
        "cnn_s": _best_time(lambda: model.slice_encoder.predict_on_batch(slices), repeats),
        "convlstm_s": _best_time(
            lambda: model.sequence_context.predict_on_batch(sequence), repeats
        ),
        "fusion_s": _best_time(lambda: model.slice_fusion.predict_on_batch(fusion_in), repeats),
        "forward_s": _best_time(lambda: model.predict_on_batch(slices[None]), repeats),
    }
    model.compile(optimizer="adam", loss={"prob": keras.losses.BinaryCrossentropy()})
    seconds["train_step_s"] = _best_time(
        lambda: model.train_on_batch(slices[None], {"prob": masks[None]}), repeats
    )
    return seconds


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | input | params CNN | params context | GFLOPs/slice CNN | GFLOPs/slice context "
        "| activations MB/slice CNN | activations MB/slice context "
        "| ConvLSTM part, 600-slice volume, inference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        label = row["preset"] + "".join(f" {k}={v}" for k, v in row["overrides"].items())
        lines.append(
            f"| {label} | {row['input_size'][0]}x{row['input_size'][1]} "
            f"| {row['cnn_params'] / 1e6:.2f} M | {row['context_params'] / 1e3:.1f} k "
            f"| {row['cnn_gflops_per_slice']:.2f} | {row['context_gflops_per_slice']:.3f} "
            f"| {row['cnn_activation_mb_per_slice']:.1f} "
            f"| {row['context_activation_mb_per_slice']:.2f} "
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
        help="ConvLSTM downsampling factors compared with --time (default 1 2 4)",
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
        "presets": [preset_costs("quick"), preset_costs("paper")],
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
            "| lstm_resolution | CNN | ConvLSTM + projection | fusion | whole forward "
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
                f"| {seconds['fusion_s'] * per:.1f} | {seconds['forward_s'] * per:.1f} "
                f"| {seconds['train_step_s'] * per:.1f} "
                f"| {cnn_rate:.1f} ({cnn_rate / reference:.0%}) "
                f"| {lstm_rate:.1f} ({lstm_rate / reference:.0%}) |"
            )
        results["timings"] = {"window": args.window, "rows": timings}

    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
