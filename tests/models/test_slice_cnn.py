"""SliceCNN: shapes, deep supervision targets, config, save / load, mixed precision, fit."""

import json

import keras
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.models import SLICE_CNN_PRESETS, SliceCNN, downsample_mask

# A test-size CNN: 2 poolings, 4 filters; builds in well under a second.
TINY = {"base_filters": 4, "depth": 2, "input_size": 32}


def disk_slices(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright disks on a dark background and their masks, `(count, size, size, 1)`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((count, size, size, 1), np.float32)
    for i in range(count):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        radius = rng.uniform(size * 0.1, size * 0.25)
        masks[i, ..., 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    images = np.clip(0.2 + 0.5 * masks + rng.normal(0, 0.05, masks.shape), 0, 1)
    return images.astype(np.float32), masks


@pytest.mark.parametrize(
    "config, batch, expected",
    [
        # depth 2, 32 x 32: one side output at 1/2
        (
            TINY,
            2,
            {"prob": (2, 32, 32, 1), "logit": (2, 32, 32, 1), "features": (2, 32, 32, 4),
             "side_1": (2, 16, 16, 1)},
        ),
        # depth 3, non-square 32 x 48, aggregation 6 channels: side outputs at 1/2 and 1/4
        (
            {"base_filters": 4, "depth": 3, "input_size": (32, 48), "aggregation_filters": 6},
            1,
            {"prob": (1, 32, 48, 1), "logit": (1, 32, 48, 1), "features": (1, 32, 48, 6),
             "side_1": (1, 16, 24, 1), "side_2": (1, 8, 12, 1)},
        ),
        # no deep supervision: no side outputs
        (
            {**TINY, "deep_supervision": False},
            3,
            {"prob": (3, 32, 32, 1), "logit": (3, 32, 32, 1), "features": (3, 32, 32, 4)},
        ),
    ],
)  # fmt: skip
def test_output_shapes_and_dtypes(config, batch, expected):
    model = SliceCNN(**config)
    height, width = model.input_size
    x = np.random.default_rng(0).random((batch, height, width, 1), dtype=np.float32)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert sorted(model.output_keys) == sorted(expected)
    for key in ["prob", "logit", *model.side_output_keys]:
        assert keras.backend.standardize_dtype(out[key].dtype) == "float32"
    for key in model.loss_keys:
        values = keras.ops.convert_to_numpy(out[key])
        assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out["prob"]),
        keras.ops.convert_to_numpy(keras.ops.sigmoid(out["logit"])),
        rtol=1e-6,
        atol=1e-7,
    )


