"""`pancseg query` against the local gRPC and REST servers: the same bits as `pancseg predict
--chunk N`, message limits, malformed requests, concurrency, missing models, retries."""

import gzip
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.serving import constants as names
from tests.serving import CHUNK, SIZE, predict_segmenter, shared_export, standin_server, write_run

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

#: Message limit of the server and the clients here: one 8 x 48 x 48 chunk per request
#: (36 KiB of int16 in, 72 KiB of float32 out), so a volume takes several requests.
LIMIT = 160 * 1024


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(shared):
    LocalModelServer = standin_server().LocalModelServer

    with LocalModelServer(shared[2].parent.parent, max_message_bytes=LIMIT) as running:
        yield running


@pytest.fixture(scope="module")
def ct(ts_ct_path):
    from pancseg_tf.io import read_volume

    return read_volume(ts_ct_path)


@pytest.fixture(scope="module")
def predicted(shared, ct):
    """What ``pancseg predict RUN --chunk 8`` computes for the real CT."""
    return predict_segmenter(shared[1], chunk=CHUNK).segment(ct)


def grpc_client(server, **kwargs):
    from pancseg_tf.serving.client import GrpcClient

    kwargs = {"max_request_bytes": LIMIT, "max_response_bytes": LIMIT, **kwargs}
    return GrpcClient(server.grpc_target, **kwargs)


def _chunk(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    slices = rng.choice([-1000, -100, 40, 70, 400], size=(1, CHUNK, *SIZE)).astype(np.int16)
    return slices, np.array([CHUNK], np.int32)


# === Whole volumes: the same bits as predict --chunk ===


def test_grpc_query_writes_what_predict_chunk_writes(tmp_path, server, ct, predicted, ts_ct_path):
    import nibabel as nib

    from pancseg_tf.io import write_nifti
    from pancseg_tf.serving.client import query_file

    result = query_file(
        ts_ct_path,
        tmp_path / "query.nii.gz",
        server=server.grpc_target,
        max_request_bytes=LIMIT,
        max_response_bytes=LIMIT,
    )
    # `pancseg predict` writes its mask this way.
    write_nifti(predicted.mask, ct, tmp_path / "predict.nii.gz", dtype="uint8")
    query_bytes = gzip.decompress((tmp_path / "query.nii.gz").read_bytes())
    assert query_bytes == gzip.decompress((tmp_path / "predict.nii.gz").read_bytes())
    written = nib.load(tmp_path / "query.nii.gz")
    assert written.shape == ct.shape
    np.testing.assert_array_equal(written.affine, ct.affine)
    mask = np.asarray(written.dataobj)
    assert mask.dtype == np.uint8 and 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(
        result.segmentation.model_probabilities, predicted.model_probabilities
    )
    # 36 model slices: 6 chunks of 8 (overlap 2) for each of the 3 x 3 in-plane tiles that
    # cover the body (wider than the model's 48 x 48 field, as in predict), one chunk per
    # request under the 160 KiB limit.
    assert (result.chunks, result.requests) == (54, 54)
    assert result.served.version == 1 and result.bytes_sent > 6 * CHUNK * 48 * 48 * 2
    assert server.stats["largest_request"] <= LIMIT
    assert server.stats["largest_response"] <= LIMIT


def test_rest_query_gets_the_same_bits(server, ct, predicted):
    from pancseg_tf.serving.client import RestClient, query_volume

    with RestClient(server.rest_target) as client:
        result = query_volume(ct, client)
    np.testing.assert_array_equal(
        result.segmentation.model_probabilities, predicted.model_probabilities
    )
    np.testing.assert_array_equal(result.segmentation.mask, predicted.mask)
    # One request per in-plane tile (3 x 3): a tile's 6 chunks fit the default 4 MiB request.
    assert result.requests == 9


def test_volume_shorter_than_one_chunk_goes_as_one_padded_chunk(server, shared, ct):
    from pancseg_tf.io import Volume
    from pancseg_tf.serving.client import query_volume

    short = Volume(ct.array[:, :, :5].copy(), ct.affine, ct.modality, "short", 1, 1)
    expected = predict_segmenter(shared[1], chunk=CHUNK).segment(short)
    with grpc_client(server) as client:
        result = query_volume(short, client)
    # One padded chunk per in-plane tile (3 x 3), one request each.
    assert (result.chunks, result.requests) == (9, 9)
    assert expected.model_probabilities.shape[2] < CHUNK
    np.testing.assert_array_equal(
        result.segmentation.model_probabilities, expected.model_probabilities
    )
    np.testing.assert_array_equal(result.segmentation.mask, expected.mask)


def test_dicom_series_input(tmp_path, server, shared, ts_dicom_dir):
    import nibabel as nib

    from pancseg_tf.io import read_volume
    from pancseg_tf.serving.client import query_file

    volume = read_volume(ts_dicom_dir)
    expected = predict_segmenter(shared[1], chunk=CHUNK).segment(volume)
    query_file(
        ts_dicom_dir,
        tmp_path / "mask.nii.gz",
        server=server.grpc_target,
        max_request_bytes=LIMIT,
        max_response_bytes=LIMIT,
    )
    written = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected.mask)
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-6)


