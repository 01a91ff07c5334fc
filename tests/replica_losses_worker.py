"""One SGD step under `MirroredStrategy` on 2 logical CPUs vs on one device (run, not imported).

    python tests/replica_losses_worker.py OUT.json

Run in a fresh process: the CPU must be split into two logical devices before TensorFlow
initialises its devices, which a pytest session that has already used TensorFlow cannot undo.

For each case it trains a small convolutional model (two convolutions, sigmoid output) for one
SGD step on the same global batch of 4 phantom images, once on one device and once split over
two replicas (2 images each), and writes the largest weight difference between the two. The
global batch's first half holds large organs, its second half one pixel each, so a loss that
sums over each replica's half alone (rather than over the global batch) steps differently.

Cases: ``model.fit`` with each batch-sum loss (with and without per-sample weights) and with the
class-balanced cross-entropy (its weight comes from the batch), and `fit_distributed`.
``loss_<case>`` holds the losses the two fits logged (mirrored, one device). ``gap_<case>`` is
how far the one-device step lies from the step a per-replica loss would take (the mean of the
two halves' gradients): what the test must be able to tell apart.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pancseg_tf.losses import DiceLoss, JaccardBCELoss, JaccardLoss, WeightedBCELoss
from pancseg_tf.training.multiworker import fit_distributed

SIZE = 16
GLOBAL_BATCH = 4
LEARNING_RATE = 1.0
SAMPLE_WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0], "float32")

LOSSES = {
    "jaccard": JaccardLoss,
    "dice": DiceLoss,
    "weighted_bce": WeightedBCELoss,  # pos_weight=None: the weight is the batch's |Y-| / |Y+|
    "jaccard_bce": lambda: JaccardBCELoss(pos_weight=None),
}


def global_batch() -> tuple[np.ndarray, np.ndarray]:
    """Phantom images `(4, 16, 16, 1)` and masks: samples 0-1 large organs, 2-3 one pixel."""
    rng = np.random.default_rng(0)
    masks = np.zeros((GLOBAL_BATCH, SIZE, SIZE, 1), "float32")
    masks[0, 3:12, 2:11] = 1.0
    masks[1, 5:14, 6:15] = 1.0
    masks[2, 8, 8] = 1.0
    masks[3, 4, 11] = 1.0
    images = 0.3 + 0.4 * masks + 0.1 * rng.standard_normal(masks.shape)
    return images.astype("float32"), masks


def build_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def fit_one_step(strategy, make_loss, weighted: bool) -> tuple[list[np.ndarray], float]:
    """One `model.fit` step on the global batch under ``strategy``: (weights, logged loss)."""
    images, masks = global_batch()
    with strategy.scope():
        model = build_model()
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=make_loss())
    parts = (images, masks, SAMPLE_WEIGHTS) if weighted else (images, masks)
    dataset = tf.data.Dataset.from_tensor_slices(parts).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return model.get_weights(), float(history.history["loss"][0])


def per_replica_step(make_loss, weighted: bool) -> list[np.ndarray]:
    """The step a loss computed on each half alone would take: the halves' mean gradient."""
    images, masks = global_batch()
    model = build_model()
    loss = make_loss()
    half = GLOBAL_BATCH // 2
    grads = None
    for start in (0, half):
        rows = slice(start, start + half)
        with tf.GradientTape() as tape:
            weights = SAMPLE_WEIGHTS[rows] if weighted else None
            value = loss(masks[rows], model(images[rows], training=True), sample_weight=weights)
        step = tape.gradient(value, model.trainable_variables)
        grads = step if grads is None else [a + b for a, b in zip(grads, step)]
    return [w.numpy() - LEARNING_RATE * g.numpy() / 2 for w, g in zip(model.weights, grads)]


def fit_distributed_one_step(strategy, make_loss) -> list[np.ndarray]:
    images, masks = global_batch()

    def dataset_fn(context, epoch):
        batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
        # One input pipeline: consecutive batches go to replica 0, 1, ... of each step.
        return tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch)

    with tempfile.TemporaryDirectory() as work_dir:
        model, _ = fit_distributed(
            strategy,
            build_model,
            make_loss,
            lambda: keras.optimizers.SGD(LEARNING_RATE),
            dataset_fn,
            epochs=1,
            steps_per_epoch=1,
            work_dir=work_dir,
        )
        return model.get_weights()


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: replica_losses_worker.py OUT.json", file=sys.stderr)
        return 2
    # Before anything initialises TensorFlow's devices (importing it does not).
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
    )
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one_device = tf.distribute.get_strategy()
    initial = build_model().get_weights()
    result = {"num_replicas": mirrored.num_replicas_in_sync}
    cases = [(name, make, False) for name, make in LOSSES.items()]
    cases += [(f"{name}_weighted", LOSSES[name], True) for name in ("jaccard", "dice")]
    for name, make_loss, weighted in cases:
        reference, reference_loss = fit_one_step(one_device, make_loss, weighted)
        weights, loss = fit_one_step(mirrored, make_loss, weighted)
        result[f"fit_{name}"] = max_difference(weights, reference)
        result[f"loss_{name}"] = [loss, reference_loss]
        result[f"gap_{name}"] = max_difference(per_replica_step(make_loss, weighted), reference)
        result[f"moved_{name}"] = max_difference(reference, initial)
    for name in ("jaccard", "dice"):
        reference = fit_distributed_one_step(one_device, LOSSES[name])
        mirrored_weights = fit_distributed_one_step(mirrored, LOSSES[name])
        result[f"fit_distributed_{name}"] = max_difference(mirrored_weights, reference)
        result[f"moved_fit_distributed_{name}"] = max_difference(reference, initial)
    Path(argv[0]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
