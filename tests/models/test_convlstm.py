"""FusedConvLSTM2D: Keras' ConvLSTM2D with two convolutions per step computes what Keras' layer
computes (forward, both directions, gradients), holds the same weights, loads a model saved
with Keras' layer, and is what the contextual model runs."""

import keras
import numpy as np
import tensorflow as tf

from pancseg_tf.models import ContextualSegmenter
from pancseg_tf.models.convlstm import FusedConvLSTM2D


def pair(filters=4, **kwargs):
    """A Keras and a fused bidirectional ConvLSTM on 16 x 12 maps of 2 channels, same weights."""
    models = []
    for layer in (keras.layers.ConvLSTM2D, FusedConvLSTM2D):
        inputs = keras.Input((None, 16, 12, 2))
        lstm = keras.layers.Bidirectional(
            layer(filters, 3, padding="same", return_sequences=True, name="convlstm", **kwargs)
        )
        models.append(keras.Model(inputs, lstm(inputs)))
    stock, fused = models
    rng = np.random.default_rng(3)
    stock.set_weights([rng.normal(0.0, 0.4, w.shape).astype("float32") for w in stock.weights])
    fused.set_weights(stock.get_weights())
    return stock, fused


def test_fused_step_is_keras_step_forward_and_backward():
    stock, fused = pair()
    assert [type(d.cell).__name__ for d in (fused.layers[1].forward_layer,)] == [
        "FusedConvLSTMCell"
    ]
    assert fused.layers[1].forward_layer.fused and fused.layers[1].backward_layer.fused
    assert [w.shape for w in fused.weights] == [w.shape for w in stock.weights]
    x = np.random.default_rng(4).random((3, 7, 16, 12, 2), dtype=np.float32)
    want = np.asarray(stock(x))
    got = np.asarray(fused(x))
    assert want.shape == (3, 7, 16, 12, 8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Compiled, as inference runs it: the same on both, and the states move (not constant).
    got_graph = tf.function(lambda v: fused(v, training=False))(x).numpy()
    np.testing.assert_allclose(got_graph, want, rtol=0, atol=1e-6)
    assert np.std(want[:, -1] - want[:, 0]) > 1e-2

    def grads(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x, training=True)))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]

    for g_fused, g_stock in zip(grads(fused), grads(stock), strict=True):
        np.testing.assert_allclose(g_fused, g_stock, rtol=1e-4, atol=1e-5)


def test_dropout_in_training_runs_keras_step():
    stock, fused = pair(dropout=0.5, seed=1)
    x = np.random.default_rng(5).random((2, 4, 16, 12, 2), dtype=np.float32)
    # Inference ignores dropout: the fused step; training with dropout: Keras' own step.
    np.testing.assert_allclose(np.asarray(fused(x)), np.asarray(stock(x)), atol=1e-6)
    out = np.asarray(fused(x, training=True))
    assert out.shape == (2, 4, 16, 12, 8) and np.isfinite(out).all()


def test_model_saved_with_keras_layer_loads_into_fused(tmp_path, monkeypatch):
    """A .keras written by a build with Keras' own ConvLSTM2D (every model before the fused
    layer: the old build is made here by putting Keras' class back in its place) loads into
    today's build with every weight in place and the same output."""
    import pancseg_tf.models.contextual as contextual

    kwargs = {"slice_cnn": {"base_filters": 4, "depth": 2, "input_size": 32}, "lstm_filters": 4}
    with monkeypatch.context() as patch:
        patch.setattr(contextual, "FusedConvLSTM2D", keras.layers.ConvLSTM2D)
        old = ContextualSegmenter(**kwargs)
    old_lstm = old.sequence_context.get_layer("context_lstm")
    assert type(old_lstm.forward_layer) is keras.layers.ConvLSTM2D
    rng = np.random.default_rng(6)
    for w in old.weights:
        if "moving_variance" not in w.path:
            w.assign(w.numpy() + rng.normal(0.0, 0.3, w.shape).astype("float32"))
    path = tmp_path / "old.keras"
    old.save(path)

    loaded = keras.saving.load_model(path)
    lstm = loaded.sequence_context.get_layer("context_lstm")
    assert isinstance(lstm.forward_layer, FusedConvLSTM2D) and lstm.forward_layer.fused
    for a, b in zip(loaded.weights, old.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = rng.random((1, 6, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded(x)["prob"]), np.asarray(old(x)["prob"]), rtol=0, atol=1e-6
    )