# === The server's answers to bad requests ===


def test_malformed_requests_are_invalid_argument_and_the_server_keeps_serving(server, shared):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from pancseg_tf.inference import ChunkNetwork
    from pancseg_tf.model_card import describe_model

    slices, counts = _chunk(seed=7)
    net = ChunkNetwork(
        shared[0], describe_model(shared[1] / "model.keras").config.preprocess, chunk=CHUNK
    )
    expected = np.asarray(net.serve(slices, counts)[names.PROBABILITIES])

    def request(inputs, signature=names.SERVING_SIGNATURE):
        out = predict_pb2.PredictRequest()
        out.model_spec.name = "pancseg"
        out.model_spec.signature_name = signature
        for key, value in inputs.items():
            out.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return out

    good = {names.SLICES: slices, names.SLICE_COUNT: counts}
    bad = {
        "wrong input name": {"slice": slices, names.SLICE_COUNT: counts},
        "missing input": {names.SLICES: slices},
        "wrong dtype": {names.SLICES: slices.astype(np.float32), names.SLICE_COUNT: counts},
        "wrong rank": {names.SLICES: slices[0], names.SLICE_COUNT: counts},
        "wrong chunk length": {names.SLICES: slices[:, :5], names.SLICE_COUNT: counts},
        "empty tensor": {
            names.SLICES: np.zeros((0, CHUNK, *SIZE), np.int16),
            names.SLICE_COUNT: np.zeros(0, np.int32),
        },
        "slice count 0": {names.SLICES: slices, names.SLICE_COUNT: np.array([0], np.int32)},
    }
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for label, inputs in bad.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request(inputs), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
            answer = stub.Predict(request(good), timeout=30)
            got = tf.make_ndarray(answer.outputs[names.PROBABILITIES])
            np.testing.assert_array_equal(got, expected, err_msg=f"after {label}")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request(good, signature="nope"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_rest_malformed_request_is_a_400_with_a_json_error(server):
    body = {"inputs": {names.SLICES: [[[[0.5]]]], names.SLICE_COUNT: [1]}}
    url = f"http://{server.rest_target}/v1/models/pancseg:predict"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert "not of expected type int16" in json.loads(caught.value.read())["error"]


def test_eight_concurrent_clients_ten_requests_each(server, shared):
    from pancseg_tf.inference import ChunkNetwork
    from pancseg_tf.model_card import describe_model

    net = ChunkNetwork(
        shared[0], describe_model(shared[1] / "model.keras").config.preprocess, chunk=CHUNK
    )
    inputs = [_chunk(seed) for seed in range(16)]
    expected = [np.asarray(net.serve(*pair)[names.PROBABILITIES]) for pair in inputs]
    failures: list[str] = []

    def client_loop(index: int) -> None:
        with grpc_client(server) as client:
            for request in range(10):
                which = (index * 10 + request) % len(inputs)
                slices, counts = inputs[which]
                got = client.predict(
                    {names.SLICES: slices, names.SLICE_COUNT: counts},
                    outputs=[names.PROBABILITIES],
                )[names.PROBABILITIES]
                if not np.array_equal(got, expected[which]):
                    failures.append(f"client {index} request {request}")

    before = server.stats["predict"]
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert server.stats["predict"] - before == 80


# === Missing things, limits, deadlines, retries ===


def test_missing_model_version_or_signature_is_a_clear_error(tmp_path, server):
    import keras

    from pancseg_tf.serving.client import RestClient

    LocalModelServer = standin_server().LocalModelServer

    with pytest.raises(PancsegError, match=r"model 'nope' \(latest version\) at .* not found"):
        grpc_client(server, model="nope").describe()
    with pytest.raises(PancsegError, match=r"model 'pancseg' \(version 99\) at .* not found"):
        grpc_client(server, version=99).describe()
    with pytest.raises(PancsegError, match="not found"):
        RestClient(server.rest_target, "nope").describe()
    # A SavedModel that is not a pancseg export: no pancseg_config signature.
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    plain.export(str(tmp_path / "plain" / "1"), verbose=False)
    with LocalModelServer(tmp_path, "plain", rest_port=None) as other:
        from pancseg_tf.serving.client import GrpcClient

        with pytest.raises(PancsegError, match="has no signature 'pancseg_config'"):
            GrpcClient(other.grpc_target, "plain").describe()


def test_versions_are_pinned(tmp_path, shared):
    from pancseg_tf.serving.client import GrpcClient

    LocalModelServer = standin_server().LocalModelServer

    for version in ("1", "2"):
        shutil.copytree(shared[2], tmp_path / "pancseg" / version)
    with LocalModelServer(tmp_path, versions="all", rest_port=None) as both:
        assert GrpcClient(both.grpc_target).describe().version == 2
        client = GrpcClient(both.grpc_target, version=1)
        assert client.describe().version == 1
        slices, counts = _chunk(seed=1)
        client.predict({names.SLICES: slices, names.SLICE_COUNT: counts})
        with pytest.raises(PancsegError, match="version 3"):
            GrpcClient(both.grpc_target, version=3).describe()


def test_a_chunk_over_the_message_limits_is_refused_before_sending(server, ct):
    from pancseg_tf.serving.client import query_volume

    with grpc_client(server, max_response_bytes=128 * 1024) as client:
        with pytest.raises(PancsegError, match=r"one chunk of 8 x 48 x 48 slices needs"):
            query_volume(ct, client)
        assert client.requests == 1  # the config call only: no chunk was sent


def test_deadline_is_reported():
    """A server that accepts connections but never answers: the deadline ends the call."""
    from pancseg_tf.serving.client import GrpcClient, RestClient

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        for cls in (GrpcClient, RestClient):
            start = time.monotonic()
            with pytest.raises(PancsegError, match=r"did not answer .* within 0.5 s"):
                cls(target, timeout_s=0.5, retries=0).describe()
            assert time.monotonic() - start < 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_is_retried_then_reported():
    from pancseg_tf.serving.client import GrpcClient, RestClient

    target = f"127.0.0.1:{_free_port()}"
    for cls in (GrpcClient, RestClient):
        start = time.monotonic()
        with pytest.raises(PancsegError, match=r"cannot reach .* after 3 attempt\(s\)"):
            cls(target, retries=2, backoff_s=0.05, timeout_s=5).describe()
        assert time.monotonic() - start < 30


def test_a_server_that_starts_late_is_reached_by_retrying(shared):
    from pancseg_tf.serving.client import GrpcClient

    LocalModelServer = standin_server().LocalModelServer

    port = _free_port()
    late = LocalModelServer(shared[2].parent.parent, grpc_port=port, rest_port=None)

    def start_later():
        time.sleep(1.0)
        late.start()

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        served = GrpcClient(f"127.0.0.1:{port}", retries=8, backoff_s=0.25).describe()
        assert served.chunk == CHUNK
    finally:
        starter.join()
        late.stop()


def test_served_config_with_another_contract_version_is_refused():
    from pancseg_tf.serving.client import _served_model

    with pytest.raises(PancsegError, match="follows serving contract 2; this client speaks"):
        _served_model("pancseg", 1, json.dumps({"contract_version": 2}))
    with pytest.raises(PancsegError, match="incomplete config"):
        _served_model("pancseg", 1, json.dumps({"contract_version": 1, "chunk": 8}))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"server": "localhost"}, "HOST:PORT"),
        ({"server": "http://localhost:8501"}, "HOST:PORT"),
        ({"version": 0}, "version must be an integer >= 1"),
        ({"timeout_s": 0}, "timeout must be > 0"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"max_request_bytes": 1000}, "max_request_bytes must be >= 131072"),
    ],
)
def test_client_arguments_are_checked(kwargs, message):
    from pancseg_tf.serving.client import RestClient

    with pytest.raises(PancsegError, match=message):
        RestClient(**{"server": "localhost:8501", **kwargs})


