"""Two-stage training: the `SliceCNN` alone on slices, then the whole `ContextualSegmenter`.

Stage 1 trains the CNN from scratch on single slices with deep supervision. Stage 2 builds the
contextual model, assigns the best stage-1 weights to its nested CNN (`transfer_stage1_weights`)
and fine-tunes the whole end to end on windows of consecutive slices (optionally with the CNN
frozen for the first epochs). Both stages use ``model.fit`` with the same callbacks:
whole-volume validation (``val_dsc``), the best model, ``RUN/log.csv``, TensorBoard, early
stopping and ``keras.callbacks.BackupAndRestore``, so that rerunning the same command after a
kill resumes from the last finished epoch and stage. With ``deterministic=True`` a resumed run
ends with the same weights, log and state as an uninterrupted one: each phase's random state
comes from ``(seed, phase)`` (`phase_seed`), the data and dropout from ``(seed, epoch)``, and
early stopping replays its record (tests/training/test_resume_determinism.py).

The run folder (stable; tools read it):

- ``config.yaml``: the resolved config, with the package version and the data index's hash;
- ``splits.json``: training and validation case ids (seeded, by case; with
  ``train.validation_fraction: 0`` the validation cases are the training cases and
  ``validation_on_training`` is true);
- ``log.csv``: one row per finished epoch (``stage, epoch, loss, dsc, ji, val_dsc,
  learning_rate, seconds``); ``stage`` is 1 or 2; ``dsc`` / ``ji`` score the epoch's training
  batches (`recipe.training_scores`), ``learning_rate`` is the schedule's at the epoch's end
  (`recipe.current_learning_rate`), the same in a ``--strategy multiworker`` run;
- ``tensorboard/stage1``, ``tensorboard/stage2``;
- ``stage1.keras``: the best stage-1 CNN; ``stage2.keras``: the best contextual model;
  ``model.keras``: the model the run ships, a copy of ``stage2.keras`` only when it beats
  stage 1 on the validation cases, else of ``stage1.keras`` (`ship_best_model`);
- ``state.json``: best validation scores, finished stages and ``shipped`` (``"stage1"`` or
  ``"stage2"``); ``backup/``: resume state.

Test-only: with ``PANCSEG_TEST_KILL_AFTER_BATCHES=N`` in the environment the process sends
itself SIGKILL when it is about to run its ``N + 1``-th training batch (counted over all stages
and phases of the process), so that tests can kill a run at an exact point and resume it. Never
set it otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from pancseg_tf._version import __version__
from pancseg_tf.atomic import replacing, write_text
from pancseg_tf.config import Config, config_from_dict, save_config
from pancseg_tf.errors import PancsegError
from pancseg_tf.training.callbacks import (
    STAGE2_FILE,
    BestModel,
    RunLog,
    WholeVolumeValidation,
    early_stopped,
    mark_state,
    read_json,
    resumable_early_stopping,
    ship_best_model,
)
from pancseg_tf.training.recipe import (
    SCORED_OUTPUT,
    TrainResult,
    build_contextual,
    build_slice_cnn,
    freeze_for_stage2,
    make_optimizer,
    phase_seed,
    restart_seed_generators,
    side_loss_weights,
    stage2_learning_rate,
    stage_losses,
    training_scores,
    training_size,
)

log = logging.getLogger("pancseg_tf.training")

STRATEGIES = ("auto", "none", "mirrored", "multiworker")


# === Pieces ===


def split_cases(case_ids: list[str], fraction: float, seed: int) -> dict[str, Any]:
    """Seeded split by case: at least one validation case and one training case, or, with
    ``fraction`` 0, no held-out case (validation on the training cases themselves).

    Raises:
        PancsegError: fewer than two cases (one, with ``fraction`` 0: none).
    """
    import numpy as np

    ids = sorted(case_ids)
    if fraction == 0:
        if not ids:
            raise PancsegError("training needs at least 1 prepared case, found 0")
        log.warning(
            "train.validation_fraction is 0: no case is held out; checkpoints and the shipped "
            "model are chosen on the %d training case(s) themselves",
            len(ids),
        )
        return {"seed": seed, "train": ids, "validation": ids, "validation_on_training": True}
    if len(ids) < 2:
        raise PancsegError(
            f"training needs at least 2 prepared cases, found {len(ids)} (or "
            "train.validation_fraction=0 to validate on the training cases)"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    validation = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return {"seed": seed, "train": train, "validation": validation}


def configure_devices(strategy: str) -> None:
    """Before TensorFlow starts: split the CPU into ``PANCSEG_CPU_DEVICES`` logical devices.

    Lets ``--strategy mirrored`` run (and be tested) on a machine without GPUs.
    """
    count = int(os.environ.get("PANCSEG_CPU_DEVICES", "0") or 0)
    if count < 2:
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def make_strategy(name: str):
    """A ``tf.distribute`` strategy by name (``auto``: mirrored over several GPUs, else none)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise PancsegError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multiworker"
        else:
            name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"
    if name == "none":
        return tf.distribute.get_strategy(), name
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices), name
    if not os.environ.get("TF_CONFIG"):
        raise PancsegError("--strategy multiworker needs TF_CONFIG (see the README)")
    return tf.distribute.MultiWorkerMirroredStrategy(), name


