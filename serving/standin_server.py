"""A local stand-in for TensorFlow Serving, for tests, notebooks and benchmarks.

A script of the repository, not a module of the installed package: ``pip install`` does not ship
it. It uses the installed `pancseg_tf` (``pancseg_tf.serving.constants``, ``pancseg_tf.errors``)
and TF Serving's protos (``tensorflow-serving-api``, ``grpcio``). Tests load it from this file
(``tests/serving/__init__.py``: `standin_server`), as does ``notebooks/03_serving.ipynb``;
``benchmarks/serving.py`` runs it as a script.

`LocalModelServer` loads ``BASE/<name>/<version>/`` exports the way ``tensorflow_model_server``
does (TensorFlow's C++ SavedModel loader into a session, tag ``serve``, tensors fed and fetched by
the ``SignatureDef``'s names) and answers on 127.0.0.1 only:

- gRPC ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata``
  (``signature_def``), with TF Serving's checks and status codes: unknown model or version
  ``NOT_FOUND``; unknown signature ``FAILED_PRECONDITION``; missing, extra or unknown inputs,
  wrong dtypes, unparsable tensors and unknown output filters ``INVALID_ARGUMENT``; a tensor
  that declares more than ``max_tensor_bytes`` ``RESOURCE_EXHAUSTED``; errors raised
  by the graph (its assertions, shape mismatches) with the graph's own code;
- the REST API: ``GET /v1/models/<name>[/versions/<n>]`` (status), ``.../metadata`` and
  ``POST .../<name>[/versions/<n>]:predict`` (columnar ``"inputs"`` or row ``"instances"``),
  JSON errors ``{"error": ...}`` with TF Serving's HTTP codes.

Outputs are encoded as TF Serving encodes them by default (values in the typed repeated fields,
``float_val``, ``int_val``; ``response_encoding="content"`` uses ``tensor_content`` instead). It
implements neither batching nor warm-up, nor the Classify, Regress and MultiInference APIs
(``UNIMPLEMENTED``).

Run it by hand::

    python serving/standin_server.py exports --grpc-port 8500 --rest-port 8501
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import json
import logging
import math
import pathlib
import re
import threading
from typing import Any

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.serving import constants as names

log = logging.getLogger("standin_server")

#: TF Serving's gRPC message limit, both directions.
TF_SERVING_MAX_MESSAGE_BYTES = 2**31 - 1
_HOST = "127.0.0.1"
# HTTP status of each gRPC code, as TF Serving's REST API maps them.
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<action>/metadata|:predict)?$"
)


class ServingError(Exception):
    """A request refused with a gRPC status code name (``"INVALID_ARGUMENT"``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# === One loaded version ===


class LoadedVersion:
    """One version of a SavedModel in its own graph and ``tf.compat.v1.Session``.

    Args:
        path: the version folder.
        version: its number.
    """

    def __init__(self, path: pathlib.Path, version: int):
        import tensorflow as tf

        self.path = pathlib.Path(path)
        self.version = version
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        tf_log = logging.getLogger("tensorflow")
        level = tf_log.level
        tf_log.setLevel(logging.ERROR)  # the TF1 loader's deprecation notice is not for users
        try:
            with self.graph.as_default():
                # TensorFlow's C++ loader (LoadSavedModel), as tensorflow_model_server uses it.
                meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, [names.SERVE_TAG], str(self.path)
                )
        finally:
            tf_log.setLevel(level)
        self.signatures = dict(meta_graph.signature_def)

    def close(self) -> None:
        self.session.close()

    def run(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter: list[str]
    ) -> dict[str, np.ndarray]:
        """Runs a signature with TF Serving's request checks (``PreProcessPrediction``).

        Raises:
            ServingError: as TF Serving would refuse the request.
        """
        import tensorflow as tf

        signature_name = signature_name or names.SERVING_SIGNATURE
        signature = self.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                "FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.'
            )
        expected = set(signature.inputs)
        sent = set(inputs)
        if sent != expected:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. Missing but required: "
                f"{{{','.join(sorted(expected - sent))}}}.",
            )
        feeds = {}
        for index, (alias, info) in enumerate(sorted(signature.inputs.items())):
            value = inputs[alias]
            want = tf.dtypes.as_dtype(info.dtype)
            got = value.dtype
            got_name = "string" if got.kind in "SUO" else tf.dtypes.as_dtype(got).name
            if got_name != want.name:
                # What the session's argument op says for a fed tensor of another dtype.
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {want.name} but {got_name} is provided",
                )
            feeds[info.name] = value
        aliases = list(output_filter) or list(signature.outputs)
        if len(set(aliases)) != len(aliases):
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {aliases}")
        for alias in aliases:
            if alias not in signature.outputs:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}.",
                )
        fetches = [signature.outputs[alias].name for alias in aliases]
        try:
            values = self.session.run(fetches, feed_dict=feeds)
        except tf.errors.OpError as err:
            raise ServingError(_status_name(err.error_code), _first_line(err.message)) from None
        except (ValueError, TypeError) as err:
            # The session's own feed checks (e.g. a shape the placeholder cannot take).
            raise ServingError("INVALID_ARGUMENT", _first_line(str(err))) from None
        return dict(zip(aliases, values))