@pytest.mark.parametrize(
    "output, message",
    [("mask.nrrd", "must end in .nii.gz or .nii"), ("mask.nii.gz", "input not found")],
)
def test_query_file_checks_paths_before_connecting(tmp_path, output, message):
    from pancseg_tf.serving.client import query_file

    source = tmp_path / "missing.nii.gz" if message == "input not found" else tmp_path
    with pytest.raises(PancsegError, match=message):
        query_file(source, tmp_path / output, server="127.0.0.1:1")


# === Large: a trained model, MRI ===


@pytest.mark.large
def test_query_writes_the_bytes_of_the_predict_command(tmp_path, server, shared, ts_ct_path):
    """The `pancseg predict RUN CT -o OUT --chunk 8` command itself, against `pancseg query`."""
    import os
    import subprocess
    import sys

    from pancseg_tf.serving.client import query_file

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pancseg_tf.cli", "predict", str(shared[1]), str(ts_ct_path)]
    command += ["-o", str(tmp_path / "predict"), "--chunk", str(CHUNK)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    query_file(
        ts_ct_path,
        tmp_path / "query.nii.gz",
        server=server.grpc_target,
        max_request_bytes=LIMIT,
        max_response_bytes=LIMIT,
    )
    predicted = gzip.decompress((tmp_path / "predict" / "ct_3mm.nii.gz").read_bytes())
    assert gzip.decompress((tmp_path / "query.nii.gz").read_bytes()) == predicted


@pytest.mark.large
def test_query_agrees_with_one_pass_predict(tmp_path, ts_ct_path, ts_labels_path):
    """Chunked serving vs one bidirectional pass over the whole volume: Dice >= 0.99, for a
    recurrence near its start as the CNN.

    A random network's probabilities hover around the threshold, where any change of context
    flips voxels; a trained one is confident away from the organ's boundary. So the CNN is
    trained briefly on the real CT's pancreas (TotalSegmentator's label 7), transferred into
    the contextual model, whose recurrence starts as the CNN and is moved a little (noise on
    every recurrent weight) so that the ConvLSTM's context (which differs between one pass and
    chunks) changes the output. A recurrence trained on short windows is another matter: it
    does not hold over a whole volume, which is why trained models predict in chunks of their
    window (`ContextualSegmenter.context_window`).
    """
    import keras

    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import plan_volume
    from pancseg_tf.io import read_volume
    from pancseg_tf.losses import JaccardLoss
    from pancseg_tf.models import SliceCNN, transfer_stage1_weights
    from pancseg_tf.preprocessing.intensity import hu_window
    from pancseg_tf.serving.client import GrpcClient, query_volume
    from pancseg_tf.serving.export import export_model
    from tests.serving import activate_context, tiny_model

    LocalModelServer = standin_server().LocalModelServer

    volume, labels = read_volume(ts_ct_path), read_volume(ts_labels_path)
    plan = plan_volume(volume, PreprocessConfig(size=SIZE, spacing_mm=3.2))
    image = np.asarray(hu_window(plan.forward(volume.array)))
    label = plan.forward((labels.array == 7).astype(np.uint8), is_label=True)
    keras.utils.set_random_seed(0)
    cnn = SliceCNN(base_filters=4, depth=2, input_size=SIZE)
    for key in cnn.side_output_keys:  # trained on the main output only
        cnn.get_layer(f"{key}_conv").trainable = False
    cnn.compile(optimizer=keras.optimizers.Adam(2e-2), loss={"prob": JaccardLoss()})
    x = np.moveaxis(image, 2, 0)[..., None]
    y = np.moveaxis(label, 2, 0)[..., None].astype(np.float32)
    cnn.fit(x, {"prob": y}, batch_size=12, epochs=20, verbose=0)
    model = tiny_model()
    transfer_stage1_weights(cnn, model)
    # The recurrence as stage 2 starts it (the CNN's mask), moved a little as training would: the
    # paper's design has no path around it, so a random one would be a different model.
    model.start_as_cnn()
    activate_context(model, seed=1, scale=0.02)
    run = write_run(tmp_path / "run", model)
    export_model(run, tmp_path / "exports", chunk=CHUNK)

    one_pass = predict_segmenter(run).segment(volume)
    with LocalModelServer(tmp_path / "exports", rest_port=None) as running:
        with GrpcClient(running.grpc_target) as client:
            served = query_volume(volume, client).segmentation
    a, b = one_pass.mask.astype(bool), served.mask.astype(bool)
    assert a.sum() > 100 and b.sum() > 100
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice >= 0.99, f"Dice {dice:.4f} ({a.sum()} and {b.sum()} voxels)"
    # Not vacuous: the chunks' context does change the probabilities.
    assert np.abs(one_pass.model_probabilities - served.model_probabilities).max() > 1e-4


@pytest.mark.large
def test_mri_export_and_query_bit_for_bit(tmp_path):
    """An MRI export: float32 slices and per-chunk percentiles on the wire, over gRPC and REST."""
    from pancseg_tf.io import read_volume
    from pancseg_tf.serving.client import GrpcClient, RestClient, query_file, query_volume
    from pancseg_tf.serving.export import export_model
    from pancseg_tf.synthetic import make_cohort
    from tests.serving import tiny_model

    LocalModelServer = standin_server().LocalModelServer

    cohort = make_cohort(tmp_path / "cohort", cases=1, modality="mri", shape=(64, 64, 24))
    source = cohort / "imagesTr" / "synth_000.nii.gz"
    volume = read_volume(source, modality="mri")
    run = write_run(tmp_path / "run", tiny_model(seed=2), modality="mri")
    export = export_model(run, tmp_path / "exports", chunk=6)
    expected = predict_segmenter(run, chunk=6).segment(volume)
    with LocalModelServer(tmp_path / "exports") as running:
        served = GrpcClient(running.grpc_target).describe()
        assert (served.modality, served.wire_dtype, served.overlap) == ("mri", "float32", 1)
        result = query_file(source, tmp_path / "mask.nii.gz", server=running.grpc_target)
        with RestClient(running.rest_target) as client:
            rest = query_volume(volume, client)
    assert export.name == "1"
    for got in (result.segmentation, rest.segmentation):
        np.testing.assert_array_equal(got.model_probabilities, expected.model_probabilities)
        np.testing.assert_array_equal(got.mask, expected.mask)
