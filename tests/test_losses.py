"""Tests for pancseg_tf.losses: hand tables, gradients, batch sums, serialisation, model.fit."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pancseg_tf.losses import (
    DEFAULT_EPSILON,
    DiceLoss,
    JaccardBCELoss,
    JaccardLoss,
    ResizedTargetLoss,
    SharpenedLoss,
    WeightedBCELoss,
    deep_supervision_losses,
    dice_loss,
    jaccard_bce_loss,
    jaccard_loss,
    resize_target,
    sharpen,
    weighted_binary_crossentropy,
)

EPS = DEFAULT_EPSILON


def _image(rows):
    """A list of rows -> one sample of shape (1, H, W, 1), float32."""
    return np.asarray(rows, dtype="float32")[None, :, :, None]


def _blobs(shape=(2, 16, 16, 1), seed=0):
    """Binary masks with a square 'pancreas' in sample 0 and none in the last sample."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype="float32")
    mask[0, ..., 4:9, 5:11, :] = 1.0
    if shape[0] > 2:
        mask[1:-1, ..., 6:12, 3:7, :] = rng.random(mask[1:-1, ..., 6:12, 3:7, :].shape) > 0.2
    return mask


# --- hand-computed tables -------------------------------------------------------------------

# Each case is one sample, y and p of shape (1, H, W, 1). The paper's form
# L = 1 - sum_{Y+} p / (|Y+| + sum_{Y-} p); I = sum_{Y+} p, U = |Y+| + sum_{Y-} p.
JACCARD_TABLE = [
    # 2x2, half-right: I = 0.5 + 1 = 1.5, U = 2 + 0.5 = 2.5 -> 1 - 1.5/2.5 = 0.4
    ([[1, 1], [0, 0]], [[0.5, 1.0], [0.0, 0.5]], 1 - (1.5 + EPS) / (2.5 + EPS)),
    # 2x2, perfect binary prediction -> exactly 0
    ([[1, 0], [0, 1]], [[1.0, 0.0], [0.0, 1.0]], 0.0),
    # 2x2, empty label, empty prediction: (0 + eps) / (0 + eps) -> 0, defined
    ([[0, 0], [0, 0]], [[0.0, 0.0], [0.0, 0.0]], 0.0),
    # 2x2, empty label, one false positive of 0.5: 1 - eps / (0.5 + eps), about 1
    ([[0, 0], [0, 0]], [[0.5, 0.0], [0.0, 0.0]], 1 - EPS / (0.5 + EPS)),
    # 2x2, missed label: I = 0, U = 1 -> 1 - eps / (1 + eps)
    ([[1, 0], [0, 0]], [[0.0, 0.0], [0.0, 0.0]], 1 - EPS / (1 + EPS)),
    # 3x3 plus-shaped label (|Y+| = 5): I = 0.8+0.6+1+0.9+0.5 = 3.8, sum_{Y-} p = 0.2+0.1 = 0.3,
    # U = 5.3 -> 1 - 3.8/5.3 = 0.28301887
    (
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
        [[0.2, 0.8, 0.0], [0.6, 1.0, 0.9], [0.0, 0.5, 0.1]],
        1 - (3.8 + EPS) / (5.3 + EPS),
    ),
]

# Same inputs, Dice: 1 - (2 I + eps) / (sum y + sum p + eps).
DICE_TABLE = [
    # 2I = 3, sum y + sum p = 2 + 2 -> 0.25
    ([[1, 1], [0, 0]], [[0.5, 1.0], [0.0, 0.5]], 1 - (3.0 + EPS) / (4.0 + EPS)),
    ([[1, 0], [0, 1]], [[1.0, 0.0], [0.0, 1.0]], 0.0),
    ([[0, 0], [0, 0]], [[0.0, 0.0], [0.0, 0.0]], 0.0),
    ([[0, 0], [0, 0]], [[0.5, 0.0], [0.0, 0.0]], 1 - EPS / (0.5 + EPS)),
    # 3x3: 2I = 7.6, sum y + sum p = 5 + 4.1 = 9.1 -> 1.5/9.1 = 0.16483516
    (
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
        [[0.2, 0.8, 0.0], [0.6, 1.0, 0.9], [0.0, 0.5, 0.1]],
        1 - (7.6 + EPS) / (9.1 + EPS),
    ),
]