def _status_name(error_code: int) -> str:
    """TensorFlow's error codes are gRPC's status codes (3 -> ``"INVALID_ARGUMENT"``)."""
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == error_code:
            return status.name
    return "UNKNOWN"


def _first_line(message: str) -> str:
    return (message or "").strip().splitlines()[0][:2000] if message else ""


# === Models ===


class ModelRepository:
    """The versions of ``BASE/<name>/`` that are served.

    Args:
        base: the model base folder.
        name: model name (a sub-folder of ``base``).
        versions: ``"latest"`` (TF Serving's default policy), ``"all"`` or a list of numbers.

    Raises:
        PancsegError: no version folder to serve.
    """

    def __init__(self, base: str | pathlib.Path, name: str, versions: Any = "latest"):
        folder = pathlib.Path(base) / name
        found = sorted(
            int(child.name)
            for child in (folder.iterdir() if folder.is_dir() else ())
            if child.name.isdigit() and (child / "saved_model.pb").is_file()
        )
        if not found:
            raise PancsegError(f"no SavedModel version folder under {folder}")
        if versions == "latest":
            chosen = found[-1:]
        elif versions == "all":
            chosen = found
        else:
            chosen = sorted(int(v) for v in versions)
            missing = sorted(set(chosen) - set(found))
            if missing:
                raise PancsegError(f"versions {missing} not found under {folder}")
        self.name = name
        self.loaded = {v: LoadedVersion(folder / str(v), v) for v in chosen}

    def get(self, name: str, version: int | None) -> LoadedVersion:
        """The servable for a request, or ``NOT_FOUND`` as TF Serving words it."""
        if name != self.name:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")
        if version is None:
            return self.loaded[max(self.loaded)]
        if version not in self.loaded:
            raise ServingError(
                "NOT_FOUND", f"Servable not found for request: Specific({name}, {version})"
            )
        return self.loaded[version]

    def close(self) -> None:
        for servable in self.loaded.values():
            servable.close()


# === gRPC ===