def test_any_size_input_with_same_weights():
    model = SliceCNN(**{**TINY, "input_size": None})
    assert model.input_size is None
    small = model(np.zeros((1, 32, 32, 1), np.float32))
    large = model(np.zeros((2, 48, 64, 1), np.float32))
    assert tuple(small["prob"].shape) == (1, 32, 32, 1)
    assert tuple(large["prob"].shape) == (2, 48, 64, 1)
    assert tuple(large["side_1"].shape) == (2, 24, 32, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({**TINY, "input_size": 30}, "multiple of 2\\*\\*depth = 4"),
        ({**TINY, "input_size": (32, 30)}, "multiple of 2\\*\\*depth = 4"),
        ({**TINY, "input_size": 2}, "multiple of 2\\*\\*depth = 4"),
        ({**TINY, "input_size": "32"}, "input_size must be"),
        ({**TINY, "input_size": (32, 32, 1)}, "input_size must be"),
        ({**TINY, "dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ({**TINY, "base_filters": 0}, "base_filters must be an integer >= 1"),
        ({**TINY, "depth": 1.5}, "depth must be an integer >= 1"),
        ({**TINY, "aggregation_filters": True}, "aggregation_filters must be an integer"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(PancsegError, match=message):
        SliceCNN(**kwargs)


def test_presets():
    default = SliceCNN()
    config = default.get_config()
    assert {k: config[k] for k in SLICE_CNN_PRESETS["quick"]} == SLICE_CNN_PRESETS["quick"]
    assert SliceCNN.presets is SLICE_CNN_PRESETS
    paper = SliceCNN.from_preset("paper", deep_supervision=False)
    assert paper.input_size == (512, 512)
    assert paper.depth == 5 and paper.base_filters == 32 and not paper.deep_supervision
    # filters capped at max_filters = 512 in the bottleneck (32 * 2**5 = 1024 uncapped)
    assert paper.get_layer("bottleneck_conv2").filters == 512
    with pytest.raises(PancsegError, match="unknown SliceCNN preset 'huge'"):
        SliceCNN.from_preset("huge")


def test_layer_names_and_weight_paths_are_stable():
    first, second = SliceCNN(**TINY), SliceCNN(**TINY)
    assert [w.path for w in first.weights] == [w.path for w in second.weights]
    names = {layer.name for layer in first.layers}
    expected = {"image", "enc0_conv1", "enc1_bn2", "enc1_pool", "bottleneck_conv1",
                "bottleneck_dropout", "dec1_up", "dec0_concat", "dec0_relu2", "side_1_conv",
                "side_1", "agg0_conv", "agg1_up", "agg_concat", "fuse_conv", "fuse_bn",
                "features", "logit_conv", "logit", "prob"}  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize(
    "mask, factor, expected",
    [
        # 4 x 4 mask -> 2 x 2 foreground fractions
        (
            [[1, 1, 0, 0],
             [1, 0, 0, 0],
             [0, 0, 0, 0],
             [0, 0, 1, 1]],
            2,
            [[0.75, 0.0],
             [0.0, 0.5]],
        ),
        # 4 x 4 -> 1 x 1: a thin structure is kept as a small fraction, not dropped
        ([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], 4, [[1 / 16]]),
        # factor 1: unchanged, as float32
        ([[0, 1], [1, 1]], 1, [[0, 1], [1, 1]]),
    ],
)  # fmt: skip
def test_downsample_mask(mask, factor, expected):
    mask = np.asarray(mask, np.uint8)[None, :, :, None]
    out = keras.ops.convert_to_numpy(downsample_mask(mask, factor))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, :, 0], expected, rtol=1e-6)


def test_targets_match_side_outputs():
    model = SliceCNN(base_filters=4, depth=3, input_size=32)
    _, masks = disk_slices(2, 32)
    targets = model.targets(masks.astype(np.uint8))
    out = model(masks)
    assert sorted(targets) == sorted(model.loss_keys) == ["prob", "side_1", "side_2"]
    for key, target in targets.items():
        assert target.shape == out[key].shape
    side_2 = keras.ops.convert_to_numpy(targets["side_2"])
    np.testing.assert_allclose(side_2, masks.reshape(2, 8, 4, 8, 4, 1).mean(axis=(2, 4)))


def test_config_round_trip():
    model = SliceCNN(base_filters=4, depth=3, input_size=(32, 64), dropout=0.0,
                     aggregation_filters=5, max_filters=8, name="cnn_a")  # fmt: skip
    config = model.get_config()
    # the config survives JSON (input_size becomes a list there)
    rebuilt = SliceCNN.from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    assert [(w.path, tuple(w.shape)) for w in rebuilt.weights] == [
        (w.path, tuple(w.shape)) for w in model.weights
    ]
    assert "bottleneck_dropout" not in {layer.name for layer in model.layers}


def test_save_and_load_give_identical_predictions(tmp_path):
    model = SliceCNN(**TINY)
    images, _ = disk_slices(4, 32)
    # a training-mode call moves the batch-norm statistics away from their initial values
    model(images, training=True)
    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is SliceCNN
    assert loaded.get_config() == model.get_config()
    before = model(images)
    after = loaded(images)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(before[key]), keras.ops.convert_to_numpy(after[key])
        )


def test_mixed_precision_outputs_are_float32(mixed_bfloat16):
    model = SliceCNN(**TINY)
    out = model(np.zeros((2, 32, 32, 1), np.float32))
    assert {k: keras.backend.standardize_dtype(v.dtype) for k, v in out.items()} == {
        "prob": "float32",
        "logit": "float32",
        "side_1": "float32",
        "features": "bfloat16",
    }
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in model.weights)
    assert model.get_config()["dtype"]["config"]["name"] == "mixed_bfloat16"


def test_policy_is_restored_after_mixed_precision_test():
    assert keras.mixed_precision.global_policy().name == "float32"


def test_stage1_fit_with_deep_supervision_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = SliceCNN(**TINY)
    images, masks = disk_slices(8, 32)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss={key: keras.losses.BinaryCrossentropy() for key in model.loss_keys},
        loss_weights={key: 1.0 if key == "prob" else 0.5 for key in model.loss_keys},
    )
    history = model.fit(images, model.targets(masks), batch_size=8, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    assert "side_1_loss" in history.history
