"""Data-parallel training on several workers: a `tf.distribute` loop for Keras 3 models.

Why not `model.fit`: under `tf.distribute.MultiWorkerMirroredStrategy`, Keras 3's `fit` fails
on the TensorFlow versions we support with ``ValueError: Attempt to convert a value
(PerReplica:{...}) with an unsupported type ... to a Tensor`` (keras-team/keras#20585,
tensorflow/tensorflow#72388). `fit_distributed` is the workaround: the same Keras model, losses,
optimizer and `tf.data` input, driven by TensorFlow's own distribution machinery
(`strategy.distribute_datasets_from_function`, `strategy.run`, `strategy.reduce`) instead of
`fit`. It also runs under the default strategy and `MirroredStrategy`, which is how it is
tested in one process. ``tests/training/test_multiworker.py`` keeps checking that `fit` still
fails, so the day it works this module can go.

How a step keeps the gradients of one big batch:

- Each replica gets a batch of the per-replica size and computes its loss with the Keras loss
  objects. Under a `tf.distribute` strategy, a Keras 3 loss with the default
  ``"sum_over_batch_size"`` (or ``"mean"``) reduction already divides its per-replica mean by
  ``num_replicas_in_sync`` (`keras.src.losses.loss.scale_loss_for_distribution`), and a
  ``"sum"`` reduction needs no scaling, so the losses are used as they come. The layers'
  regularisation losses (`model.losses`) are not scaled by Keras outside `fit`; they are divided
  by ``num_replicas_in_sync`` here.
- `optimizer.apply` inside the replica context all-reduces (sums) the gradients over every
  replica of every worker (`_all_reduce_sum_gradients` in Keras' TensorFlow optimizer) and then
  updates the mirrored variables with the same summed gradient everywhere, so the weights stay
  identical on all workers. The sum of the per-replica ``mean / num_replicas`` is the mean over
  the global batch.
- Losses that are not means over samples, such as `pancseg_tf.losses.JaccardLoss` with its
  batch sums, sum over the global batch themselves: they all-reduce their sums over the
  replicas before dividing (`pancseg_tf.replicas`), and with the scaling above the step is
  the one-device step on the global batch. Batch normalisation, by contrast, normalises with
  each replica's batch statistics. Its moving mean and variance, which each replica updates
  on its own, are averaged over all replicas after every epoch, so that every worker ends the
  epoch with the same model.

Metrics (``build_metrics``, e.g. the training DSC and JI) are Keras metrics built in the
strategy's scope and updated in the step, each replica with its own batch and the step's
predictions. Their state (the counts of `pancseg_tf.metrics.DiceScore`) stays on each replica
until the epoch's end; then one all-reduce sums it (averages a ``"mean"`` state) over every
replica of every worker, and the metric's own ``result`` of the sums is logged: the metric of
the epoch's global batches, as one device would compute it, not a mean of per-replica scores
(which differ when the replicas' batches do). The states are reset at each epoch's start and
are not in the checkpoint, so resuming starts the next epoch's metrics afresh, as ``fit`` does.
``logs["learning_rate"]`` is the optimizer's learning rate at the epoch's end (its schedule at
its step count, `pancseg_tf.training.recipe.current_learning_rate`).

Fault tolerance: after every epoch each worker saves the weights, the optimizer state and the
epoch number with `tf.train.CheckpointManager` (saving may run collective ops, so every worker
must take part); the chief writes ``work_dir/backup``, the other workers a temporary folder
``work_dir/backup/.worker-<type>-<index>`` that they delete at once. On start every worker
restores ``work_dir/backup`` when it holds a checkpoint and continues with the next epoch, so
rerunning the same command after a crash resumes the run. Every worker must therefore see the
same ``work_dir`` (a shared filesystem or a ``gs://`` bucket).

A resumed run is exact, as in one process: it ends with the uninterrupted run's weights. The
checkpoint holds the weights, the optimizer state (its step count drives the learning-rate
schedule) and the epoch; the data order is the caller's, a function of the epoch
(``dataset_fn``); and the random streams of dropout, whose Keras ``SeedGenerator`` counters the
checkpoint does not hold, restart on every worker at a function of the epoch
(`pancseg_tf.training.recipe.restart_seed_generators`), keeping that worker's own seed.
``on_epoch_end`` runs before the epoch's backup: a kill in between runs that epoch again rather
than losing its callback.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pancseg_tf.errors import PancsegError, check_positive_int
from pancseg_tf.training.recipe import current_learning_rate, restart_seed_generators

__all__ = [
    "BACKUP_DIR",
    "fit_distributed",
    "is_chief",
    "wait_for_workers",
    "worker_id",
]

#: Sub-folder of ``work_dir`` holding the chief's resume checkpoint.
BACKUP_DIR = "backup"

# Keras' scalar loss reductions; "none" gives one value per sample, which the step cannot use.
_SCALAR_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")

# Marks the assertion that a step's global batch is complete (see `replica_step`).
_EMPTY_BATCH = "pancseg_tf: a replica got an empty batch"

LossSpec = keras.losses.Loss | dict[str, keras.losses.Loss]
MetricSpec = list[keras.metrics.Metric] | dict[str, list[keras.metrics.Metric]]

# How a metric variable's replica copies combine (Keras' `aggregation`) and the all-reduce for it.
_METRIC_REDUCTIONS = {"sum": tf.distribute.ReduceOp.SUM, "mean": tf.distribute.ReduceOp.MEAN}


# === Cluster roles ===


def _task(strategy: tf.distribute.Strategy | None) -> tuple[str | None, int | None, dict]:
    """(task type, task index, cluster dict) of this process; (None, None, {}) on one machine.

    A strategy with a cluster resolver (`MultiWorkerMirroredStrategy`) answers for itself;
    without a strategy the ``TF_CONFIG`` environment variable does. Any other strategy runs in
    one process, which is then the chief.
    """
    if strategy is not None:
        resolver = strategy.cluster_resolver
        if resolver is None:
            return None, None, {}
        cluster = resolver.cluster_spec().as_dict()
        return resolver.task_type, resolver.task_id, cluster
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return None, None, {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise PancsegError(
            f"TF_CONFIG must be JSON like {{'cluster': {{'worker': [...]}}, 'task': {{'type': "
            f"'worker', 'index': 0}}}}; it does not parse: {error}"
        ) from None
    task = config.get("task") or {}
    index = task.get("index")
    return task.get("type"), None if index is None else int(index), config.get("cluster") or {}


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process is the chief, the one worker that writes the run's files.

    The chief is the task of type ``"chief"``, or worker 0 when the cluster has no chief; a
    process outside any cluster (no ``TF_CONFIG``, or a one-machine strategy) is the chief.

    Args:
        strategy: The strategy training runs under; ``None`` reads ``TF_CONFIG`` directly.

    Returns:
        True on the chief, False on every other worker (and on evaluators or parameter
        servers).

    Raises:
        PancsegError: ``TF_CONFIG`` is set but is not JSON (only when ``strategy`` is None).
    """
    task_type, task_index, cluster = _task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and not cluster.get("chief")


