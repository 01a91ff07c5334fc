"""Cross-fitted stage 2: the context layers learn from CNNs that did not see the window's case.

Why: a stage-1 CNN errs differently on the cases it was trained on than on new ones (measured on
the synthetic cohorts: it over-segments its own training cases, recall 0.97-0.98, against 0.90
on unseen MRI). Context layers trained on its outputs for its own training cases learn to correct
those errors, not the ones it makes on new scans, and stop helping after their first epoch
(``benchmarks/results/README.md``). nnU-Net's cascade trains its second stage on cross-validated
first-stage predictions for the same reason.

How: the run's training cases are split into ``train.cross_fit_folds`` folds; one extra CNN per
fold is trained on the other folds (``RUN/stage1_fold{k}.keras``, chosen on the run's validation
cases like ``stage1.keras``). In stage 2's frozen-CNN epochs each window of a fold-``k`` case is
segmented by CNN ``k``, and only the context layers learn (`CrossFittedContext`); the model keeps
the stage-1 CNN trained on every training case, which then feeds the context layers at
inference. That needs a context that reads the CNN's probability alone (``context_channels: 0``,
the paper's design): a CNN's inner features mean nothing to another CNN's context layers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from pancseg_tf.models.slice_cnn import LOGIT, PROB

#: The model output the stage-2 loss reads.
_PROB = "prob"


def cross_fitted_windows(
    data_dir: Any,
    config: Any,
    folds: Sequence[Sequence[str]],
    *,
    seed: int,
    epoch: int,
    deterministic: bool = False,
) -> Any:
    """One epoch's endless stream of stage-2 batches, one batch of each fold in turn, each as
    ``({"slices": windows, "fold": (B,) fold index}, mask)`` for `CrossFittedContext`.

    Fold ``k``'s batches come from `pancseg_tf.data.pipeline.make_training_dataset` on its cases
    alone, seeded by ``(seed, epoch)`` like the plain stream. Take ``steps_per_epoch`` of it.
    """
    import tensorflow as tf

    from pancseg_tf.data.pipeline import make_training_dataset

    def tag(k):
        return lambda image, mask: (
            {"slices": image, "fold": tf.fill(tf.shape(image)[:1], k)},
            mask,
        )

    def alternate(*batches):
        ds = tf.data.Dataset.from_tensors(batches[0])
        for batch in batches[1:]:
            ds = ds.concatenate(tf.data.Dataset.from_tensors(batch))
        return ds

    per_fold = [
        make_training_dataset(
            data_dir,
            config,
            stage=2,
            seed=seed,
            epoch=epoch,
            deterministic=deterministic,
            cases=list(fold),
        )
        .repeat()
        .map(tag(k))
        for k, fold in enumerate(folds)
    ]
    # Not `choose_from_datasets`: concatenating two of those (two epochs) fails to make an
    # iterator on TF 2.21 ("Incompatible shapes at component 0").
    return tf.data.Dataset.zip(tuple(per_fold)).flat_map(alternate)


def cross_fit_folds(train_cases: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Splits a run's training cases into ``folds`` folds, seeded, as even as possible.

    Args:
        train_cases: the run's training case ids.
        folds: number of folds (>= 2; at most the number of cases).
        seed: the run's seed.

    Returns:
        ``folds`` sorted lists of case ids; each case is in exactly one.
    """
    cases = sorted(train_cases)
    random.Random(f"cross-fit:{seed}").shuffle(cases)
    return [sorted(cases[k::folds]) for k in range(folds)]


class CrossFittedContext(keras.Model):
    """Training view of a `ContextualSegmenter` whose context layers learn from fold CNNs.

    Holds the segmenter (its context layers are the trainable weights; its own CNN is not
    called) and one frozen `SliceCNN` per fold. A batch is ``{"slices": (B, T, H, W, 1),
    "fold": (B,) int}``: every window is segmented by the CNN of its case's fold, which was
    trained without that fold, and `ContextualSegmenter.context_head` turns that CNN's logit and
    probability into the model's ``"prob"``. The callbacks validate and save ``deployed``, the
    segmenter with its full stage-1 CNN.

    Args:
        segmenter: a `ContextualSegmenter` with ``context_channels=0``.
        fold_cnns: the fold CNNs, fold ``k`` at index ``k``; frozen here.
    """

    def __init__(self, segmenter: keras.Model, fold_cnns: Sequence[keras.Model], **kwargs: Any):
        super().__init__(**kwargs)
        self.segmenter = segmenter
        self.fold_cnns = list(fold_cnns)
        for cnn in self.fold_cnns:
            cnn.trainable = False
        # Built now: keras' BackupAndRestore refuses an unbuilt model.
        height, width = segmenter.input_size
        self({"slices": ops.zeros((1, 2, height, width, 1)), "fold": ops.zeros((1,), "int32")})

    @property
    def deployed(self) -> keras.Model:
        """The model users get: what validation scores and the checkpoint saves."""
        return self.segmenter

    def call(self, inputs: dict[str, Any], training: bool = False) -> dict[str, Any]:
        slices = inputs["slices"]
        windows = ops.shape(slices)[0]
        height, width = slices.shape[2], slices.shape[3]
        folded = ops.reshape(slices, (-1, height, width, 1))
        # (B, K) one-hot weights, broadcast over each window's slices: every CNN runs on the
        # batch (frozen, forward only) and each window keeps its own fold's outputs.
        choose = ops.one_hot(ops.cast(inputs["fold"], "int32"), len(self.fold_cnns))
        logit = prob = 0.0
        for k, cnn in enumerate(self.fold_cnns):
            out = cnn(folded, training=False)
            weight = ops.reshape(choose[:, k], (-1, 1, 1, 1, 1))
            logit = logit + weight * _unfold(ops.cast(out[LOGIT], "float32"), windows)
            prob = prob + weight * _unfold(ops.cast(out[PROB], "float32"), windows)
        logit = ops.reshape(logit, (-1, height, width, 1))
        prob = ops.reshape(prob, (-1, height, width, 1))
        return {_PROB: self.segmenter.context_head(logit, prob, windows, training=training)}


def _unfold(x: Any, windows: Any) -> Any:
    shape = ops.shape(x)
    return ops.reshape(x, (windows, -1, shape[1], shape[2], shape[3]))