@pytest.mark.parametrize("y, p, expected", JACCARD_TABLE)
def test_jaccard_loss_hand_table(y, p, expected):
    value = jaccard_loss(_image(y), _image(p))
    assert value.shape == (1,)
    np.testing.assert_allclose(np.asarray(value), [expected], rtol=0, atol=1e-6)
    # One sample: the batch sum changes nothing.
    np.testing.assert_allclose(
        float(JaccardLoss()(_image(y), _image(p))), expected, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("y, p, expected", DICE_TABLE)
def test_dice_loss_hand_table(y, p, expected):
    value = dice_loss(_image(y), _image(p))
    np.testing.assert_allclose(np.asarray(value), [expected], rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(DiceLoss()(_image(y), _image(p))), expected, atol=1e-6)


def test_paper_form_equals_binary_form_on_random_masks():
    # (3, 8, 8, 1): the paper's L with Y+ / Y- sets against the implemented binary form.
    rng = np.random.default_rng(3)
    y = (rng.random((3, 8, 8, 1)) > 0.7).astype("float32")
    p = rng.random((3, 8, 8, 1)).astype("float32")
    axes = (1, 2, 3)
    paper = 1 - (y * p).sum(axes) / (y.sum(axes) + ((1 - y) * p).sum(axes))
    np.testing.assert_allclose(np.asarray(jaccard_loss(y, p, epsilon=1e-12)), paper, rtol=1e-5)
    # Dice and Jaccard of the same soft counts: D = 2J / (1 + J) per sample.
    jaccard_index = 1 - np.asarray(jaccard_loss(y, p, epsilon=1e-12))
    dice_index = 1 - np.asarray(dice_loss(y, p, epsilon=1e-12))
    np.testing.assert_allclose(dice_index, 2 * jaccard_index / (1 + jaccard_index), rtol=1e-5)


def test_batch_sum_hand_table():
    # (2, 2, 2, 1): sample 0 has I = 1.5, U = 2.5; sample 1 has an empty label, p sums to 0.5.
    y = np.concatenate([_image([[1, 1], [0, 0]]), _image([[0, 0], [0, 0]])])
    p = np.concatenate([_image([[0.5, 1.0], [0.0, 0.5]]), _image([[0.5, 0.0], [0.0, 0.0]])])
    per_sample = [1 - (1.5 + EPS) / (2.5 + EPS), 1 - EPS / (0.5 + EPS)]
    batch = 1 - (1.5 + EPS) / (3.0 + EPS)  # 0.5: the false positive counts in the union

    np.testing.assert_allclose(np.asarray(jaccard_loss(y, p)), per_sample, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jaccard_loss(y, p, batch_sum=True)), [batch, batch], atol=1e-6
    )
    np.testing.assert_allclose(float(JaccardLoss()(y, p)), batch, atol=1e-6)
    np.testing.assert_allclose(
        float(JaccardLoss(batch_sum=False)(y, p)), np.mean(per_sample), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(JaccardLoss(reduction=None)(y, p)), [batch, batch], atol=1e-6
    )
    # Dice over the batch: 2I = 3, sum y + sum p = 2 + 2.5.
    np.testing.assert_allclose(float(DiceLoss()(y, p)), 1 - (3 + EPS) / (4.5 + EPS), atol=1e-6)


def test_sample_weights_enter_batch_sums():
    # (2, 2, 2, 1) as in the batch table; weight 0 removes the empty sample from the sums.
    y = np.concatenate([_image([[1, 1], [0, 0]]), _image([[0, 0], [0, 0]])])
    p = np.concatenate([_image([[0.5, 1.0], [0.0, 0.5]]), _image([[0.5, 0.0], [0.0, 0.0]])])
    alone = 1 - (1.5 + EPS) / (2.5 + EPS)
    weights = np.array([1.0, 0.0], dtype="float32")
    # keras' "sum_over_batch_size": mean(w) * L over the weighted sums.
    np.testing.assert_allclose(float(JaccardLoss()(y, p, sample_weight=weights)), 0.5 * alone)
    np.testing.assert_allclose(
        float(JaccardLoss(reduction="mean_with_sample_weight")(y, p, sample_weight=weights)),
        alone,
        rtol=1e-6,
    )
    # (B, 1) weights read as (B,).
    np.testing.assert_allclose(
        float(JaccardLoss()(y, p, sample_weight=weights[:, None])), 0.5 * alone, rtol=1e-6
    )
    # Per-sample mode: keras' usual weighted mean of the per-sample losses.
    per_sample = np.asarray(jaccard_loss(y, p))
    np.testing.assert_allclose(
        float(JaccardLoss(batch_sum=False)(y, p, sample_weight=[0.5, 2.0])),
        (0.5 * per_sample[0] + 2.0 * per_sample[1]) / 2,
        rtol=1e-6,
    )


