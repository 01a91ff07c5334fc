"""ContextualSegmenter: dynamic T, one batched CNN call, bidirectional context, stage-1 weight
transfer, freezing, config, save / load, mixed precision, time-distributed variant, fit."""

import json

import keras
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.models import (
    CONTEXTUAL_PRESETS,
    ContextualSegmenter,
    FoldTime,
    SliceCNN,
    UnfoldTime,
    transfer_stage1_weights,
)
from pancseg_tf.models.blocks import BN_MOMENTUM, NeighbourRangeGate, neighbour_range_gate

# Test sizes: a 2-level CNN on 32 x 32 slices, a 4-filter ConvLSTM at 1/2 resolution.
CNN = {"base_filters": 4, "depth": 2, "input_size": 32}
HEAD = {"context_channels": 2, "lstm_filters": 4, "lstm_resolution": 2, "fusion_channels": 2}


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build(**kwargs) -> ContextualSegmenter:
    return ContextualSegmenter(**{"slice_cnn": dict(CNN), **HEAD, **kwargs})


def activate_fusion(model: ContextualSegmenter, seed: int = 0) -> None:
    """Gives the zero-initialised fusion conv random weights, as training would, so the output
    depends on the ConvLSTM."""
    conv = model.slice_fusion.get_layer("fusion_conv")
    rng = np.random.default_rng(seed)
    conv.kernel.assign(rng.normal(0, 0.5, conv.kernel.shape).astype(np.float32))


