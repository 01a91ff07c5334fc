"""``mixed_bfloat16`` inference against float32: speed and DSC of the same trained model.

The trained model is rebuilt from its own config with every layer's dtype policy set to
``mixed_bfloat16`` (variables stay float32; the layers the model pins to float32, its recurrent
head, stay float32) and given the same weights. Both run through `Segmenter` on the same
held-out cases: the mean per-case DSC difference (bf16 - float32) and the network's CPU time
ratio, float32 / bf16, timed in alternating rounds. ``benchmarks/run.py`` (part ``bf16``) calls
`compare` on its trained quick model and its held-out synthetic cases (never a protocol test
cohort: this is a decision, made on development cases).

Usage::

    python benchmarks/bf16_inference.py RUN HELDOUT [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json, interleaved_best  # noqa: E402


def _set_policy(config: Any, policy: str) -> Any:
    """Every dtype policy in a (nested) model config replaced by ``policy``. Our models' configs
    hold one per model; the layers they pin to float32 are pinned in code and stay so."""
    if isinstance(config, dict):
        return {k: policy if k == "dtype" else _set_policy(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [_set_policy(v, policy) for v in config]
    return config


def bf16_twin(model):
    """``model`` rebuilt with a ``mixed_bfloat16`` policy, holding the same weights."""
    import keras

    config = _set_policy(model.get_config(), "mixed_bfloat16")
    twin = type(model).from_config(config)
    height, width = model.input_size
    if hasattr(twin, "slice_cnn"):
        twin(keras.ops.zeros((1, 2, height, width, 1)))
    else:
        twin(keras.ops.zeros((1, height, width, 1)))
    twin.set_weights(model.get_weights())
    return twin


def compare(run: pathlib.Path, heldout: pathlib.Path, repeats: int = 2) -> dict[str, Any]:
    """DSC and network CPU time of the run's model in float32 and in mixed_bfloat16."""
    import numpy as np

    from pancseg_tf.evaluation.metrics import dice
    from pancseg_tf.inference import Segmenter, request_intensities
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.preprocessing.labels import map_labels

    base = Segmenter.from_path(run)
    twin = Segmenter(
        bf16_twin(base.model),
        base.preprocess,
        threshold=base.threshold,
        postprocess=base.postprocess,
        chunk=base.chunk,
        overlap=base.overlap,
        slice_batch=base.slice_batch,
        tta=base.tta,
    )
    rows = []
    for case in discover_cohort(heldout):
        volume = case.load_image()
        label = map_labels(case.load_label().array, None)
        row = {"case": case.case_id}
        for name, seg in (("float32", base), ("mixed_bfloat16", twin)):
            row[name] = float(dice(seg.segment(volume).mask, label))
        row["delta"] = row["mixed_bfloat16"] - row["float32"]
        rows.append(row)
    # speed: the network alone, on the last case's model-grid intensities
    plan = base.plan(volume)
    image, percentiles = request_intensities(volume, plan, base.preprocess)
    best = interleaved_best(
        {
            "float32": lambda: base.predict_intensities(image, percentiles),
            "mixed_bfloat16": lambda: twin.predict_intensities(image, percentiles),
        },
        repeats,
    )
    deltas = [r["delta"] for r in rows]
    return {
        "cases": rows,
        "mean_dsc_delta": float(np.mean(deltas)),
        "max_abs_dsc_delta": float(np.max(np.abs(deltas))),
        "network_speedup_cpu": round(best["float32"]["cpu_s"] / best["mixed_bfloat16"]["cpu_s"], 3),
        "network_speedup_wall": round(
            best["float32"]["wall_s"] / best["mixed_bfloat16"]["wall_s"], 3
        ),
        "cpu_seconds": {k: round(v["cpu_s"], 3) for k, v in best.items()},
        "model_grid_shape": list(image.shape),
        "rule": "bf16 becomes the CPU default only if every case's DSC moves by at most 0.001",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("heldout", type=pathlib.Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    emit_json(compare(args.run, args.heldout, args.repeats), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