def test_per_voxel_sample_weights_are_refused():
    y = _blobs((2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"one sample_weight per sample.*\(2, 4, 4, 1\)"):
        JaccardLoss()(y, y, sample_weight=np.ones((2, 4, 4, 1), "float32"))


# --- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        JaccardLoss(),
        JaccardLoss(batch_sum=False),
        DiceLoss(),
        DiceLoss(batch_sum=False),
        JaccardBCELoss(bce_weight=0.0),
    ],
    ids=["jaccard-batch", "jaccard-sample", "dice-batch", "dice-sample", "jaccard-bce-no-bce"],
)
@pytest.mark.parametrize("shape", [(2, 16, 16, 1), (2, 3, 16, 16, 1)], ids=["2d", "window"])
def test_perfect_prediction_gives_zero(loss, shape):
    mask = _blobs(shape)
    assert float(loss(mask, mask)) == 0.0


@pytest.mark.parametrize("batch_sum", [True, False])
@pytest.mark.parametrize("function", [jaccard_loss, dice_loss])
def test_empty_label_and_prediction_defined_with_finite_gradient(function, batch_sum):
    y = np.zeros((2, 4, 4, 1), "float32")
    p = tf.Variable(np.zeros((2, 4, 4, 1), "float32"))
    with tf.GradientTape() as tape:
        value = function(y, p, batch_sum=batch_sum)
    gradient = tape.gradient(value, p)
    np.testing.assert_array_equal(np.asarray(value), [0.0, 0.0])
    assert np.all(np.isfinite(gradient.numpy()))


def test_uint8_masks_without_channel_axis():
    # Masks as stored, uint8 (B, H, W), against (B, H, W, 1) probabilities.
    mask = _blobs((2, 8, 8, 1))
    np.testing.assert_allclose(
        np.asarray(jaccard_loss(mask[..., 0].astype("uint8"), mask * 0.5)),
        np.asarray(jaccard_loss(mask, mask * 0.5)),
    )


@pytest.mark.parametrize(
    "y_shape, p_shape", [((2, 4, 4, 1), (2, 4, 1)), ((2, 4, 4), (2, 4, 4, 2)), ((3,), (3,))]
)
def test_mismatched_shapes_raise(y_shape, p_shape):
    with pytest.raises(ValueError, match="shape"):
        jaccard_loss(np.zeros(y_shape, "float32"), np.zeros(p_shape, "float32"))


@pytest.mark.parametrize("epsilon", [0.0, -1e-5])
def test_non_positive_epsilon_is_refused(epsilon):
    with pytest.raises(ValueError, match="epsilon must be a positive number"):
        JaccardLoss(epsilon=epsilon)


# --- gradients ------------------------------------------------------------------------------


def _gradient(loss_fn, y, p):
    variable = tf.Variable(p)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss_fn(y, variable))
    return tape.gradient(value, variable).numpy()


def test_per_sample_gradient_matches_closed_form():
    # (2, 6, 6, 1): dL/dp_j = -1/(U + eps) on Y+, (I + eps)/(U + eps)^2 on Y-, per sample.
    rng = np.random.default_rng(7)
    y = (rng.random((2, 6, 6, 1)) > 0.6).astype("float32")
    p = rng.uniform(0.05, 0.95, (2, 6, 6, 1)).astype("float32")
    axes = (1, 2, 3)
    intersection = (y * p).sum(axes, keepdims=True)
    union = y.sum(axes, keepdims=True) + ((1 - y) * p).sum(axes, keepdims=True)
    expected = np.where(
        y == 1, -1 / (union + EPS), (intersection + EPS) / (union + EPS) ** 2
    ).astype("float32")
    gradient = _gradient(jaccard_loss, y, p)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4)


