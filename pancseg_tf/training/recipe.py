"""The training recipe, shared by the single-process `Trainer` and the multi-worker path.

What both ways of training build and compute the same way: the models of a config
(`build_slice_cnn`, `build_contextual`), the losses of a stage and their weights, the optimizer
and its schedule, stage 2's freezing and learning rate, the seeds of each phase and the
restart of the models' random streams at each epoch, and what a run returns (`TrainResult`).
`pancseg_tf.training.trainer` and `pancseg_tf.training.distributed` both import it; neither
imports the other's builders.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zlib

from pancseg_tf.config import Config


def build_slice_cnn(cfg: Config):
    """The stage-1 CNN of the config (input size = the preprocessing's plane size)."""
    from pancseg_tf.models import SliceCNN

    # Training on crops smaller than the prepared plane needs a size-agnostic network.
    size = tuple(cfg.preprocess.size) if cfg.data.crop_size is None else None
    return SliceCNN.from_preset(cfg.model.preset, input_size=size, **cfg.model.slice_cnn_kwargs())


def build_contextual(cfg: Config, slice_cnn=None):
    """The stage-2 model of the config around a `SliceCNN` (a new one if not given), for the
    slices it trains on: ``data.crop_size`` where set (ConvLSTM2D is built for one size; the
    model is validated and saved at the plane size, `ContextualSegmenter.with_input_size`),
    else the prepared plane's size."""
    from pancseg_tf.models import ContextualSegmenter

    cnn = slice_cnn if slice_cnn is not None else build_slice_cnn(cfg)
    # The recurrence learns windows of data.window slices: prediction runs it over chunks of as
    # many (ContextualSegmenter.context_window).
    return ContextualSegmenter.from_preset(
        cfg.model.preset,
        slice_cnn=cnn,
        input_size=training_size(cfg),
        context_window=cfg.data.window,
        **cfg.model.contextual_kwargs(),
    )


def training_size(cfg: Config) -> tuple[int, int]:
    """The in-plane size of training slices: ``data.crop_size``, else ``preprocess.size``."""
    size = cfg.data.crop_size if cfg.data.crop_size is not None else cfg.preprocess.size
    return (int(size[0]), int(size[1]))


def make_loss(name: str):
    """The loss named in ``train.loss`` (see `pancseg_tf.losses`)."""
    from pancseg_tf import losses

    return {
        "jaccard": lambda: losses.JaccardLoss(batch_sum=True),
        "jaccard_per_sample": lambda: losses.JaccardLoss(batch_sum=False),
        "dice": lambda: losses.DiceLoss(batch_sum=True),
        "bce": lambda: losses.WeightedBCELoss(pos_weight=1.0),
        "weighted_bce": lambda: losses.WeightedBCELoss(pos_weight=None),
        "jaccard_bce": lambda: losses.JaccardBCELoss(),
    }[name]()


def stage_losses(cfg: Config, keys: list[str], stage: int) -> dict:
    """One loss per output key: ``train.loss``; in stage 2 sharpened by
    ``train.stage2_loss_sharpness`` (see `pancseg_tf.losses.SharpenedLoss`)."""
    from pancseg_tf.losses import SharpenedLoss

    sharpness = float(cfg.train.stage2_loss_sharpness)
    losses = {}
    for key in keys:
        loss = make_loss(cfg.train.loss)
        losses[key] = SharpenedLoss(loss, sharpness) if stage == 2 and sharpness != 1.0 else loss
    return losses


#: The model output the training scores (``log.csv``'s ``dsc`` and ``ji``) are computed on: the
#: final probability of `SliceCNN` and of `ContextualSegmenter`; never stage 1's side outputs
#: (deep supervision at coarser scales) nor a contextual model's auxiliary ``cnn_prob``.
SCORED_OUTPUT = "prob"


def training_scores() -> list:
    """New streaming scores of the training batches, named as ``log.csv``'s columns.

    `pancseg_tf.metrics.DiceScore` (``dsc``) and `JaccardScore` (``ji``) at their default
    threshold 0.5, updated with the targets and predictions of `SCORED_OUTPUT` of each training
    batch (the forward pass of the step, dropout on) and reset at each epoch's start: at an
    epoch's end they score all the voxels of its batches together. Both ways of training use
    them (`trainer` beside ``fit``'s compiled losses, `multiworker.fit_distributed` in its
    step); build them inside the strategy's scope.
    """
    from pancseg_tf.metrics import DiceScore, JaccardScore

    return [DiceScore(name="dsc"), JaccardScore(name="ji")]


def current_learning_rate(optimizer) -> float | None:
    """The learning rate ``optimizer`` applies at its next step, as a float.

    For a schedule (`make_optimizer`'s) that is the schedule at the optimizer's step count
    (``optimizer.iterations``): read at an epoch's end, the rate of the next epoch's first step,
    which is what ``log.csv``'s ``learning_rate`` records for the epoch in both ways of
    training. ``None`` without an optimizer (a model that was never compiled).
    """
    import keras

    if optimizer is None:
        return None
    try:
        # A constant rate is a Keras variable (mirrored under a strategy), which neither float()
        # nor numpy reads cleanly: cast to a tensor first. A schedule's rate is one already.
        rate = keras.ops.cast(optimizer.learning_rate, "float32")
        return float(keras.ops.convert_to_numpy(rate))
    except (TypeError, ValueError):
        return None


def make_optimizer(learning_rate: float, cfg: Config, epochs: int, warmup_epochs: int):
    """AdamW with linear warm-up and cosine decay over the stage's steps."""
    import keras

    steps = max(1, epochs * cfg.train.steps_per_epoch)
    warmup = min(steps - 1, warmup_epochs * cfg.train.steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate * 0.1 if warmup else learning_rate,
        decay_steps=max(1, steps - warmup),
        alpha=0.05,
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=cfg.train.weight_decay, clipnorm=5.0
    )


@dataclasses.dataclass
class TrainResult:
    run_dir: pathlib.Path
    splits: dict[str, list[str]]
    best: dict[str, float]


def freeze_for_stage2(model, *, frozen: bool) -> None:
    """Stage 2: the whole CNN frozen, or its weights trainable with batch norm kept fixed.

    Fine-tuning keeps the CNN's batch normalisation in inference mode with its stage-1
    statistics: a stage-2 batch is a few windows of consecutive slices, whose statistics are
    correlated and unrepresentative (measured: with batch norm training on such batches the
    validation DSC fell from 0.71 to 0.45 in one epoch of the demo).
    """
    import keras

    model.freeze_cnn(frozen)
    if not frozen:
        for layer in model.slice_cnn.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def phase_seed(seed: int, phase: str) -> int:
    """The random seed a training phase (or a stage's model build) starts from.

    A function of the run's seed and the phase's name only, never of what the process ran
    before: a run resumed at stage 2 skips stage 1 and must still draw the same initial
    ConvLSTM weights, dropout seeds and shuffles as an uninterrupted one.

    Args:
        seed: the run's ``--seed``.
        phase: ``stage1_model``, ``stage1``, ``stage2_model``, ``stage2_frozen`` or ``stage2``.

    Returns:
        A seed in ``[0, 2**32)`` (NumPy's range); stage 1 (``stage1_model``, ``stage1``) gets
        ``seed`` itself, as before phases were seeded apart.
    """
    if phase in ("stage1_model", "stage1"):
        return seed
    return zlib.crc32(f"{seed}:{phase}".encode())


def stage2_learning_rate(cfg: Config, phase: str) -> float:
    """Peak learning rate of a stage-2 phase: the frozen-CNN phase trains new layers from
    scratch (``context_learning_rate``, default ``learning_rate``); the end-to-end phase
    fine-tunes (``stage2_learning_rate``)."""
    if phase == "stage2_frozen":
        return cfg.train.context_learning_rate or cfg.train.learning_rate
    return cfg.train.stage2_learning_rate


def side_loss_weights(keys: list[str], side: tuple[float, ...]) -> dict[str, float]:
    """Stage 1's loss weights: 1 for ``"prob"``, ``side[i]`` for the ``i``-th side output
    (finest first; the last weight repeats for deeper ones)."""
    weights = {}
    sides = [k for k in keys if k != "prob"]
    for i, key in enumerate(sides):
        weights[key] = float(side[i]) if i < len(side) else float(side[-1]) if side else 0.0
    weights["prob"] = 1.0
    return weights


def restart_seed_generators(model, epoch: int) -> None:
    """Sets the counter of each of the model's random streams (dropout) to ``epoch * 2**24``.

    A Keras ``SeedGenerator`` draws from ``[seed, counter]`` and counts up at each draw; no
    checkpoint (``BackupAndRestore``, the multi-worker backup) holds it, so a resumed run would
    start counting again from 0 and draw other dropout masks than an uninterrupted one.
    Restarting it at each epoch's start makes an epoch's draws the same however the epoch was
    reached (an epoch draws far fewer than 2**24 times). Each model (each worker's) keeps its
    own ``seed``.
    """
    import keras
    import numpy as np

    for state in model.variables:
        if state.name == "seed_generator_state":
            seed = int(keras.ops.convert_to_numpy(state)[0])
            state.assign(np.array([seed, epoch * 2**24], dtype=state.dtype))
