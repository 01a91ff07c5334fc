"""The gRPC stand-in under load and abuse, and the client through a server restart.

- 16 concurrent clients for a bounded time (`SHORT_DURATION_S`; `DURATION_S` marked large),
  every answer compared with the in-process computation, p50 / p99 latency and errors printed;
  meanwhile one more connection sends oversized, malformed and truncated requests, each
  answered with a gRPC error, each followed by a correct request that must succeed;
- a volume whose server is stopped after its first chunk and restarted on the same port: the
  client's retries (UNAVAILABLE only, bounded, exponential backoff) finish it with the same
  mask as ``pancseg predict --chunk``.
"""

import dataclasses
import socket
import threading
import time

import numpy as np
import pytest

from pancseg_tf.serving import constants as names
from tests.serving import CHUNK, SIZE, predict_segmenter, shared_export, standin_server

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

#: Seconds of load in the large test, and in the short one that always runs.
DURATION_S = 60.0
SHORT_DURATION_S = 5.0
#: Concurrent clients, each with its own channel.
CLIENTS = 16
#: The server's message limit: one 8 x 48 x 48 chunk (36 KiB of int16 in, 72 KiB of float32
#: out) fits, eight do not.
LIMIT = 160 * 1024
#: Deadline of every call; a p99 above it would be a failed call.
TIMEOUT_S = 30.0
#: Distinct requests the clients cycle through.
NUM_INPUTS = 16


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(shared):
    LocalModelServer = standin_server().LocalModelServer

    with LocalModelServer(shared[2].parent.parent, max_message_bytes=LIMIT, rest_port=None) as s:
        yield s


@pytest.fixture(scope="module")
def cases(shared):
    """``NUM_INPUTS`` one-chunk requests and the in-process probabilities of each."""
    from pancseg_tf.inference import ChunkNetwork
    from pancseg_tf.model_card import describe_model

    net = ChunkNetwork(
        shared[0], describe_model(shared[1] / "model.keras").config.preprocess, chunk=CHUNK
    )
    out = []
    for seed in range(NUM_INPUTS):
        rng = np.random.default_rng(seed)
        slices = rng.choice([-1000, -100, 40, 70, 400], size=(1, CHUNK, *SIZE)).astype(np.int16)
        counts = np.array([int(rng.integers(1, CHUNK + 1))], np.int32)
        expected = np.asarray(net.serve(slices, counts)[names.PROBABILITIES])
        out.append(({names.SLICES: slices, names.SLICE_COUNT: counts}, expected))
    return out


# === Abuse: requests a server must refuse and survive ===


def _request(inputs, signature=names.SERVING_SIGNATURE, model="pancseg"):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    out = predict_pb2.PredictRequest()
    out.model_spec.name = model
    out.model_spec.signature_name = signature
    for key, value in inputs.items():
        out.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return out


