"""``pancseg query``: segment a volume through a served export, over gRPC or REST.

The client follows ``serving/CONTRACT.md``:

1. ``GetModelMetadata``: the model, version and signatures exist (a clear error otherwise); the
   version is then pinned, so one volume never mixes two versions;
2. the ``pancseg_config`` signature: chunk length and overlap, preprocessing, threshold;
3. host geometry with `pancseg_tf.inference.plan_volume` (the code ``pancseg predict`` runs),
   wire intensities (`request_intensities`: int16 HU for CT; float32 and percentiles for MRI);
4. chunks by `chunk_spans`, ``B`` chunks per request, sized so that every request stays under
   ``max_request_bytes`` and every response under ``max_response_bytes`` (the channel's limits);
5. `blend_chunks`, back to the input's grid, threshold and post-processing
   (`finish_segmentation`), so the mask equals ``pancseg predict --chunk N``'s bit for bit.

Every call has a deadline; ``UNAVAILABLE`` (server starting, restarting, overloaded) is retried
with exponential backoff; any other failure is a `PancsegError` that names the server, model and
what went wrong.

Example:
    >>> with GrpcClient("localhost:8500") as client:
    ...     result = query_volume(read_volume("ct.nii.gz"), client)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pancseg_tf.config import PreprocessConfig
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import Volume
from pancseg_tf.messages import short_message
from pancseg_tf.serving import constants as names

log = logging.getLogger("pancseg_tf.serving")

# Room for a request's or response's protocol-buffer framing, names and shapes.
_MESSAGE_OVERHEAD = 64 * 1024
_DTYPES = {
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_BOOL": "bool",
    "DT_STRING": "string",
}


def require_serving_api() -> None:
    """Checks that gRPC and TF Serving's API protos are installed (the ``serving`` extra).

    Raises:
        PancsegError: naming the missing package and the extra that installs it.
    """
    try:
        import grpc  # noqa: F401
        import tensorflow_serving.apis  # noqa: F401
    except ImportError as err:
        missing = "grpcio" if err.name == "grpc" else "tensorflow-serving-api"
        raise PancsegError(
            f"{missing} is not installed: pip install 'pancseg-tf[serving]' (it brings "
            "tensorflow-serving-api and grpcio for your TensorFlow version)"
        ) from None


# === What the server says ===


@dataclasses.dataclass(frozen=True)
class TensorSpecInfo:
    """One input or output of a served signature: numpy dtype name and shape (-1: any)."""

    dtype: str
    shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A served pancseg export, as its metadata and ``pancseg_config`` signature describe it.

    Attributes:
        name: model name on the server.
        version: the version that answered (pinned for the rest of a volume).
        contract_version: the export's `CONTRACT_VERSION`.
        package_version: pancseg_tf version that exported it.
        chunk: slices per chunk ``T``.
        overlap: slices shared by consecutive chunks.
        modality: ``"ct"`` or ``"mri"``.
        wire_dtype: dtype of the ``slices`` input (``"int16"`` or ``"float32"``).
        preprocess: the run's preprocessing (host geometry).
        threshold: probability threshold of the mask.
        largest_component: post-processing as ``pancseg predict`` does it.
    """

    name: str
    version: int
    contract_version: int
    package_version: str
    chunk: int
    overlap: int
    modality: str
    wire_dtype: str
    preprocess: PreprocessConfig
    threshold: float
    largest_component: bool

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.preprocess.size[0]), int(self.preprocess.size[1]))


@dataclasses.dataclass
class QueryResult:
    """What `query_volume` returns.

    Attributes:
        segmentation: mask and probabilities on the input's own grid
            (`pancseg_tf.inference.Segmentation`).
        served: the model that answered.
        chunks: chunks sent.
        requests: ``Predict`` calls that carried chunks (the metadata and config calls of
            `ServingClient.describe` not counted).
        bytes_sent: serialised request payloads (protocol buffers or JSON bodies) of all the
            query's calls, ``describe`` included when it ran here; HTTP/2 and HTTP framing
            not counted.
        bytes_received: serialised response payloads, likewise.
        seconds: wall time of the whole query.
    """

    segmentation: Any
    served: ServedModel
    chunks: int
    requests: int
    bytes_sent: int
    bytes_received: int
    seconds: float