def data_index_hash(data_dir: pathlib.Path) -> str:
    return hashlib.sha256((data_dir / "index.json").read_bytes()).hexdigest()[:16]


# === The run ===


class Trainer:
    """Runs both stages into a run folder; rerunning the same call resumes.

    Args:
        data_dir: a folder written by ``pancseg prepare``.
        run_dir: the run folder (created; reused to resume).
        config: the resolved config (its ``preprocess`` must match the data's).
        seed: seeds the split, the weights and the data order.
        deterministic: fixed data order and deterministic TensorFlow ops (slower).
        strategy: ``auto``, ``none``, ``mirrored`` or ``multiworker``.
        progress: progress bars (else one line per epoch).
        cases: train and validate on these prepared cases only (a cross-validation fold's
            training folds); default every case of ``data_dir``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        run_dir: str | os.PathLike,
        config: Config,
        *,
        seed: int = 0,
        deterministic: bool = False,
        strategy: str = "auto",
        progress: bool = True,
        cases: Sequence[str] | None = None,
    ):
        self.data_dir = pathlib.Path(data_dir)
        self.cases = None if cases is None else sorted(cases)
        self.run_dir = pathlib.Path(run_dir)
        self.config = config
        self.seed = seed
        self.deterministic = deterministic
        self.strategy_name = strategy
        self.progress = progress
        self._batches_run = 0  # for PANCSEG_TEST_KILL_AFTER_BATCHES
        if strategy not in STRATEGIES:
            raise PancsegError(
                f"--strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}"
            )
        if not (self.data_dir / "index.json").is_file():
            raise PancsegError(f"{self.data_dir} holds no prepared data (no index.json)")

    # --- set-up ---

    def _check_data(self) -> dict:
        from pancseg_tf.data.prepare import load_index

        index = load_index(self.data_dir)
        prepared = index.get("preprocess", {})
        mine = self.config.to_dict()["preprocess"]
        for key, value in mine.items():
            if key in prepared and prepared[key] != value:
                raise PancsegError(
                    f"config key preprocess.{key} is {value!r} but {self.data_dir} was prepared "
                    f"with {prepared[key]!r}; use the same preprocessing or prepare again"
                )
        if index["preprocess_hash"] != self.config.hash("preprocess"):
            raise PancsegError(
                f"the preprocessing config differs from the one {self.data_dir} was prepared with"
            )
        return index

    def _prepare_run_dir(self, index: dict, chief: bool) -> dict[str, list[str]]:
        run = self.run_dir
        config_path = run / "config.yaml"
        if config_path.is_file():
            import yaml

            previous = config_from_dict(yaml.safe_load(config_path.read_text()))
            if previous != self.config:
                mine, theirs = self.config.to_dict(), previous.to_dict()
                diff = [
                    f"{s}.{k}"
                    for s in mine
                    for k in mine[s]
                    if mine[s][k] != theirs.get(s, {}).get(k)
                ]
                raise PancsegError(
                    f"{run} was started with another config (differs in {', '.join(diff)}); "
                    "use a new run folder or the same config"
                )
        splits_path = run / "splits.json"
        if splits_path.is_file():
            splits = json.loads(splits_path.read_text())
        else:
            case_ids = [c["case_id"] for c in index["cases"]]
            if self.cases is not None:
                unknown = sorted(set(self.cases) - set(case_ids))
                if unknown:
                    raise PancsegError(
                        f"cases {', '.join(unknown[:5])} are not in {self.data_dir}'s index"
                    )
                case_ids = self.cases
            splits = split_cases(case_ids, self.config.train.validation_fraction, self.seed)
        if chief:
            run.mkdir(parents=True, exist_ok=True)
            save_config(
                self.config,
                config_path,
                extra={
                    "package": "pancseg_tf",
                    "package_version": __version__,
                    "data_index_hash": data_index_hash(self.data_dir),
                    "seed": self.seed,
                },
            )
            write_text(splits_path, json.dumps(splits, indent=2))
        return splits

    # --- one stage ---

    def _fit_stage(
        self,
        *,
        stage: int,
        phase: str,
        model,
        loss,
        loss_weights,
        learning_rate: float,
        epochs: int,
        first_epoch: int,
        splits: dict,
        validation: WholeVolumeValidation,
        best_path: pathlib.Path,
        strategy,
        chief: bool,
    ) -> None:
        """One phase of training: compile, fit with the run's callbacks, resumable; the phase
        is ``stage{stage}`` in ``log.csv``, ``state.json`` and TensorBoard."""
        import keras

        from pancseg_tf.data.pipeline import make_training_dataset

        cfg = self.config
        log_stage = stage
        backup_dir = self.run_dir / "backup" / phase
        meta = read_json(backup_dir / "training_metadata.json", {})
        initial_epoch = max(first_epoch, int(meta.get("epoch", first_epoch)))
        stopping_path = backup_dir / "early_stopping.json"
        if initial_epoch >= epochs or early_stopped(stopping_path, initial_epoch):
            log.info("stage %s (%s): already finished", log_stage, phase)
            return
        keras.utils.set_random_seed(phase_seed(self.seed, phase))
        with strategy.scope():
            model.compile(
                optimizer=make_optimizer(
                    learning_rate, cfg, epochs - first_epoch, cfg.train.warmup_epochs
                ),
                loss=loss,
                loss_weights=loss_weights,
                jit_compile=cfg.train.jit_compile,
            )
            _report_training_scores(model)
        steps = cfg.train.steps_per_epoch
        targets = _target_fn(model, stage)

        train_ids = splits["train"]

        def one_epoch(epoch: int):
            return (
                make_training_dataset(
                    self.data_dir,
                    cfg,
                    stage=stage,
                    seed=self.seed,
                    epoch=epoch,
                    deterministic=self.deterministic,
                    cases=train_ids,
                )
                .repeat()
                .take(steps)
            )

        dataset = one_epoch(initial_epoch)
        for epoch in range(initial_epoch + 1, epochs):
            dataset = dataset.concatenate(one_epoch(epoch))
        dataset = dataset.map(targets)
        best = BestModel(
            best_path,
            self.run_dir / "state.json",
            f"stage{log_stage}",
            enabled=chief,
            validation=validation,
        )
        callbacks = [
            _restart_seed_generators(model),
            validation,
            RunLog(self.run_dir / "log.csv", log_stage, initial_epoch, enabled=chief),
            best,
            keras.callbacks.TensorBoard(
                log_dir=str(self.run_dir / "tensorboard" / f"stage{log_stage}"),
                write_graph=False,
                profile_batch=0,
            ),
        ]
        if cfg.train.early_stopping_patience > 0:
            callbacks.append(
                resumable_early_stopping(
                    cfg.train.early_stopping_patience, stopping_path, initial_epoch
                )
            )
        callbacks.append(atomic_backup_and_restore(backup_dir))
        plane = tuple(int(v) for v in cfg.preprocess.size)
        size = getattr(model, "input_size", None)
        if size is not None and tuple(size) != plane:
            # Stage 2 on crops: validated and saved at the plane size, as predict runs it.
            callbacks.insert(1, _at_plane_size(model, plane, [validation, best]))
        kill_after = os.environ.get("PANCSEG_TEST_KILL_AFTER_BATCHES")
        if kill_after:
            callbacks.insert(0, _kill_after_batches(self, int(kill_after)))
        log.info(
            "stage %s (%s): epochs %d..%d, %d steps each",
            log_stage,
            phase,
            initial_epoch,
            epochs - 1,
            steps,
        )
        model.fit(
            dataset,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled, seeded by (seed, epoch)
            verbose=1 if self.progress and sys.stdout.isatty() else 2,
        )

    # --- both stages ---

    def run(self, stage: str = "both") -> TrainResult:
        """Trains ``stage`` (``"1"``, ``"2"`` or ``"both"``); returns the run's summary."""
        if stage not in ("1", "2", "both"):
            raise PancsegError(f"--stage must be 1, 2 or both; got {stage!r}")
        self.config.validate()
        if self.strategy_name == "multiworker" and self.config.data.crop_size and stage != "1":
            # The multi-worker step has no plane-size copy of the contextual model for
            # validation and checkpoints (`_at_plane_size`): refused rather than half-done.
            raise PancsegError(
                "stage 2 with data.crop_size is not supported with --strategy multiworker; "
                "train stage 2 without data.crop_size, or on one machine (--strategy mirrored)"
            )
        index = self._check_data()
        configure_devices(self.strategy_name)
        import keras
        import tensorflow as tf

        from pancseg_tf.inference import load_model
        from pancseg_tf.models import transfer_stage1_weights

        strategy, name = make_strategy(self.strategy_name)
        if name == "multiworker":
            from pancseg_tf.training.distributed import run_multiworker

            with precision_policy(self.config.train.precision):
                return run_multiworker(self, strategy, stage, index)
        splits = self._prepare_run_dir(index, chief=True)
        keras.utils.set_random_seed(self.seed)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        with precision_policy(self.config.train.precision):
            cfg = self.config
            validation = WholeVolumeValidation(
                self.data_dir,
                splits["validation"][: cfg.train.validation_cases],
                threshold=cfg.postprocess.threshold,
                largest_component=cfg.postprocess.largest_component,
            )
            state_path = self.run_dir / "state.json"
            stage1_path = self.run_dir / "stage1.keras"
            if stage in ("1", "both"):
                self._train_cnn(
                    "stage1",
                    stage1_path,
                    epochs=cfg.train.stage1_epochs,
                    splits=splits,
                    validation=validation,
                    strategy=strategy,
                )
            if stage in ("2", "both") and not read_json(state_path, {}).get("stage2_done"):
                if not stage1_path.is_file():
                    raise PancsegError(
                        f"stage 2 needs the stage-1 model {stage1_path}: run --stage 1 first"
                    )
                # Seeded here, not by what ran before: a resumed run starts at stage 2.
                keras.utils.set_random_seed(phase_seed(self.seed, "stage2_model"))
                stage1 = load_model(stage1_path)
                with strategy.scope():
                    model = build_contextual(cfg)
                    model(tf.zeros((1, cfg.data.window, *training_size(cfg), 1)))
                transfer_stage1_weights(stage1, model)
                del stage1
                self._resume_stage2_weights(model)
                freeze = min(cfg.train.freeze_cnn_epochs, cfg.train.stage2_epochs)
                phases = [("stage2_frozen", 0, freeze), ("stage2", freeze, cfg.train.stage2_epochs)]
                for phase, first, last in phases:
                    if last <= first:
                        continue
                    freeze_for_stage2(model, frozen=phase == "stage2_frozen")
                    self._fit_stage(
                        stage=2,
                        phase=phase,
                        model=model,
                        loss=stage_losses(cfg, ["prob"], stage=2),
                        loss_weights=None,
                        learning_rate=stage2_learning_rate(cfg, phase),
                        epochs=last,
                        first_epoch=first,
                        splits=splits,
                        validation=validation,
                        best_path=self.run_dir / STAGE2_FILE,
                        strategy=strategy,
                        chief=True,
                    )
                model.freeze_cnn(False)
                mark_state(state_path, "stage2_done")
            state = read_json(state_path, {})
            if state.get("stage1_done") and (
                state.get("stage2_done") or cfg.train.stage2_epochs == 0
            ):
                ship_best_model(self.run_dir)
        state = read_json(self.run_dir / "state.json", {})
        best = {k: v for k, v in state.items() if k in ("stage1", "stage2")}
        return TrainResult(self.run_dir, splits, best)

    def _train_cnn(
        self,
        phase: str,
        best_path: pathlib.Path,
        *,
        epochs: int,
        splits: dict,
        validation,
        strategy,
    ) -> None:
        """Trains a new `SliceCNN` on single slices into ``best_path``, unless ``state.json``
        marks ``{phase}_done``; seeded by ``phase``."""
        import keras

        cfg = self.config
        state_path = self.run_dir / "state.json"
        if read_json(state_path, {}).get(f"{phase}_done"):
            return
        keras.utils.set_random_seed(phase_seed(self.seed, f"{phase}_model"))
        with strategy.scope():
            cnn = build_slice_cnn(cfg)
        self._fit_stage(
            stage=1,
            phase=phase,
            model=cnn,
            loss=stage_losses(cfg, cnn.loss_keys, stage=1),
            loss_weights=side_loss_weights(cnn.loss_keys, cfg.train.side_output_weights),
            learning_rate=cfg.train.learning_rate,
            epochs=epochs,
            first_epoch=0,
            splits=splits,
            validation=validation,
            best_path=best_path,
            strategy=strategy,
            chief=True,
        )
        mark_state(state_path, f"{phase}_done")

    def _resume_stage2_weights(self, model) -> None:
        """After a kill in the unfrozen phase, `BackupAndRestore` restores it; after a kill at
        the phase boundary, the frozen phase's backup carries the weights over."""
        frozen = self.run_dir / "backup" / "stage2_frozen" / "latest.weights.h5"
        unfrozen = self.run_dir / "backup" / "stage2" / "latest.weights.h5"
        if frozen.is_file() and not unfrozen.is_file():
            model.load_weights(str(frozen), skip_mismatch=True)