def abusive_requests(good: dict) -> list[tuple[str, bytes, set[str]]]:
    """``(label, serialised PredictRequest, accepted status codes)``, one per kind of abuse."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    slices, counts = good[names.SLICES], good[names.SLICE_COUNT]
    invalid = {"INVALID_ARGUMENT"}
    kinds = {
        # 8 chunks: 295 KiB, over the 160 KiB the server receives.
        "oversized": (
            _request({names.SLICES: np.repeat(slices, 8, 0), names.SLICE_COUNT: counts.repeat(8)}),
            {"RESOURCE_EXHAUSTED"},
        ),
        "wrong dtype": (
            _request({names.SLICES: slices.astype(np.float32), names.SLICE_COUNT: counts}),
            invalid,
        ),
        "wrong rank": (_request({names.SLICES: slices[0], names.SLICE_COUNT: counts}), invalid),
        "missing input": (_request({names.SLICES: slices}), invalid),
        "extra input": (_request({**good, "mask": counts}), invalid),
        "bad signature name": (
            _request(good, signature="serving_defualt"),
            {"FAILED_PRECONDITION"},
        ),
        "unknown model": (_request(good, model="pancsge"), {"NOT_FOUND"}),
    }
    # A few bytes that declare 4096 chunks (151 MB of int16): the one value would be repeated.
    bomb = _request(good)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT16)
    for size in (4096, CHUNK, *SIZE):
        proto.tensor_shape.dim.add().size = size
    proto.int_val.append(0)
    bomb.inputs[names.SLICES].CopyFrom(proto)
    kinds["declared shape bomb"] = (bomb, {"RESOURCE_EXHAUSTED"})
    # Tensor bytes cut short: the shape says more than tensor_content holds.
    short = _request(good)
    short.inputs[names.SLICES].tensor_content = short.inputs[names.SLICES].tensor_content[:1000]
    kinds["truncated tensor"] = (short, invalid)
    out = [(label, request.SerializeToString(), codes) for label, (request, codes) in kinds.items()]
    # The message itself cut in the middle of the slices' bytes: it does not parse.
    whole = _request(good).SerializeToString()
    out.append(("truncated message", whole[: len(whole) // 2], {"INTERNAL", "INVALID_ARGUMENT"}))
    return out


def _raw_connection_dropped(target: str) -> None:
    """An HTTP/2 client that sends its preface and half a frame, then hangs up."""
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x40\x01\x04\x00\x00")


@dataclasses.dataclass
class Abuse:
    """What the abusing connection saw: codes per request kind, failed correct requests."""

    codes: dict = dataclasses.field(default_factory=dict)
    unexpected: list = dataclasses.field(default_factory=list)
    good_failures: list = dataclasses.field(default_factory=list)
    rounds: int = 0


def abuse_until(server, cases, stop: threading.Event, result: Abuse) -> None:
    """Sends every abusive request, then a correct one, in rounds until ``stop``."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    good, expected = cases[0]
    requests = abusive_requests(good)
    options = [("grpc.max_send_message_length", 64 * LIMIT)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        raw = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=lambda data: data,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        while True:
            for label, data, codes in requests:
                try:
                    raw(data, timeout=TIMEOUT_S)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                result.codes.setdefault(label, set()).add(code)
                if code not in codes:
                    result.unexpected.append(f"{label}: {code}")
                _raw_connection_dropped(server.grpc_target)
                try:
                    answer = raw(_request(good).SerializeToString(), timeout=TIMEOUT_S)
                    got = tf.make_ndarray(answer.outputs[names.PROBABILITIES])
                    if not np.array_equal(got, expected):
                        result.good_failures.append(f"after {label}: wrong answer")
                except grpc.RpcError as err:
                    result.good_failures.append(f"after {label}: {err.code().name}")
            result.rounds += 1
            if stop.is_set():
                return


# === Load ===


@dataclasses.dataclass
class Load:
    """Latencies (seconds) of the correct answers, and everything that went wrong."""

    latencies: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)
    per_client: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


def run_load(server, cases, duration_s: float, abuse: Abuse) -> Load:
    """`CLIENTS` clients send requests back to back for ``duration_s`` seconds, while one
    more connection sends abusive requests; every answer is compared with ``cases``."""
    from pancseg_tf.errors import PancsegError
    from pancseg_tf.serving.client import GrpcClient

    # Warm-up, as TF Serving replays its warm-up file: the session's first run builds and
    # optimises the graph (seconds), which is not the latency of a served request.
    with GrpcClient(server.grpc_target, timeout_s=10 * TIMEOUT_S) as client:
        client.predict(cases[0][0], outputs=[names.PROBABILITIES])
    load = Load(per_client=[0] * CLIENTS)
    lock = threading.Lock()
    stop = threading.Event()
    start = time.monotonic()

    def client_loop(index: int) -> None:
        client = GrpcClient(
            server.grpc_target,
            timeout_s=TIMEOUT_S,
            retries=0,  # an UNAVAILABLE under load is an error here, not something to hide
            max_request_bytes=LIMIT,
            max_response_bytes=LIMIT,
        )
        with client:
            request = 0
            while not stop.is_set():
                inputs, expected = cases[(index + request) % len(cases)]
                sent = time.monotonic()
                try:
                    got = client.predict(inputs, outputs=[names.PROBABILITIES])
                    took = time.monotonic() - sent
                    wrong = not np.array_equal(got[names.PROBABILITIES], expected)
                    problem = f"client {index} request {request}: wrong answer" if wrong else None
                except PancsegError as err:
                    took, problem = None, f"client {index} request {request}: {err}"
                with lock:
                    if problem:
                        load.errors.append(problem)
                    else:
                        load.latencies.append(took)
                        load.per_client[index] += 1
                request += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    abuser = threading.Thread(target=abuse_until, args=(server, cases, stop, abuse))
    for thread in [*threads, abuser]:
        thread.start()
    time.sleep(duration_s)
    stop.set()
    for thread in [*threads, abuser]:
        thread.join(timeout=10 * TIMEOUT_S)
    load.seconds = time.monotonic() - start
    assert not any(thread.is_alive() for thread in [*threads, abuser]), "a client hangs"
    return load