def worker_id(strategy: tf.distribute.Strategy | None = None) -> str:
    """A name for this process that is unique in the cluster, e.g. ``"worker-1"``.

    Args:
        strategy: As in `is_chief`.

    Returns:
        ``"<type>-<index>"``, or ``"chief"`` for a process outside any cluster.
    """
    task_type, task_index, _ = _task(strategy)
    if task_type is None:
        return "chief"
    return f"{task_type}-{task_index}"


# === Checks ===


def _check_losses(losses: Any, loss_weights: dict[str, float] | None) -> dict[str, float]:
    """Validates the loss spec and returns one weight per loss key (``{}`` for a single loss)."""
    if isinstance(losses, dict):
        if not losses:
            raise PancsegError("build_loss returned an empty dict; expected {output key: loss}")
        items = losses.items()
    else:
        items = [("loss", losses)]
    for key, loss in items:
        if not isinstance(loss, keras.losses.Loss):
            raise PancsegError(
                f"the loss for {key!r} must be a keras.losses.Loss instance (its reduction "
                f"scales it for distribution), got {type(loss).__name__}"
            )
        if loss.reduction not in _SCALAR_REDUCTIONS:
            raise PancsegError(
                f"the loss for {key!r} must reduce to one number, reduction one of "
                f"{_SCALAR_REDUCTIONS}; got reduction={loss.reduction!r}"
            )
    if not isinstance(losses, dict):
        if loss_weights:
            raise PancsegError(
                f"loss_weights are for a dict of losses (one per model output); build_loss "
                f"returned a single {type(losses).__name__}, with loss_weights={loss_weights!r}"
            )
        return {}
    loss_weights = dict(loss_weights or {})
    unknown = sorted(set(loss_weights) - set(losses))
    if unknown:
        raise PancsegError(
            f"loss_weights name outputs without a loss: {unknown}; the losses are for "
            f"{sorted(losses)}"
        )
    return {key: float(loss_weights.get(key, 1.0)) for key in losses}


