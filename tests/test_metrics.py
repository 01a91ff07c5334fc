"""Tests for pancseg_tf.metrics: streaming Dice and Jaccard scores."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pancseg_tf.metrics import DiceScore, JaccardScore


def _batch(y_rows, p_rows):
    """Lists of 2x2 rows -> y (1, 2, 2, 1) and p (1, 2, 2, 1), float32."""
    return (
        np.asarray(y_rows, "float32")[None, :, :, None],
        np.asarray(p_rows, "float32")[None, :, :, None],
    )


# Two batches of shape (1, 2, 2, 1), threshold 0.5:
# batch 1 predicts [[1, 0], [1, 0]] for [[1, 1], [0, 0]]: TP 1, FP 1, FN 1.
# batch 2 predicts [[1, 0], [0, 0]] for [[1, 0], [0, 0]]: TP 1, FP 0, FN 0.
# Global after both: TP 2, FP 1, FN 1 (not the mean of the per-batch scores).
BATCHES = [
    _batch([[1, 1], [0, 0]], [[0.9, 0.4], [0.6, 0.1]]),
    _batch([[1, 0], [0, 0]], [[0.7, 0.2], [0.3, 0.1]]),
]
STREAM_TABLE = [
    # metric, score after batch 1, after batch 2 (mean of per-batch would be 0.75 / 0.667)
    (DiceScore, 2 / 4, 4 / 6),
    (JaccardScore, 1 / 3, 2 / 4),
]


@pytest.mark.parametrize("metric_class, after_first, after_both", STREAM_TABLE)
def test_scores_accumulate_over_batches(metric_class, after_first, after_both):
    metric = metric_class()
    metric.update_state(*BATCHES[0])
    np.testing.assert_allclose(float(metric.result()), after_first, rtol=1e-6)
    metric.update_state(*BATCHES[1])
    np.testing.assert_allclose(float(metric.result()), after_both, rtol=1e-6)
    counts = [float(v) for v in (metric.true_positives, metric.false_positives)]
    assert counts + [float(metric.false_negatives)] == [2.0, 1.0, 1.0]


@pytest.mark.parametrize("metric_class", [DiceScore, JaccardScore])
def test_reset_state_forgets_earlier_batches(metric_class):
    metric = metric_class()
    metric.update_state(*BATCHES[0])
    metric.reset_state()
    assert float(metric.result()) == 1.0  # nothing seen: the empty-case value
    metric.update_state(*BATCHES[1])
    assert float(metric.result()) == 1.0  # batch 2 alone is perfect


# y = [[1, 1], [0, 0]], p = [[0.5, 0.35], [0.4, 0.2]], shape (1, 2, 2, 1).
THRESHOLD_TABLE = [
    # threshold 0.5: 0.5 is not above it, nothing predicted -> TP 0, FP 0, FN 2
    (0.5, DiceScore, 0.0),
    (0.5, JaccardScore, 0.0),
    # threshold 0.3: predicts [[1, 1], [1, 0]] -> TP 2, FP 1, FN 0
    (0.3, DiceScore, 4 / 5),
    (0.3, JaccardScore, 2 / 3),
    # threshold 0.45: predicts [[1, 0], [0, 0]] -> TP 1, FP 0, FN 1
    (0.45, DiceScore, 2 / 3),
    (0.45, JaccardScore, 1 / 2),
]


@pytest.mark.parametrize("threshold, metric_class, expected", THRESHOLD_TABLE)
def test_threshold(threshold, metric_class, expected):
    metric = metric_class(threshold=threshold)
    metric.update_state(*_batch([[1, 1], [0, 0]], [[0.5, 0.35], [0.4, 0.2]]))
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


# Shape (1, 2, 2, 1); empty-case semantics.
EMPTY_TABLE = [
    # both empty: TP + FP + FN = 0 -> 1.0 by definition
    ([[0, 0], [0, 0]], [[0.1, 0.2], [0.0, 0.4]], 1.0),
    # no pancreas, one false positive -> 0
    ([[0, 0], [0, 0]], [[0.9, 0.2], [0.0, 0.4]], 0.0),
    # pancreas, nothing predicted -> 0
    ([[0, 1], [0, 0]], [[0.1, 0.2], [0.0, 0.4]], 0.0),
]


@pytest.mark.parametrize("metric_class", [DiceScore, JaccardScore])
@pytest.mark.parametrize("y, p, expected", EMPTY_TABLE)
def test_empty_cases(metric_class, y, p, expected):
    metric = metric_class()
    assert float(metric.result()) == 1.0  # before any update
    metric.update_state(*_batch(y, p))
    assert float(metric.result()) == expected


def test_empty_batches_leave_the_score_unchanged():
    metric = DiceScore()
    metric.update_state(*BATCHES[0])
    metric.update_state(*_batch([[0, 0], [0, 0]], [[0.1, 0.2], [0.0, 0.4]]))
    np.testing.assert_allclose(float(metric.result()), 0.5, rtol=1e-6)


def test_sample_weight_per_sample_and_per_voxel():
    # (2, 2, 2, 1): the two batches of the stream table stacked.
    y = np.concatenate([BATCHES[0][0], BATCHES[1][0]])
    p = np.concatenate([BATCHES[0][1], BATCHES[1][1]])
    per_sample = DiceScore()
    per_sample.update_state(y, p, sample_weight=[0.0, 1.0])  # only the perfect sample
    assert float(per_sample.result()) == 1.0
    per_voxel = DiceScore()
    # Masks out sample 0's false positive at (1, 0): TP 2, FP 0, FN 1 -> 4/5.
    weights = np.ones((2, 2, 2), "float32")
    weights[0, 1, 0] = 0.0
    per_voxel.update_state(y, p, sample_weight=weights)
    np.testing.assert_allclose(float(per_voxel.result()), 4 / 5, rtol=1e-6)


def test_windows_uint8_masks_and_low_precision():
    # (2, 3, 4, 4, 1) slice windows; uint8 masks without channel axis; bfloat16 predictions.
    rng = np.random.default_rng(0)
    y = (rng.random((2, 3, 4, 4)) > 0.5).astype("uint8")
    p = rng.random((2, 3, 4, 4, 1)).astype("float32")
    predicted = p[..., 0] > 0.5
    tp = np.sum(predicted & (y == 1))
    expected = 2 * tp / (predicted.sum() + y.sum())
    metric = DiceScore()
    metric.update_state(y, p)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)

    low = DiceScore()
    p_low = tf.cast(p, "bfloat16")
    low.update_state(y, p_low)
    rounded = np.asarray(tf.cast(p_low, "float32"))[..., 0] > 0.5
    expected_low = 2 * np.sum(rounded & (y == 1)) / (rounded.sum() + y.sum())
    assert low.result().dtype == tf.float32
    np.testing.assert_allclose(float(low.result()), expected_low, rtol=1e-6)


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_out_of_range_is_refused(threshold):
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
        DiceScore(threshold=threshold)


@pytest.mark.parametrize(
    "metric", [DiceScore(threshold=0.3, name="dsc"), JaccardScore(threshold=0.7)]
)
def test_config_round_trip(metric):
    restored = type(metric).from_config(metric.get_config())
    assert restored.get_config() == metric.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(revived) is type(metric)
    assert revived.threshold == metric.threshold
    assert revived.name == metric.name


def _tiny_model():
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(features)
    return keras.Model(inputs, outputs)


def test_compiled_metrics_stream_over_evaluate_batches(tmp_path):
    # Six (8, 8, 1) images in three batches of two: the logged score must be the global one.
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    masks = np.zeros((6, 8, 8, 1), "float32")
    for index in range(5):
        row, col = rng.integers(0, 4, size=2)
        masks[index, row : row + 4, col : col + 3] = 1.0
    images = masks - 0.5 + rng.normal(0, 0.4, masks.shape).astype("float32")
    model = _tiny_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        metrics=[DiceScore(), JaccardScore(threshold=0.4)],
    )
    history = model.fit(images, masks, batch_size=2, epochs=2, verbose=0)
    assert {"dice_score", "jaccard_score"} <= set(history.history)

    logged = model.evaluate(images, masks, batch_size=2, verbose=0, return_dict=True)
    probabilities = model.predict(images, batch_size=2, verbose=0)
    truth = masks == 1
    at_05, at_04 = probabilities > 0.5, probabilities > 0.4
    dice = 2 * np.sum(at_05 & truth) / (at_05.sum() + truth.sum())
    jaccard = np.sum(at_04 & truth) / np.sum(at_04 | truth)
    np.testing.assert_allclose(logged["dice_score"], dice, rtol=1e-5)
    np.testing.assert_allclose(logged["jaccard_score"], jaccard, rtol=1e-5)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    reloaded = loaded.evaluate(images, masks, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(reloaded["dice_score"], dice, rtol=1e-5)
    np.testing.assert_allclose(reloaded["jaccard_score"], jaccard, rtol=1e-5)
