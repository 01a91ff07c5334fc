"""ContextualSegmenter (the paper's design): dynamic T, one batched CNN call, the ConvLSTM reads
the CNN probability alone and its output is the segmentation, bidirectional context, the start as
the stage-1 CNN, stage-1 weight transfer, freezing, config, save / load, mixed precision, fit."""

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
from pancseg_tf.models.blocks import BN_MOMENTUM

# Test sizes: a 2-level CNN on 32 x 32 slices, a 4-filter ConvLSTM at 1/2 resolution.
CNN = {"base_filters": 4, "depth": 2, "input_size": 32}
HEAD = {"lstm_filters": 4, "lstm_resolution": 2}


def build(**kwargs) -> ContextualSegmenter:
    return ContextualSegmenter(**{"slice_cnn": dict(CNN), **HEAD, **kwargs})


def activate_context(model: ContextualSegmenter, seed: int = 0) -> None:
    """Gives the recurrent layers and the head random weights, as training would, so that
    every unit carries context between slices (the identity start uses two units only)."""
    rng = np.random.default_rng(seed)
    for layer in (
        model.sequence_context.get_layer("context_lstm"),
        model.slice_head.get_layer("head_conv"),
    ):
        for weight in layer.weights:
            weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))


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
    folded = numpy(model.slice_cnn(images.reshape(10, 32, 32, 1))["logit"])
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
    """Each slice's output depends on the CNN's predictions on the slices before and after it
    (top-down and bottom-up)."""
    model = build()
    activate_context(model)

    def segment(prob):
        return numpy(model.slice_head(model.sequence_context(prob[None])[0]))

    prob = np.random.default_rng(5).random((6, 16, 16, 1)).astype(np.float32)
    base = segment(prob)
    changed_last, changed_first = prob.copy(), prob.copy()
    changed_last[-1] = 1.0 - changed_last[-1]
    changed_first[0] = 1.0 - changed_first[0]
    # bottom-up: the last slice reaches the first one; top-down: the first reaches the last
    assert np.abs(segment(changed_last)[0] - base[0]).max() > 1e-4
    assert np.abs(segment(changed_first)[-1] - base[-1]).max() > 1e-4


def test_parts_compose_to_the_full_model():
    """slice_encoder -> sequence_context -> slice_head, as whole-volume inference uses them;
    the ConvLSTM reads one channel, the CNN's probability (pooled at lstm_resolution 2)."""
    model = build()
    activate_context(model)
    images, _ = windows(1, 9)
    encoded = model.slice_encoder(images[0])
    assert sorted(encoded) == ["context"]
    cnn_prob = numpy(model.slice_cnn(images[0])["prob"])
    expected_context = cnn_prob.reshape(9, 16, 2, 16, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(numpy(encoded["context"]), expected_context, atol=1e-6)
    sequence = model.sequence_context(keras.ops.expand_dims(encoded["context"], 0))[0]
    assert tuple(sequence.shape) == (9, 16, 16, 8)  # both directions, 4 filters each
    prob = model.slice_head(sequence)
    np.testing.assert_allclose(numpy(prob), numpy(model(images)["prob"])[0], rtol=1e-5, atol=1e-6)


def test_nothing_goes_around_the_recurrent_layers():
    """The paper's design: the output is the ConvLSTM's (through the head). With the
    ConvLSTM's weights zeroed the output no longer depends on the image."""
    for kwargs in ({}, {"lstm_resolution": 1}):
        # seeded: with some initial CNNs the two windows' outputs differ by less than 1e-3
        # before the zeroing (a CI run read 0.00045), which would make the check meaningless
        keras.utils.set_random_seed(3)
        assert_only_the_recurrence_reaches_the_output(build(**kwargs))


def assert_only_the_recurrence_reaches_the_output(model, size: int = 32) -> None:
    """The ConvLSTM reads one channel; with context active two images give different outputs,
    and with the ConvLSTM's weights zeroed the same constant output."""
    activate_context(model)
    lstm = model.sequence_context.get_layer("context_lstm")
    assert lstm.forward_layer.cell.kernel.shape[2] == 1  # one input channel: the probability
    a, _ = windows(1, 5, size=size, seed=1)
    b, _ = windows(1, 5, size=size, seed=2)
    assert np.abs(numpy(model(a)["prob"]) - numpy(model(b)["prob"])).max() > 1e-3
    for weight in lstm.weights:
        weight.assign(np.zeros(weight.shape, np.float32))
    out_a, out_b = numpy(model(a)["prob"]), numpy(model(b)["prob"])
    np.testing.assert_array_equal(out_a, out_b)
    assert np.ptp(out_a) == 0.0


def test_the_model_starts_as_the_cnn():
    """`start_as_cnn`: before stage 2 trains, the model's mask is the CNN's wherever the CNN is
    not within a hair of its threshold (full resolution: the quick and paper presets)."""
    model = build(lstm_resolution=1)
    prob = np.random.default_rng(4).random((1, 12, 32, 32, 1)).astype(np.float32)
    sequence = model.sequence_context(prob)[0]
    out = numpy(model.slice_head(sequence))[None]
    clear = np.abs(prob - 0.5) > 0.05
    np.testing.assert_array_equal((out >= 0.5)[clear], (prob >= 0.5)[clear])
    assert np.corrcoef(out.ravel(), prob.ravel())[0, 1] > 0.9


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
    # the stage-2 model starts with the stage-1 CNN's mask where the CNN is clear
    full = build(slice_cnn=stage1.get_config(), lstm_resolution=1)
    transfer_stage1_weights(stage1, full)
    cnn_prob = numpy(expected["prob"])
    clear = np.abs(cnn_prob - 0.5) > 0.05
    start = numpy(full(images)["prob"])[0]
    np.testing.assert_array_equal((start >= 0.5)[clear], (cnn_prob >= 0.5)[clear])


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
        ({"lstm_kernel_size": True}, "lstm_kernel_size must be an integer >= 1"),
        ({"slice_cnn": 3}, "slice_cnn must be a SliceCNN"),
        ({"slice_cnn": "huge"}, "unknown SliceCNN preset"),
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
    activate_context(model)
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
        {"lstm_resolution": 1},
    ],
)
def test_save_and_load_give_identical_predictions(tmp_path, kwargs):
    model = build(**kwargs)
    activate_context(model)
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
    assert model.slice_head.get_layer("head_conv").compute_dtype == "float32"