def test_batch_sum_gradient_matches_closed_form():
    # (2, 6, 6, 1): the same closed form with I and U summed over the batch; the loss object's
    # reduction (mean of B equal entries) must give the batch value's gradient.
    rng = np.random.default_rng(8)
    y = (rng.random((2, 6, 6, 1)) > 0.6).astype("float32")
    p = rng.uniform(0.05, 0.95, (2, 6, 6, 1)).astype("float32")
    intersection = (y * p).sum()
    union = y.sum() + ((1 - y) * p).sum()
    expected = np.where(y == 1, -1 / (union + EPS), (intersection + EPS) / (union + EPS) ** 2)
    gradient = _gradient(JaccardLoss(), y, p)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4)


def test_batch_sum_punishes_false_positives_on_empty_windows():
    # (2, 8, 8, 1): window 0 holds a 3x3 pancreas predicted at 0.8 (0.3 elsewhere); window 1
    # has no pancreas and predicts 0.3 everywhere: false positives only.
    y = np.zeros((2, 8, 8, 1), "float32")
    y[0, 2:5, 2:5] = 1.0
    p = np.full((2, 8, 8, 1), 0.3, "float32")
    p[0, 2:5, 2:5] = 0.8

    per_sample = _gradient(JaccardLoss(batch_sum=False), y, p)
    batch = _gradient(JaccardLoss(batch_sum=True), y, p)

    def mean_size(gradient, sample):
        return np.abs(gradient[sample]).mean()

    # Per sample the empty window's gradient is about eps / (sum p)^2: about nothing.
    assert mean_size(per_sample, 1) < 1e-5 * mean_size(per_sample, 0)
    # Batch sums: of the same order as on the window with pancreas, and positive, i.e.
    # lowering the false positives lowers the loss.
    assert 0.1 < mean_size(batch, 1) / mean_size(batch, 0) < 10
    assert np.all(batch[1] > 0)
    # Every background voxel of the batch gets the same push, whichever window it is in.
    np.testing.assert_allclose(batch[1], batch[0, 0, 0, 0], rtol=1e-6)


# --- cross-entropy baselines ----------------------------------------------------------------

# (1, 2, 2, 1), y = [1, 0, 0, 0]: |Y+| = 1, |Y-| = 3, so the automatic weight is 3.
BCE_TABLE = [
    (None, -(3 * math.log(0.8) + math.log(0.8) + math.log(0.9) + math.log(0.6)) / 4),
    (1.0, -(math.log(0.8) + math.log(0.8) + math.log(0.9) + math.log(0.6)) / 4),
    (10.0, -(10 * math.log(0.8) + math.log(0.8) + math.log(0.9) + math.log(0.6)) / 4),
]


@pytest.mark.parametrize("pos_weight, expected", BCE_TABLE)
def test_weighted_bce_hand_table(pos_weight, expected):
    y = _image([[1, 0], [0, 0]])
    p = _image([[0.8, 0.2], [0.1, 0.4]])
    np.testing.assert_allclose(
        np.asarray(weighted_binary_crossentropy(y, p, pos_weight=pos_weight)),
        [expected],
        rtol=1e-5,
    )
    np.testing.assert_allclose(float(WeightedBCELoss(pos_weight=pos_weight)(y, p)), expected)


def test_automatic_weight_comes_from_the_whole_batch():
    # (2, 2, 2, 1): 1 foreground voxel of 8, so w+ = 7 for both samples, also the empty one.
    y = np.concatenate([_image([[1, 0], [0, 0]]), _image([[0, 0], [0, 0]])])
    p = np.full((2, 2, 2, 1), 0.5, "float32")
    np.testing.assert_allclose(
        np.asarray(weighted_binary_crossentropy(y, p)),
        np.asarray(weighted_binary_crossentropy(y, p, pos_weight=7.0)),
        rtol=1e-6,
    )


def test_plain_bce_equals_keras_and_background_only_batch_is_defined():
    rng = np.random.default_rng(1)
    y = _blobs((2, 8, 8, 1))
    p = rng.uniform(0.01, 0.99, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        float(WeightedBCELoss(pos_weight=1.0)(y, p)),
        float(keras.losses.BinaryCrossentropy()(y, p)),
        rtol=1e-5,
    )
    # No pancreas in the batch: the automatic weight is 0, background voxels still count.
    empty = np.zeros_like(y)
    value = float(WeightedBCELoss()(empty, p))
    np.testing.assert_allclose(value, -np.log(1 - p).mean(), rtol=1e-5)


