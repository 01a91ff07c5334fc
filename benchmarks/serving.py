"""One volume through gRPC against in-process prediction: wall time and bytes on the wire.

Exports a model (chunks of ``--chunk`` slices), starts the local TF Serving stand-in
(``serving/standin_server.py``) in a separate process on 127.0.0.1, and segments the same
volume twice, once in process (``Segmenter(chunk=N)``, what ``pancseg predict --chunk N`` runs)
and once with ``pancseg query``'s gRPC client, after one untimed warm-up of each (tracing;
TF Serving's ``--enable_model_warmup`` does that at load time). It checks that both masks are
the same bits and prints one JSON object:

- ``serving_time_ratio``: gRPC query time / in-process time (warm);
- ``serving_bytes_per_volume``: serialised request + response payloads of one ``pancseg
  query`` (protocol buffers of its metadata and config calls and of every chunk request and
  response; HTTP/2 framing not counted).

The server answers with ``tensor_content`` bytes (``--response-encoding content``): the stand-in
is Python, and filling ``float_val`` in Python would time the stand-in rather than the protocol;
TF Serving fills it in C++. Weights are random (speed does not depend on them; the ConvLSTM's
and the head's are perturbed, `model_cost.perturb_context`, so every recurrent unit reaches
the output as in a trained model). After the
warm-ups the two are timed twice in alternation and each one's best is kept.
``benchmarks/run.py`` (part 7) calls `measure_serving` with its trained quick model.

Usage::

    python benchmarks/serving.py --quick      # tiny model, the 3 mm real CT (about a minute)
    python benchmarks/serving.py              # "quick" preset at 256 x 256, the NIH CT case
    python benchmarks/serving.py --model RUN --volume ct.nii.gz --chunk 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QUICK_VOLUME = SHARED / "totalsegmentator_example" / "ct_3mm.nii.gz"
FULL_VOLUME = SHARED / "nih_pancreas_ct" / "Pancreas-CT" / "PANCREAS_0002"
#: The TF Serving stand-in: a script of the repository (not shipped with the package).
STANDIN_SERVER = REPO / "serving" / "standin_server.py"


def _build_run(folder: pathlib.Path, quick: bool) -> pathlib.Path:
    """A run folder with a random-weight model: tiny at 48 x 48 or the quick preset."""
    import keras
    from model_cost import perturb_context

    from pancseg_tf.config import Config, apply_overrides, save_config
    from pancseg_tf.models import ContextualSegmenter, SliceCNN

    keras.utils.set_random_seed(0)
    if quick:
        model = ContextualSegmenter(
            slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=(48, 48)),
            lstm_filters=4,
            lstm_resolution=2,
        )
        settings = ["preprocess.size=[48, 48]", "preprocess.spacing_mm=3.2"]
    else:
        model = ContextualSegmenter.from_preset("quick")
        settings = []
    perturb_context(model)  # as training leaves it: every unit's weights non-zero
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    save_config(apply_overrides(Config(), settings), folder / "config.yaml")
    return folder


def _start_server(base: pathlib.Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        str(STANDIN_SERVER),
        str(base),
        "--grpc-port",
        str(port),
        "--rest-port",
        "0",
        "--response-encoding",
        "content",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"127.0.0.1:{port}"


def measure_serving(
    run: pathlib.Path, volume: Any, chunk: int, work: pathlib.Path, label: str = "given"
) -> dict[str, Any]:
    """One volume through gRPC (export + stand-in server) vs in process, side by side.

    Args:
        run: a run folder or ``.keras`` model.
        volume: the `Volume` to segment.
        chunk: slices per chunk of the export and of the in-process `Segmenter`.
        work: a folder for the export (must be writable).
        label: what the volume is, for the report (never a file name: it may carry an ID).

    Returns:
        The report (see the module docstring); ``bit_identical`` says whether both masks and
        probabilities are the same bits.
    """
    import tensorflow as tf

    from pancseg_tf.inference import Segmenter
    from pancseg_tf.serving.client import GrpcClient, query_volume
    from pancseg_tf.serving.export import export_model

    export = export_model(run, pathlib.Path(work) / "exports", chunk=chunk)
    segmenter = Segmenter.from_path(run, chunk=chunk)
    process, target = _start_server(export.parent.parent)
    try:
        with GrpcClient(target, retries=60, backoff_s=0.5, timeout_s=600) as client:
            query_volume(volume, client)  # warm-up; waits for the server to start
        segmenter.segment(volume)  # warm-up (tracing)
        # Alternate the two once more than needed and keep each one's best: the machine is
        # shared, and the server process competes with this one for the same cores.
        serving_times, local_times = [], []
        for _ in range(2):
            with GrpcClient(target, timeout_s=600) as client:
                start = time.perf_counter()
                result = query_volume(volume, client)  # as `pancseg query` runs it
                serving_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            local = segmenter.segment(volume)
            local_times.append(time.perf_counter() - start)
        served = result.served
    finally:
        process.terminate()
        process.wait(timeout=60)
    serving_s, local_s = min(serving_times), min(local_times)
    identical = bool(
        np.array_equal(local.mask, result.segmentation.mask)
        and np.array_equal(local.model_probabilities, result.segmentation.model_probabilities)
    )
    return {
        "serving_time_ratio": round(serving_s / local_s, 3),
        "serving_bytes_per_volume": result.bytes_sent + result.bytes_received,
        "bytes_sent": result.bytes_sent,
        "bytes_received": result.bytes_received,
        "in_process_seconds": round(local_s, 3),
        "serving_seconds": round(serving_s, 3),
        "in_process_rounds": [round(t, 3) for t in local_times],
        "serving_rounds": [round(t, 3) for t in serving_times],
        "bit_identical": identical,
        "volume": label,
        "volume_shape": list(volume.shape),
        "model_grid_shape": list(local.model_probabilities.shape),
        "input_size": list(served.size),
        "chunk": served.chunk,
        "overlap": served.overlap,
        "chunks": result.chunks,
        "requests": result.requests,
        "transport": "grpc",
        "server": "serving/standin_server.py (separate process, tensor_content responses)",
        "tensorflow": tf.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model on a small volume")
    parser.add_argument("--model", type=pathlib.Path, help="a run folder or .keras to export")
    parser.add_argument("--volume", type=pathlib.Path, help="NIfTI file or DICOM series folder")
    parser.add_argument("--chunk", type=int, default=None, help="slices per chunk (default 16)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the result here")
    args = parser.parse_args(argv)

    from pancseg_tf.io import read_volume
    from pancseg_tf.serving import constants as names

    chunk = args.chunk or (8 if args.quick else names.DEFAULT_CHUNK)
    source = args.volume or (QUICK_VOLUME if args.quick else FULL_VOLUME)
    # Named by what it is, never by a file or folder name (a case's folder may carry an ID).
    label = "given" if args.volume else "shared 3 mm CT" if args.quick else "shared NIH CT case"
    if source == FULL_VOLUME:
        source = next(FULL_VOLUME.glob("*/*"))  # the series folder
    volume = read_volume(source)
    with tempfile.TemporaryDirectory(prefix="pancseg-serving-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        run = args.model or _build_run(tmp / "run", args.quick)
        report = measure_serving(run, volume, chunk, tmp, label)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
