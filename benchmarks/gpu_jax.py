"""On a GPU with Keras 3's JAX backend: the contextual model's training step and inference.

The models are ``keras.ops`` only, so they run unchanged on JAX (a GPU machine without
TensorFlow needs ``keras``, its small pure-Python dependencies, ``jax[cuda]`` and this package's
``pancseg_tf.models``; nothing here imports TensorFlow). For each preset: a compiled training step
(``train_on_batch``, XLA as JAX always is, Adam, binary cross-entropy) on ``(batch, 5, H, W, 1)``
windows, and inference (``predict_on_batch``) on one ``(1, slices, H, W, 1)`` sequence (the
bidirectional ConvLSTM over all of them); best of ``--repeats`` after a warm-up.

Prints one JSON object; ``{"status": "skipped", "reason": ...}`` when JAX is not installed or
sees no GPU (``--allow-cpu`` runs it on the CPU anyway, to check the code path).
``benchmarks/run.py`` (part 10) runs it in its own process with ``KERAS_BACKEND=jax``.

Usage::

    KERAS_BACKEND=jax python benchmarks/gpu_jax.py --presets quick paper
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported; this script is JAX only

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere
from bench_common import emit_json  # noqa: E402 - stdlib only: no TensorFlow

#: (windows per training step, slices per inference sequence, dtype policy) per preset.
SETTINGS = {
    "tiny": (4, 32, "float32"),
    "quick": (8, 200, "float32"),
    "paper": (2, 200, "mixed_bfloat16"),
}
WINDOW = 5


def _best(function, repeats: int) -> float:
    function()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(preset: str, repeats: int) -> dict[str, Any]:
    """Training-step and inference throughput of one preset on JAX's default device."""
    import keras
    import numpy as np

    from pancseg_tf.models import ContextualSegmenter

    batch, slices, dtype = SETTINGS[preset]
    model = ContextualSegmenter.from_preset(preset, dtype=dtype)
    height, width = model.input_size
    rng = np.random.default_rng(0)
    x = rng.random((batch, WINDOW, height, width, 1), dtype=np.float32)
    y = (rng.random(x.shape) > 0.9).astype(np.float32)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4), loss={"prob": keras.losses.BinaryCrossentropy()}
    )
    step_s = _best(lambda: model.train_on_batch(x, {"prob": y}), repeats)
    volume = rng.random((1, slices, height, width, 1), dtype=np.float32)
    infer_s = _best(lambda: model.predict_on_batch(volume), repeats)
    return {
        "dtype_policy": dtype,
        "input_size": [height, width],
        "train_step_shape": list(x.shape),
        "train_step_s": round(step_s, 4),
        "train_windows_per_s": round(batch / step_s, 2),
        "train_slices_per_s": round(batch * WINDOW / step_s, 1),
        "inference_shape": list(volume.shape),
        "inference_s": round(infer_s, 4),
        "inference_slices_per_s": round(slices / infer_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["quick", "paper"], choices=SETTINGS)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU too")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result: dict[str, Any]
    try:
        import jax
    except ImportError:
        result = {"status": "skipped", "reason": "jax is not installed (pip install jax[cuda12])"}
    else:
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus and not args.allow_cpu:
            result = {"status": "skipped", "reason": "JAX sees no GPU"}
        else:
            import keras

            device = (gpus or jax.devices())[0]
            result = {
                "status": "ok",
                "device": getattr(device, "device_kind", str(device)),
                "platform": device.platform,
                "jax": jax.__version__,
                "keras": keras.__version__,
                "backend": keras.config.backend(),
                "presets": {},
            }
            for preset in args.presets:
                try:
                    result["presets"][preset] = measure(preset, args.repeats)
                except Exception as err:  # noqa: BLE001 - e.g. out of memory: report, go on
                    result["presets"][preset] = {"error": f"{type(err).__name__}: {err}"[:500]}
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