def test_jaccard_bce_is_the_weighted_sum():
    rng = np.random.default_rng(2)
    y = _blobs((3, 8, 8, 1))
    p = rng.uniform(0.01, 0.99, (3, 8, 8, 1)).astype("float32")
    expected = 0.7 * float(JaccardLoss()(y, p)) + 0.3 * float(
        WeightedBCELoss(pos_weight=None)(y, p)
    )
    loss = JaccardBCELoss(jaccard_weight=0.7, bce_weight=0.3, pos_weight=None)
    np.testing.assert_allclose(float(loss(y, p)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jaccard_bce_loss(y, p, jaccard_weight=0.7, bce_weight=0.3, pos_weight=None)),
        0.7 * np.asarray(jaccard_loss(y, p)) + 0.3 * np.asarray(weighted_binary_crossentropy(y, p)),
        rtol=1e-6,
    )


# --- mixed precision ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize(
    "loss", [JaccardLoss(), DiceLoss(), WeightedBCELoss(), JaccardBCELoss()], ids=lambda x: x.name
)
def test_low_precision_predictions_give_float32(loss, dtype):
    y = _blobs((2, 8, 8, 1))
    p32 = np.clip(y * 0.8 + 0.1, 0, 1).astype("float32")
    p_low = tf.cast(p32, dtype)
    value = loss(y, p_low)
    assert value.dtype == tf.float32
    # Same as the float32 loss of the rounded probabilities.
    np.testing.assert_allclose(float(value), float(loss(y, tf.cast(p_low, "float32"))), rtol=1e-6)
    assert jaccard_loss(y, p_low).dtype == tf.float32


# --- resizing for deep supervision ----------------------------------------------------------

MASK_4X4 = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]

# (1, 4, 4, 1) mask pooled to (1, 2, 2, 1).
RESIZE_TABLE = [
    ("average", [[0.75, 0.0], [0.0, 0.5]]),
    ("max", [[1.0, 0.0], [0.0, 1.0]]),
]


@pytest.mark.parametrize("pooling, expected", RESIZE_TABLE)
def test_resize_target_hand_table(pooling, expected):
    pooled = resize_target(_image(MASK_4X4), np.zeros((1, 2, 2, 1), "float32"), pooling)
    np.testing.assert_allclose(np.asarray(pooled), _image(expected))


def test_resize_target_keeps_the_slice_axis_and_identity():
    # (1, 2, 4, 4, 1) window, two different slices, pooled to (1, 2, 2, 2, 1).
    window = np.stack([_image(MASK_4X4)[0], _image(np.eye(4))[0]])[None]
    pooled = np.asarray(resize_target(window, np.zeros((1, 2, 2, 2, 1), "float32")))
    assert pooled.shape == (1, 2, 2, 2, 1)
    np.testing.assert_allclose(pooled[0, 0], _image(RESIZE_TABLE[0][1])[0])
    np.testing.assert_allclose(pooled[0, 1, :, :, 0], [[0.5, 0.0], [0.0, 0.5]])
    same = resize_target(window.astype("uint8"), window)
    np.testing.assert_array_equal(np.asarray(same), window)


@pytest.mark.parametrize(
    "y_shape, p_shape, pooling, message",
    [
        ((1, 4, 4, 1), (1, 3, 3, 1), "average", "divide"),
        ((1, 4, 4, 1), (1, 2, 2, 1), "bilinear", "pooling must be one of"),
        ((1, 4, 1), (1, 4, 1), "average", r"\(B, H, W, C\)"),
    ],
)
def test_resize_target_refuses(y_shape, p_shape, pooling, message):
    with pytest.raises(ValueError, match=message):
        resize_target(np.zeros(y_shape, "float32"), np.zeros(p_shape, "float32"), pooling)


def test_resized_target_loss_applies_base_loss_to_pooled_mask():
    y = _image(MASK_4X4)
    side = _image([[0.6, 0.1], [0.2, 0.4]])
    expected = float(JaccardLoss()(_image(RESIZE_TABLE[0][1]), side))
    np.testing.assert_allclose(float(ResizedTargetLoss(JaccardLoss())(y, side)), expected)
    # Sample weights reach the wrapped loss (they scale I and U, so eps moves it by ~1e-5).
    np.testing.assert_allclose(
        float(ResizedTargetLoss(JaccardLoss())(y, side, sample_weight=[0.5])),
        0.5 * expected,
        rtol=1e-4,
    )


