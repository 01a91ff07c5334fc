"""One worker of the two-process `MultiWorkerMirroredStrategy` test (run, not imported by pytest).

    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}' \\
        python tests/training/multiworker_worker.py OUT_DIR

Every worker runs the same command. It trains two tiny models with `fit_distributed`:

- ``slice_cnn``: `SliceCNN(base_filters=4, depth=2, input_size=32)` with Jaccard losses on
  ``prob`` and ``side_1``, Adam, ``EPOCHS`` epochs in one call;
- ``plain``: two convolutions without batch norm, SGD and the batch Jaccard plus the
  class-balanced cross-entropy (both sum over the global batch, across the workers), first for
  ``EPOCHS - 1`` epochs and then, in a second call on the same run folder, resumed from the
  backup for the last one. The test trains the same model in its own process on the global
  batch (`reference_fit`) and expects the same weights;
- ``stopped``: ``plain`` again, whose ``on_epoch_end`` asks to stop after epoch 0 on the chief
  alone (as early stopping decides on the chief's validation): every worker must stop there;
- ``scored``: ``plain`` with fixed weights (learning rate 0) that threshold the image, scored
  by the training DSC and JI (`recipe.training_scores`) for one epoch on batches that differ
  by worker (`scored_share`: worker 0's masks hold the rectangles, worker 1's are empty). The
  test expects the scores of the global batch, not the mean of the workers' own.

Each writes ``OUT_DIR/<model>/<worker id>.npz`` (final weights, epoch losses, the epochs of the
resumed call, whether it is the chief; for ``scored`` also the logged ``dsc`` and ``ji``). Then
it tries plain `model.fit` under the same strategy (keras-team/keras#20585) and prints one
line, ``KERAS_FIT: ok`` or ``KERAS_FIT: failed: <error type>: <message>``; the fit failing does
not change the exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pancseg_tf.losses import JaccardBCELoss, JaccardLoss
from pancseg_tf.models.slice_cnn import SliceCNN
from pancseg_tf.training.multiworker import fit_distributed, is_chief, worker_id
from pancseg_tf.training.recipe import training_scores

EPOCHS = 3
STEPS_PER_EPOCH = 3
PER_REPLICA_BATCH = 2
SIZE = 32
KERAS_FIT_MARKER = "KERAS_FIT:"


def phantom(num: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images `(num, 32, 32, 1)` with a bright rectangle, and its mask (float32)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num, SIZE, SIZE, 1), "float32")
    for i in range(num):
        row, col = rng.integers(4, 16, size=2)
        height, width = rng.integers(6, 12, size=2)
        masks[i, row : row + height, col : col + width] = 1.0
    noise = 0.1 * rng.standard_normal(masks.shape)
    return (0.3 + 0.4 * masks + noise).astype("float32"), masks


def epoch_dataset(
    context: tf.distribute.InputContext, epoch: int, global_batch: int, targets
) -> tf.data.Dataset:
    """This input pipeline's share of each global batch, as per-replica batches.

    Global batch ``s`` of epoch ``e`` is rows ``s * G .. (s + 1) * G`` of a permutation seeded
    by ``e``; pipeline ``p``, feeding ``L`` local replicas with batches of ``b``, takes rows
    ``p * L * b .. (p + 1) * L * b`` of it. So one process with ``G``-sized batches sees exactly
    the union of what the workers see, whatever the number of workers.
    """
    images, masks = phantom(STEPS_PER_EPOCH * global_batch)
    order = np.random.default_rng(100 + epoch).permutation(len(images))
    batch = context.get_per_replica_batch_size(global_batch)
    local = batch * context.num_replicas_in_sync // context.num_input_pipelines
    first = context.input_pipeline_id * local
    rows = np.concatenate(
        [order[s * global_batch + first :][:local] for s in range(STEPS_PER_EPOCH)]
    )
    return tf.data.Dataset.from_tensor_slices((images[rows], targets(masks[rows]))).batch(batch)


def slice_cnn_targets(masks: np.ndarray) -> dict[str, np.ndarray]:
    """``prob`` and ``side_1`` targets: the mask and its 2x2 area average."""
    side = masks.reshape(len(masks), SIZE // 2, 2, SIZE // 2, 2, 1).mean(axis=(2, 4))
    return {"prob": masks, "side_1": side.astype("float32")}


def build_slice_cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    return SliceCNN(base_filters=4, depth=2, input_size=SIZE)


def build_plain() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def train_slice_cnn(strategy, work_dir: Path, epochs: int, global_batch: int):
    return fit_distributed(
        strategy,
        build_slice_cnn,
        lambda: {"prob": JaccardLoss(), "side_1": JaccardLoss()},
        lambda: keras.optimizers.Adam(1e-2),
        lambda context, epoch: epoch_dataset(context, epoch, global_batch, slice_cnn_targets),
        epochs=epochs,
        steps_per_epoch=STEPS_PER_EPOCH,
        work_dir=work_dir,
        loss_weights={"side_1": 0.5},
    )


def train_plain(strategy, work_dir: Path, epochs: int, global_batch: int, on_epoch_end=None):
    return fit_distributed(
        strategy,
        build_plain,
        lambda: JaccardBCELoss(pos_weight=None),
        lambda: keras.optimizers.SGD(0.5),
        lambda context, epoch: epoch_dataset(context, epoch, global_batch, lambda m: m),
        epochs=epochs,
        steps_per_epoch=STEPS_PER_EPOCH,
        work_dir=work_dir,
        on_epoch_end=on_epoch_end,
    )


def thresholding_weights() -> list[np.ndarray]:
    """``plain``'s weights as a detector of the bright rectangle: ``sigmoid(20 x - 10)`` of the
    image ``x`` (filter 0 of the first convolution passes the pixel through the ReLU)."""
    first = np.zeros((3, 3, 1, 4), "float32")
    first[1, 1, 0, 0] = 1.0
    second = np.zeros((3, 3, 4, 1), "float32")
    second[1, 1, 0, 0] = 20.0
    return [first, np.zeros(4, "float32"), second, np.full(1, -10.0, "float32")]


def scored_share(pipeline: int) -> tuple[np.ndarray, np.ndarray]:
    """Input pipeline ``pipeline``'s images and targets for the ``scored`` run, one epoch of
    ``STEPS_PER_EPOCH`` batches of ``PER_REPLICA_BATCH`` (one replica per worker): phantoms
    seeded by the pipeline, whose targets are empty on every odd pipeline, so the workers'
    own scores are far apart (their mean is not the global batch's score)."""
    images, masks = phantom(STEPS_PER_EPOCH * PER_REPLICA_BATCH, seed=10 + pipeline)
    return images, masks * float(pipeline % 2 == 0)


def train_scored(strategy, work_dir: Path):
    def dataset_fn(context, epoch):
        images, masks = scored_share(context.input_pipeline_id)
        return tf.data.Dataset.from_tensor_slices((images, masks)).batch(PER_REPLICA_BATCH)

    return fit_distributed(
        strategy,
        build_plain,
        keras.losses.BinaryCrossentropy,
        lambda: keras.optimizers.SGD(0.0),
        dataset_fn,
        epochs=1,
        steps_per_epoch=STEPS_PER_EPOCH,
        work_dir=work_dir,
        init_weights=thresholding_weights(),
        build_metrics=training_scores,
    )


def reference_fit(work_dir: Path, global_batch: int) -> list[np.ndarray]:
    """The ``plain`` model trained in this process (default strategy) on batches of G."""
    model, _ = train_plain(tf.distribute.get_strategy(), work_dir, EPOCHS, global_batch)
    return model.get_weights()


def save_result(path: Path, strategy, model: keras.Model, history: list[dict], resumed) -> None:
    weights = model.get_weights()
    logged = [key for key in ("dsc", "ji") if key in history[0]]
    scores = {key: np.array([h[key] for h in history]) for key in logged}
    np.savez(
        path,
        **scores,
        losses=np.array([h["loss"] for h in history]),
        resumed_epochs=np.array([h["epoch"] for h in resumed], dtype="int64"),
        is_chief=is_chief(strategy),
        num_weights=len(weights),
        **{f"w{i}": w for i, w in enumerate(weights)},
    )


def try_keras_fit(strategy) -> str:
    """Plain compile / fit under ``strategy``: ``"ok"`` or ``"failed: <type>: <message>"``."""
    with strategy.scope():
        model = build_plain()
        model.compile(optimizer="sgd", loss="binary_crossentropy")
    images, masks = phantom(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).repeat().batch(4)
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    except Exception as error:  # reported, whatever it is
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"failed: {type(error).__name__}: {first_line}"
    return "ok"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: multiworker_worker.py OUT_DIR (with TF_CONFIG set)", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    global_batch = PER_REPLICA_BATCH * strategy.num_replicas_in_sync
    name = worker_id(strategy)

    model, history = train_slice_cnn(strategy, out_dir / "slice_cnn", EPOCHS, global_batch)
    save_result(out_dir / "slice_cnn" / f"{name}.npz", strategy, model, history, [])

    _, first = train_plain(strategy, out_dir / "plain", EPOCHS - 1, global_batch)
    model, resumed = train_plain(strategy, out_dir / "plain", EPOCHS, global_batch)
    save_result(out_dir / "plain" / f"{name}.npz", strategy, model, first + resumed, resumed)

    chief = is_chief(strategy)
    model, history = train_plain(
        strategy,
        out_dir / "stopped",
        EPOCHS,
        global_batch,
        on_epoch_end=lambda epoch, logs, model: chief and epoch == 0,
    )
    save_result(out_dir / "stopped" / f"{name}.npz", strategy, model, history, [])

    model, history = train_scored(strategy, out_dir / "scored")
    save_result(out_dir / "scored" / f"{name}.npz", strategy, model, history, [])

    print(KERAS_FIT_MARKER, try_keras_fit(strategy), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