def _pick(structure: Any, key: str, what: str, why: str = "build_loss has a loss") -> Any:
    if not isinstance(structure, dict) or key not in structure:
        found = sorted(structure) if isinstance(structure, dict) else type(structure).__name__
        raise PancsegError(
            f"{why} for output {key!r}, so the {what} must be a dict with that key; got {found}"
        )
    return structure[key]


def _check_metrics(metrics: Any, log_keys: list[str]) -> dict[str | None, list]:
    """Validates the metric spec: ``{output key or None (the single output): [metrics]}``."""
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        groups = {key: list(value) for key, value in metrics.items()}
    elif isinstance(metrics, (list, tuple)):
        groups = {None: list(metrics)}
    else:
        raise PancsegError(
            f"build_metrics must return a list of keras.metrics.Metric (single-output model) "
            f"or a dict {{output key: [metrics]}}; got {type(metrics).__name__}"
        )
    names = list(log_keys)
    for key, group in groups.items():
        for metric in group:
            if not isinstance(metric, keras.metrics.Metric):
                raise PancsegError(
                    f"the metrics for {key or 'the output'!r} must be keras.metrics.Metric "
                    f"instances (their state is summed over the replicas), got "
                    f"{type(metric).__name__}"
                )
            if metric.name in names:
                raise PancsegError(
                    f"metric name {metric.name!r} is taken (the logs hold {names}); give each "
                    f"metric its own name"
                )
            names.append(metric.name)
            for variable in metric.variables:
                if variable.aggregation not in _METRIC_REDUCTIONS:
                    raise PancsegError(
                        f"metric {metric.name!r}: its state {variable.name!r} has "
                        f"aggregation={variable.aggregation!r}; fit_distributed combines the "
                        f"replicas' states by {sorted(_METRIC_REDUCTIONS)} only"
                    )
    return groups


# === Checkpoints ===


def _latest_checkpoint(backup_dir: str) -> str | None:
    if not tf.io.gfile.isdir(backup_dir):
        return None
    return tf.train.latest_checkpoint(backup_dir)


def _save_backup(checkpoint: tf.train.Checkpoint, backup_dir: str, chief: bool, name: str) -> None:
    """Saves on every worker; only the chief's copy stays (see the module docstring)."""
    directory = backup_dir if chief else posixpath.join(backup_dir, f".worker-{name}")
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)
    manager.save(checkpoint_number=int(checkpoint.epoch.numpy()))
    if not chief:
        tf.io.gfile.rmtree(directory)


# === Training ===