def _tensor_proto(array: np.ndarray, as_field: bool):
    """A ``TensorProto``: typed repeated fields (TF Serving's default) or ``tensor_content``."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    array = np.asarray(array)
    if not as_field or array.dtype.kind not in "fiubSUO":
        return tf.make_tensor_proto(array)
    dtype = tf.string if array.dtype.kind in "SUO" else tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    flat = array.ravel()
    if dtype == tf.float32:
        proto.float_val.extend(flat.tolist())
    elif dtype == tf.float64:
        proto.double_val.extend(flat.tolist())
    elif dtype in (tf.int8, tf.int16, tf.int32, tf.uint8, tf.uint16):
        proto.int_val.extend(flat.tolist())
    elif dtype == tf.int64:
        proto.int64_val.extend(flat.tolist())
    elif dtype == tf.bool:
        proto.bool_val.extend(flat.tolist())
    elif dtype == tf.string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        return tf.make_tensor_proto(array)
    return proto


def _check_declared_size(alias: str, proto, limit: int) -> None:
    """Refuses a ``TensorProto`` whose declared shape is negative or over ``limit`` bytes.

    Checked before decoding: `tf.make_ndarray` repeats the last value (or zeros) to fill the
    declared shape, so a request of a few bytes could make the server allocate gigabytes.

    Raises:
        ServingError: ``INVALID_ARGUMENT`` for a negative dimension, ``RESOURCE_EXHAUSTED``
            for a tensor over the limit.
    """
    import tensorflow as tf

    dims = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise ServingError("INVALID_ARGUMENT", f"input '{alias}' declares shape {dims}")
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        return  # an unknown dtype: decoding refuses it with INVALID_ARGUMENT
    if dtype == tf.string:
        return  # strings take their own room in the message
    declared = math.prod(dims) * dtype.size  # Python integers: no overflow
    if declared > limit:
        raise ServingError(
            "RESOURCE_EXHAUSTED",
            f"input '{alias}' declares shape {dims} ({declared} bytes), over this server's "
            f"limit of {limit} bytes per tensor",
        )


def _make_servicer(server: LocalModelServer):
    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - gRPC method name
            try:
                return server.predict_proto(request, predict_pb2.PredictResponse())
            except ServingError as err:
                context.abort(getattr(grpc.StatusCode, err.code), err.message)

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                return server.metadata_proto(
                    request, get_model_metadata_pb2.GetModelMetadataResponse()
                )
            except ServingError as err:
                context.abort(getattr(grpc.StatusCode, err.code), err.message)

    return PredictionService()


# === REST ===


def _json_to_array(value: Any, dtype: str, alias: str) -> np.ndarray:
    """A JSON list as a tensor of the signature's dtype, refused as TF Serving refuses it."""
    if dtype == "string":
        array = np.asarray(value, dtype=object)
        if array.size and not all(isinstance(v, str) for v in array.ravel()):
            raise ServingError("INVALID_ARGUMENT", f"input '{alias}' must hold strings")
        return np.vectorize(lambda v: v.encode(), otypes=[object])(array)
    try:
        array = np.asarray(value)
    except ValueError:
        raise ServingError("INVALID_ARGUMENT", f"input '{alias}' is not a dense list") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ServingError("INVALID_ARGUMENT", f"input '{alias}' is not a dense list of numbers")
    target = np.dtype(dtype)
    if target.kind in "iu":
        if array.size and array.dtype.kind == "f":
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input '{alias}': JSON numbers are not of expected type {dtype}",
            )
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ServingError("INVALID_ARGUMENT", f"input '{alias}': values out of {dtype} range")
    return array.astype(target)


def _array_to_json(array: np.ndarray) -> Any:
    array = np.asarray(array)
    if array.dtype.kind in "SO":
        return np.vectorize(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
            otypes=[object],
        )(array).tolist()
    # float32 -> Python float is exact, and JSON's repr round-trips: the same bits as gRPC.
    return array.tolist()