def _pooled_result(score):
    """``score``'s result over every replica's counts together.

    Under several replicas (``--strategy mirrored``) each replica holds the counts of its own
    share of the batches, and ``fit`` logs the mean of the replicas' values: the mean of their
    scores is not the score of the global batches (a replica with no pancreas would weigh as
    much as one with all of it). Summing the counts first (`pancseg_tf.replicas`, as the losses
    sum theirs) gives what one replica seeing every batch computes; on one replica it is
    ``score.result()``.
    """
    import keras

    from pancseg_tf.replicas import sum_over_replicas

    counts = [keras.ops.convert_to_tensor(count) for count in score.counts()]
    return score.score_of(sum_over_replicas(counts))


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``precision`` (``train.precision``) for the block, as
    both ways of training build their models under it; the caller's policy is restored after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _report_training_scores(model) -> None:
    """Streaming DSC and JI of the main output over the epoch's training batches
    (`recipe.training_scores`), in ``fit``'s progress bar, its logs and ``log.csv``.

    Keras compiles metrics only for models whose every output has a target; ours also return
    side outputs and features that no loss reads, so the two scores are updated here from the
    `SCORED_OUTPUT` (``prob``) target and prediction, beside the compiled losses, and reset with
    them at each epoch. Created in the strategy's scope (the caller's), held by this closure
    only: they are not saved with the model.
    """
    scores = training_scores()
    compiled_metrics, compiled_reset = model.compute_metrics, model.reset_metrics

    def compute_metrics(x, y, y_pred, sample_weight=None):
        for score in scores:
            score.update_state(y[SCORED_OUTPUT], y_pred[SCORED_OUTPUT])
        results = compiled_metrics(x, y, y_pred, sample_weight)
        results.update({score.name: _pooled_result(score) for score in scores})
        return results

    def reset_metrics():
        compiled_reset()
        for score in scores:
            score.reset_state()

    model.compute_metrics = compute_metrics
    model.reset_metrics = reset_metrics