def fit_distributed(
    strategy: tf.distribute.Strategy,
    build_model: Callable[[], keras.Model],
    build_loss: Callable[[], LossSpec],
    build_optimizer: Callable[[], keras.optimizers.Optimizer],
    dataset_fn: Callable[[tf.distribute.InputContext, int], tf.data.Dataset],
    *,
    epochs: int,
    steps_per_epoch: int,
    work_dir: str | os.PathLike,
    initial_epoch: int = 0,
    loss_weights: dict[str, float] | None = None,
    on_epoch_end: Callable[[int, dict, keras.Model], None] | None = None,
    init_weights: list[np.ndarray] | None = None,
    build_metrics: Callable[[], MetricSpec] | None = None,
) -> tuple[keras.Model, list[dict]]:
    """Trains a Keras model data-parallel under a `tf.distribute` strategy, with resume.

    Every worker runs this same call. The model, losses and optimizer are built inside
    ``strategy.scope()``; each step runs forward and backward on every replica, all-reduces the
    gradients and applies them (see the module docstring for the scaling), so the weights stay
    identical on every worker. After each epoch the run is saved to ``work_dir/backup``; a call
    that finds a checkpoint there continues after its epoch (and ignores ``initial_epoch`` and
    ``init_weights``, which the checkpoint supersedes).

    Args:
        strategy: `tf.distribute.MultiWorkerMirroredStrategy` on a cluster, or any strategy
            (`tf.distribute.get_strategy()`, `MirroredStrategy`) on one machine.
        build_model: Returns a built model (its variables exist, as for a functional model).
            Its output is a tensor, or a dict of tensors such as `SliceCNN`'s.
        build_loss: Returns a `keras.losses.Loss` for a single-output model, or a dict
            ``{output key: Loss}``; only those outputs take a loss (e.g. ``"prob"`` and the
            ``"side_l"`` of `SliceCNN`, not ``"logit"`` or ``"features"``). Losses must reduce
            to a scalar (``"sum_over_batch_size"``, ``"mean"`` or ``"sum"``).
        build_optimizer: Returns a Keras optimizer; ``LossScaleOptimizer`` works too.
        dataset_fn: ``(input_context, epoch) -> tf.data.Dataset`` of ``(x, y)`` batches of the
            per-replica batch size (`input_context.get_per_replica_batch_size`), ``x`` of
            shape `(B, ...)` and ``y`` a tensor or a dict with a target per loss key. It must
            yield at least ``steps_per_epoch`` batches and should shard by
            ``input_context.input_pipeline_id``; it is called afresh for each epoch, so a
            resumed run sees the same data as an uninterrupted one when the order depends only
            on ``epoch``.
        epochs: Index of the last epoch + 1 (as in `keras.Model.fit`), >= 1.
        steps_per_epoch: Steps (global batches) per epoch, >= 1.
        work_dir: The run folder (local path or ``gs://`` URL) that every worker sees; the
            backup goes to ``work_dir/backup``.
        initial_epoch: Epoch to start at when no backup exists.
        loss_weights: Weight per loss key (missing keys weigh 1); only with a dict of losses.
        on_epoch_end: Called on every worker after each epoch, before its backup, as
            ``on_epoch_end(epoch, logs, model)``; use `is_chief` to write files on the chief
            only. A kill after it and before the backup runs the epoch again, so it must
            accept an epoch a second time (as `RunLog` and `BestModel` do). ``logs`` holds
            ``"loss"`` (the mean global-batch loss of the epoch, including regularisation),
            with a dict of losses ``"<key>_loss"`` (unweighted), each metric of
            ``build_metrics`` under its name (over the epoch's global batches), and
            ``"learning_rate"`` (the optimizer's at the epoch's end, the rate of its next
            step; the same on every worker). Returning True on any
            worker (early stopping, decided on the chief) ends training after this epoch's
            backup on every worker: the workers agree through one all-reduce per epoch.
        init_weights: Weights to load into the new model (``model.get_weights()`` order),
            e.g. those of an earlier training stage; the same on every worker.
        build_metrics: Returns new Keras metrics: a list for a single-output model, or a dict
            ``{output key: [metrics]}`` scoring those outputs only (e.g.
            ``{"prob": recipe.training_scores()}`` for `SliceCNN`, not its side outputs).
            Each step updates them with its targets and predictions; at the epoch's end their
            state is combined over every replica (see the module docstring) and
            ``metric.result()`` goes into ``logs`` under ``metric.name``. Reset each epoch.

    Returns:
        ``(model, history)``: the trained model (its variables belong to ``strategy``) and one
        ``logs`` dict per epoch run by this call, each with its ``"epoch"``.

    Raises:
        PancsegError: bad counts, an unbuilt model, losses or metrics that do not match the
            model's outputs or targets, metric names that repeat a log key, a dataset with
            fewer than ``steps_per_epoch`` batches, or workers that disagree on the epoch to
            start at (they do not see the same ``work_dir``).
    """
    epochs = check_positive_int("epochs", epochs, 1)
    steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch, 1)
    initial_epoch = check_positive_int("initial_epoch", initial_epoch, 0)
    if initial_epoch > epochs:
        raise PancsegError(f"initial_epoch must be <= epochs = {epochs}, got {initial_epoch}")
    backup_dir = posixpath.join(os.fspath(work_dir), BACKUP_DIR)
    chief = is_chief(strategy)
    name = worker_id(strategy)

    with strategy.scope():
        model = build_model()
        losses = build_loss()
        weights = _check_losses(losses, loss_weights)
        log_keys = ["loss", *(f"{k}_loss" for k in weights)]
        metrics = _check_metrics(
            None if build_metrics is None else build_metrics(), [*log_keys, "learning_rate"]
        )
        optimizer = build_optimizer()
        if not model.built:
            raise PancsegError(
                f"build_model must return a built model (variables created), got an unbuilt "
                f"{type(model).__name__}; build it on an input shape first"
            )
        if init_weights is not None:
            model.set_weights(init_weights)
        # Built here, not on the first step, so that the checkpoint below restores its slots.
        optimizer.build(model.trainable_variables)
    epoch_counter = tf.Variable(initial_epoch, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_counter)
    latest = _latest_checkpoint(backup_dir)
    if latest is not None:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError) as error:
            raise PancsegError(
                f"the backup {latest} does not fit this model and optimizer (was it written "
                f"by another configuration? delete {backup_dir} to start over): {error}"
            ) from None
    start = int(epoch_counter.numpy())
    _check_same_start(strategy, start)

    num_replicas = strategy.num_replicas_in_sync
    all_metrics = [metric for group in metrics.values() for metric in group]

    def update_metrics(y, y_pred) -> None:
        for key, group in metrics.items():
            if key is None:
                target, prediction = y, y_pred
            else:
                why = "build_metrics has metrics"
                prediction = _pick(y_pred, key, "model output", why)
                target = _pick(y, key, "targets y", why)
            for metric in group:
                metric.update_state(target, prediction)

    def loss_terms(y, y_pred) -> dict[str, tf.Tensor]:
        if not isinstance(losses, dict):
            if isinstance(y_pred, dict):
                raise PancsegError(
                    f"the model outputs a dict {sorted(y_pred)}; give build_loss a dict "
                    f"{{output key: loss}} for the outputs that take a loss"
                )
            return {"loss": losses(y, y_pred)}
        terms = {}
        for key, loss in losses.items():
            prediction = _pick(y_pred, key, "model output")
            terms[key] = loss(_pick(y, key, "targets y"), prediction)
        return terms

    def replica_step(x, y):
        # When the data runs out part-way through a global batch, `get_next_as_optional` still
        # has a value but some replicas get an empty batch, on which a step makes no sense (and
        # batch norm fails obscurely). Every replica sees the same all-reduced count, so all of
        # them stop here together rather than some waiting for the others in a collective.
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        empty = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.equal(batch_size, 0), tf.float32)
        )
        check = tf.debugging.assert_equal(empty, 0.0, message=_EMPTY_BATCH)
        with tf.control_dependencies([check]):
            x = tf.nest.map_structure(tf.identity, x)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            terms = loss_terms(y, y_pred)
            for key, value in terms.items():
                if value.shape.rank != 0:
                    raise PancsegError(
                        f"the loss for {key!r} must be a scalar, got shape {value.shape}"
                    )
            if weights:
                total = tf.add_n([weights[k] * tf.cast(v, "float32") for k, v in terms.items()])
            else:
                total = tf.cast(terms["loss"], "float32")
            if model.losses:
                # Keras scales the losses above for distribution but not these.
                regularisation = tf.add_n([tf.cast(v, "float32") for v in model.losses])
                total += regularisation / num_replicas
            scaled = optimizer.scale_loss(total)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        # The predictions of this step's forward pass (weights before the update), as fit has.
        update_metrics(y, y_pred)
        # One vector, so that logging costs one all-reduce per step: [loss, <key>_loss...].
        return tf.stack([total, *(tf.cast(terms[k], "float32") for k in weights)])

    def run_step(inputs):
        per_replica = strategy.run(replica_step, args=inputs)
        # The replicas' values are already divided by num_replicas_in_sync (see the module
        # docstring): their sum is the loss of the global batch.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # No autograph: the step has no Python control flow on tensors, and without it our own
    # errors (PancsegError while tracing) reach the caller as they are.
    @tf.function(autograph=False)
    def train_step(iterator):
        # get_next_as_optional agrees across workers on whether data is left, so a dataset
        # that ends early stops every worker at the same step instead of leaving the others
        # waiting in a collective.
        optional = iterator.get_next_as_optional()
        has_value = optional.has_value()
        logs = tf.cond(
            has_value,
            lambda: run_step(optional.get_value()),
            lambda: tf.zeros([len(log_keys)]),
        )
        return has_value, logs

    # Non-trainable statistics, such as batch norm's moving mean and variance, are updated by
    # each replica from its own batch and drift apart; averaging them over the replicas at the
    # end of each epoch makes every worker hold (and the chief save) the same model. For the
    # moving means the average is exactly the moving mean of the global batch means, since
    # the exponential average is linear.
    statistics = [v for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]

    def average_replica():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in statistics]
        )
        for variable, mean in zip(statistics, means):
            variable.assign(mean)

    @tf.function(autograph=False)
    def average_statistics():
        strategy.run(average_replica)

    # Metric state: each replica counts its own batches; at the epoch's end the states are
    # combined over every replica of every worker (one all-reduce per reduction) into each
    # replica's copy, whose `result` is then the metric of the global batches.
    metric_variables = [v for metric in all_metrics for v in metric.variables]

    def metric_results_replica():
        context = tf.distribute.get_replica_context()
        for aggregation, op in _METRIC_REDUCTIONS.items():
            chosen = [v for v in metric_variables if v.aggregation == aggregation]
            if not chosen:
                continue
            totals = context.all_reduce(op, [tf.identity(v.value) for v in chosen])
            for variable, total in zip(chosen, totals):
                variable.assign(total)
        return tf.stack([tf.cast(metric.result(), "float32") for metric in all_metrics])

    @tf.function(autograph=False)
    def metric_results():
        per_replica = strategy.run(metric_results_replica)
        return strategy.experimental_local_results(per_replica)[0]

    def reset_replica():
        for metric in all_metrics:
            metric.reset_state()

    @tf.function(autograph=False)
    def reset_metrics():
        strategy.run(reset_replica)

    history = []
    for epoch in range(start, epochs):
        restart_seed_generators(model, epoch)
        dataset = strategy.distribute_datasets_from_function(
            lambda context, epoch=epoch: dataset_fn(context, epoch)
        )
        iterator = iter(dataset)
        if all_metrics:
            reset_metrics()
        sums = tf.zeros([len(log_keys)])
        for step in range(steps_per_epoch):
            try:
                has_value, step_logs = train_step(iterator)
            except tf.errors.InvalidArgumentError as error:
                if _EMPTY_BATCH not in str(error):
                    raise
                has_value = False
            if not bool(has_value):
                raise PancsegError(
                    f"the data of epoch {epoch} ran out in step {step + 1} of "
                    f"steps_per_epoch = {steps_per_epoch}: dataset_fn must yield at least "
                    f"{steps_per_epoch} batches for each replica (repeat it, or lower "
                    f"steps_per_epoch)"
                ) from None
            sums += step_logs
        logs = dict(zip(log_keys, (sums / steps_per_epoch).numpy().tolist()))
        if all_metrics:
            names = [metric.name for metric in all_metrics]
            logs.update(zip(names, metric_results().numpy().tolist()))
        logs["learning_rate"] = current_learning_rate(optimizer)
        if statistics and num_replicas > 1:
            average_statistics()
        history.append({"epoch": epoch, **logs})
        stop = False
        if on_epoch_end is not None:
            # Whether any worker asks to stop (every worker makes the same call: one all-reduce).
            asked = bool(on_epoch_end(epoch, logs, model))
            stop = _all_reduce(strategy, tf.distribute.ReduceOp.SUM, [float(asked)])[0] > 0
        epoch_counter.assign(epoch + 1)
        _save_backup(checkpoint, backup_dir, chief, name)
        if stop:
            break
    return model, history


