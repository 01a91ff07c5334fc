"""A peer, side by side: MONAI's ``SliceInferer`` with its ``BasicUNet`` on the same volume.

A random ``(1, 1, H, W, slices)`` volume (dense convolutions take as long whatever the values)
goes through ``monai.inferers.SliceInferer`` (``spatial_dim=2``: one 2D window per axial slice,
``--sw-batch`` slices per call) with ``monai.networks.nets.BasicUNet(spatial_dims=2,
in_channels=1, out_channels=1)`` at its default features, in ``torch.inference_mode`` on the CPU
with torch's default threads (all cores). FLOPs are counted by ``torch.utils.flop_counter``
(convolutions and transposed convolutions, multiply-add = 2: the rule `benchmarks/model_cost.py`
counts ours with). torch's own reference, a float32 3x3 conv ``width -> width`` on
``(4, width, H, W)`` called as many times as make the inference's FLOPs, is timed in
alternating rounds with the inference (after a warm-up on a short volume), best round kept.
Rates are per CPU second of the process (all threads; other jobs on a shared machine do not
change them; OpenMP's spin-waiting counts) and per wall-clock second.

Prints one JSON object: ``{"status": "skipped", "reason": ...}`` when torch or MONAI is not
installed (``pip install torch==2.13.0 monai``), else the timings. ``benchmarks/run.py`` (part
9) runs this in its own process, so torch and TensorFlow never share a process or threads.

With ``--train-gflops-per-slice G`` it measures training instead: ``BasicUNet`` with its
default feature widths scaled by one factor until its forward FLOPs per slice are within 3 % of
``G`` (the CNN it is compared with), Adam on ``BCEWithLogitsLoss``, one step on a batch of
``--train-batch`` random slices (forward, backward, update), timed in rounds after warm-up
steps: slices per CPU second and per wall second.

Usage::

    python benchmarks/peer_monai.py --size 256 --slices 200 --width 32
    python benchmarks/peer_monai.py --size 128 --train-gflops-per-slice 1.9 --train-batch 16
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, interleaved_best  # noqa: E402


def measure(size: int, slices: int, width: int, sw_batch: int, repeats: int) -> dict[str, Any]:
    """Times MONAI's SliceInferer + BasicUNet and torch's conv reference side by side."""
    import monai
    import torch
    from monai.inferers import SliceInferer
    from monai.networks.nets import BasicUNet
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1).eval()
    inferer = SliceInferer(
        roi_size=(size, size), sw_batch_size=sw_batch, spatial_dim=2, progress=False
    )
    volume = torch.rand(1, 1, size, size, slices)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 1, size, size))
    flops_per_slice = counter.get_total_flops()
    conv = torch.nn.Conv2d(width, width, 3, padding=1).eval()
    conv_input = torch.rand(4, width, size, size)
    conv_flops = 2 * 9 * width * width * size * size * 4

    def infer() -> None:
        with torch.inference_mode():
            out = inferer(volume, net)
        assert tuple(out.shape) == (1, 1, size, size, slices)

    def reference() -> None:
        with torch.inference_mode():
            conv(conv_input)

    # Warm up on a short volume (one call per batch shape), then alternate the two. The
    # reference runs as many FLOPs as the inference, so both see the machine's load as long.
    with torch.inference_mode():
        inferer(volume[..., : sw_batch + (slices % sw_batch or sw_batch)], net)
    total_flops = flops_per_slice * slices
    conv_calls = max(1, round(total_flops / conv_flops))

    def reference_block() -> None:
        for _ in range(conv_calls):
            reference()

    best = interleaved_best({"conv_peak": reference_block, "inference": infer}, repeats, warmup=0)
    conv_flops *= conv_calls
    peak = conv_flops / best["conv_peak"]["wall_s"] / 1e9
    peak_cpu = conv_flops / best["conv_peak"]["cpu_s"] / 1e9
    achieved = total_flops / best["inference"]["wall_s"] / 1e9
    achieved_cpu = total_flops / best["inference"]["cpu_s"] / 1e9
    return {
        "status": "ok",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "network": "monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)",
        "params": sum(p.numel() for p in net.parameters()),
        "inferer": f"SliceInferer(roi_size=({size}, {size}), sw_batch_size={sw_batch}, "
        "spatial_dim=2)",
        "volume_shape": [size, size, slices],
        "gflops_per_slice": round(flops_per_slice / 1e9, 3),
        "gflops": round(total_flops / 1e9, 2),
        "seconds": round(best["inference"]["wall_s"], 3),
        "cpu_seconds": round(best["inference"]["cpu_s"], 3),
        "walls": best["inference"]["walls"],
        "gflops_per_s": round(achieved, 2),
        "gflops_per_cpu_s": round(achieved_cpu, 2),
        "torch_conv_reference": {
            "layer": f"Conv2d 3x3, {width} -> {width}, float32",
            "input_shape": [4, width, size, size],
            "calls_per_round": conv_calls,
            "wall_s": round(best["conv_peak"]["wall_s"], 4),
            "cpu_s": round(best["conv_peak"]["cpu_s"], 4),
            "gflops_per_s": round(peak, 2),
            "gflops_per_cpu_s": round(peak_cpu, 2),
        },
        "fraction_of_torch_conv_peak": round(achieved_cpu / peak_cpu, 4),
        "fraction_of_torch_conv_peak_wall": round(achieved / peak, 4),
    }


_BASIC_UNET_FEATURES = (32, 32, 64, 128, 256, 32)


def _scaled_basic_unet(size: int, gflops_per_slice: float):
    """``BasicUNet`` with its default features scaled to ``gflops_per_slice`` (within 3 %)."""
    import torch
    from monai.networks.nets import BasicUNet
    from torch.utils.flop_counter import FlopCounterMode

    def build(scale: float):
        features = tuple(max(2, round(f * scale)) for f in _BASIC_UNET_FEATURES)
        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=features)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net.eval()(torch.rand(1, 1, size, size))
        return net.train(), features, counter.get_total_flops() / 1e9

    scale = 1.0
    for _ in range(8):  # FLOPs grow with the square of the widths
        net, features, gflops = build(scale)
        if abs(gflops / gflops_per_slice - 1.0) <= 0.03:
            break
        scale *= (gflops_per_slice / gflops) ** 0.5
    return net, features, gflops


def measure_training(
    size: int, gflops_per_slice: float, batch: int, steps: int, repeats: int
) -> dict[str, Any]:
    """Slices per CPU second of BasicUNet training steps at the given FLOPs per slice."""
    import monai
    import torch

    torch.manual_seed(0)
    net, features, gflops = _scaled_basic_unet(size, gflops_per_slice)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    images = torch.rand(batch, 1, size, size)
    labels = (torch.rand(batch, 1, size, size) > 0.9).float()

    def train_steps() -> None:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(images), labels)
            loss.backward()
            optimizer.step()

    best = interleaved_best({"train": train_steps}, repeats, warmup=1)["train"]
    slices = batch * steps
    return {
        "status": "ok",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "network": f"monai.networks.nets.BasicUNet(spatial_dims=2, in_channels=1, "
        f"out_channels=1, features={features})",
        "params": sum(p.numel() for p in net.parameters()),
        "gflops_per_slice": round(gflops, 3),
        "target_gflops_per_slice": round(gflops_per_slice, 3),
        "step": f"Adam, BCEWithLogitsLoss, batch {batch} of {size} x {size}",
        "slices_timed": slices,
        "seconds": round(best["wall_s"], 3),
        "cpu_seconds": round(best["cpu_s"], 3),
        "walls": best["walls"],
        "slices_per_s": round(slices / best["wall_s"], 2),
        "slices_per_cpu_s": round(slices / best["cpu_s"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="in-plane size (default 256)")
    parser.add_argument("--slices", type=int, default=200, help="slices (default 200)")
    parser.add_argument("--width", type=int, default=32, help="reference conv width (default 32)")
    parser.add_argument("--sw-batch", type=int, default=16, help="slices per call (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed rounds")
    parser.add_argument(
        "--train-gflops-per-slice",
        type=float,
        help="measure training steps of BasicUNet scaled to these forward GFLOPs per slice",
    )
    parser.add_argument("--train-batch", type=int, default=16, help="slices per training step")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        result: dict[str, Any] = {
            "status": "skipped",
            "reason": f"not installed: {err.name} (pip install torch==2.13.0 monai)",
        }
    else:
        if args.train_gflops_per_slice is not None:
            result = measure_training(
                args.size,
                args.train_gflops_per_slice,
                args.train_batch,
                args.train_steps,
                args.repeats,
            )
        else:
            result = measure(args.size, args.slices, args.width, args.sw_batch, args.repeats)
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
