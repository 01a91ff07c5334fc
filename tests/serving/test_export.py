"""`pancseg export`: the chunk network, the version folder, its files, and the SavedModel as TF
Serving loads it (a fresh process without pancseg_tf, `saved_model_cli`)."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.serving import constants as names
from tests.serving import CHUNK, PROVENANCE, SIZE, shared_export, standin_server, write_run

HERE = pathlib.Path(__file__).resolve().parent

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return shared_export(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    return shared_export(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> pathlib.Path:
    return shared_export(tmp_path_factory)[2]


@pytest.fixture(scope="module")
def net(model):
    from pancseg_tf.inference import ChunkNetwork

    return ChunkNetwork(model, _preprocess(), chunk=CHUNK)


def _chunks(seed: int = 0, batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(batch, CHUNK, 48, 48)`` int16 HU (air, fat, soft tissue, bone) and slice counts; the
    last chunk is short (a volume shorter than one chunk)."""
    rng = np.random.default_rng(seed)
    slices = rng.choice([-1000, -100, 40, 70, 400], size=(batch, CHUNK, *SIZE)).astype(np.int16)
    counts = np.full(batch, CHUNK, np.int32)
    counts[-1] = 5
    slices[-1, 5:] = 0
    return slices, counts


# === The chunk network ===


def test_chunk_network_rows_do_not_depend_on_the_batch(model, net):
    """A chunk's bits are the same alone or batched with others (TF Serving's batching joins
    requests); a short chunk equals the model on its real slices, zero after them."""
    from pancseg_tf.preprocessing.intensity import hu_window

    slices, counts = _chunks()
    batched = net.serve(slices, counts)
    alone = [net.serve(slices[i : i + 1], counts[i : i + 1]) for i in range(3)]
    probs = np.asarray(batched[names.PROBABILITIES])
    assert probs.shape == (3, CHUNK, *SIZE) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs, np.concatenate([a[names.PROBABILITIES] for a in alone]))
    mask = np.asarray(batched[names.MASK])
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (probs >= 0.5).astype(np.uint8))
    assert 0 < mask.sum() < mask.size  # a non-trivial mask at the threshold
    short = np.asarray(hu_window(slices[-1, :5].astype(np.float32)))[None, ..., None]
    want = np.asarray(model(short, training=False)["prob"])[0, ..., 0]
    np.testing.assert_allclose(probs[-1, :5], want, atol=1e-6)
    assert not probs[-1, 5:].any()


def test_chunk_network_mri_normalises_with_each_chunks_percentiles(model):
    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import ChunkNetwork

    net = ChunkNetwork(model, PreprocessConfig(modality="mri", size=SIZE), chunk=CHUNK)
    rng = np.random.default_rng(1)
    slices = rng.uniform(0, 900, (2, CHUNK, *SIZE)).astype(np.float32)
    counts = np.array([CHUNK, CHUNK], np.int32)
    percentiles = np.array([[100.0, 700.0], [0.0, 300.0]], np.float32)
    probs = np.asarray(net.serve(slices, counts, percentiles)[names.PROBABILITIES])
    for row, (low, high) in enumerate(percentiles):
        x = np.clip((slices[row] - low) / (high - low), 0, 1)[None, ..., None]
        want = np.asarray(model(x, training=False)["prob"])[0, ..., 0]
        np.testing.assert_allclose(probs[row], want, atol=1e-6)


def test_segmenter_chunk_paths_agree_with_one_pass_on_a_short_volume(model):
    """Fewer slices than a chunk: one padded chunk, which is the whole volume in one pass; the
    raw-intensity path (what is served) and the normalised one (training's validation) agree."""
    from pancseg_tf.inference import Segmenter

    rng = np.random.default_rng(5)
    image = rng.choice([-1000, -100, 40, 70, 400], size=(*SIZE, 6)).astype(np.int16)
    chunked = Segmenter(model, _preprocess(), chunk=CHUNK)
    one_pass = Segmenter(model, _preprocess())
    normalized = one_pass.normalize(image.astype(np.float32))
    served = chunked.predict_chunks(image)
    assert served.shape == (*SIZE, 6) and served.dtype == np.float32
    np.testing.assert_allclose(served, one_pass.predict_model_grid(normalized), atol=1e-5)
    np.testing.assert_allclose(served, chunked.predict_model_grid(normalized), atol=1e-6)