def _all_reduce(strategy: tf.distribute.Strategy, op, values: list[float]) -> np.ndarray:
    """``values`` reduced by ``op`` over every replica of every worker (each must call it)."""

    def reduce():
        value = tf.constant(values, tf.float32)
        return tf.distribute.get_replica_context().all_reduce(op, value)

    result = tf.function(lambda: strategy.run(reduce))()
    return strategy.experimental_local_results(result)[0].numpy()


def wait_for_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it: a barrier (one all-reduce of a number).

    E.g. before a worker reads a file that the chief writes after the previous step.

    Args:
        strategy: The strategy the workers train under (any strategy: one process returns at
            once).
    """
    _all_reduce(strategy, tf.distribute.ReduceOp.SUM, [1.0])


def _check_same_start(strategy: tf.distribute.Strategy, start: int) -> None:
    """Raises unless every replica of every worker is about to start at the same epoch.

    A worker that cannot see the chief's backup would start over while the others resume,
    and the collectives would then pair different steps: fail early and say why. The check
    all-reduces ``(start, start**2)``: their means equal ``(s, s**2)`` only when every value
    is ``s`` (zero variance). `ReduceOp` has no MIN or MAX.
    """
    mean, mean_square = _all_reduce(
        strategy, tf.distribute.ReduceOp.MEAN, [float(start), float(start * start)]
    )
    if mean != start or mean_square != start * start:
        raise PancsegError(
            f"the workers would start at different epochs (this one at {start}, the mean is "
            f"{mean:g}): every worker must see the same work_dir (a shared filesystem or a "
            f"gs:// bucket) and its backup"
        )