def test_deep_supervision_losses_weights_and_validation():
    losses, weights = deep_supervision_losses(
        DiceLoss(epsilon=1e-3), ["prob", "side_1"], weights={"side_1": 0.5, "prob": 1.0}
    )
    assert weights == {"prob": 1.0, "side_1": 0.5}
    assert losses["prob"] is not losses["side_1"]
    assert losses["side_1"].base_loss.get_config() == DiceLoss(epsilon=1e-3).get_config()
    _, default = deep_supervision_losses(JaccardLoss(), ["prob", "side_1", "side_2"])
    assert default == {"prob": 1.0, "side_1": 1.0, "side_2": 1.0}
    with pytest.raises(ValueError, match="one value per output"):
        deep_supervision_losses(JaccardLoss(), ["prob", "side_1"], weights=[1.0])
    with pytest.raises(ValueError, match="distinct and non-empty"):
        deep_supervision_losses(JaccardLoss(), ["prob", "prob"])


# --- serialisation --------------------------------------------------------------------------

SERIALISED = [
    JaccardLoss(batch_sum=False, epsilon=1e-3, name="j"),
    DiceLoss(epsilon=1e-4, reduction="mean_with_sample_weight"),
    WeightedBCELoss(pos_weight=None),
    WeightedBCELoss(pos_weight=4.0),
    JaccardBCELoss(jaccard_weight=0.6, bce_weight=0.4, pos_weight=None, batch_sum=False),
    ResizedTargetLoss(JaccardLoss(epsilon=1e-2), pooling="max"),
    SharpenedLoss(JaccardLoss(batch_sum=False), sharpness=2.5),
]


@pytest.mark.parametrize("loss", SERIALISED, ids=lambda x: x.name)
def test_config_round_trip(loss):
    rng = np.random.default_rng(4)
    y = _blobs((2, 4, 4, 1))
    p = rng.uniform(0.05, 0.95, (2, 2, 2, 1) if "resized" in loss.name else y.shape)
    p = p.astype("float32")
    restored = type(loss).from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(revived) is type(loss)
    assert revived.get_config() == loss.get_config()
    np.testing.assert_allclose(float(revived(y, p)), float(loss(y, p)))