def test_chunk_network_serves_a_slice_cnn_slice_by_slice():
    """A stage-1 CNN exports too: each slice on its own, the same chunk contract."""
    import keras

    from pancseg_tf.inference import ChunkNetwork
    from pancseg_tf.models import SliceCNN
    from pancseg_tf.preprocessing.intensity import hu_window

    keras.utils.set_random_seed(4)
    cnn = SliceCNN(base_filters=4, depth=2, input_size=SIZE)
    slices, counts = _chunks(seed=4, batch=2)
    probs = np.asarray(
        ChunkNetwork(cnn, _preprocess(), chunk=CHUNK).serve(slices, counts)[names.PROBABILITIES]
    )
    for row, count in enumerate(counts):
        x = np.asarray(hu_window(slices[row, :count].astype(np.float32)))[..., None]
        want = np.asarray(cnn(x, training=False)["prob"])[..., 0]
        np.testing.assert_allclose(probs[row, :count], want, atol=1e-6)


@pytest.mark.parametrize(
    "slices, counts, message",
    [
        (np.zeros((0, CHUNK, *SIZE), np.int16), np.zeros(0, np.int32), "at least one chunk"),
        (np.zeros((1, CHUNK, *SIZE), np.int16), np.array([0], np.int32), ">= 1"),
        (np.zeros((1, CHUNK, *SIZE), np.int16), np.array([CHUNK + 1], np.int32), "<= the chunk"),
        (np.zeros((2, CHUNK, *SIZE), np.int16), np.array([CHUNK], np.int32), "one value per"),
    ],
)
def test_chunk_network_refuses_malformed_batches(net, slices, counts, message):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        net.serve(slices, counts)


def test_chunk_network_refuses_a_config_of_another_size(model):
    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import ChunkNetwork

    message = r"takes slices of \(48, 48\) pixels but the preprocessing gives \(64, 64\)"
    with pytest.raises(PancsegError, match=message):
        ChunkNetwork(model, PreprocessConfig(size=(64, 64)), chunk=CHUNK)


# === Host side of a request: hand-computed tables ===


@pytest.mark.parametrize(
    "hu, expected",
    [
        (-1000.4, -1000),
        (-0.5, 0),  # ties to even
        (0.5, 0),
        (1.5, 2),
        (2.5, 2),
        (39.6, 40),
        (40000.0, 32767),  # clipped to int16
        (-40000.0, -32768),
    ],
)
def test_wire_intensities_round_ct_to_int16(hu, expected):
    from pancseg_tf.preprocessing.quantize import model_grid_intensities

    out = model_grid_intensities(np.full((1, 1, 1), hu, np.float32), "ct")
    assert out.dtype == np.int16 and out[0, 0, 0] == expected


def test_wire_intensities_refuse_nan_ct_and_keep_mri_at_the_stored_precision():
    from pancseg_tf.preprocessing.quantize import (
        model_grid_intensities,
        store_model_grid,
        stored_to_float,
    )

    with pytest.raises(PancsegError, match="NaN or infinite"):
        model_grid_intensities(np.array([[[np.nan]]], np.float32), "ct")
    # Prepared data's values (float16, scaled to fit): what validation reads back.
    mri = np.array([[[0.25, 1234.567, 1e6]]], np.float64)
    out = model_grid_intensities(mri, "mri")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, stored_to_float(*store_model_grid(mri, "mri")))
    np.testing.assert_allclose(out, mri, rtol=1e-3)
    assert out[0, 0, 1] != np.float32(1234.567)  # float16 precision, not float32's
    # Idempotent: intensities already in that form come back unchanged.
    np.testing.assert_array_equal(model_grid_intensities(out, "mri"), out)
    ct = model_grid_intensities(np.array([[[12.4, -3.6]]]), "ct")
    np.testing.assert_array_equal(model_grid_intensities(ct.astype(np.float32), "ct"), ct)