def test_policy_is_restored_after_mixed_precision_test():
    assert keras.mixed_precision.global_policy().name == "float32"


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


def test_context_window_makes_prediction_run_in_chunks_of_it():
    """A model trained on windows of W slices (`context_window`) is run over chunks of W slices
    by default, exactly as with an explicit chunk=W; without one, in one pass."""
    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import Segmenter

    model = build(context_window=5)
    activate_context(model)
    assert ContextualSegmenter.from_config(model.get_config()).context_window == 5
    preprocess = PreprocessConfig(size=(32, 32))
    image = np.random.default_rng(6).random((32, 32, 13)).astype(np.float32)
    windowed = Segmenter(model, preprocess)
    assert windowed.chunk == 5
    explicit = Segmenter(model, preprocess, chunk=5)
    np.testing.assert_array_equal(
        windowed.predict_model_grid(image), explicit.predict_model_grid(image)
    )
    one_pass = Segmenter(build(), preprocess)
    assert one_pass.chunk is None
    with pytest.raises(PancsegError, match="context_window must be an integer >= 2"):
        build(context_window=1)


def test_paper_yaml_trains_the_papers_design():
    """`--config paper` builds, through the trainer's own builders, the `paper` presets (the
    32-filter depth-5 CNN, a ConvLSTM of 8 filters a direction at full resolution) whose
    ConvLSTM reads the CNN's one-channel probability map and nothing else: with the ConvLSTM's
    weights zeroed the output no longer depends on the image. Built on a 64 x 64 plane (the
    design does not depend on it; 512 x 512 would only cost time)."""
    from pancseg_tf.config import apply_overrides, load_config
    from pancseg_tf.training.recipe import build_contextual

    cfg = load_config("paper")
    assert cfg.model.preset == "paper" and cfg.data.window == 5
    keras.utils.set_random_seed(3)
    model = build_contextual(apply_overrides(cfg, ["preprocess.size=[64, 64]"]))
    cnn = model.slice_cnn
    assert (cnn.base_filters, cnn.depth, cnn.get_layer("bottleneck_conv2").filters) == (32, 5, 512)
    assert (model.lstm_filters, model.lstm_resolution, model.context_window) == (8, 1, 5)
    assert_only_the_recurrence_reaches_the_output(model, size=64)