# === Clients ===


class ServingClient:
    """Common part of `GrpcClient` and `RestClient`: retries, sizing, the contract checks.

    Args:
        server: ``HOST:PORT`` of the model server (gRPC 8500 or REST 8501 by default).
        model: model name on the server.
        version: a version number; ``None`` for the server's latest.
        timeout_s: deadline of each call, seconds.
        retries: retries of a call answered ``UNAVAILABLE`` (or not answered at all).
        backoff_s: first wait before a retry; doubles each time, at most 8 s.
        max_request_bytes: largest request sent (a gRPC server accepts 4 MiB unless it raises
            its limit; TF Serving accepts 2 GiB).
        max_response_bytes: largest response accepted (the channel's receive limit).
    """

    transport = ""

    def __init__(
        self,
        server: str,
        model: str = names.DEFAULT_MODEL_NAME,
        version: int | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_request_bytes: int = names.DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = names.DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if (
            not isinstance(server, str)
            or ":" not in server
            or server.startswith(("http:", "https:"))
        ):
            raise PancsegError(f"server must be HOST:PORT, got {server!r}")
        if version is not None and (isinstance(version, bool) or int(version) < 1):
            raise PancsegError(f"version must be an integer >= 1, got {version!r}")
        if not timeout_s > 0:
            raise PancsegError(f"timeout must be > 0 seconds, got {timeout_s}")
        if retries < 0:
            raise PancsegError(f"retries must be >= 0, got {retries}")
        for label, value in (
            ("max_request_bytes", max_request_bytes),
            ("max_response_bytes", max_response_bytes),
        ):
            if value < 2 * _MESSAGE_OVERHEAD:
                raise PancsegError(f"{label} must be >= {2 * _MESSAGE_OVERHEAD}, got {value}")
        self.server = server
        self.model = model
        self.version = None if version is None else int(version)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_request_bytes = int(max_request_bytes)
        self.max_response_bytes = int(max_response_bytes)
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    # --- to implement ---

    def _metadata(self) -> tuple[int, dict[str, dict[str, dict[str, TensorSpecInfo]]]]:
        raise NotImplementedError

    def _predict(
        self, signature: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases the connection."""

    # --- public ---

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def target(self) -> str:
        version = "latest version" if self.version is None else f"version {self.version}"
        return f"model '{self.model}' ({version}) at {self.server}"

    def signatures(self) -> tuple[int, dict[str, dict[str, dict[str, TensorSpecInfo]]]]:
        """``GetModelMetadata``: the answering version and its signatures.

        Returns:
            ``(version, {signature: {"inputs": {name: TensorSpecInfo}, "outputs": {...}}})``.

        Raises:
            PancsegError: no such model or version, or the server cannot be reached.
        """
        return self._metadata()

    def predict(
        self,
        inputs: dict[str, np.ndarray],
        *,
        signature: str = names.SERVING_SIGNATURE,
        outputs: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """One ``Predict`` call; ``outputs`` limits the answer (all outputs when empty).

        Raises:
            PancsegError: the server refused the request or could not be reached.
        """
        return self._predict(signature, inputs, list(outputs))

    def describe(self) -> ServedModel:
        """Checks the model is a pancseg export this client understands; pins its version.

        Raises:
            PancsegError: missing model, version or signature; an unknown contract version; a
                signature that does not match its own config.
        """
        version, signatures = self.signatures()
        missing = [
            s for s in (names.SERVING_SIGNATURE, names.CONFIG_SIGNATURE) if s not in signatures
        ]
        if missing:
            raise PancsegError(
                f"model '{self.model}' version {version} at {self.server} has no signature "
                f"{', '.join(repr(m) for m in missing)} (it has {sorted(signatures)}): it is "
                "not a pancseg export; make one with `pancseg export`"
            )
        self.version = version
        answer = self.predict(
            {names.CONFIG_REQUEST: np.zeros(1, np.int32)},
            signature=names.CONFIG_SIGNATURE,
            outputs=[names.CONFIG_JSON],
        )[names.CONFIG_JSON]
        served = _served_model(self.model, version, _first_string(answer))
        _check_signature(served, signatures[names.SERVING_SIGNATURE], self.target)
        return served

    def chunks_per_request(self, served: ServedModel, limit: int) -> int:
        """How many chunks one request may carry under the message limits (at least 1).

        Raises:
            PancsegError: one chunk alone is over a limit.
        """
        height, width = served.size
        voxels = served.chunk * height * width
        request = voxels * np.dtype(served.wire_dtype).itemsize + 16
        # Probabilities (float32); + 1 byte per voxel for a server that ignores output_filter
        # and also sends the uint8 mask.
        response = voxels * 5
        by_request = (self.max_request_bytes - _MESSAGE_OVERHEAD) // request
        by_response = (self.max_response_bytes - _MESSAGE_OVERHEAD) // response
        count = min(limit, by_request, by_response)
        if count < 1:
            mib = 1024 * 1024
            raise PancsegError(
                f"one chunk of {served.chunk} x {height} x {width} slices needs a "
                f"{request / mib:.1f} MiB request and up to a {response / mib:.1f} MiB response, "
                f"over this client's limits ({self.max_request_bytes / mib:.1f} MiB sent, "
                f"{self.max_response_bytes / mib:.1f} MiB received): raise them (TF Serving "
                "accepts messages up to 2 GiB) or export with a shorter chunk"
            )
        return int(count)

    # --- shared helpers ---

    def _count(self, sent: int, received: int) -> None:
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received

    def _retrying(self, call, what: str):
        """Runs ``call()``; retries `_Unavailable` with exponential backoff."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except _Unavailable as err:
                if attempt == self.retries:
                    raise PancsegError(
                        f"cannot reach the model server at {self.server} ({what}) after "
                        f"{attempt + 1} attempt(s): {err}"
                    ) from None
                log.info("server %s unavailable (%s); retrying in %.1f s", self.server, err, delay)
                time.sleep(delay)
                delay = min(delay * 2.0, 8.0)
        raise AssertionError("unreachable")


class _Unavailable(Exception):
    """The server did not answer or said UNAVAILABLE: worth retrying."""


class GrpcClient(ServingClient):
    """TF Serving's gRPC API (``tensorflow.serving.PredictionService``), port 8500.

    The channel's send and receive limits are set to ``max_request_bytes`` and
    ``max_response_bytes``; requests are sized from them. See `ServingClient` for the arguments.
    """

    transport = "grpc"

    def __init__(self, server: str, model: str = names.DEFAULT_MODEL_NAME, version=None, **kwargs):
        super().__init__(server, model, version, **kwargs)
        require_serving_api()
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._grpc = grpc
        self._channel = grpc.insecure_channel(
            server,
            options=[
                ("grpc.max_send_message_length", self.max_request_bytes),
                ("grpc.max_receive_message_length", self.max_response_bytes),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, what: str):
        grpc = self._grpc

        def once():
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    raise _Unavailable(_detail(err.details()) or "UNAVAILABLE") from None
                raise self._error(err, what) from None

        response = self._retrying(once, what)
        self._count(request.ByteSize(), response.ByteSize())
        return response

    def _error(self, err, what: str) -> PancsegError:
        code, details = err.code(), _detail(err.details())
        grpc = self._grpc
        if code == grpc.StatusCode.NOT_FOUND:
            return PancsegError(f"{self.target} not found: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PancsegError(
                f"{self.target} did not answer {what} within {self.timeout_s:g} s "
                "(raise the timeout for large volumes or a busy server)"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PancsegError(
                f"{self.target} refused {what} as too large or overloaded: {details} (set "
                "the client's message limits to the server's)"
            )
        return PancsegError(f"{self.target} refused {what}: {code.name}: {details}")

    def _metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model
        if self.version is not None:
            request.model_spec.version.value = self.version
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request, "GetModelMetadata")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata[
            "signature_def"
        ].Unpack(signature_map):
            raise PancsegError(f"{self.target} sent metadata without signatures")
        out = {}
        for key, signature in signature_map.signature_def.items():
            out[key] = {
                "inputs": {k: _info_from_proto(v) for k, v in signature.inputs.items()},
                "outputs": {k: _info_from_proto(v) for k, v in signature.outputs.items()},
            }
        version = response.model_spec.version.value or self.version
        if not version:
            raise PancsegError(f"{self.target} did not say which version answered")
        return int(version), out

    def _predict(self, signature, inputs, outputs):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(value)))
        request.output_filter.extend(outputs)
        size = request.ByteSize()
        if size > self.max_request_bytes:
            raise PancsegError(
                f"a request of {size} bytes is over this client's limit of "
                f"{self.max_request_bytes} bytes"
            )
        response = self._call(self._stub.Predict, request, f"Predict ({signature})")
        with self._lock:
            self.requests += 1
        return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


class RestClient(ServingClient):
    """TF Serving's REST API (``/v1/models/<name>[/versions/<n>]:predict``), port 8501.

    Tensors travel as JSON lists (columnar ``"inputs"`` format), floats with enough digits to
    round-trip, so the answers are the same bits as over gRPC (only slower and larger). See
    `ServingClient` for the arguments.
    """

    transport = "rest"

    def _url(self, suffix: str) -> str:
        version = "" if self.version is None else f"/versions/{self.version}"
        model = urllib.parse.quote(self.model, safe="")
        return f"http://{self.server}/v1/models/{model}{version}{suffix}"

    def _http(self, url: str, body: bytes | None, what: str) -> dict[str, Any]:
        def once():
            request = urllib.request.Request(
                url,
                data=body,
                method="GET" if body is None else "POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as err:
                detail = _rest_error(err)
                if err.code == 503:
                    raise _Unavailable(detail) from None
                if err.code == 404:
                    raise PancsegError(f"{self.target} not found: {detail}") from None
                raise PancsegError(
                    f"{self.target} refused {what}: HTTP {err.code}: {detail}"
                ) from None
            except TimeoutError:
                raise PancsegError(
                    f"{self.target} did not answer {what} within {self.timeout_s:g} s"
                ) from None
            except (urllib.error.URLError, ConnectionError) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError):
                    raise PancsegError(
                        f"{self.target} did not answer {what} within {self.timeout_s:g} s"
                    ) from None
                raise _Unavailable(str(reason)) from None

        raw = self._retrying(once, what)
        self._count(len(body or b""), len(raw))
        try:
            return json.loads(raw)
        except ValueError:
            raise PancsegError(f"{self.target} answered {what} with invalid JSON") from None

    def _metadata(self):
        answer = self._http(self._url("/metadata"), None, "metadata")
        try:
            version = int(answer["model_spec"]["version"])
            raw = answer["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError, ValueError):
            raise PancsegError(f"{self.target} sent metadata without signatures") from None
        out = {}
        for key, signature in raw.items():
            out[key] = {
                part: {k: _info_from_json(v) for k, v in signature.get(part, {}).items()}
                for part in ("inputs", "outputs")
            }
        return version, out

    def _predict(self, signature, inputs, outputs):
        payload = {
            "signature_name": signature,
            "inputs": {key: np.asarray(value).tolist() for key, value in inputs.items()},
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        answer = self._http(self._url(":predict"), body, f"predict ({signature})")
        with self._lock:
            self.requests += 1
        if not isinstance(answer, dict) or "outputs" not in answer:
            raise PancsegError(f"{self.target} answered predict without 'outputs'")
        values = answer["outputs"]
        if not isinstance(values, dict):
            # TF Serving drops the names when the signature has one output.
            if len(outputs) != 1:
                raise PancsegError(f"{self.target} answered predict with unnamed outputs")
            values = {outputs[0]: values}
        wanted = outputs or list(values)
        missing = [key for key in wanted if key not in values]
        if missing:
            raise PancsegError(f"{self.target} answered predict without {missing}")
        return {key: _array_from_json(values[key]) for key in wanted}


def connect(
    server: str,
    *,
    rest: bool = False,
    model: str = names.DEFAULT_MODEL_NAME,
    version: int | None = None,
    **kwargs: Any,
) -> ServingClient:
    """A `RestClient` (``rest=True``) or a `GrpcClient`; ``kwargs`` as `ServingClient`."""
    cls = RestClient if rest else GrpcClient
    return cls(server, model, version, **kwargs)


# === Whole volumes ===


def query_volume(
    volume: Volume,
    client: ServingClient,
    *,
    served: ServedModel | None = None,
    max_chunks_per_request: int = names.DEFAULT_MAX_CHUNKS_PER_REQUEST,
) -> QueryResult:
    """Segments one volume through a served export; the mask lands on the volume's own grid.

    Args:
        volume: the input volume (any orientation and spacing).
        client: a `GrpcClient` or `RestClient`.
        served: the model's description from ``client.describe()`` (asked for when None).
        max_chunks_per_request: at most this many chunks per request (TF Serving refuses a
            request with more rows than its ``max_batch_size``).

    Returns:
        A `QueryResult`; ``result.segmentation.mask`` is what ``pancseg predict --chunk N``
        writes for the same model and volume.

    Raises:
        PancsegError: see `ServingClient`; or an answer of the wrong shape or dtype.
    """
    from pancseg_tf.inference import (
        blend_chunks,
        chunk_spans,
        finish_segmentation,
        plan_volume,
        request_intensities,
        run_in_tiles,
        stack_chunks,
        unstack_chunks,
    )

    start = time.monotonic()
    sent0, received0 = client.bytes_sent, client.bytes_received
    if served is None:
        served = client.describe()
    if volume.modality != served.modality:
        log.warning(
            "the served model was trained on %s but the volume is %s",
            served.modality.upper(),
            volume.modality.upper(),
        )
    # A body wider than the model's field is covered by in-plane tiles, as `pancseg predict`
    # covers it (`run_in_tiles`): each tile is sent as its own chunks.
    plan = plan_volume(volume, served.preprocess, cover_body=True)
    image, percentiles = request_intensities(volume, plan, served.preprocess)
    num_slices = image.shape[2]
    spans = chunk_spans(num_slices, served.chunk, served.overlap)
    per_request = client.chunks_per_request(served, max_chunks_per_request)
    height, width = served.size
    requests = 0
    chunks = 0

    def one_tile(tile: np.ndarray) -> np.ndarray:
        nonlocal requests, chunks
        rows: list[np.ndarray] = []
        for group in _groups(spans, per_request):
            slices, counts = stack_chunks(tile, group, served.chunk)
            inputs = {names.SLICES: slices, names.SLICE_COUNT: counts}
            if percentiles is not None:
                inputs[names.PERCENTILES] = np.tile(
                    np.asarray([percentiles], np.float32), (len(group), 1)
                )
            probs = client.predict(inputs, outputs=[names.PROBABILITIES])[names.PROBABILITIES]
            requests += 1
            expected = (len(group), served.chunk, height, width)
            if probs.shape != expected or probs.dtype != np.float32:
                raise PancsegError(
                    f"{client.target} answered probabilities of shape {probs.shape} and dtype "
                    f"{probs.dtype}; expected {expected} float32"
                )
            rows.extend(probs)
        chunks += len(spans)
        return blend_chunks(unstack_chunks(rows, spans), spans, num_slices, served.overlap)

    model_probs = run_in_tiles(image, served.size, one_tile)
    segmentation = finish_segmentation(
        plan, model_probs, threshold=served.threshold, postprocess=served.largest_component
    )
    return QueryResult(
        segmentation=segmentation,
        served=served,
        chunks=chunks,
        requests=requests,
        bytes_sent=client.bytes_sent - sent0,
        bytes_received=client.bytes_received - received0,
        seconds=time.monotonic() - start,
    )


def query_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    server: str,
    rest: bool = False,
    model: str = names.DEFAULT_MODEL_NAME,
    version: int | None = None,
    modality: str | None = None,
    series: int | None = None,
    allow_uneven: bool = False,
    timeout_s: float = 60.0,
    retries: int = 4,
    max_request_bytes: int = names.DEFAULT_MAX_REQUEST_BYTES,
    max_response_bytes: int = names.DEFAULT_MAX_RESPONSE_BYTES,
) -> QueryResult:
    """``pancseg query INPUT OUTPUT``: reads a NIfTI file or DICOM series, writes the mask.

    A NIfTI input is read as the served model's modality unless ``modality`` says otherwise (a
    DICOM series says its own). The mask is written as uint8 NIfTI on the input's exact grid
    (shape and affine), atomically, as ``pancseg predict`` writes it.

    Args:
        input: a NIfTI file or a DICOM series folder.
        output: the mask file, ``.nii.gz`` or ``.nii``.
        server: ``HOST:PORT``.
        rest: use the REST API instead of gRPC.
        model, version: which served model (``version=None``: the latest).
        modality, series, allow_uneven: as `pancseg_tf.io.read_volume`'s (``--modality``,
            and ``--series`` / ``--allow-uneven``, the DICOM flags ``pancseg predict`` takes too).
        timeout_s, retries, max_request_bytes, max_response_bytes: see `ServingClient`.

    Returns:
        The `QueryResult`.

    Raises:
        PancsegError: a bad path or output name, an unreadable volume, or any serving error.
    """
    from pancseg_tf.io import read_volume, write_nifti

    out = pathlib.Path(output)
    if not out.name.endswith((".nii.gz", ".nii")):
        raise PancsegError(f"output must end in .nii.gz or .nii, got {out.name!r}")
    source = pathlib.Path(input)
    if not source.exists():
        raise PancsegError(f"input not found: {source}")
    if source.is_file() and out.exists() and out.resolve() == source.resolve():
        raise PancsegError(f"output {out} is the input: refusing to overwrite it")
    with connect(
        server,
        rest=rest,
        model=model,
        version=version,
        timeout_s=timeout_s,
        retries=retries,
        max_request_bytes=max_request_bytes,
        max_response_bytes=max_response_bytes,
    ) as client:
        served = client.describe()
        if modality is None and source.is_file():
            modality = served.modality
        volume = read_volume(source, modality=modality, series=series, allow_uneven=allow_uneven)
        result = query_volume(volume, client, served=served)
    write_nifti(
        result.segmentation.mask, volume, out, dtype="uint8", protect=[volume.source, source]
    )
    return result


# === Helpers ===


def _groups(spans: list[tuple[int, int]], size: int) -> Iterable[list[tuple[int, int]]]:
    for start in range(0, len(spans), size):
        yield spans[start : start + size]


def _first_string(values: np.ndarray) -> str:
    flat = np.asarray(values).ravel()
    if flat.size < 1:
        raise PancsegError("the server's pancseg_config answer is empty")
    value = flat[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _served_model(name: str, version: int, text: str) -> ServedModel:
    """Parses the ``pancseg_config`` JSON; refuses an unknown contract version."""
    from pancseg_tf.config import config_from_dict

    try:
        data = json.loads(text)
        contract = int(data["contract_version"])
    except (ValueError, KeyError, TypeError):
        raise PancsegError(f"model '{name}' version {version} sent an unreadable config") from None
    if contract != names.CONTRACT_VERSION:
        raise PancsegError(
            f"model '{name}' version {version} follows serving contract {contract}; this client "
            f"speaks contract {names.CONTRACT_VERSION}: use the pancseg_tf version that exported "
            f"it ({data.get('package_version', 'unknown')})"
        )
    try:
        preprocess = config_from_dict({"preprocess": data["preprocess"]}).preprocess
        post = data["postprocess"]
        return ServedModel(
            name=name,
            version=int(version),
            contract_version=contract,
            package_version=str(data.get("package_version", "")),
            chunk=int(data["chunk"]),
            overlap=int(data["overlap"]),
            modality=str(data["modality"]),
            wire_dtype=str(data["wire_dtype"]),
            preprocess=preprocess,
            threshold=float(post["threshold"]),
            largest_component=bool(post["largest_component"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PancsegError(
            f"model '{name}' version {version} sent an incomplete config: {err}"
        ) from None


def _check_signature(served: ServedModel, signature: dict, target: str) -> None:
    """The serving signature must take what the config says (dtype, chunk length, size)."""
    height, width = served.size
    expected = {
        names.SLICES: (served.wire_dtype, (-1, served.chunk, height, width)),
        names.SLICE_COUNT: ("int32", (-1,)),
    }
    if served.modality == "mri":
        expected[names.PERCENTILES] = ("float32", (-1, 2))
    inputs = signature["inputs"]
    if set(inputs) != set(expected):
        raise PancsegError(
            f"{target}: serving signature inputs {sorted(inputs)} differ from the contract's "
            f"{sorted(expected)}"
        )
    for key, (dtype, shape) in expected.items():
        info = inputs[key]
        if info.dtype != dtype or (info.shape is not None and info.shape != shape):
            raise PancsegError(
                f"{target}: input '{key}' is {info.dtype} {info.shape}; the config says "
                f"{dtype} {shape}"
            )
    if names.PROBABILITIES not in signature["outputs"]:
        raise PancsegError(f"{target}: the serving signature has no '{names.PROBABILITIES}'")


def _info_from_proto(info) -> TensorSpecInfo:
    from tensorflow.core.framework import types_pb2

    dtype = _DTYPES.get(types_pb2.DataType.Name(info.dtype), types_pb2.DataType.Name(info.dtype))
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpecInfo(dtype, shape)


def _info_from_json(info: dict) -> TensorSpecInfo:
    dtype = _DTYPES.get(info.get("dtype", ""), info.get("dtype", ""))
    shape_proto = info.get("tensor_shape", {})
    if shape_proto.get("unknown_rank"):
        return TensorSpecInfo(dtype, None)
    return TensorSpecInfo(dtype, tuple(int(d.get("size", -1)) for d in shape_proto.get("dim", [])))


def _array_from_json(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        # Floats arrive as decimal strings of float32 values with enough digits to round-trip.
        return array.astype(np.float32)
    return array


def _rest_error(err: urllib.error.HTTPError) -> str:
    try:
        return _detail(str(json.loads(err.read()).get("error", err.reason)))
    except Exception:  # noqa: BLE001 - any unreadable error body
        return _detail(str(err.reason))


def _detail(text: str | None) -> str:
    """A server's error detail as its `PancsegError` shows it: `short_message` (its first line,
    cut to `INTERNAL_MESSAGE_CHARS`). A server may echo what it was sent (an output name, a
    tensor's values) and TensorFlow's errors print whole tensors."""
    return short_message(text or "")