def test_stack_and_unstack_chunks():
    from pancseg_tf.inference import stack_chunks, unstack_chunks

    image = np.arange(2 * 1 * 5, dtype=np.int16).reshape(2, 1, 5)  # (H, W, K)
    slices, counts = stack_chunks(image, [(0, 3), (2, 5)], 3)
    assert slices.shape == (2, 3, 2, 1) and slices.dtype == np.int16
    np.testing.assert_array_equal(counts, [3, 3])
    np.testing.assert_array_equal(slices[1, :, :, 0], [[2, 7], [3, 8], [4, 9]])
    short, short_counts = stack_chunks(image[:, :, :2], [(0, 2)], 4)
    np.testing.assert_array_equal(short_counts, [2])
    np.testing.assert_array_equal(short[0, :, :, 0], [[0, 5], [1, 6], [0, 0], [0, 0]])
    parts = unstack_chunks(short.astype(np.float32), [(0, 2)])
    np.testing.assert_array_equal(parts[0], image[:, :, :2])


# === The version folder ===


@pytest.mark.parametrize(
    "folders, expected",
    [
        ([], 1),
        (["1"], 2),
        (["1", "3"], 4),
        (["2", "10", "9"], 11),
        (["7", ".pancseg-export-1-ab", "latest", "v8"], 8),
    ],
)
def test_next_version(tmp_path, folders, expected):
    from pancseg_tf.serving.export import next_version

    for folder in folders:
        (tmp_path / folder).mkdir()
    (tmp_path / "notes.txt").write_text("not a version")
    assert next_version(tmp_path) == expected
    (tmp_path / str(expected)).write_text("a file: not a version, but the name is taken")
    assert next_version(tmp_path) == expected + 1