def _make_http_handler(server: LocalModelServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("rest: " + format, *args)

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            server._record(0, len(body))

        def _route(self):
            match = _REST_PATH.match(self.path)
            if match is None:
                raise ServingError("NOT_FOUND", f"Malformed request: {self.command} {self.path}")
            version = match["version"]
            return match["name"], None if version is None else int(version), match["action"]

        def do_GET(self) -> None:  # noqa: N802 - http.server's method name
            try:
                name, version, action = self._route()
                if action == ":predict":
                    raise ServingError("INVALID_ARGUMENT", "predict needs POST")
                if action == "/metadata":
                    self._send(200, server.metadata_json(name, version))
                else:
                    self._send(200, server.status_json(name, version))
            except ServingError as err:
                self._send(_HTTP_STATUS.get(err.code, 500), {"error": err.message})

        def do_POST(self) -> None:  # noqa: N802
            try:
                name, version, action = self._route()
                if action != ":predict":
                    raise ServingError("INVALID_ARGUMENT", "only :predict takes POST")
                length = int(self.headers.get("Content-Length") or 0)
                if length > server.max_rest_body_bytes:
                    raise ServingError("RESOURCE_EXHAUSTED", f"request body of {length} bytes")
                raw = self.rfile.read(length)
                server._record(len(raw), 0)
                try:
                    body = json.loads(raw)
                except ValueError as err:
                    raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {err}") from None
                self._send(200, server.predict_json(name, version, body))
            except ServingError as err:
                self._send(_HTTP_STATUS.get(err.code, 500), {"error": err.message})

    return Handler


# === The server ===


class LocalModelServer:
    """TF Serving's gRPC and REST APIs over one model's exports, on 127.0.0.1.

    Args:
        base: the model base folder (``BASE/<name>/<version>/``).
        name: the model name.
        versions: ``"latest"``, ``"all"`` or a list of version numbers to load.
        grpc_port: gRPC port; 0 picks a free one.
        rest_port: REST port; 0 picks a free one, ``None`` serves no REST.
        max_message_bytes: largest gRPC message received or sent (TF Serving: 2 GiB; a stock
            gRPC server receives 4 MiB).
        max_tensor_bytes: largest input tensor, decoded, that a gRPC request may declare;
            default ``2 * max_message_bytes`` (typed-field encodings may take less room than
            the decoded values, e.g. one-byte varints of int16). A ``TensorProto`` holds its
            shape apart from its values, and a short value list is repeated to fill the
            shape, so a few bytes can ask for gigabytes: such a request is refused with
            ``RESOURCE_EXHAUSTED`` before anything is allocated.
        max_rest_body_bytes: largest REST request body (JSON is several times the size of the
            same tensors in a protocol buffer).
        workers: threads answering gRPC calls.
        response_encoding: ``"field"`` (typed repeated fields, TF Serving's default) or
            ``"content"`` (``tensor_content`` bytes).

    Example:
        >>> with LocalModelServer("exports") as server:
        ...     query_file("ct.nii.gz", "mask.nii.gz", server=server.grpc_target)
    """

    def __init__(
        self,
        base: str | pathlib.Path,
        name: str = names.DEFAULT_MODEL_NAME,
        *,
        versions: Any = "latest",
        grpc_port: int = 0,
        rest_port: int | None = 0,
        max_message_bytes: int = TF_SERVING_MAX_MESSAGE_BYTES,
        max_tensor_bytes: int | None = None,
        max_rest_body_bytes: int = 1024**3,
        workers: int = 16,
        response_encoding: str = "field",
    ) -> None:
        from pancseg_tf.serving.client import require_serving_api

        require_serving_api()
        if response_encoding not in ("field", "content"):
            raise PancsegError(
                f"response_encoding must be 'field' or 'content', got {response_encoding!r}"
            )
        self.repository = ModelRepository(base, name, versions)
        self.name = name
        self.max_message_bytes = int(max_message_bytes)
        self.max_tensor_bytes = int(
            2 * self.max_message_bytes if max_tensor_bytes is None else max_tensor_bytes
        )
        self.max_rest_body_bytes = int(max_rest_body_bytes)
        self.as_field = response_encoding == "field"
        self._grpc_port = grpc_port
        self._rest_port = rest_port
        self._workers = workers
        self._grpc_server = None
        self._http_server = None
        self._http_thread = None
        self._lock = threading.Lock()
        #: Counters: ``predict`` calls, ``metadata`` calls, ``errors``, largest request and
        #: response in bytes, total bytes received and sent.
        self.stats = {
            "predict": 0,
            "metadata": 0,
            "errors": 0,
            "largest_request": 0,
            "largest_response": 0,
            "bytes_received": 0,
            "bytes_sent": 0,
        }
        self.grpc_target = ""
        self.rest_target = ""

    # --- life cycle ---

    def start(self) -> LocalModelServer:
        """Starts both servers; ``grpc_target`` and ``rest_target`` are then ``HOST:PORT``."""
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._grpc_server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._workers), options=options
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _make_servicer(self), self._grpc_server
        )
        port = self._grpc_server.add_insecure_port(f"{_HOST}:{self._grpc_port}")
        if not port:
            raise PancsegError(f"cannot listen on {_HOST}:{self._grpc_port}")
        self._grpc_server.start()
        self.grpc_target = f"{_HOST}:{port}"
        if self._rest_port is not None:
            self._http_server = http.server.ThreadingHTTPServer(
                (_HOST, self._rest_port), _make_http_handler(self)
            )
            self._http_server.daemon_threads = True
            self._http_thread = threading.Thread(
                target=self._http_server.serve_forever, name="pancseg-rest", daemon=True
            )
            self._http_thread.start()
            self.rest_target = f"{_HOST}:{self._http_server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stops both servers and closes the sessions."""
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        self.repository.close()

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, received: int, sent: int) -> None:
        with self._lock:
            self.stats["bytes_received"] += received
            self.stats["bytes_sent"] += sent
            self.stats["largest_request"] = max(self.stats["largest_request"], received)
            self.stats["largest_response"] = max(self.stats["largest_response"], sent)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    # --- the APIs ---

    def _servable(self, model_spec) -> LoadedVersion:
        if model_spec.version_label:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Unrecognized servable version label: {model_spec.version_label}",
            )
        version = model_spec.version.value if model_spec.HasField("version") else None
        return self.repository.get(model_spec.name, version)

    def predict_proto(self, request, response):
        """gRPC ``Predict``: fills and returns ``response``."""
        import tensorflow as tf

        self._count("predict")
        try:
            servable = self._servable(request.model_spec)
            inputs = {}
            for alias, proto in request.inputs.items():
                _check_declared_size(alias, proto, self.max_tensor_bytes)
                try:
                    inputs[alias] = tf.make_ndarray(proto)
                except Exception as err:  # noqa: BLE001 - any unparsable TensorProto
                    raise ServingError("INVALID_ARGUMENT", f"tensor parsing error: {err}") from None
            outputs = servable.run(
                request.model_spec.signature_name, inputs, list(request.output_filter)
            )
        except ServingError:
            self._count("errors")
            raise
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = (
            request.model_spec.signature_name or names.SERVING_SIGNATURE
        )
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(_tensor_proto(value, self.as_field))
        self._record(request.ByteSize(), response.ByteSize())
        return response

    def metadata_proto(self, request, response):
        """gRPC ``GetModelMetadata`` (``signature_def`` only, as TF Serving)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        self._count("metadata")
        try:
            servable = self._servable(request.model_spec)
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in fields:
                if field != "signature_def":
                    raise ServingError(
                        "INVALID_ARGUMENT", f"Metadata field {field} is not supported"
                    )
        except ServingError:
            self._count("errors")
            raise
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signatures.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def status_json(self, name: str, version: int | None) -> dict[str, Any]:
        servable = self.repository.get(name, version)
        versions = [servable.version] if version is not None else sorted(self.repository.loaded)
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for v in versions
            ]
        }

    def metadata_json(self, name: str, version: int | None) -> dict[str, Any]:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        self._count("metadata")
        servable = self.repository.get(name, version)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signatures.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True
                )
            },
        }

    def predict_json(self, name: str, version: int | None, body: Any) -> dict[str, Any]:
        """REST ``:predict``: columnar ``"inputs"`` or row ``"instances"``."""
        import tensorflow as tf

        self._count("predict")
        try:
            servable = self.repository.get(name, version)
            if not isinstance(body, dict):
                raise ServingError("INVALID_ARGUMENT", "the request body must be a JSON object")
            signature_name = body.get("signature_name") or names.SERVING_SIGNATURE
            if not isinstance(signature_name, str):
                raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
            signature = servable.signatures.get(signature_name)
            if signature is None:
                raise ServingError(
                    "FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.'
                )
            dtypes = {
                alias: (
                    "string"
                    if info.dtype == tf.string.as_datatype_enum
                    else np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype).name
                )
                for alias, info in signature.inputs.items()
            }
            row_format = "instances" in body
            if "inputs" in body and not row_format:
                raw = body["inputs"]
                if not isinstance(raw, dict):
                    if len(dtypes) != 1:
                        raise ServingError("INVALID_ARGUMENT", "'inputs' must name each input")
                    raw = {next(iter(dtypes)): raw}
            elif row_format and "inputs" not in body:
                raw = _rows_to_columns(body["instances"], list(dtypes))
            else:
                raise ServingError(
                    "INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key (exactly one)"
                )
            inputs = {}
            for alias, value in raw.items():
                if alias not in dtypes:
                    raise ServingError(
                        "INVALID_ARGUMENT",
                        f"JSON object: does not have named input: {alias}",
                    )
                inputs[alias] = _json_to_array(value, dtypes[alias], alias)
            outputs = servable.run(signature_name, inputs, [])
        except ServingError:
            self._count("errors")
            raise
        if row_format:
            keys = list(outputs)
            rows = len(next(iter(outputs.values())))
            if len(keys) == 1:
                return {"predictions": _array_to_json(outputs[keys[0]])}
            return {
                "predictions": [
                    {key: _array_to_json(outputs[key][i]) for key in keys} for i in range(rows)
                ]
            }
        if len(outputs) == 1:
            return {"outputs": _array_to_json(next(iter(outputs.values())))}
        return {"outputs": {key: _array_to_json(value) for key, value in outputs.items()}}


def _rows_to_columns(instances: Any, aliases: list[str]) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise ServingError("INVALID_ARGUMENT", "'instances' must be a list")
    if len(aliases) == 1 and not (instances and isinstance(instances[0], dict)):
        return {aliases[0]: instances}
    columns: dict[str, list] = {alias: [] for alias in aliases}
    for row in instances:
        if not isinstance(row, dict) or set(row) != set(aliases):
            raise ServingError(
                "INVALID_ARGUMENT", f"each instance must be an object with keys {sorted(aliases)}"
            )
        for alias in aliases:
            columns[alias].append(row[alias])
    return columns


def main(argv: list[str] | None = None) -> int:
    """``python serving/standin_server.py BASE``: serve until interrupted."""
    parser = argparse.ArgumentParser(
        description="A local stand-in for TensorFlow Serving (127.0.0.1 only)."
    )
    parser.add_argument("base", help="model base folder holding <name>/<version>/")
    parser.add_argument("--name", default=names.DEFAULT_MODEL_NAME, help="model name")
    parser.add_argument("--grpc-port", type=int, default=names.GRPC_PORT, help="default 8500")
    parser.add_argument("--rest-port", type=int, default=names.REST_PORT, help="default 8501")
    parser.add_argument(
        "--versions", default="latest", help="latest (default), all, or comma-separated numbers"
    )
    parser.add_argument(
        "--response-encoding",
        choices=("field", "content"),
        default="field",
        help="field: typed repeated fields as TF Serving (default); content: tensor_content bytes",
    )
    args = parser.parse_args(argv)
    versions = args.versions
    if versions not in ("latest", "all"):
        versions = [int(v) for v in versions.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = LocalModelServer(
            args.base,
            args.name,
            versions=versions,
            grpc_port=args.grpc_port,
            rest_port=args.rest_port,
            response_encoding=args.response_encoding,
        ).start()
    except PancsegError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"gRPC on {server.grpc_target}, REST on {server.rest_target} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
