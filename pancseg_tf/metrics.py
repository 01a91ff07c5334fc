"""Streaming Dice and Jaccard scores for `Model.compile(metrics=...)`.

Both threshold the predicted probabilities, count true positives, false positives and false
negatives voxel by voxel, and add the counts up over every batch until `reset_state` (keras
resets them at the start of each epoch and each `evaluate`). The score is that of all voxels
seen, as if the batches were one volume ("global" or "batch" aggregation): large cases weigh
more than small ones. Per-case scores, with distances in mm, belong to
`pancseg_tf.evaluation`, which works on whole volumes.

Empty case: with nothing to find and nothing found (TP + FP + FN = 0) the score is 1.0.
nnU-Net instead returns NaN for such a case and leaves it out of its mean; a streaming metric
cannot leave out what it has not kept, and a NaN would poison every later epoch log, so here
the empty count reads as a perfect score. It matters only while no pancreas voxel has been
seen or predicted: one foreground voxel anywhere makes the score an ordinary ratio.

Mixed precision: inputs of any float dtype are cast to float32 before thresholding, and the
counts are float32 variables summed across replicas under a distribution strategy.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["DiceScore", "JaccardScore"]


class _OverlapScore(keras.metrics.Metric):
    """Accumulates TP, FP and FN of thresholded binary predictions over batches.

    Subclasses implement `_score(tp, fp, fn)` for counts whose total is positive.
    """

    def __init__(self, threshold: float = 0.5, name: str | None = None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        # A Python check on the constructor argument, done once.
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f"threshold must be a probability in [0, 1]; received threshold={threshold!r}"
            )
        self.threshold = float(threshold)
        # Higher is better: lets keras callbacks with mode="auto" pick "max".
        self._direction = "up"
        self.true_positives = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="true_positives"
        )
        self.false_positives = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="false_positives"
        )
        self.false_negatives = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="false_negatives"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds one batch's counts.

        Args:
            y_true: Masks, shape `(B, ...)` like `y_pred` (the channel axis may be missing);
                voxels with `y_true >= 0.5` are foreground, so {0, 1} masks of any dtype and
                average-pooled soft masks both read as expected.
            y_pred: Probabilities, shape `(B, ...)`, e.g. `(B, H, W, 1)` or
                `(B, T, H, W, 1)`; voxels with `y_pred > threshold` are predicted foreground.
            sample_weight: Optional non-negative weights that multiply each voxel's count:
                one per sample `(B,)`, or any shape that broadcasts to `y_true` once
                trailing axes are added (e.g. a per-voxel `(B, H, W)` mask).

        Raises:
            ValueError: ranks that do not match.
        """
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        rank = len(y_pred.shape)
        if len(y_true.shape) == rank - 1 and y_pred.shape[-1] == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        elif len(y_true.shape) != rank:
            raise ValueError(
                f"y_true and y_pred must have the same rank (y_true may lack the channel "
                f"axis); received shapes {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
            )
        predicted = ops.cast(ops.greater(y_pred, self.threshold), "float32")
        actual = ops.cast(ops.greater_equal(y_true, 0.5), "float32")
        if sample_weight is None:
            weight = ops.ones_like(actual)
        else:
            weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(weight.shape) > rank:
                raise ValueError(
                    f"sample_weight must broadcast to y_true {tuple(y_true.shape)}; received "
                    f"shape {tuple(weight.shape)}"
                )
            for _ in range(rank - len(weight.shape)):
                weight = ops.expand_dims(weight, axis=-1)
            weight = ops.broadcast_to(weight, ops.shape(actual))
        self.true_positives.assign_add(ops.cast(ops.sum(weight * actual * predicted), self.dtype))
        self.false_positives.assign_add(
            ops.cast(ops.sum(weight * (1.0 - actual) * predicted), self.dtype)
        )
        self.false_negatives.assign_add(
            ops.cast(ops.sum(weight * actual * (1.0 - predicted)), self.dtype)
        )

    def _score(self, tp, fp, fn):
        raise NotImplementedError

    def result(self):
        """The score of all voxels seen since the last reset; 1.0 if none was foreground."""
        return self.score_of(self.counts())

    def counts(self) -> list:
        """The accumulated ``[TP, FP, FN]`` (sums: counts of several replicas add up)."""
        return [self.true_positives, self.false_positives, self.false_negatives]

    def score_of(self, counts) -> Any:
        """The score of ``[TP, FP, FN]`` counts, as `result` gives it for this metric's own."""
        tp, fp, fn = counts
        total = tp + fp + fn
        return ops.cast(ops.where(total > 0, self._score(tp, fp, fn), 1.0), self.dtype)

    def reset_state(self):
        for variable in (self.true_positives, self.false_positives, self.false_negatives):
            variable.assign(ops.zeros((), dtype=self.dtype))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"threshold": self.threshold})
        return config


@keras.saving.register_keras_serializable(package="pancseg_tf")
class DiceScore(_OverlapScore):
    """Dice similarity coefficient `2 TP / (2 TP + FP + FN)`, accumulated over batches.

    Counts are global over all batches since the last reset (see the module docstring);
    1.0 while TP + FP + FN = 0.

    Args:
        threshold: Probabilities strictly above it are predicted foreground.
        name: Name of the metric, shown in the training log.
        dtype: Dtype of the counts and the result (float32 by default).

    Example:

    >>> metric = DiceScore()
    >>> metric.update_state([[1, 1, 0, 0]], [[0.9, 0.4, 0.6, 0.1]])   # TP 1, FP 1, FN 1
    >>> float(metric.result())
    0.5
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice_score", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def _score(self, tp, fp, fn):
        return ops.divide_no_nan(2.0 * tp, 2.0 * tp + fp + fn)


@keras.saving.register_keras_serializable(package="pancseg_tf")
class JaccardScore(_OverlapScore):
    """Jaccard index (intersection over union) `TP / (TP + FP + FN)`, accumulated over batches
    like `DiceScore` (global counts since the last reset; 1.0 while there is no foreground),
    with the same arguments."""

    def __init__(self, threshold: float = 0.5, name: str = "jaccard_score", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    def _score(self, tp, fp, fn):
        return ops.divide_no_nan(tp, tp + fp + fn)