def test_export_layout_and_metadata(export_dir, run_dir):
    assert export_dir.name == "1"
    assert sorted(p.name for p in export_dir.parent.iterdir()) == ["1"]  # no temporary left
    assert (export_dir / "saved_model.pb").is_file() and (export_dir / "variables").is_dir()
    meta = json.loads((export_dir / names.ASSETS_EXTRA / names.METADATA_FILE).read_text())
    import keras
    import tensorflow as tf

    assert meta["contract_version"] == names.CONTRACT_VERSION
    assert meta["tensorflow_version"] == tf.__version__
    assert meta["keras_version"] == keras.__version__
    assert meta["minimum_tensorflow_serving_version"] == ".".join(tf.__version__.split(".")[:2])
    assert meta["training_provenance"] == PROVENANCE
    model_file = run_dir / "model.keras"
    assert meta["source_model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert meta["source_model"]["class"] == "ContextualSegmenter"
    client = meta["client_config"]
    assert (client["chunk"], client["overlap"]) == (CHUNK, CHUNK // 4)
    assert (client["height"], client["width"], client["wire_dtype"]) == (48, 48, "int16")
    assert client["preprocess"]["spacing_mm"] == 3.2
    assert client["postprocess"] == {"threshold": 0.5, "largest_component": True}
    assert meta["signatures"][names.SERVING_SIGNATURE]["inputs"] == {
        names.SLICES: "int16",
        names.SLICE_COUNT: "int32",
    }


def test_publish_takes_the_next_free_version_and_never_replaces_one(tmp_path):
    """The finished export is renamed into place; a version that appears meanwhile (another
    export) is skipped, never overwritten."""
    from pancseg_tf.serving.export import _publish

    model_dir = tmp_path / "pancseg"
    (model_dir / "4").mkdir(parents=True)
    (model_dir / "4" / "saved_model.pb").write_text("version 4")
    for token in ("a", "b"):
        tmp = model_dir / f".pancseg-export-{token}"
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text(token)
        _publish(tmp, model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == ["4", "5", "6"]
    assert [(model_dir / v / "saved_model.pb").read_text() for v in "456"] == [
        "version 4",
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "../up"}, "model name"),
        ({"name": ""}, "model name"),
        ({"chunk": 1}, "chunk must be"),
        ({"chunk": 8, "overlap": 8}, r"overlap must be an integer in \[0, 8\)"),
        ({"chunk": 8, "overlap": -1}, "overlap must be"),
    ],
)
def test_export_refuses_bad_arguments(tmp_path, run_dir, kwargs, message):
    from pancseg_tf.serving.export import export_model

    with pytest.raises(PancsegError, match=message):
        export_model(run_dir, tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_export_refuses_a_missing_model_and_a_mismatched_config(tmp_path, model):
    from pancseg_tf.serving.export import export_model

    with pytest.raises(PancsegError, match="model not found"):
        export_model(tmp_path / "nothing.keras", tmp_path / "exports")
    run = write_run(tmp_path / "run", model, extra=["preprocess.size=[64, 64]"])
    with pytest.raises(PancsegError, match="does not belong to this model"):
        export_model(run, tmp_path / "exports")
    assert not (tmp_path / "exports" / "pancseg").exists() or not any(
        (tmp_path / "exports" / "pancseg").iterdir()
    )


# === The SavedModel ===


def test_export_uses_core_tensorflow_ops_only(export_dir):
    from pancseg_tf.serving.export import graph_op_types, non_core_ops

    found = graph_op_types(export_dir)
    assert {"Conv2D", "While", "Assert", "Sigmoid", "ReadVariableOp"} <= found["ops"]
    assert non_core_ops(export_dir) == []


def test_warmup_records_are_valid_requests(export_dir):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    LoadedVersion = standin_server().LoadedVersion

    path = export_dir / names.ASSETS_EXTRA / names.WARMUP_FILE
    records = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        records.append(log.predict_log.request)
    assert [r.model_spec.signature_name for r in records] == [
        names.SERVING_SIGNATURE,
        names.SERVING_SIGNATURE,
        names.CONFIG_SIGNATURE,
    ]
    servable = LoadedVersion(export_dir, 1)
    try:
        for request in records:
            assert request.model_spec.name == "pancseg"
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = servable.run(request.model_spec.signature_name, inputs, [])
            if request.model_spec.signature_name == names.SERVING_SIGNATURE:
                batch = len(inputs[names.SLICE_COUNT])
                assert inputs[names.SLICES].dtype == np.int16
                assert out[names.PROBABILITIES].shape == (batch, CHUNK, *SIZE)
            else:
                config = json.loads(out[names.CONFIG_JSON][0])
                assert config["chunk"] == CHUNK
        counts = tf.make_ndarray(records[1].inputs[names.SLICE_COUNT])
        np.testing.assert_array_equal(counts, [CHUNK, CHUNK // 2])
    finally:
        servable.close()


def test_saved_model_cli_lists_signatures_and_dtypes(export_dir):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    out = subprocess.run(
        [str(cli), "show", "--all", "--dir", str(export_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=True,
    ).stdout
    default = out.split(f"signature_def['{names.SERVING_SIGNATURE}']:")[1].split("signature_def[")[
        0
    ]
    assert f"inputs['{names.SLICES}'] tensor_info:" in default
    assert f"dtype: DT_INT16\n        shape: (-1, {CHUNK}, 48, 48)" in default
    assert f"name: serving_default_{names.SLICES}:0" in default
    assert f"inputs['{names.SLICE_COUNT}'] tensor_info:\n        dtype: DT_INT32" in default
    assert f"outputs['{names.PROBABILITIES}'] tensor_info:\n        dtype: DT_FLOAT" in default
    assert f"outputs['{names.MASK}'] tensor_info:\n        dtype: DT_UINT8" in default
    assert f"Method name is: {names.PREDICT_METHOD_NAME}" in default
    config = out.split(f"signature_def['{names.CONFIG_SIGNATURE}']:")[1].split("signature_def[")[0]
    assert f"outputs['{names.CONFIG_JSON}'] tensor_info:\n        dtype: DT_STRING" in config


def test_fresh_process_without_pancseg_loads_it_as_tf_serving_does(tmp_path, export_dir, model):
    """TensorFlow's C++ loader, a v1 session, the SignatureDef's tensor names, no pancseg_tf:
    the outputs equal the Keras model's on the same chunks to 1e-5."""
    from pancseg_tf.preprocessing.intensity import hu_window

    slices, counts = _chunks(seed=3)
    inputs = tmp_path / "inputs.npz"
    np.savez(
        inputs,
        **{
            f"{names.SERVING_SIGNATURE}/{names.SLICES}": slices,
            f"{names.SERVING_SIGNATURE}/{names.SLICE_COUNT}": counts,
            f"{names.CONFIG_SIGNATURE}/{names.CONFIG_REQUEST}": np.zeros(2, np.int32),
        },
    )
    outputs = tmp_path / "outputs.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            str(HERE / "savedmodel_check.py"),
            str(export_dir),
            str(inputs),
            str(outputs),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pancseg_tf_importable"] is False and report["pancseg_tf_loaded"] is False
    assert report["unregistered_ops"] == []
    assert report["signatures"][names.SERVING_SIGNATURE] == {
        "method_name": names.PREDICT_METHOD_NAME,
        "inputs": {names.SLICES: "int16", names.SLICE_COUNT: "int32"},
        "outputs": {names.PROBABILITIES: "float32", names.MASK: "uint8"},
    }
    got = np.load(outputs)
    probs = got[f"{names.SERVING_SIGNATURE}/{names.PROBABILITIES}"]
    for row, count in enumerate(counts):
        x = np.asarray(hu_window(slices[row, :count].astype(np.float32)))[None, ..., None]
        want = np.asarray(model(x, training=False)["prob"])[0, ..., 0]
        np.testing.assert_allclose(probs[row, :count], want, atol=1e-5, rtol=0)
        assert not probs[row, count:].any()
    np.testing.assert_array_equal(
        got[f"{names.SERVING_SIGNATURE}/{names.MASK}"], (probs >= 0.5).astype(np.uint8)
    )
    configs = got[f"{names.CONFIG_SIGNATURE}/{names.CONFIG_JSON}"]
    assert len(configs) == 2 and json.loads(configs[0])["contract_version"] == 1


def _preprocess():
    from pancseg_tf.config import PreprocessConfig

    return PreprocessConfig(size=SIZE, spacing_mm=3.2)


# === serving/ example configs ===


def _batching_parameters_class():
    """TF Serving's ``BatchingParameters`` message (session_bundle_config.proto), which the
    tensorflow-serving-api package does not ship: its fields, built with protobuf alone."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(
        name="pancseg_test/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ]
    for name, number, type_name in wrapped:
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_OPTIONAL,
            type_name=type_name,
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field.TYPE_BOOL,
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def test_serving_configs_parse_as_tf_serving_reads_them():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    folder = HERE.parents[1] / "serving"
    models = text_format.Parse(
        (folder / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (config,) = models.model_config_list.config
    assert (config.name, config.model_platform) == (names.DEFAULT_MODEL_NAME, "tensorflow")
    assert config.base_path == f"/models/{names.DEFAULT_MODEL_NAME}"
    batching = text_format.Parse(
        (folder / "batching_parameters.txt").read_text(), _batching_parameters_class()()
    )
    sizes = list(batching.allowed_batch_sizes)
    assert batching.max_batch_size.value == names.DEFAULT_MAX_CHUNKS_PER_REQUEST
    assert sizes == sorted(sizes) and sizes[-1] == batching.max_batch_size.value
    assert batching.pad_variable_length_inputs is False
    readme = (folder / "README.md").read_text()
    for flag in ("--model_config_file", "--enable_batching", "--enable_model_warmup", "8500"):
        assert flag in readme
