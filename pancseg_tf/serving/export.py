"""``pancseg export``: a trained model as a SavedModel for TensorFlow Serving.

Writes ``BASE/<name>/<version>/`` (TF Serving's layout) through Keras 3's
``keras.export.ExportArchive``:

- ``serving_default``: chunks of raw model-grid intensities in, per-slice probabilities
  (float32) and mask (uint8) out; `pancseg_tf.inference.ChunkNetwork.serve`, the function
  ``pancseg predict --chunk N`` runs, with the intensity normalisation of
  `pancseg_tf.preprocessing.intensity` inside the graph;
- ``pancseg_config``: the settings a client needs (chunk rule, preprocessing, threshold) as JSON;
- ``assets.extra/tf_serving_warmup_requests``: synthetic representative requests (TFRecord of
  ``PredictionLog``), replayed by TF Serving's ``--enable_model_warmup``;
- ``assets.extra/pancseg.json``: contract version, resolved configs, package and TensorFlow
  versions, the source model's hash and the run's training provenance. Nothing in an export
  comes from a patient's file: the warm-up requests are a drawn phantom.

The version is the next free integer. The export is written to a hidden, non-numeric folder
beside the versions (TF Serving ignores it), checked (core TensorFlow ops only; the saved
signature reproduces the in-process computation), flushed to disk, then renamed into place; an
existing version is never overwritten. A failed export (a full disk included: a `PancsegError`
naming the system's reason) removes its hidden folder and publishes nothing.

Example:
    >>> path = export_model("runs/demo", "exports")      # exports/pancseg/1
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
from typing import Any

import numpy as np

from pancseg_tf._version import __version__
from pancseg_tf.config import Config
from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import exception_text
from pancseg_tf.serving import constants as names

log = logging.getLogger("pancseg_tf.serving")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TMP_PREFIX = ".pancseg-export-"
# Largest difference allowed between the reloaded signature and the in-process function.
_RELOAD_TOLERANCE = 1e-5


# === Versions ===


def next_version(model_dir: str | os.PathLike) -> int:
    """The next free version of ``BASE/<name>``: 1 + the largest numeric name (1 if none).

    TF Serving serves the numeric folders; a numeric file name is not a version but is taken.
    """
    model_dir = pathlib.Path(model_dir)
    versions = [
        int(child.name)
        for child in (model_dir.iterdir() if model_dir.is_dir() else ())
        if child.name.isdigit()
    ]
    return max(versions, default=0) + 1


def _publish(tmp: pathlib.Path, model_dir: pathlib.Path) -> pathlib.Path:
    """Renames the finished ``tmp`` folder to the next free version; never replaces a version."""
    for _ in range(1000):
        final = model_dir / str(next_version(model_dir))
        if final.exists():
            continue
        try:
            # Fails (ENOTEMPTY / EEXIST) when another export took the number meanwhile.
            os.rename(tmp, final)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        return final
    raise PancsegError(f"could not find a free version number in {model_dir}")


# === Graph checks ===


def graph_op_types(export_dir: str | os.PathLike) -> dict[str, set[str]]:
    """Op types in a SavedModel's graphs and function library, and the library's function names.

    Reads ``saved_model.pb`` as a protocol buffer; loads nothing.

    Returns:
        ``{"ops": {...}, "functions": {...}}``: every node's op type, and the names of the
        functions the graph defines (a node may call one by name).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(export_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    functions: set[str] = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            functions.add(function.signature.name)
            ops.update(node.op for node in function.node_def)
    return {"ops": ops, "functions": functions}


def non_core_ops(export_dir: str | os.PathLike) -> list[str]:
    """Op types of the export that are not registered by TensorFlow itself (should be none).

    TF Serving's stock binary loads no add-on op libraries: every op must be in TensorFlow's
    op registry. Run in a process that loaded no custom op library, this is exactly that check.
    """
    from tensorflow.python.framework import op_def_registry

    found = graph_op_types(export_dir)
    return sorted(
        op
        for op in found["ops"] - found["functions"]
        if op_def_registry.get(op) is None or op.startswith(("Addons>", "Text>", "Custom>"))
    )


# === Metadata and warm-up ===


def _training_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """The run's ``provenance:`` block (package version, data index hash, seed), scalars only."""
    return {
        str(key): value
        for key, value in provenance.items()
        if value is None or isinstance(value, str | int | float | bool)
    }


def client_config(
    cfg: Config, *, chunk: int, overlap: int, threshold: float, contextual: bool
) -> dict[str, Any]:
    """What a client needs to prepare requests; served by the ``pancseg_config`` signature."""
    p = cfg.preprocess
    return {
        "contract_version": names.CONTRACT_VERSION,
        "package_version": __version__,
        "model_kind": "contextual" if contextual else "slice_cnn",
        "modality": p.modality,
        "wire_dtype": names.WIRE_DTYPES[p.modality],
        "chunk": chunk,
        "overlap": overlap,
        "height": int(p.size[0]),
        "width": int(p.size[1]),
        "preprocess": cfg.to_dict()["preprocess"],
        "postprocess": {
            "threshold": float(threshold),
            "largest_component": bool(cfg.postprocess.largest_component),
        },
        "signatures": {
            "serving": names.SERVING_SIGNATURE,
            "config": names.CONFIG_SIGNATURE,
        },
    }


def _phantom(chunk: int, height: int, width: int, modality: str) -> np.ndarray:
    """``(chunk, H, W)`` drawn abdomen: an ellipse of soft tissue with a brighter organ in air.

    Warm-up requests must look like real ones (same shapes, realistic values) but may not come
    from a patient's file.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    body = ((rows - cy) / (0.42 * height)) ** 2 + ((cols - cx) / (0.34 * width)) ** 2 <= 1.0
    out = np.empty((chunk, height, width), dtype=np.float32)
    for k in range(chunk):
        radius = 0.08 + 0.04 * np.sin(np.pi * (k + 0.5) / chunk)
        organ = ((rows - cy) / (radius * height)) ** 2 + ((cols - cx * 1.1) / (radius * width)) ** 2
        if modality == "ct":
            plane = np.where(body, 40.0, -1000.0)
            plane = np.where(organ <= 1.0, 110.0, plane)
        else:
            plane = np.where(body, 300.0, 0.0)
            plane = np.where(organ <= 1.0, 650.0, plane)
        out[k] = plane
    return out.astype(names.WIRE_DTYPES[modality])


def warmup_inputs(
    chunk: int, height: int, width: int, modality: str
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``(signature, inputs)`` of the warm-up requests: one chunk, a full and a short chunk
    (the padded path of a volume shorter than one chunk), and the config signature."""
    phantom = _phantom(chunk, height, width, modality)
    short = phantom.copy()
    short_count = max(1, chunk // 2)
    short[short_count:] = 0
    requests = []
    for slices, counts in (
        (phantom[None], np.array([chunk], np.int32)),
        (np.stack([phantom, short]), np.array([chunk, short_count], np.int32)),
    ):
        inputs = {names.SLICES: slices, names.SLICE_COUNT: counts}
        if modality == "mri":
            inputs[names.PERCENTILES] = np.tile(
                np.array([[0.0, 700.0]], np.float32), (len(counts), 1)
            )
        requests.append((names.SERVING_SIGNATURE, inputs))
    requests.append((names.CONFIG_SIGNATURE, {names.CONFIG_REQUEST: np.zeros(1, np.int32)}))
    return requests


def _write_warmup(path: pathlib.Path, model_name: str, requests) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())


def read_export_metadata(export_dir: str | os.PathLike) -> dict[str, Any]:
    """``assets.extra/pancseg.json`` of an export.

    Raises:
        PancsegError: the folder has no such file (not a pancseg export).
    """
    path = pathlib.Path(export_dir) / names.ASSETS_EXTRA / names.METADATA_FILE
    if not path.is_file():
        raise PancsegError(f"{export_dir} is not a pancseg export: {path.name} is missing")
    return json.loads(path.read_text())


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# === Export ===


def _check_chunk(chunk: Any, overlap: Any) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2:
        raise PancsegError(f"chunk must be an integer >= 2 slices, got {chunk!r}")
    if overlap is not None and (
        isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk
    ):
        raise PancsegError(f"overlap must be an integer in [0, {chunk}), got {overlap!r}")


def export_model(
    model_path: str | os.PathLike,
    base: str | os.PathLike,
    *,
    name: str = names.DEFAULT_MODEL_NAME,
    chunk: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
    unsafe: bool = False,
    config: str | os.PathLike | Any | None = None,
) -> pathlib.Path:
    """Exports a trained model as ``BASE/<name>/<version>/`` for TensorFlow Serving.

    Args:
        model_path: a run folder (its ``model.keras``, else ``stage1.keras``) or a ``.keras``
            file; its model card (`pancseg_tf.model_card`) gives preprocessing and
            post-processing.
        base: TF Serving's model base folder (``--model_base_path``'s parent); created.
        name: the model's name in TF Serving and in requests.
        chunk: slices per chunk ``T`` (the contract's fixed chunk length, ``predict --chunk``);
            default the model's ``context_window`` (the window its recurrence was trained on,
            what ``pancseg predict`` runs) where it has one, else ``DEFAULT_CHUNK``.
        overlap: slices shared by consecutive chunks; default ``chunk // 4``, as
            ``pancseg predict --chunk`` does.
        threshold: the ``mask`` output's threshold; default the run's
            ``postprocess.threshold``.
        unsafe: load a model with ``Lambda`` layers or unregistered classes (runs code from
            the file).
        config: the config (a YAML path, a shipped name or a `Config`) for a ``.keras`` file
            made elsewhere, which carries no model card.

    Returns:
        The new version folder.

    Raises:
        PancsegError: a missing or unloadable model, a bad name, chunk, overlap or threshold, a
            model whose size does not match its config, or an export that fails its checks.
    """
    from pancseg_tf.inference import (
        DEFAULT_OVERLAP_FRACTION,
        ChunkNetwork,
        load_model,
        resolve_model_path,
    )
    from pancseg_tf.model_card import describe_model
    from pancseg_tf.serving.client import require_serving_api

    require_serving_api()  # the warm-up file is written with TF Serving's protos
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PancsegError(
            f"model name must be letters, digits, '.', '_' or '-' (not starting with a "
            f"symbol), got {name!r}"
        )
    if chunk is not None:
        _check_chunk(chunk, overlap)
    model_path = resolve_model_path(model_path)
    # The model first: a file that is no model, or unsafe, is refused before anything is said
    # of its config (as `Segmenter.from_path` does).
    model = load_model(model_path, unsafe=unsafe)
    description = describe_model(model_path, config)
    cfg = description.config
    if threshold is None:
        threshold = cfg.postprocess.threshold
    if chunk is None:
        chunk = getattr(model, "context_window", None) or names.DEFAULT_CHUNK
        _check_chunk(chunk, overlap)
    if overlap is None:
        overlap = int(chunk * DEFAULT_OVERLAP_FRACTION)
    net = ChunkNetwork(model, cfg.preprocess, chunk=chunk, threshold=threshold)
    settings = client_config(
        cfg, chunk=chunk, overlap=overlap, threshold=threshold, contextual=net.contextual
    )

    model_dir = pathlib.Path(base) / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PancsegError(f"cannot create {model_dir}: {err.strerror}") from None
    tmp = model_dir / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            _write_export(tmp, model, net, settings, name, model_path, description)
            # On disk before the rename: a published version is never a half-flushed one.
            _fsync_tree(tmp)
        except OSError as err:
            reason = err.strerror or exception_text(err)
            raise PancsegError(
                f"could not write the export into {model_dir}: {reason} (nothing was published)"
            ) from err
        except Exception as err:
            reason = _storage_error_text(err)
            if reason is None:
                raise
            raise PancsegError(
                f"could not write the export into {model_dir}: {reason} (nothing was published)"
            ) from err
        final = _publish(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", model_path.name, final)
    return final


#: What TensorFlow's file system says (it raises its own errors, without ``errno``) when the
#: disk is full, a quota or a file size limit is reached: ``strerror`` of ENOSPC, EDQUOT, EFBIG.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _storage_error_text(err: BaseException) -> str | None:
    """The system's reason when ``err`` (e.g. a ``tf.errors.OpError``) reports a full disk."""
    text = str(err)
    for number in _STORAGE_ERRNOS:
        reason = os.strerror(number)
        if reason in text:
            return reason
    return None


def _fsync_tree(folder: pathlib.Path) -> None:
    """Flushes every file under ``folder`` to disk (a full disk may only say so here), then the
    folders' entries where the platform can open a folder.

    Raises:
        OSError: a file could not be flushed.
    """
    paths = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for path in [*paths, folder]:
        is_dir = path.is_dir()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            if is_dir:
                continue
            raise
        try:
            os.fsync(fd)
        except OSError:
            if not is_dir:
                raise
        finally:
            os.close(fd)


def _write_export(tmp, model, net, settings, name, model_path, description) -> None:
    import keras
    import tensorflow as tf

    config_text = json.dumps(settings, sort_keys=True)

    def config_signature(request):
        # One JSON answer per row: TF Serving's batching splits outputs on axis 0.
        return {names.CONFIG_JSON: tf.fill(tf.shape(request)[:1], tf.constant(config_text))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(names.SERVING_SIGNATURE, net.serve_fn, input_signature=net.input_signature)
    archive.add_endpoint(
        names.CONFIG_SIGNATURE,
        config_signature,
        input_signature=[tf.TensorSpec((None,), tf.int32, name=names.CONFIG_REQUEST)],
    )
    archive.write_out(str(tmp), verbose=False)

    foreign = non_core_ops(tmp)
    if foreign:
        raise PancsegError(
            f"the exported graph uses ops outside core TensorFlow, which TF Serving cannot "
            f"load: {', '.join(foreign)}"
        )
    height, width = net.size
    cfg = description.config
    requests = warmup_inputs(net.chunk, height, width, cfg.preprocess.modality)
    _check_reload(tmp, net, requests[1][1])

    extra = tmp / names.ASSETS_EXTRA
    extra.mkdir()
    _write_warmup(extra / names.WARMUP_FILE, name, requests)
    metadata = {
        "contract_version": names.CONTRACT_VERSION,
        "package": "pancseg_tf",
        "package_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "minimum_tensorflow_serving_version": ".".join(tf.__version__.split(".")[:2]),
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_name": name,
        "source_model": {
            "file": model_path.name,
            "sha256": _sha256(model_path),
            "class": type(model).__name__,
            "config": model.get_config(),
        },
        "signatures": {
            names.SERVING_SIGNATURE: {
                "inputs": {spec.name: spec.dtype.name for spec in net.input_signature},
                "outputs": {names.PROBABILITIES: "float32", names.MASK: "uint8"},
            },
            names.CONFIG_SIGNATURE: {
                "inputs": {names.CONFIG_REQUEST: "int32"},
                "outputs": {names.CONFIG_JSON: "string"},
            },
        },
        "client_config": settings,
        "run_config": cfg.to_dict(),
        "training_provenance": _training_provenance(description.provenance),
    }
    (extra / names.METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")


def _check_reload(export_dir: pathlib.Path, net, inputs: dict[str, np.ndarray]) -> None:
    """Reloads the SavedModel and compares its signature with the in-process function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    signature = loaded.signatures[names.SERVING_SIGNATURE]
    got = signature(**{key: tf.constant(value) for key, value in inputs.items()})
    want = net.serve(*(inputs[spec.name] for spec in net.input_signature))
    for key in (names.PROBABILITIES, names.MASK):
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.shape != b.shape or np.abs(a.astype(np.float64) - b).max() > _RELOAD_TOLERANCE:
            raise PancsegError(
                f"the reloaded export's '{key}' differs from the in-process model: the SavedModel "
                "does not reproduce the network (please report this)"
            )