def check_load(load: Load, abuse: Abuse, duration_s: float) -> None:
    answered = len(load.latencies)
    p50, p99 = load.percentile(50), load.percentile(99)
    print(
        f"\n{CLIENTS} clients, {duration_s:.0f} s: {answered} correct answers "
        f"({answered / load.seconds:.1f}/s), p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, "
        f"{len(load.errors)} errors; {abuse.rounds} abuse rounds, codes "
        + ", ".join(f"{k}: {'/'.join(sorted(v))}" for k, v in abuse.codes.items())
    )
    assert load.errors == []
    assert min(load.per_client) >= 1, f"a client was starved: {load.per_client}"
    assert 0 < p50 <= p99 < TIMEOUT_S
    assert abuse.rounds >= 1 and abuse.unexpected == [] and abuse.good_failures == []


def test_sixteen_clients_for_a_few_seconds_under_abuse(server, cases):
    before = server.stats["errors"]
    abuse = Abuse()
    load = run_load(server, cases, SHORT_DURATION_S, abuse)
    check_load(load, abuse, SHORT_DURATION_S)
    # Every refusal the server itself made was counted (gRPC refuses the oversized and the
    # unparsable message before the servicer sees them).
    refused_by_servicer = len(abusive_requests(cases[0][0])) - 2
    assert server.stats["errors"] - before == abuse.rounds * refused_by_servicer


@pytest.mark.large
def test_sixteen_clients_for_a_minute_under_abuse(server, cases):
    abuse = Abuse()
    load = run_load(server, cases, DURATION_S, abuse)
    check_load(load, abuse, DURATION_S)


# === Restart ===


def test_client_finishes_a_volume_across_a_server_restart(tmp_path, shared, ts_ct_path, caplog):
    """The server is stopped as soon as the first chunk's answer is in, and a new one starts on
    the same port a second later (after loading the export); the client's retries carry the
    volume over, and its mask is ``pancseg predict --chunk 8``'s."""
    import logging

    from pancseg_tf.io import read_volume
    from pancseg_tf.serving.client import GrpcClient, query_volume

    LocalModelServer = standin_server().LocalModelServer

    volume = read_volume(ts_ct_path)
    expected = predict_segmenter(shared[1], chunk=CHUNK).segment(volume)
    base = shared[2].parent.parent
    first = LocalModelServer(base, max_message_bytes=LIMIT, rest_port=None).start()
    port = int(first.grpc_target.rsplit(":", 1)[1])
    servers = {"first": first}
    restart_failed: list[BaseException] = []

    def start_again() -> None:
        time.sleep(1.0)
        try:
            servers["second"] = LocalModelServer(
                base, grpc_port=port, max_message_bytes=LIMIT, rest_port=None
            ).start()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            restart_failed.append(err)

    class StopAfterFirstChunk(GrpcClient):
        """The real client; after the first chunk's answer, the server goes down."""

        restarter = None

        def _predict(self, signature, inputs, outputs):
            answer = super()._predict(signature, inputs, outputs)
            if signature == names.SERVING_SIGNATURE and self.restarter is None:
                first.stop()
                self.restarter = threading.Thread(target=start_again)
                self.restarter.start()
            return answer

    client = StopAfterFirstChunk(
        first.grpc_target,
        retries=8,
        backoff_s=0.25,
        max_request_bytes=LIMIT,
        max_response_bytes=LIMIT,
    )
    try:
        with caplog.at_level(logging.INFO, logger="pancseg_tf.serving"), client:
            result = query_volume(volume, client)
    finally:
        if client.restarter is not None:
            client.restarter.join()
        first.stop()
        if "second" in servers:
            servers["second"].stop()
    assert restart_failed == []
    # 36 model slices: 6 chunks of 8 for each of the 3 x 3 in-plane tiles that cover the body,
    # one per request under the limit; 1 before the restart.
    assert (result.chunks, result.requests) == (54, 54)
    assert servers["second"].stats["predict"] == 53
    assert any("unavailable" in r.getMessage() for r in caplog.records), "no retry was needed"
    np.testing.assert_array_equal(
        result.segmentation.model_probabilities, expected.model_probabilities
    )
    np.testing.assert_array_equal(result.segmentation.mask, expected.mask)