def _restart_seed_generators(model):
    """A callback that restarts the model's random streams at each epoch's start
    (`restart_seed_generators`), so a resumed run draws the uninterrupted run's dropout."""
    import keras

    def begin(epoch, logs=None):
        restart_seed_generators(model, epoch)

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin)


def _at_plane_size(model, size: tuple[int, int], callbacks: list):
    """Hands ``callbacks`` (validation, best model) at each epoch's end a copy of ``model``
    built for slices of ``size`` with its current weights: a `ContextualSegmenter` trained on
    ``data.crop_size`` crops is validated and saved at the prepared plane's size (ConvLSTM2D is
    built for one size; no weight depends on it). Goes before those callbacks."""
    import keras

    view = model.with_input_size(size)

    def end(epoch, logs=None):
        view.set_weights(model.get_weights())
        for callback in callbacks:
            callback.set_model(view)

    return keras.callbacks.LambdaCallback(on_epoch_end=end)


def atomic_backup_and_restore(backup_dir: pathlib.Path):
    """``keras.callbacks.BackupAndRestore`` (weights, optimizer state, epoch) saved atomically.

    Keras writes ``latest.weights.h5`` and ``training_metadata.json`` in place: a kill during
    the epoch-end save leaves a truncated file that every rerun fails to load. Here each is
    written under a temporary name and renamed into place (weights first), so a kill leaves
    the previous epoch's backup whole; loading is Keras' own. Kept: ``delete_checkpoint=False``
    (the stage-2 phases read the frozen phase's backup).

    Args:
        backup_dir: ``RUN/backup/<phase>``.

    Returns:
        The callback.
    """
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch, logs=None):
            backup_dir.mkdir(parents=True, exist_ok=True)
            weights = backup_dir / "latest.weights.h5"
            with replacing(weights, keep_suffix=".weights.h5") as tmp:
                self.model.save_weights(str(tmp), overwrite=True)
            meta = {"epoch": epoch + 1, "batch": 0}
            write_text(backup_dir / "training_metadata.json", json.dumps(meta))

    return AtomicBackupAndRestore(str(backup_dir), delete_checkpoint=False)


def _kill_after_batches(trainer: Trainer, count: int):
    """Test-only (``PANCSEG_TEST_KILL_AFTER_BATCHES``): SIGKILL before batch ``count + 1``."""
    import keras

    def begin(batch, logs=None):
        if trainer._batches_run >= count:
            os.kill(os.getpid(), signal.SIGKILL)

    def end(batch, logs=None):
        trainer._batches_run += 1

    return keras.callbacks.LambdaCallback(on_train_batch_begin=begin, on_train_batch_end=end)


def _target_fn(model, stage: int):
    """Maps a batch ``(image, mask)`` to the model's targets (a dict per loss output)."""
    if stage == 1:

        def stage1(image, mask):
            return image, model.targets(mask)

        return stage1

    def stage2(image, mask):
        return image, {"prob": mask}

    return stage2


def train(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: Config,
    *,
    stage: str = "both",
    **kwargs: Any,
) -> TrainResult:
    """Functional entry point: ``Trainer(data_dir, run_dir, config, **kwargs).run(stage)``."""
    return Trainer(data_dir, run_dir, config, **kwargs).run(stage)