def windows(batch: int, time: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows `(batch, time, size, size, 1)` of a sphere-like blob whose radius changes with the
    slice, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((batch, time, size, size, 1), np.float32)
    for b in range(batch):
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        for t in range(time):
            radius = size * 0.3 * np.sqrt(max(0.0, 1 - ((t - time / 2) / (time / 2 + 1)) ** 2))
            masks[b, t, ..., 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    images = np.clip(0.2 + 0.5 * masks + rng.normal(0, 0.05, masks.shape), 0, 1)
    return images.astype(np.float32), masks


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "shape, folded",
    [
        ((2, 7, 4, 4, 1), (14, 4, 4, 1)),  # a window batch
        ((2, 3, 5), (6, 5)),  # any rank >= 3
    ],
)
def test_fold_and_unfold_time_are_inverse(shape, folded):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    out = numpy(FoldTime()(x))
    assert out.shape == folded
    # slice t of window b lands in row b * T + t
    np.testing.assert_array_equal(out[shape[1] + 1], x[1, 1])
    np.testing.assert_array_equal(numpy(UnfoldTime()([out, x])), x)


def test_fold_and_unfold_keep_float32_under_mixed_precision(mixed_bfloat16):
    x = np.ones((1, 2, 3, 3, 1), np.float32)
    assert keras.backend.standardize_dtype(FoldTime()(x).dtype) == "float32"
    assert keras.backend.standardize_dtype(UnfoldTime()([x[0], x]).dtype) == "float32"


def test_dynamic_number_of_slices_with_the_same_weights():
    model = build()
    assert tuple(model.input_shape) == (None, None, 32, 32, 1)
    for time in (7, 13):
        images, _ = windows(2, time)
        out = model(images)
        assert sorted(out) == ["prob"]
        prob = numpy(out["prob"])
        assert prob.shape == (2, time, 32, 32, 1) and prob.dtype == np.float32
        assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_cnn_runs_once_on_all_slices_of_the_batch():
    model = build()
    images, _ = windows(2, 5)
    cnn = model.slice_cnn
    # Inference: the folded call equals the CNN on each slice alone.
    folded = numpy(model.slice_encoder(images.reshape(10, 32, 32, 1))["logit"])
    for b in range(2):
        for t in range(5):
            alone = numpy(cnn(images[b, t][None])["logit"])[0]
            np.testing.assert_allclose(folded[b * 5 + t], alone, rtol=1e-5, atol=1e-5)
    # Training: one call, so the first batch norm's moving mean moves once, by the mean over
    # all 2 * 5 slices (initial mean 0).
    bn = cnn.get_layer("enc0_bn1")
    conv_out = numpy(cnn.get_layer("enc0_conv1")(images.reshape(10, 32, 32, 1)))
    model(images, training=True)
    np.testing.assert_allclose(
        numpy(bn.moving_mean),
        (1.0 - BN_MOMENTUM) * conv_out.mean(axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-7,
    )


def test_context_flows_in_both_directions():
    model = build()
    activate_fusion(model)
    images, _ = windows(1, 6)
    base = numpy(model(images)["prob"])
    changed_last = images.copy()
    changed_last[0, -1] = 1.0 - changed_last[0, -1]
    changed_first = images.copy()
    changed_first[0, 0] = 1.0 - changed_first[0, 0]
    # bottom-up: the last slice reaches the first one; top-down: the first reaches the last
    assert np.abs(numpy(model(changed_last)["prob"])[0, 0] - base[0, 0]).max() > 1e-4
    assert np.abs(numpy(model(changed_first)["prob"])[0, -1] - base[0, -1]).max() > 1e-4


def test_parts_compose_to_the_full_model():
    """slice_encoder -> sequence_context -> slice_fusion, as chunked inference uses them."""
    model = build()
    activate_fusion(model)
    images, _ = windows(1, 9)
    encoded = model.slice_encoder(images[0])
    projected = model.sequence_context(keras.ops.expand_dims(encoded["context"], 0))[0]
    prob = model.slice_fusion({"logit": encoded["logit"], "context": projected})
    np.testing.assert_allclose(numpy(prob), numpy(model(images)["prob"])[0], rtol=1e-5, atol=1e-6)
    assert tuple(encoded["context"].shape) == (9, 16, 16, 3)  # prob + 2 feature channels


def test_probability_only_context_and_its_head():
    """context_channels=0: the ConvLSTM reads the CNN probability alone, and `context_head` on
    the model's own CNN outputs is the model; another CNN's outputs give another answer."""
    model = build(context_channels=0)
    activate_fusion(model)
    assert "context_reduce" not in [layer.name for layer in model.slice_encoder.layers]
    images, _ = windows(2, 6)
    encoded = model.slice_encoder(images.reshape(12, 32, 32, 1))
    assert tuple(encoded["context"].shape) == (12, 16, 16, 1)
    folded = model.slice_cnn(images.reshape(12, 32, 32, 1))
    head = model.context_head(folded["logit"], folded["prob"], 2)
    np.testing.assert_allclose(numpy(head), numpy(model(images)["prob"]), rtol=1e-5, atol=1e-6)
    other = SliceCNN(**CNN)(images.reshape(12, 32, 32, 1))
    moved = numpy(model.context_head(other["logit"], other["prob"], 2))
    assert np.abs(moved - numpy(head)).max() > 1e-3
    with pytest.raises(PancsegError, match="context_channels=0"):
        build().context_head(folded["logit"], folded["prob"], 2)


def test_neighbour_range_gate():
    """How far a slice lies outside the range of its two neighbours; edges are their own."""
    p = np.array([0.9, 0.1, 0.9, 0.5, 0.3, 0.3], np.float32).reshape(1, 6, 1, 1, 1)
    gate = numpy(neighbour_range_gate(p))[0, :, 0, 0, 0]
    np.testing.assert_allclose(gate, [0.0, 0.8, 0.4, 0.0, 0.0, 0.0], atol=1e-6)
    layer = NeighbourRangeGate.from_config(NeighbourRangeGate(name="g").get_config())
    np.testing.assert_array_equal(numpy(layer(p)), numpy(neighbour_range_gate(p)))


def test_gated_fusion_corrects_only_where_a_slice_disagrees_with_both_neighbours():
    """fusion_gate="range": where every slice agrees with its neighbours the model is the CNN
    exactly, whatever the context layers learned; a slice that alone says pancreas is
    corrected. The parts, run over a whole sequence, compose to the model."""
    model = build(context_channels=0, fusion_gate="range")
    activate_fusion(model)
    rng = np.random.default_rng(3)
    logit = rng.normal(0, 2, (1, 32, 32, 1)).astype(np.float32)
    same = np.repeat(logit, 6, axis=0)  # six identical slices: no slice disagrees
    out = numpy(model.context_head(same, numpy(keras.ops.sigmoid(same)), 1))
    np.testing.assert_allclose(out[0], numpy(keras.ops.sigmoid(same)), rtol=1e-6, atol=1e-7)
    odd = same.copy()
    odd[3] = np.abs(logit) + 4.0  # slice 3 alone says pancreas everywhere
    out = numpy(model.context_head(odd, numpy(keras.ops.sigmoid(odd)), 1))[0]
    np.testing.assert_allclose(out[[0, 5]], numpy(keras.ops.sigmoid(odd[[0, 5]])), atol=1e-6)
    assert np.abs(out[3] - numpy(keras.ops.sigmoid(odd[3]))).max() > 1e-3
    # Parts, with the gate computed over the whole sequence, equal the model.
    images, _ = windows(1, 9)
    encoded = model.slice_encoder(images[0])
    projected = model.sequence_context(keras.ops.expand_dims(encoded["context"], 0))[0]
    gate = model.fusion_gate_of(encoded["logit"])
    prob = model.slice_fusion({"logit": encoded["logit"], "context": projected, "gate": gate})
    np.testing.assert_allclose(numpy(prob), numpy(model(images)["prob"])[0], rtol=1e-5, atol=1e-6)


def test_transfer_stage1_weights_reproduces_stage1_exactly():
    keras.utils.set_random_seed(1)
    stage1 = SliceCNN(**CNN)
    images, _ = windows(1, 4)
    slices = images[0]
    stage1(slices, training=True)  # batch-norm statistics away from their initial values
    model = build(slice_cnn=stage1.get_config())
    before = numpy(model.slice_cnn(slices)["prob"])
    transfer_stage1_weights(stage1, model)
    expected, got = stage1(slices), model.slice_cnn(slices)
    assert not np.array_equal(before, numpy(expected["prob"]))
    for key in expected:
        np.testing.assert_array_equal(numpy(got[key]), numpy(expected[key]))
    # the fusion starts at zero: the stage-2 model starts as the stage-1 CNN
    np.testing.assert_allclose(
        numpy(model(images)["prob"])[0], numpy(expected["prob"]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "stage1_config, message",
    [
        ({**CNN, "base_filters": 8}, "base_filters: stage-1 8 vs contextual 4; layer 'enc0_conv1'"),
        (
            {**CNN, "deep_supervision": False},
            "layers missing from the stage-1 CNN: \\['side_1_conv'",
        ),
        (
            {**CNN, "depth": 3},
            "depth: stage-1 3 vs contextual 2; layers the contextual model's CNN lacks: "
            "\\['enc2_conv1'",
        ),
    ],
)
def test_transfer_refuses_another_architecture(stage1_config, message):
    model = build()
    with pytest.raises(PancsegError, match=message):
        transfer_stage1_weights(SliceCNN(**stage1_config), model)


def test_freeze_cnn():
    model = build()
    cnn_paths = {w.path for w in model.slice_cnn.weights}
    all_trainable = {w.path for w in model.trainable_weights}
    # unused side-output convs are frozen from the start (they get no gradient in stage 2)
    assert "side_1_conv/kernel" not in all_trainable
    model.freeze_cnn()
    assert model.slice_cnn.trainable_weights == []
    assert {w.path for w in model.trainable_weights} == all_trainable - cnn_paths
    model.freeze_cnn(False)
    assert {w.path for w in model.trainable_weights} == all_trainable
    assert build(auxiliary_outputs=True).slice_cnn.get_layer("side_1_conv").trainable


def test_frozen_cnn_is_unchanged_by_a_training_step():
    model = build()
    activate_fusion(model)  # at zero init the ConvLSTM gets no gradient in the first step
    model.freeze_cnn()
    model.compile(optimizer="adam", loss={"prob": keras.losses.BinaryCrossentropy()})
    images, masks = windows(2, 3)
    cnn_before = [numpy(w) for w in model.slice_cnn.weights]
    lstm = model.sequence_context.get_layer("context_lstm")
    lstm_before = [numpy(w) for w in lstm.weights]
    model.train_on_batch(images, {"prob": masks})
    for before, after in zip(cnn_before, model.slice_cnn.weights):
        np.testing.assert_array_equal(before, numpy(after))
    assert any(not np.array_equal(b, numpy(a)) for b, a in zip(lstm_before, lstm.weights))


def test_auxiliary_outputs_and_their_targets():
    images, masks = windows(2, 3)
    plain = build(slice_cnn={**CNN, "depth": 3})
    assert sorted(plain(images)) == sorted(plain.targets(masks)) == plain.loss_keys == ["prob"]
    model = build(slice_cnn={**CNN, "depth": 3}, auxiliary_outputs=True)
    out = model(images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "prob": (2, 3, 32, 32, 1),
        "cnn_prob": (2, 3, 32, 32, 1),
        "side_1": (2, 3, 16, 16, 1),
        "side_2": (2, 3, 8, 8, 1),
    }
    targets = model.targets(masks)
    assert sorted(targets) == sorted(model.loss_keys)
    assert {k: tuple(v.shape) for k, v in targets.items()} == {
        k: tuple(v.shape) for k, v in out.items()
    }
    expected = masks.reshape(2, 3, 8, 4, 8, 4, 1).mean(axis=(3, 5))
    np.testing.assert_allclose(numpy(targets["side_2"]), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "slice_cnn",
    [
        CNN,  # constructor config
        "tiny",  # preset name
        None,  # the quick CNN
    ],
)
def test_slice_cnn_argument_forms(slice_cnn):
    model = ContextualSegmenter(slice_cnn=slice_cnn, **HEAD)
    reference = (
        SliceCNN(**CNN)
        if isinstance(slice_cnn, dict)
        else SliceCNN.from_preset(slice_cnn or "quick")
    )
    assert model.slice_cnn.get_config() == reference.get_config()


def test_a_given_slice_cnn_is_shared():
    cnn = SliceCNN(**CNN)
    assert build(slice_cnn=cnn).slice_cnn is cnn


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lstm_resolution": 8}, "lstm_resolution must divide 2\\*\\*depth = 4"),
        ({"lstm_resolution": 3}, "lstm_resolution must divide"),
        ({"lstm_filters": 0}, "lstm_filters must be an integer >= 1"),
        ({"context_channels": -1}, "context_channels must be an integer >= 0"),
        ({"fusion_gate": "mean"}, "fusion_gate must be one of"),
        ({"fusion_gate": "range", "time_distributed": True}, "does not support a fusion_gate"),
        ({"slice_cnn": 3}, "slice_cnn must be a SliceCNN"),
        ({"slice_cnn": "huge"}, "unknown SliceCNN preset"),
        ({"time_distributed": True, "auxiliary_outputs": True}, "does not support"),
        ({"slice_cnn": {**CNN, "input_size": None}}, "needs a fixed input_size"),
        ({"input_size": 64}, "input_size \\(64, 64\\) differs from the slice CNN's \\(32, 32\\)"),
        ({"slice_cnn": {**CNN, "input_size": None}, "input_size": 30}, "multiple of 2"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(PancsegError, match=message):
        build(**kwargs)


def test_size_agnostic_cnn_and_with_input_size():
    # a CNN trained on crops of any size; the ConvLSTM needs a fixed size
    model = build(slice_cnn={**CNN, "input_size": None}, input_size=(32, 48))
    activate_fusion(model)
    assert model.input_size == (32, 48) and model.slice_cnn.input_size is None
    images, _ = windows(1, 3, size=64)
    assert tuple(model(images[:, :, :32, :48])["prob"].shape) == (1, 3, 32, 48, 1)
    same = model.with_input_size((32, 48))
    np.testing.assert_array_equal(
        numpy(same(images[:, :, :32, :48])["prob"]), numpy(model(images[:, :, :32, :48])["prob"])
    )
    larger = model.with_input_size(64)
    assert larger.input_size == (64, 64)
    assert tuple(larger(images)["prob"].shape) == (1, 3, 64, 64, 1)
    for mine, theirs in zip(model.weights, larger.weights):
        np.testing.assert_array_equal(numpy(mine), numpy(theirs))
    # a fixed-size CNN is rebuilt at the new size too
    assert build().with_input_size(64).slice_cnn.input_size == (64, 64)


def test_presets():
    assert ContextualSegmenter.presets is CONTEXTUAL_PRESETS
    config = ContextualSegmenter().get_config()
    quick = CONTEXTUAL_PRESETS["quick"]
    assert {k: config[k] for k in quick if k != "slice_cnn"} == {
        k: v for k, v in quick.items() if k != "slice_cnn"
    }
    assert config["slice_cnn"]["config"] == SliceCNN().get_config()
    tiny = ContextualSegmenter.from_preset("tiny", lstm_filters=3)
    assert tiny.lstm_filters == 3 and tiny.input_size == (64, 64)
    with pytest.raises(PancsegError, match="unknown ContextualSegmenter preset"):
        ContextualSegmenter.from_preset("huge")


def test_config_round_trip():
    model = build(name="ctx", lstm_kernel_size=5, auxiliary_outputs=True)
    config = model.get_config()
    rebuilt = ContextualSegmenter.from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    assert [(w.path, tuple(w.shape)) for w in rebuilt.weights] == [
        (w.path, tuple(w.shape)) for w in model.weights
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"auxiliary_outputs": True},
        {"time_distributed": True},
        {"context_channels": 0},
        {"context_channels": 0, "fusion_gate": "range"},
    ],
)
def test_save_and_load_give_identical_predictions(tmp_path, kwargs):
    model = build(**kwargs)
    activate_fusion(model)
    images, _ = windows(1, 5)
    model(images, training=True)  # move the batch-norm statistics
    path = tmp_path / "contextual.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is ContextualSegmenter and type(loaded.slice_cnn) is SliceCNN
    assert loaded.get_config() == model.get_config()
    before, after = model(images), loaded(images)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(numpy(before[key]), numpy(after[key]))


def test_mixed_precision_outputs_are_float32(mixed_bfloat16):
    model = build(auxiliary_outputs=True)
    out = model(windows(1, 3)[0])
    assert {k: keras.backend.standardize_dtype(v.dtype) for k, v in out.items()} == {
        "prob": "float32",
        "cnn_prob": "float32",
        "side_1": "float32",
    }
    assert model.slice_cnn.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    # the recurrence runs through whole volumes: kept in float32
    assert model.sequence_context.get_layer("context_lstm").compute_dtype == "float32"
    assert model.sequence_context.get_layer("context_project").compute_dtype == "bfloat16"


def test_policy_is_restored_after_mixed_precision_test():
    assert keras.mixed_precision.global_policy().name == "float32"


def test_time_distributed_variant_gives_the_same_model():
    folded = build()
    activate_fusion(folded)
    distributed = build(time_distributed=True)
    assert [tuple(w.shape) for w in distributed.weights] == [tuple(w.shape) for w in folded.weights]
    distributed.set_weights(folded.get_weights())
    for time in (3, 7):
        images, _ = windows(1, time)
        np.testing.assert_allclose(
            numpy(distributed(images)["prob"]),
            numpy(folded(images)["prob"]),
            rtol=1e-5,
            atol=1e-6,
        )


def test_stage2_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = build()
    images, masks = windows(2, 5)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={"prob": keras.losses.BinaryCrossentropy()},
    )
    history = model.fit(images, model.targets(masks), batch_size=2, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