def test_sharpen_keeps_the_boundary_and_pushes_the_rest_out():
    p = np.array([1e-9, 0.02, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0], "float32")
    out = np.asarray(sharpen(p, 3.0))
    # sigmoid(3 logit(p)) = p^3 / (p^3 + (1 - p)^3), with p clipped to [1e-6, 1 - 1e-6]
    q = np.clip(p.astype("float64"), 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(out, q**3 / (q**3 + (1 - q) ** 3), rtol=1e-4, atol=1e-12)
    assert out[4] == pytest.approx(0.5)
    assert np.all((out[:4] < p[:4]) | (p[:4] < 1e-6)) and np.all(out[5:7] > p[5:7])
    assert np.all(np.diff(out) >= 0)  # monotone: thresholding at 0.5 gives the same mask
    np.testing.assert_array_equal(np.asarray(sharpen(p, 1.0)), p)


def test_sharpened_jaccard_weighs_out_a_haze_of_low_probabilities():
    """The stage-1 failure it exists for: a haze of p = 0.05 over the background dominates
    the soft union, so lowering every probability pays more than getting the boundary right."""
    y = np.zeros((2, 16, 16, 1), "float32")
    y[:, 4:12, 4:12] = 1.0
    haze = np.where(y > 0, 0.9, 0.05).astype("float32")
    shrunk = haze.copy()
    shrunk[:, 4:12, 4] = 0.3  # one column of pancreas lost ...
    shrunk[y == 0] = 0.01  # ... for a fainter haze
    plain, sharpened = JaccardLoss(), SharpenedLoss(JaccardLoss(), 3.0)
    assert float(plain(y, shrunk)) < float(plain(y, haze))  # the plain loss prefers shrinking
    assert float(sharpened(y, haze)) < float(sharpened(y, shrunk))  # the sharpened one does not
    # the haze barely counts once sharpened: close to the loss of a clean background
    clean = np.where(y > 0, 0.9, 0.0).astype("float32")
    assert float(sharpened(y, haze)) == pytest.approx(float(sharpened(y, clean)), abs=0.01)
    assert float(plain(y, haze)) > 2 * float(plain(y, clean))  # a haze of 0.05 doubles it


def test_sharpened_loss_passes_sample_weights_and_refuses_bad_input():
    y = _blobs((3, 8, 8, 1))
    p = np.random.default_rng(2).uniform(0.05, 0.95, y.shape).astype("float32")
    w = np.array([1.0, 0.0, 2.0], "float32")
    inner = JaccardLoss(batch_sum=False)
    np.testing.assert_allclose(
        float(SharpenedLoss(inner, 2.0)(y, p, sample_weight=w)),
        float(inner(y, np.asarray(sharpen(p, 2.0)), sample_weight=w)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="sharpness"):
        SharpenedLoss(inner, 0.5)
    with pytest.raises(TypeError, match="base_loss"):
        SharpenedLoss("jaccard")


# --- inside keras ---------------------------------------------------------------------------


def _tiny_model(outputs=("prob",)):
    """(16, 16, 1) image -> sigmoid map "prob" (16, 16, 1) and optional "side_1" (8, 8, 1)."""
    inputs = keras.Input((16, 16, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    result = {"prob": keras.layers.Conv2D(1, 1, activation="sigmoid", name="prob")(features)}
    if "side_1" in outputs:
        pooled = keras.layers.AveragePooling2D(2)(features)
        result["side_1"] = keras.layers.Conv2D(1, 1, activation="sigmoid", name="side_1")(pooled)
    return keras.Model(inputs, result if len(outputs) > 1 else result["prob"])


def _images_and_masks(count=8, seed=5):
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, 16, 16, 1), "float32")
    for index in range(count - 1):  # the last image has no pancreas
        row, col = rng.integers(2, 9, size=2)
        masks[index, row : row + 5, col : col + 6] = 1.0
    images = masks * 1.5 - 0.5 + rng.normal(0, 0.3, masks.shape).astype("float32")
    return images, masks


def test_fit_reduces_jaccard_loss_and_evaluate_matches():
    keras.utils.set_random_seed(0)
    images, masks = _images_and_masks()
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=JaccardLoss())
    history = model.fit(images, masks, batch_size=8, epochs=15, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0]
    evaluated = model.evaluate(images, masks, batch_size=8, verbose=0)
    direct = float(JaccardLoss()(masks, model.predict(images, batch_size=8, verbose=0)))
    np.testing.assert_allclose(evaluated, direct, rtol=1e-5)


def test_saved_model_gets_its_loss_back(tmp_path):
    images, masks = _images_and_masks(count=4)
    model = _tiny_model()
    model.compile(optimizer="adam", loss=JaccardBCELoss(jaccard_weight=2.0, pos_weight=None))
    model.fit(images, masks, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, JaccardBCELoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(images, masks, batch_size=4, verbose=0),
        model.evaluate(images, masks, batch_size=4, verbose=0),
        rtol=1e-6,
    )


# XLA, as keras may pick on a GPU, must compile the batch sums and the pooling too.
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_deep_supervision_in_fit_evaluate_and_save(tmp_path, jit_compile):
    keras.utils.set_random_seed(1)
    images, masks = _images_and_masks(count=4)
    names = ["prob", "side_1"]
    losses, loss_weights = deep_supervision_losses(JaccardLoss(), names, weights=[1.0, 0.5])
    model = _tiny_model(outputs=names)
    model.compile(optimizer="adam", loss=losses, loss_weights=loss_weights, jit_compile=jit_compile)
    targets = dict.fromkeys(names, masks)
    history = model.fit(images, targets, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    evaluated = model.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
    predicted = model.predict(images, batch_size=4, verbose=0)
    side_target = masks.reshape(4, 8, 2, 8, 2, 1).mean(axis=(2, 4))  # 2x2 average pooling
    expected = float(JaccardLoss()(masks, predicted["prob"])) + 0.5 * float(
        JaccardLoss()(side_target, predicted["side_1"])
    )
    np.testing.assert_allclose(evaluated["loss"], expected, rtol=1e-5)

    path = tmp_path / "deep.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss["side_1"], ResizedTargetLoss)
    assert isinstance(loaded.loss["side_1"].base_loss, JaccardLoss)
    reloaded = loaded.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
    np.testing.assert_allclose(reloaded["loss"], evaluated["loss"], rtol=1e-6)
