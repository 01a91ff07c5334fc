"""The inference form (`pancseg_tf.models.folding`): batch norms folded into their convolutions
compute what the model computes in inference mode, over the model's own live variables, and
only where folding is exact."""

import keras
import numpy as np

from pancseg_tf.models import ContextualSegmenter, SliceCNN
from pancseg_tf.models.folding import FoldedConvBatchNorm, foldable_pairs, inference_graph


def trained_like(model, seed=0):
    """Every weight moved off its initial value, batch-norm statistics included (a fresh
    model's are 0 and 1, which would hide a wrong fold of the mean or variance)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = np.asarray(w)
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.2, 3.0, value.shape).astype(value.dtype))
        else:
            w.assign(value + rng.normal(0.0, 0.2, value.shape).astype(value.dtype))
    return model


def assert_close(got, want):
    """Equal up to float32 rounding at the scale of the values (the fold forms its products in
    another order; through logits of 100, errors of 1e-4 reach the probabilities). A wrong fold
    (a missing mean, scale or bias) moves them by tenths."""
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()))


def batch_norms(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(batch_norms(layer))
    return found


def test_slice_cnn_folds_every_pair_and_computes_the_same():
    cnn = trained_like(SliceCNN(base_filters=4, depth=2, input_size=32))
    pairs = foldable_pairs(cnn)
    assert len(pairs) == len(batch_norms(cnn)) > 0
    folded = inference_graph(cnn)
    assert folded is not cnn
    kinds = {type(layer) for layer in folded.layers}
    assert FoldedConvBatchNorm in kinds and keras.layers.BatchNormalization not in kinds
    # Nothing copied: the folded graph holds the model's own variables.
    assert {id(v) for v in folded.weights} == {id(v) for v in cnn.weights}
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    want, got = cnn(x, training=False), folded(x, training=False)
    assert set(got) == set(want)
    for key in want:
        assert_close(got[key], want[key])
    # Live: a weight changed after folding is what the next call uses.
    before = np.asarray(folded(x)["prob"])
    norm = batch_norms(cnn)[1]
    norm.moving_mean.assign(np.asarray(norm.moving_mean) + 0.7)
    assert np.abs(np.asarray(folded(x)["prob"]) - before).max() > 0.05
    assert_close(folded(x)["prob"], cnn(x, training=False)["prob"])


def test_contextual_model_and_its_parts_fold():
    model = ContextualSegmenter(
        slice_cnn={"base_filters": 4, "depth": 2, "input_size": 32}, lstm_filters=4
    )
    trained_like(model, seed=2)
    x = np.random.default_rng(3).random((2, 5, 32, 32, 1), dtype=np.float32)
    folded = inference_graph(model)
    assert_close(folded(x)["prob"], model(x, training=False)["prob"])
    encoder = inference_graph(model.slice_encoder)
    slices = x.reshape(-1, 32, 32, 1)
    assert_close(encoder(slices)["context"], model.slice_encoder(slices, training=False)["context"])
    # A part without batch norm is itself.
    assert inference_graph(model.slice_head) is model.slice_head


def test_only_exact_folds():
    """A convolution whose output is also used elsewhere, or that has its own activation, is
    left as it is; one with a bias folds the bias too."""
    inputs = keras.Input((16, 16, 2))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")(inputs)
    a = keras.layers.BatchNormalization(name="bn_shared")(shared)
    activated = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="act")(inputs)
    b = keras.layers.BatchNormalization(name="bn_act")(activated)
    biased = keras.layers.Conv2D(3, 3, padding="same", name="biased")(inputs)
    c = keras.layers.BatchNormalization(name="bn_biased")(biased)
    outputs = keras.layers.Concatenate()([a, b, c, shared])
    model = trained_like(keras.Model(inputs, outputs), seed=4)
    pairs = foldable_pairs(model)
    assert [norm.name for norm in pairs.values()] == ["bn_biased"]
    x = np.random.default_rng(5).random((2, 16, 16, 2), dtype=np.float32)
    assert_close(inference_graph(model)(x), model(x, training=False))


def test_mixed_bfloat16_model_is_not_folded(mixed_bfloat16):
    """bfloat16 convolutions keep their batch norms: folded, the kernel's rounding to 8 bits
    of mantissa moved probabilities by up to 0.18 on this model."""
    cnn = trained_like(SliceCNN(base_filters=4, depth=2, input_size=32))
    assert foldable_pairs(cnn) == {}
    assert inference_graph(cnn) is cnn
