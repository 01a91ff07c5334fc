"""``pancseg train --strategy multiworker``: both stages through `fit_distributed`.

The same model builders, losses, optimizer, training scores (``log.csv``'s ``dsc`` and ``ji``:
`recipe.training_scores` on `recipe.SCORED_OUTPUT`), data pipeline, validation and run folder
as the single-machine `Trainer`, with `pancseg_tf.training.multiworker.fit_distributed` in
place of ``model.fit`` (which fails under ``MultiWorkerMirroredStrategy`` with Keras 3). Every
worker runs every step and saves the resume checkpoint (collectively: non-chief workers to
temporary folders); only the chief writes the run folder's files (config, splits, log, best
models).
Early stopping (``train.early_stopping_patience``) is the chief's decision on its validation,
shared with the other workers by `fit_distributed`, and resumable as in one process.

Test-only: with ``PANCSEG_TEST_KILL_AFTER_EPOCHS=N`` in the environment every worker sends
itself SIGKILL when it is about to start its ``N + 1``-th epoch (counted over all stages and
phases of the process), after the previous epoch's backup and before any collective of the
next one, so that tests can kill a whole cluster at an exact point and resume it. Never set it
otherwise.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import tempfile
from typing import Any

from pancseg_tf.training.callbacks import (
    STAGE2_FILE,
    BestModel,
    RunLog,
    WholeVolumeValidation,
    early_stopped,
    mark_state,
    read_json,
    resumable_early_stopping,
    save_model_atomic,
    ship_best_model,
)

log = logging.getLogger("pancseg_tf.training")


def run_multiworker(trainer, strategy, stage: str, index: dict) -> Any:
    """Runs ``stage`` (``"1"``, ``"2"``, ``"both"``) of ``trainer`` on a multi-worker cluster."""
    import keras
    import tensorflow as tf

    from pancseg_tf.data.pipeline import make_training_dataset
    from pancseg_tf.inference import load_model
    from pancseg_tf.models import transfer_stage1_weights
    from pancseg_tf.training.multiworker import fit_distributed, is_chief, wait_for_workers
    from pancseg_tf.training.recipe import (
        SCORED_OUTPUT,
        TrainResult,
        build_contextual,
        build_slice_cnn,
        freeze_for_stage2,
        make_optimizer,
        phase_seed,
        side_loss_weights,
        stage2_learning_rate,
        stage_losses,
        training_scores,
    )

    cfg = trainer.config
    run = trainer.run_dir
    chief = is_chief(strategy)
    splits = trainer._prepare_run_dir(index, chief=chief)
    keras.utils.set_random_seed(trainer.seed)
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    state_path = run / "state.json"
    validation = None
    patience = cfg.train.early_stopping_patience
    if chief:
        validation = WholeVolumeValidation(
            trainer.data_dir,
            splits["validation"][: cfg.train.validation_cases],
            threshold=cfg.postprocess.threshold,
            largest_component=cfg.postprocess.largest_component,
        )
    steps = cfg.train.steps_per_epoch
    kill_after = os.environ.get("PANCSEG_TEST_KILL_AFTER_EPOCHS")
    epochs_started = [0]

    def fit_phase(
        stage_no,
        phase,
        build_model,
        loss_keys,
        loss_weights,
        lr,
        first,
        last,
        init,
        targets,
        best_name,
    ):
        runlog = RunLog(run / "log.csv", stage_no, first, enabled=chief)
        backup = run / "backup" / f"multiworker_{phase}"
        meta_epoch = _backup_epoch(backup)
        # Early stopping as in one process (`resumable_early_stopping`): the chief decides on
        # its validation and keeps the record beside the phase's backup; every worker reads
        # the record to see that a phase already stopped (the backup is at its last epoch).
        stopping_path = backup / "early_stopping.json"
        end = meta_epoch if patience > 0 and early_stopped(stopping_path, meta_epoch) else last
        stopper = (
            resumable_early_stopping(patience, stopping_path, meta_epoch)
            if chief and patience > 0
            else None
        )
        runlog.initial_epoch = max(first, meta_epoch)
        runlog.on_train_begin()
        runlog.on_epoch_begin(runlog.initial_epoch)
        best = BestModel(run / best_name, state_path, f"stage{stage_no}", enabled=chief)

        def dataset_fn(context, epoch):
            # Called once per epoch on each worker, before the epoch's first step.
            if kill_after and epochs_started[0] >= int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)
            epochs_started[0] += 1
            ds = make_training_dataset(
                trainer.data_dir,
                cfg,
                stage=stage_no,
                seed=trainer.seed,
                epoch=epoch,
                deterministic=trainer.deterministic,
                cases=splits["train"],
                input_context=context,
            )
            return ds.repeat().take(steps).map(targets)

        def on_epoch_end(epoch, logs, model):
            runlog.set_model(model)
            if chief:
                scores = validation.scores(model) if validation.cases else {}
                if scores:
                    logs["val_dsc"] = sum(scores.values()) / len(scores)
                runlog.on_epoch_end(epoch, logs)
                runlog.on_epoch_begin(epoch + 1)  # the next epoch's clock
                best.update(model, epoch, logs.get("val_dsc"), scores)
                if stopper is not None:
                    if stopper.model is not model:
                        stopper.set_model(model)
                        stopper.on_train_begin()  # replays the epochs before a resume
                    model.stop_training = False
                    stopper.on_epoch_end(epoch, logs)
                    return bool(model.stop_training)
            else:
                # Saving is collective in spirit: every worker saves, non-chief copies are dropped.
                tmp = tempfile.mkdtemp(prefix="pancseg-worker-")
                try:
                    save_model_atomic(model, pathlib.Path(tmp) / best_name)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)

        # Seeded per phase, not by what ran before: a run resumed at a later phase draws the
        # same initial weights and dropout seeds as an uninterrupted one (as `Trainer` does).
        keras.utils.set_random_seed(phase_seed(trainer.seed, phase))
        model, _ = fit_distributed(
            strategy,
            build_model,
            lambda: stage_losses(cfg, loss_keys, stage_no),
            lambda: loss_scaled(make_optimizer(lr, cfg, last - first, cfg.train.warmup_epochs)),
            dataset_fn,
            epochs=end,
            steps_per_epoch=steps,
            work_dir=str(backup),
            initial_epoch=first,
            loss_weights=loss_weights,
            on_epoch_end=on_epoch_end,
            init_weights=init,
            # log.csv's dsc and ji, as the one-process Trainer scores them (its fit).
            build_metrics=lambda: {SCORED_OUTPUT: training_scores()},
        )
        return model

    if stage in ("1", "both") and not read_json(state_path, {}).get("stage1_done"):
        probe = build_slice_cnn(cfg)
        keys = probe.loss_keys

        def targets1(image, mask):
            return image, probe.targets(mask)

        fit_phase(
            1,
            "stage1",
            lambda: build_slice_cnn(cfg),
            keys,
            side_loss_weights(keys, cfg.train.side_output_weights),
            cfg.train.learning_rate,
            0,
            cfg.train.stage1_epochs,
            None,
            targets1,
            "stage1.keras",
        )
        if chief:
            mark_state(state_path, "stage1_done")
    if stage in ("2", "both") and not read_json(state_path, {}).get("stage2_done"):
        # The chief saves the best stage-1 model after the last stage-1 epoch, while the others
        # may already be here: without this, a worker could read the previous best, and its
        # stage-2 CNN would differ from the chief's.
        wait_for_workers(strategy)
        stage1 = load_model(run / "stage1.keras")
        freeze = min(cfg.train.freeze_cnn_epochs, cfg.train.stage2_epochs)
        init = None

        def targets2(image, mask):
            return image, {"prob": mask}

        for phase, first, last in (
            ("stage2_frozen", 0, freeze),
            ("stage2", freeze, cfg.train.stage2_epochs),
        ):
            if last <= first:
                continue

            def build(frozen=(phase == "stage2_frozen")):
                model = build_contextual(cfg)
                model(tf.zeros((1, cfg.data.window, *cfg.preprocess.size, 1)))
                transfer_stage1_weights(stage1, model)
                freeze_for_stage2(model, frozen=frozen)
                return model

            model = fit_phase(
                2,
                phase,
                build,
                ["prob"],
                None,
                stage2_learning_rate(cfg, phase),
                first,
                last,
                init,
                targets2,
                STAGE2_FILE,
            )
            init = model.get_weights()
        if chief:
            mark_state(state_path, "stage2_done")
    state = read_json(state_path, {})
    if (
        chief
        and state.get("stage1_done")
        and (state.get("stage2_done") or cfg.train.stage2_epochs == 0)
    ):
        ship_best_model(run)
        state = read_json(state_path, {})
    return TrainResult(run, splits, {k: v for k, v in state.items() if k in ("stage1", "stage2")})


def loss_scaled(optimizer):
    """``optimizer`` as ``model.compile`` would use it under Keras's global dtype policy: in a
    ``LossScaleOptimizer`` under ``mixed_float16`` (`Trainer.run` sets ``train.precision`` as the
    policy for both ways of training; the multi-worker step does not compile, so it wraps here)."""
    import keras

    if keras.mixed_precision.global_policy().name == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _backup_epoch(backup) -> int:
    """The epoch a multi-worker backup resumes at (0 without one)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(backup / "backup"))
    if not latest:
        return 0
    try:
        return int(latest.rsplit("-", 1)[-1])
    except ValueError:
        return 0
