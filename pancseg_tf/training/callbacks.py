"""Callbacks of the two-stage fit: whole-volume validation, a resumable log, the best model."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from pancseg_tf.atomic import write_text
from pancseg_tf.training.recipe import current_learning_rate

log = logging.getLogger("pancseg_tf.training")

#: ``dsc`` / ``ji``: streaming scores over the epoch's training batches (augmented windows);
#: ``val_dsc``: whole validation volumes on their own grids, as ``pancseg evaluate`` scores.
LOG_COLUMNS = ("stage", "epoch", "loss", "dsc", "ji", "val_dsc", "learning_rate", "seconds")


def read_json(path: pathlib.Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


class WholeVolumeValidation(keras.callbacks.Callback):
    """Predicts whole, unaugmented validation volumes after each epoch; logs ``val_dsc``.

    The volumes go through `pancseg_tf.inference.Segmenter.predict_model_grid`, the code
    ``pancseg predict`` runs (the CNN once per slice, the ConvLSTM over all slices in one pass),
    back to the scan's own grid (`validation_probabilities`), then the threshold and
    post-processing of the run's config, as `pancseg_tf.inference.finish_segmentation` does
    them. Each case is scored by Dice against its label on
    that grid, as ``pancseg evaluate`` scores a prediction (the mean over cases is
    ``val_dsc``), so the best checkpoint is chosen on what users get and the figure matches
    ``pancseg evaluate`` on the same cases. Data prepared before the records carried the
    original-grid label is scored on the model grid instead (logged once).
    They are read from the prepared shards one at a time each epoch, never held together (at
    the paper's size one volume is some 400 MB).

    Args:
        data_dir: the prepared data folder.
        cases: the validation case ids.
        threshold: probability threshold.
        largest_component: post-processing as ``pancseg predict`` does it.
        slice_batch: slices per CNN call.
    """

    def __init__(
        self,
        data_dir: Any,
        cases: Sequence[str],
        *,
        threshold: float = 0.5,
        largest_component: bool = True,
        slice_batch: int = 16,
    ):
        super().__init__()
        self.data_dir = data_dir
        self.cases = list(cases)
        self.threshold = threshold
        self.largest_component = largest_component
        self.slice_batch = slice_batch
        self.last_scores: dict[str, float] = {}
        self._warned = False

    def scores(self, model: keras.Model) -> dict[str, float]:
        from pancseg_tf.evaluation.metrics import dice
        from pancseg_tf.inference import postprocess_mask

        out = {}
        for case_id, label, prob, original_grid in validation_probabilities(
            model, self.data_dir, self.cases, slice_batch=self.slice_batch
        ):
            if not original_grid and not self._warned:
                log.warning(
                    "validation on the model grid: the prepared data predates original-grid "
                    "labels (prepare it again to score as `pancseg evaluate` does)"
                )
                self._warned = True
            # `finish_segmentation`'s last steps: threshold, then post-processing.
            mask = (prob >= self.threshold).astype(np.uint8)
            if self.largest_component:
                mask = postprocess_mask(mask)
            out[case_id] = float(dice(mask, label))
        return out

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not self.cases:
            return
        self.last_scores = self.scores(self.model)
        logs["val_dsc"] = float(np.mean(list(self.last_scores.values())))


def validation_probabilities(
    model: keras.Model, data_dir: Any, cases: Sequence[str], *, slice_batch: int = 16
):
    """Yields ``(case_id, label, probabilities, original_grid)`` per prepared validation case.

    The whole, unaugmented volume goes through `pancseg_tf.inference.Segmenter` (the CNN once
    per slice, the ConvLSTM over all slices in one pass) and, where the record holds the
    case's original-grid label, back to the scan's own grid by the case's geometry plan
    (``original_grid`` True); data prepared before the records held it stays on the model grid.
    Volumes are read one at a time. Used by `WholeVolumeValidation` and cross-validation's
    choice of post-processing.
    """
    from pancseg_tf.config import config_from_dict
    from pancseg_tf.data.pipeline import load_index, load_validation_volumes
    from pancseg_tf.inference import Segmenter

    # The prepared data's own preprocessing (the volumes are already on its grid).
    preprocess = config_from_dict({"preprocess": load_index(data_dir)["preprocess"]}).preprocess
    segmenter = Segmenter(model, preprocess, slice_batch=slice_batch)
    for volume in load_validation_volumes(data_dir, cases):
        # `pancseg predict`'s own path from the prepared intensities (the numbers it reads).
        prob = segmenter.predict_intensities(volume.image, volume.percentiles)
        if volume.original_label is not None:
            yield volume.case_id, volume.original_label, volume.plan.inverse(prob), True
        else:
            yield volume.case_id, volume.label, prob, False


class RunLog(keras.callbacks.Callback):
    """``RUN/log.csv``: one row per finished epoch, with a ``stage`` column.

    The file is rewritten atomically at each epoch's end. When a stage starts (or resumes) at
    ``initial_epoch``, rows of that stage at or after it are dropped: an epoch that was logged
    but not backed up before a kill is run again and logged once, never twice.
    """

    def __init__(self, path: pathlib.Path, stage: int | str, initial_epoch: int, *, enabled=True):
        super().__init__()
        self.path = pathlib.Path(path)
        self.stage = stage
        self.initial_epoch = initial_epoch
        self.enabled = enabled
        self._start = 0.0

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, buf.getvalue())

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.enabled:
            return
        rows = [
            r
            for r in self._rows()
            if not (r["stage"] == str(self.stage) and int(r["epoch"]) >= self.initial_epoch)
        ]
        self._write(rows)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.enabled:
            return
        logs = logs or {}
        rows = self._rows()
        rows.append(
            {
                "stage": self.stage,
                "epoch": epoch,
                "loss": _fmt(logs.get("loss")),
                "dsc": _fmt(logs.get("dsc")),
                "ji": _fmt(logs.get("ji")),
                "val_dsc": _fmt(logs.get("val_dsc")),
                "learning_rate": _fmt(_epoch_learning_rate(self.model, logs)),
                "seconds": f"{time.monotonic() - self._start:.1f}",
            }
        )
        self._write(rows)


class BestModel(keras.callbacks.Callback):
    """Saves the model whenever ``val_dsc`` improves, atomically, remembering the best across
    resumes in ``state.json`` (Keras' ``ModelCheckpoint`` forgets it on restart).

    Args:
        path: where the best model goes (``.keras``).
        state_path: JSON file holding ``{key: best value}``.
        key: this stage's entry in the state file; the best model's per-case validation
            Dice goes under ``{key}_cases``.
        enabled: False on non-chief workers.
        validation: the `WholeVolumeValidation` that scored the epoch (its per-case scores).
    """

    def __init__(
        self,
        path: pathlib.Path,
        state_path: pathlib.Path,
        key: str,
        *,
        enabled=True,
        validation: WholeVolumeValidation | None = None,
    ):
        super().__init__()
        self.path = pathlib.Path(path)
        self.state_path = pathlib.Path(state_path)
        self.key = key
        self.enabled = enabled
        self.validation = validation

    @property
    def best(self) -> float:
        return float(read_json(self.state_path, {}).get(self.key, -math.inf))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.enabled:
            self.update(self.model, epoch, (logs or {}).get("val_dsc"))

    def update(
        self,
        model: keras.Model,
        epoch: int,
        value: float | None,
        cases: dict[str, float] | None = None,
    ) -> None:
        """Saves ``model`` if ``value`` beats the best so far (no value: the latest epoch wins).

        ``cases`` (default: the validation callback's latest scores) is recorded with it.
        """
        if value is None:  # no validation cases: the last epoch is the model
            value = float(epoch)
        if cases is None and self.validation is not None:
            cases = self.validation.last_scores
        if value > self.best:
            save_model_atomic(model, self.path)
            state = read_json(self.state_path, {})
            state[self.key] = float(value)
            state[f"{self.key}_epoch"] = int(epoch)
            if cases:
                state[f"{self.key}_cases"] = {k: float(v) for k, v in sorted(cases.items())}
            write_text(self.state_path, json.dumps(state, indent=2))


def save_model_atomic(model: keras.Model, path: pathlib.Path) -> None:
    """``model.save`` under a temporary ``.keras`` name in the same folder, then a rename.

    The file carries its run's model card (`pancseg_tf.model_card`: the ``config.yaml`` of
    the folder it is saved in), so it segments like its run wherever it is copied.
    """
    path = pathlib.Path(path)
    from pancseg_tf.atomic import replacing
    from pancseg_tf.model_card import run_config_card, write_card

    card = run_config_card(path.parent)
    with replacing(path, keep_suffix=True) as tmp:
        model.save(tmp)
        if card is not None:
            write_card(tmp, card)


#: The run folder's files: the best model of each stage, and the one the run ships.
STAGE1_FILE, STAGE2_FILE, SHIPPED_FILE = "stage1.keras", "stage2.keras", "model.keras"


def ship_best_model(run_dir: pathlib.Path) -> str:
    """Makes ``model.keras`` the better of the run's two stages on its validation cases.

    The contextual model (``stage2.keras``) is shipped only when its best validation DSC beats
    stage 1's (``stage1.keras``) strictly; otherwise, or when no stage 2 was trained, the
    stage-1 CNN is, and one log line says why. ``state.json`` records the choice under
    ``shipped`` (``"stage1"`` or ``"stage2"``) with both scores, so `pancseg predict RUN`,
    ``export``, ``cv`` and the demo use the better model (nnU-Net picks its configuration on
    validation the same way). Idempotent: a resumed run ships again with the same result.

    Returns:
        ``"stage1"`` or ``"stage2"``.

    Raises:
        PancsegError: the run has no stage-1 model.
    """
    import shutil

    from pancseg_tf.atomic import replacing
    from pancseg_tf.errors import PancsegError

    run_dir = pathlib.Path(run_dir)
    state_path = run_dir / "state.json"
    state = read_json(state_path, {})
    stage1_path, stage2_path = run_dir / STAGE1_FILE, run_dir / STAGE2_FILE
    if not stage1_path.is_file():
        raise PancsegError(f"no stage-1 model in {run_dir}: nothing to ship")
    score1, score2 = state.get("stage1"), state.get("stage2")
    if stage2_path.is_file() and score2 is not None and (score1 is None or score2 > score1):
        shipped, source = "stage2", stage2_path
        log.info(
            "shipping the contextual model: validation DSC %.4f against stage 1's %s",
            score2,
            "none" if score1 is None else f"{score1:.4f}",
        )
    else:
        shipped, source = "stage1", stage1_path
        if stage2_path.is_file():
            log.warning(
                "stage 2 did not beat stage 1 on the validation cases (DSC %s against %s): "
                "the run ships the stage-1 CNN as model.keras",
                "none" if score2 is None else f"{score2:.4f}",
                "none" if score1 is None else f"{score1:.4f}",
            )
    with replacing(run_dir / SHIPPED_FILE, keep_suffix=True) as tmp:
        shutil.copyfile(source, tmp)
    state = read_json(state_path, {})
    state["shipped"] = shipped
    write_text(state_path, json.dumps(state, indent=2))
    return shipped


def mark_state(state_path: pathlib.Path, key: str) -> None:
    """Sets ``key`` to true in the run's ``state.json`` (e.g. ``stage1_done``)."""
    state = read_json(state_path, {})
    state[key] = True
    write_text(state_path, json.dumps(state, indent=2))


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.6g}"


def _epoch_learning_rate(model: keras.Model | None, logs: dict) -> float | None:
    """The epoch's ``learning_rate``: from ``logs`` where the loop put it (`fit_distributed`,
    whose model is not compiled), else from the compiled model's optimizer (``fit``); both are
    `current_learning_rate` at the epoch's end."""
    if logs.get("learning_rate") is not None:
        return float(logs["learning_rate"])
    return current_learning_rate(getattr(model, "optimizer", None))


def resumable_early_stopping(patience: int, path: pathlib.Path, initial_epoch: int):
    """``keras.callbacks.EarlyStopping`` on ``val_dsc`` (max) that keeps its state over a resume.

    Keras' callback starts again from nothing after a kill, so a resumed phase would stop later
    than an uninterrupted one. This one records each epoch's ``val_dsc`` (and the epoch it
    stopped at) in ``path``, beside the phase's backup, and when the phase resumes at
    ``initial_epoch`` it replays the epochs before it. Records at or after ``initial_epoch``
    (written, then killed before the epoch's backup) are dropped: those epochs run again.

    Args:
        patience: epochs without a better ``val_dsc`` before the phase stops.
        path: the phase's JSON record, ``RUN/backup/<phase>/early_stopping.json``.
        initial_epoch: the epoch the phase (re)starts at.

    Returns:
        The callback.
    """
    saved = read_json(path, {}).get("val_dsc", {})
    history = {int(e): float(v) for e, v in saved.items() if int(e) < initial_epoch}

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for epoch in sorted(history):
                super().on_epoch_end(epoch, {"val_dsc": history[epoch]})

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            value = (logs or {}).get("val_dsc")
            if value is None:
                return
            history[epoch] = float(value)
            record: dict[str, Any] = {"val_dsc": {str(e): history[e] for e in sorted(history)}}
            if self.model.stop_training and self.stopped_epoch == epoch:
                record["stopped_epoch"] = epoch
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(record, indent=2))

    return ResumableEarlyStopping(monitor="val_dsc", mode="max", patience=patience)


def early_stopped(path: pathlib.Path, initial_epoch: int) -> bool:
    """Whether early stopping ended the phase at an epoch before ``initial_epoch`` (backed up)."""
    stopped = read_json(path, {}).get("stopped_epoch")
    return stopped is not None and int(stopped) < initial_epoch
