"""Losses for binary pancreas segmentation: the paper's Jaccard loss and its baselines.

Every loss is a pure function of `keras.ops` (one value per sample) plus a thin, registered
`keras.losses.Loss` subclass, in the shape of keras' own `dice` / `Dice`.

Conventions shared by every loss here:

- `y_true` and `y_pred` have any channels-last shape `(batch, ...)`, e.g. slices `(B, H, W, 1)`
  or slice windows `(B, T, H, W, 1)`; `y_true` may also lack the channel axis (`(B, H, W)`).
  A "sample" is one batch entry: sums run over all its other axes, i.e. its whole window.
- `y_pred` holds probabilities (sigmoid outputs), not logits. `y_true` holds {0, 1} masks
  (any dtype) or soft targets in [0, 1] (a mask average-pooled to a side output's size).
- Computation is in float32 whatever the input dtype: under mixed precision the model's
  bfloat16 / float16 outputs are cast up, so sums over a whole window of voxels do not lose
  the small foreground.
- Only the foreground (pancreas) enters the overlap losses. Like MONAI's
  `include_background=False`: the pancreas is under 1 % of an abdominal CT, and a background
  term would overwhelm its signal.
- "The batch" of the batch sums (the Jaccard and Dice with `batch_sum=True`, the automatic
  weight of the class-balanced cross-entropy) is the global batch: under a `tf.distribute`
  strategy with several replicas (several GPUs or workers) the sums are also summed over the
  replicas before the division (`pancseg_tf.replicas`), so a step equals the one-device step
  on the whole global batch.

Reference:
    Cai J., Lu L., Xie Y., Xing F., Yang L. "Improving Deep Pancreas Segmentation in CT and MRI
    Images via Recurrent Neural Contextual Learning and Direct Loss Function." MICCAI 2017,
    arXiv:1707.04912.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from pancseg_tf.replicas import sum_over_replicas

__all__ = [
    "DEFAULT_EPSILON",
    "DiceLoss",
    "JaccardBCELoss",
    "JaccardLoss",
    "ResizedTargetLoss",
    "SharpenedLoss",
    "WeightedBCELoss",
    "deep_supervision_losses",
    "dice_loss",
    "jaccard_bce_loss",
    "jaccard_loss",
    "resize_target",
    "sharpen",
    "weighted_binary_crossentropy",
]

# Added to numerator and denominator of the overlap ratios. In voxel units it is negligible
# next to any real overlap (a window holds hundreds of pancreas voxels) and is lost in float32
# once a sum exceeds ~100, yet it keeps an empty label with an empty prediction defined (0/0
# becomes eps/eps = 1, loss 0). The same value as MONAI's and nnU-Net's Dice smoothing.
DEFAULT_EPSILON = 1e-5

_POOLINGS = ("average", "max")

# A backend tensor, NumPy array or nested list: whatever `keras.ops` accepts.
TensorLike = Any


# === Helpers ===


def _as_float32(y_true, y_pred):
    """Casts both to float32 and gives `y_true` the channel axis if it lacks one.

    Returns:
        `(y_true, y_pred)`, float32, same rank, rank >= 2.

    Raises:
        ValueError: rank below 2, or ranks that differ other than by a missing channel axis.
    """
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
    pred_rank, true_rank = len(y_pred.shape), len(y_true.shape)
    if true_rank == pred_rank - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, axis=-1)
    elif true_rank != pred_rank:
        raise ValueError(
            f"y_true and y_pred must have the same rank (y_true may lack the channel axis); "
            f"received y_true shape {tuple(y_true.shape)} and y_pred shape {tuple(y_pred.shape)}"
        )
    if pred_rank < 2:
        raise ValueError(
            f"expected tensors of shape (batch, ...) with at least one axis after the batch; "
            f"received y_pred shape {tuple(y_pred.shape)}"
        )
    return y_true, y_pred


def _sample_axes(x) -> tuple[int, ...]:
    """Every axis but the batch axis: one sample's whole window."""
    return tuple(range(1, len(x.shape)))


def _check_epsilon(epsilon: float) -> float:
    # A Python check on a Python number, done once when the loss is made.
    if not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number; received epsilon={epsilon!r}")
    return float(epsilon)


def _overlap_sums(y_true, y_pred):
    """Per-sample sum(y p), sum(y), sum(p), each of shape (B,)."""
    axes = _sample_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    label_sum = ops.sum(y_true, axis=axes)
    pred_sum = ops.sum(y_pred, axis=axes)
    return intersection, label_sum, pred_sum


def _batch_totals(per_sample: Sequence, sample_weight) -> list:
    """The (weighted) global-batch sums of (B,) tensors, each repeated in its B entries.

    Under a `tf.distribute` strategy with several replicas the sums also run over the other
    replicas' shares of the global batch (`pancseg_tf.replicas.sum_over_replicas`, one
    all-reduce for all the tensors), so the loss is that of the global batch on every replica.
    Repeating a sum (rather than returning a scalar) keeps keras' reduction intact: the mean of
    B equal entries is the batch value, and keras' scaling for distribution strategies (it
    divides each replica's loss by the number of replicas), which it skips for scalar losses,
    still runs; with the all-reduce's own gradient that makes the summed step the one-device
    step on the global batch (see `pancseg_tf.replicas`).
    """
    if sample_weight is not None:
        per_sample = [values * sample_weight for values in per_sample]
    totals = sum_over_replicas([ops.sum(values) for values in per_sample])
    return [ops.ones_like(values) * total for values, total in zip(per_sample, totals)]


def _per_sample_weights(sample_weight, loss_name: str):
    """Float32 per-sample weights of shape (B,) (or a scalar) from keras' `sample_weight`.

    Raises:
        ValueError: weights other than one per sample, e.g. one per voxel.
    """
    weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    rank = len(weights.shape)
    if rank == 2 and weights.shape[-1] == 1:
        weights = ops.reshape(weights, (-1,))
    elif rank > 1:
        raise ValueError(
            f"{loss_name} takes one sample_weight per sample, shape (batch,) or (batch, 1); "
            f"received shape {tuple(weights.shape)}"
        )
    return weights


# === Functions ===


def jaccard_loss(
    y_true: TensorLike,
    y_pred: TensorLike,
    epsilon: float = DEFAULT_EPSILON,
    batch_sum: bool = False,
    sample_weight: TensorLike | None = None,
) -> TensorLike:
    """The paper's Jaccard loss, one value per sample.

    The paper writes it over the label's foreground Y+ and background Y-:

        L = 1 - sum_{j in Y+} p_j / (|Y+| + sum_{j in Y-} p_j)

    which for binary y equals the soft Jaccard (intersection over union) loss computed here,

        L = 1 - (I + eps) / (U + eps),  I = sum(y p),  U = sum(y) + sum(p) - sum(y p),

    the form that also takes soft targets. `eps` goes in numerator and denominator so that an
    empty label with an empty prediction gives (0 + eps) / (0 + eps) = 1, a loss of 0 with a
    finite gradient, and a perfect prediction gives exactly 0. Per sample, with U and I over
    the sample's window, the gradient is -1 / (U + eps) on foreground voxels and
    (I + eps) / (U + eps)^2 on background voxels.

    Args:
        y_true: Masks, shape `(B, ...)` like `y_pred` (the channel axis may be missing),
            values in [0, 1], any dtype.
        y_pred: Probabilities, shape `(B, ...)`, e.g. `(B, H, W, 1)` or `(B, T, H, W, 1)`.
        epsilon: Positive smoothing term, see above.
        batch_sum: If True, I and U are summed over the whole batch before the division and
            every one of the B entries holds that one batch loss (see `JaccardLoss` for why);
            in a step with several `tf.distribute` replicas, over the global batch of all of
            them.
        sample_weight: Optional non-negative per-sample weights, shape `(B,)`, that scale each
            sample's I and U in the batch sums; used only with `batch_sum=True` (a weight
            common to a sample's voxels leaves its own ratio unchanged).

    Returns:
        Float32 tensor of shape `(B,)`, values in [0, 1].

    Raises:
        ValueError: non-positive `epsilon`, or shapes that do not match.
    """
    epsilon = _check_epsilon(epsilon)
    y_true, y_pred = _as_float32(y_true, y_pred)
    intersection, label_sum, pred_sum = _overlap_sums(y_true, y_pred)
    union = label_sum + pred_sum - intersection
    if batch_sum:
        intersection, union = _batch_totals([intersection, union], sample_weight)
    return 1.0 - (intersection + epsilon) / (union + epsilon)


def dice_loss(
    y_true: TensorLike,
    y_pred: TensorLike,
    epsilon: float = DEFAULT_EPSILON,
    batch_sum: bool = False,
    sample_weight: TensorLike | None = None,
) -> TensorLike:
    """Soft Dice loss, one value per sample: L = 1 - (2 I + eps) / (sum(y) + sum(p) + eps).

    `I = sum(y p)`; `eps` is placed as in `jaccard_loss` and for the same reason (empty label
    and empty prediction give 0, a perfect prediction gives exactly 0).

    Args:
        y_true: Masks, shape `(B, ...)` like `y_pred` (the channel axis may be missing).
        y_pred: Probabilities, shape `(B, ...)`.
        epsilon: Positive smoothing term.
        batch_sum: If True, the sums run over the whole batch (the global batch of all
            `tf.distribute` replicas) before the division and each of the B entries holds the
            batch loss (see `JaccardLoss`).
        sample_weight: Optional per-sample weights `(B,)` for the batch sums; used only with
            `batch_sum=True`.

    Returns:
        Float32 tensor of shape `(B,)`, values in [0, 1].

    Raises:
        ValueError: non-positive `epsilon`, or shapes that do not match.
    """
    epsilon = _check_epsilon(epsilon)
    y_true, y_pred = _as_float32(y_true, y_pred)
    intersection, label_sum, pred_sum = _overlap_sums(y_true, y_pred)
    denominator = label_sum + pred_sum
    if batch_sum:
        intersection, denominator = _batch_totals([intersection, denominator], sample_weight)
    return 1.0 - (2.0 * intersection + epsilon) / (denominator + epsilon)


def weighted_binary_crossentropy(
    y_true: TensorLike, y_pred: TensorLike, pos_weight: float | None = None
) -> TensorLike:
    """Class-weighted binary cross-entropy, the mean over each sample's voxels.

        L = mean_j -(w+ y_j log p_j + (1 - y_j) log(1 - p_j))

    With `pos_weight=None` the weight is set from the batch's class balance,
    `w+ = |Y-| / |Y+|` (sums of `1 - y` and `y` over the whole batch; in a step with several
    `tf.distribute` replicas, over the global batch of all of them). This is the
    class-balanced cross-entropy of HED (Xie & Tu 2015), beta = |Y-| / |Y|, rescaled by
    1 / (1 - beta) so that background keeps weight 1: the loss is then about the mean
    foreground log-loss plus the mean background log-loss. Unlike HED's beta it stays useful
    on a batch without pancreas (there `w+` is 0, no foreground term exists, and background
    voxels keep weight 1, so false positives are still penalised). `pos_weight=1` is plain
    binary cross-entropy. Probabilities are clipped to
    `[keras.config.epsilon(), 1 - keras.config.epsilon()]`, as in keras.

    Args:
        y_true: Masks, shape `(B, ...)` like `y_pred` (the channel axis may be missing).
        y_pred: Probabilities, shape `(B, ...)`.
        pos_weight: Weight of foreground voxels, or None for the automatic batch weight.

    Returns:
        Float32 tensor of shape `(B,)`.

    Raises:
        ValueError: negative `pos_weight`, or shapes that do not match.
    """
    if pos_weight is not None and not pos_weight >= 0:
        raise ValueError(
            f"pos_weight must be None or a non-negative number; received {pos_weight!r}"
        )
    y_true, y_pred = _as_float32(y_true, y_pred)
    clip = keras.config.epsilon()
    probability = ops.clip(y_pred, clip, 1.0 - clip)
    if pos_weight is None:
        # 0 when the batch has no foreground; the foreground term is then empty anyway.
        negatives, positives = sum_over_replicas([ops.sum(1.0 - y_true), ops.sum(y_true)])
        weight = ops.stop_gradient(ops.divide_no_nan(negatives, positives))
    else:
        weight = float(pos_weight)
    per_voxel = -(
        weight * y_true * ops.log(probability) + (1.0 - y_true) * ops.log(1.0 - probability)
    )
    return ops.mean(per_voxel, axis=_sample_axes(per_voxel))


def jaccard_bce_loss(
    y_true: TensorLike,
    y_pred: TensorLike,
    jaccard_weight: float = 1.0,
    bce_weight: float = 1.0,
    pos_weight: float | None = 1.0,
    epsilon: float = DEFAULT_EPSILON,
    batch_sum: bool = False,
    sample_weight: TensorLike | None = None,
) -> TensorLike:
    """`jaccard_weight * jaccard_loss + bce_weight * weighted_binary_crossentropy`, per sample.

    Args:
        y_true: Masks, shape `(B, ...)` like `y_pred`.
        y_pred: Probabilities, shape `(B, ...)`.
        jaccard_weight: Weight of the Jaccard term.
        bce_weight: Weight of the cross-entropy term.
        pos_weight: Foreground weight of the cross-entropy (1: plain; None: from the batch).
        epsilon: Jaccard smoothing term.
        batch_sum: Jaccard sums over the whole batch (see `JaccardLoss`).
        sample_weight: Per-sample weights `(B,)` for the Jaccard batch sums.

    Returns:
        Float32 tensor of shape `(B,)`.
    """
    jaccard = jaccard_loss(
        y_true, y_pred, epsilon=epsilon, batch_sum=batch_sum, sample_weight=sample_weight
    )
    bce = weighted_binary_crossentropy(y_true, y_pred, pos_weight=pos_weight)
    return jaccard_weight * jaccard + bce_weight * bce


def resize_target(y_true: TensorLike, y_pred: TensorLike, pooling: str = "average") -> TensorLike:
    """Pools a mask down to the in-plane size of a (lower-resolution) side output.

    Only height and width change (the two axes before the channel axis); batch and slice axes
    are kept. The factors must be whole numbers known when the graph is built.

    Args:
        y_true: Mask, shape `(B, H, W, 1)` or `(B, T, H, W, 1)` (channel axis may be missing).
        y_pred: Side output, shape `(B, H/f, W/g, 1)` or `(B, T, H/f, W/g, 1)`.
        pooling: `"average"`: each cell gets the fraction of it covered by the mask, a soft
            target that keeps the organ's area (the overlap losses take soft targets).
            `"max"`: a cell is foreground if any voxel in it is, which dilates small organs.

    Returns:
        Float32 tensor of `y_pred`'s shape (`y_true` itself, cast, when the sizes match).

    Raises:
        ValueError: unknown `pooling`, rank other than 4 or 5, unknown in-plane sizes, or a
            side output whose size does not divide the mask's.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}; received {pooling!r}")
    y_true, y_pred = _as_float32(y_true, y_pred)
    rank = len(y_pred.shape)
    if rank not in (4, 5):
        raise ValueError(
            f"expected (B, H, W, C) or (B, T, H, W, C) tensors; received y_pred shape "
            f"{tuple(y_pred.shape)}"
        )
    true_size, pred_size = tuple(y_true.shape[-3:-1]), tuple(y_pred.shape[-3:-1])
    if None in true_size or None in pred_size:
        raise ValueError(
            f"the in-plane sizes must be known when the graph is built; received y_true "
            f"shape {tuple(y_true.shape)} and y_pred shape {tuple(y_pred.shape)}"
        )
    if any(t % p for t, p in zip(true_size, pred_size)):
        raise ValueError(
            f"the side output's in-plane size {pred_size} must divide the mask's "
            f"{true_size} by whole numbers"
        )
    factors = tuple(t // p for t, p in zip(true_size, pred_size))
    if factors == (1, 1):
        return y_true
    window = factors if rank == 4 else (1, *factors)
    pool = ops.average_pool if pooling == "average" else ops.max_pool
    return pool(y_true, pool_size=window, strides=window, padding="valid")


# === Loss classes ===


class _PrecomputedLoss(keras.losses.Loss):
    """Applies keras' reduction (sample weights, distribution scaling) to given values."""

    def call(self, y_true, y_pred):
        return y_pred


class _PerSampleLoss(keras.losses.Loss):
    """Base of the losses here: float32, one value per sample, per-sample weights only.

    Subclasses implement `_values(y_true, y_pred, sample_weight) -> (B,)`. Keras then reduces
    the B values as it always does; `sample_weight` is also handed to `_values`, where the
    batch-sum losses use it inside their sums.
    """

    def __init__(self, name: str, reduction: str | None):
        super().__init__(name=name, reduction=reduction, dtype="float32")

    def _values(self, y_true, y_pred, sample_weight):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        return self._values(y_true, y_pred, None)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            return super().__call__(y_true, y_pred)
        weights = _per_sample_weights(sample_weight, self.name)
        values = self._values(y_true, y_pred, weights)
        reducer = _PrecomputedLoss(name=self.name, reduction=self.reduction, dtype="float32")
        return reducer(values, values, sample_weight=weights)


class _OverlapLoss(_PerSampleLoss):
    """Base of the overlap losses (Jaccard, Dice): ``batch_sum`` and ``epsilon``, and the
    function (`jaccard_loss` or `dice_loss`) that computes the values."""

    _function = staticmethod(jaccard_loss)

    def __init__(self, batch_sum: bool, epsilon: float, reduction: str | None, name: str):
        super().__init__(name=name, reduction=reduction)
        self.batch_sum = bool(batch_sum)
        self.epsilon = _check_epsilon(epsilon)

    def _values(self, y_true, y_pred, sample_weight):
        return self._function(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            batch_sum=self.batch_sum,
            sample_weight=sample_weight,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"batch_sum": self.batch_sum, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="pancseg_tf")
class JaccardLoss(_OverlapLoss):
    """The paper's Jaccard loss, `1 - (I + eps) / (U + eps)`; see `jaccard_loss`.

    Why the sums run over the whole batch by default: with per-sample sums, a window without
    pancreas has I = 0 and a loss of `1 - eps / (eps + sum p)`, which is already about 1 once
    the window predicts a few eps of foreground and flat beyond, so its gradient,
    `eps / (eps + sum p)^2`, is about nothing: false positives on windows without pancreas
    go unpunished. With batch sums every background voxel of the batch, in whichever window,
    gets the gradient `(I + eps) / (U + eps)^2` of the batch, so false positives are penalised
    whenever the batch holds pancreas anywhere. (MONAI's `DiceLoss(batch=True)` is the same
    choice; its default is per-sample.)

    "Batch" is the global batch: in a step under a `tf.distribute` strategy with several
    replicas (`model.fit` under `MirroredStrategy`, `fit_distributed`), where each replica
    sees its share of the batch, I and U are summed over all replicas before the division
    (`pancseg_tf.replicas.sum_over_replicas`, an all-reduce with a gradient). With keras'
    scaling (each replica's loss divided by the number of replicas, the gradients summed),
    the step is the one-device step on the global batch, sample weights included: the paper's
    batch of 8 windows on 8 GPUs stays one batch, not 8 per-window losses.

    Keras' reduction: each of the B samples carries the batch loss, so the default
    `"sum_over_batch_size"` gives that one value (and keeps keras' scaling for distribution
    strategies). Per-sample weights
    `(B,)` scale each sample's I and U inside the batch sums (weight 0 leaves a sample out)
    and then weight the B equal entries as keras always does: `"sum_over_batch_size"` returns
    `mean(w) * L` and `"mean_with_sample_weight"` returns `L`. Per-voxel weights are refused.
    Use the default reduction; `"sum"` would multiply the batch loss by B.

    With `batch_sum=False` each sample has its own loss and the reduction averages them.

    Args:
        batch_sum: Sum over the whole batch before dividing (default) or per sample.
        epsilon: Positive smoothing term in numerator and denominator.
        reduction: Keras reduction of the `(B,)` values.
        name: Name of the loss.

    Call arguments:
        y_true: Masks, shape `(B, ...)`, e.g. `(B, T, H, W, 1)`.
        y_pred: Probabilities of the same shape, any float dtype.
        sample_weight: Optional per-sample weights, shape `(B,)`.

    Example:

    >>> loss = JaccardLoss()
    >>> y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]]]   # (1, 2, 2, 1)
    >>> y_pred = [[[[0.5], [1.0]], [[0.0], [0.5]]]]
    >>> round(float(loss(y_true, y_pred)), 4)          # 1 - 1.5 / 2.5
    0.4
    """

    _function = staticmethod(jaccard_loss)

    def __init__(
        self,
        batch_sum: bool = True,
        epsilon: float = DEFAULT_EPSILON,
        reduction: str | None = "sum_over_batch_size",
        name: str = "jaccard_loss",
    ):
        super().__init__(batch_sum, epsilon, reduction, name)


@keras.saving.register_keras_serializable(package="pancseg_tf")
class DiceLoss(_OverlapLoss):
    """Soft Dice loss `1 - (2 I + eps) / (sum y + sum p + eps)`; see `dice_loss`.

    The two modes, the batch-sum default (over the global batch of all `tf.distribute`
    replicas) and the handling of reduction and sample weights are those of `JaccardLoss`,
    for the same reasons.

    Args:
        batch_sum: Sum over the whole batch before dividing (default) or per sample.
        epsilon: Positive smoothing term in numerator and denominator.
        reduction: Keras reduction of the `(B,)` values.
        name: Name of the loss.
    """

    _function = staticmethod(dice_loss)

    def __init__(
        self,
        batch_sum: bool = True,
        epsilon: float = DEFAULT_EPSILON,
        reduction: str | None = "sum_over_batch_size",
        name: str = "dice_loss",
    ):
        super().__init__(batch_sum, epsilon, reduction, name)


@keras.saving.register_keras_serializable(package="pancseg_tf")
class WeightedBCELoss(_PerSampleLoss):
    """Class-weighted binary cross-entropy, the paper's baselines; see
    `weighted_binary_crossentropy`.

    `WeightedBCELoss(pos_weight=1.0)` is plain cross-entropy (the same values as
    `keras.losses.BinaryCrossentropy()` on `(B, ..., 1)` probabilities); the default
    `pos_weight=None` is the class-balanced cross-entropy with the weight taken from each
    batch's class balance (the global batch's, under a strategy with several replicas).
    Sample weights `(B,)` weight the per-sample means as in keras.

    Args:
        pos_weight: Weight of foreground voxels, or None for `|Y-| / |Y+|` of the batch.
        reduction: Keras reduction of the `(B,)` values.
        name: Name of the loss.
    """

    def __init__(
        self,
        pos_weight: float | None = None,
        reduction: str | None = "sum_over_batch_size",
        name: str = "weighted_bce_loss",
    ):
        super().__init__(name=name, reduction=reduction)
        if pos_weight is not None and not pos_weight >= 0:
            raise ValueError(
                f"pos_weight must be None or a non-negative number; received {pos_weight!r}"
            )
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def _values(self, y_true, y_pred, sample_weight):
        return weighted_binary_crossentropy(y_true, y_pred, pos_weight=self.pos_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"pos_weight": self.pos_weight})
        return config


@keras.saving.register_keras_serializable(package="pancseg_tf")
class JaccardBCELoss(_PerSampleLoss):
    """`jaccard_weight * JaccardLoss + bce_weight * WeightedBCELoss`; see `jaccard_bce_loss`.

    The cross-entropy gives every voxel a gradient from the first step, the Jaccard term
    targets the overlap the paper measures. Batch sums and sample weights as in `JaccardLoss`.

    Args:
        jaccard_weight: Weight of the Jaccard term.
        bce_weight: Weight of the cross-entropy term.
        pos_weight: Foreground weight of the cross-entropy (1: plain; None: from the batch).
        batch_sum: Jaccard sums over the whole batch (default) or per sample.
        epsilon: Jaccard smoothing term.
        reduction: Keras reduction of the `(B,)` values.
        name: Name of the loss.
    """

    def __init__(
        self,
        jaccard_weight: float = 1.0,
        bce_weight: float = 1.0,
        pos_weight: float | None = 1.0,
        batch_sum: bool = True,
        epsilon: float = DEFAULT_EPSILON,
        reduction: str | None = "sum_over_batch_size",
        name: str = "jaccard_bce_loss",
    ):
        super().__init__(name=name, reduction=reduction)
        for label, value in (("jaccard_weight", jaccard_weight), ("bce_weight", bce_weight)):
            if not value >= 0:
                raise ValueError(f"{label} must be a non-negative number; received {value!r}")
        if pos_weight is not None and not pos_weight >= 0:
            raise ValueError(
                f"pos_weight must be None or a non-negative number; received {pos_weight!r}"
            )
        self.jaccard_weight = float(jaccard_weight)
        self.bce_weight = float(bce_weight)
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.batch_sum = bool(batch_sum)
        self.epsilon = _check_epsilon(epsilon)

    def _values(self, y_true, y_pred, sample_weight):
        return jaccard_bce_loss(
            y_true,
            y_pred,
            jaccard_weight=self.jaccard_weight,
            bce_weight=self.bce_weight,
            pos_weight=self.pos_weight,
            epsilon=self.epsilon,
            batch_sum=self.batch_sum,
            sample_weight=sample_weight,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "jaccard_weight": self.jaccard_weight,
                "bce_weight": self.bce_weight,
                "pos_weight": self.pos_weight,
                "batch_sum": self.batch_sum,
                "epsilon": self.epsilon,
            }
        )
        return config


def _wrapped_loss(base_loss) -> keras.losses.Loss:
    """A wrapper's ``base_loss``: a `keras.losses.Loss`, or its serialised config (from_config).

    Raises:
        TypeError: anything else.
    """
    if isinstance(base_loss, Mapping):
        base_loss = keras.saving.deserialize_keras_object(base_loss)
    if not isinstance(base_loss, keras.losses.Loss):
        raise TypeError(
            f"base_loss must be a keras.losses.Loss instance; received {type(base_loss).__name__}"
        )
    return base_loss


@keras.saving.register_keras_serializable(package="pancseg_tf")
class ResizedTargetLoss(keras.losses.Loss):
    """Wraps a loss for a side output: pools the mask to the output's size, then applies it.

    Deep supervision compares lower-resolution side outputs with the mask; this wrapper does
    the resizing inside the loss (see `resize_target`), so one full-resolution mask feeds
    every output. Reduction and sample weights are the wrapped loss's. When the sizes match
    it is the wrapped loss itself.

    Args:
        base_loss: A `keras.losses.Loss` instance (or its serialised config).
        pooling: `"average"` (soft targets, default) or `"max"`; see `resize_target`.
        name: Name of the loss; defaults to `"resized_" + base_loss.name`.

    Call arguments:
        y_true: Mask, shape `(B, H, W, 1)` or `(B, T, H, W, 1)`.
        y_pred: Side output, shape `(B, H/f, W/g, 1)` or `(B, T, H/f, W/g, 1)`.
        sample_weight: Passed on to the wrapped loss.
    """

    def __init__(self, base_loss, pooling: str = "average", name: str | None = None):
        base_loss = _wrapped_loss(base_loss)
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}; received {pooling!r}")
        super().__init__(
            name=name or f"resized_{base_loss.name}",
            reduction=base_loss.reduction,
            dtype="float32",
        )
        self.base_loss = base_loss
        self.pooling = pooling

    def call(self, y_true, y_pred):
        return self.base_loss.call(resize_target(y_true, y_pred, self.pooling), y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        resized = resize_target(y_true, y_pred, self.pooling)
        return self.base_loss(resized, y_pred, sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {
            "base_loss": keras.saving.serialize_keras_object(self.base_loss),
            "pooling": self.pooling,
            "name": self.name,
        }


def sharpen(y_pred: TensorLike, sharpness: float) -> TensorLike:
    """`sigmoid(sharpness * logit(p))`: the same 0.5 boundary, confident values further out.

    With ``sharpness`` ``k > 1`` a probability of 0.05 (a logit of -2.9) becomes 1.4e-4 for
    ``k = 3``, while 0.5 stays 0.5. Computed as ``sigmoid(k (log p - log(1 - p)))`` with ``p``
    clipped to ``[1e-6, 1 - 1e-6]``, in float32.

    Args:
        y_pred: Probabilities, any shape and float dtype.
        sharpness: ``k >= 1``; 1 returns ``y_pred`` (as float32) unchanged.
    """
    p = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    if sharpness == 1.0:
        return p
    p = ops.clip(p, 1e-6, 1.0 - 1e-6)
    return ops.sigmoid(float(sharpness) * (ops.log(p) - ops.log1p(-p)))


@keras.saving.register_keras_serializable(package="pancseg_tf")
class SharpenedLoss(keras.losses.Loss):
    """Wraps a loss: applies it to `sharpen(y_pred, sharpness)` instead of the probabilities.

    Why stage 2 uses it (``train.stage2_loss_sharpness``): a stage-1 CNN trained with the
    Jaccard loss leaves a haze of low probabilities (0.02-0.1) over much of the slice, which
    counts in the soft union although it never crosses the 0.5 threshold; measured on a
    synthetic MRI cohort, the soft Jaccard index of the stage-1 CNN's output was 0.38 where
    the thresholded one was 0.80. The new layers of stage 2 then lower the loss fastest by
    pulling every logit down, which also shrinks the thresholded mask. Sharpened, the haze
    weighs almost nothing and the loss is left with the voxels near the decision boundary.
    The model's output, its threshold and what ``pancseg predict`` writes are unchanged.

    Args:
        base_loss: A `keras.losses.Loss` instance (or its serialised config).
        sharpness: ``k >= 1`` of `sharpen`.
        name: Name of the loss; defaults to `"sharpened_" + base_loss.name`.

    Call arguments:
        y_true: Masks, as the wrapped loss takes them.
        y_pred: Probabilities of the same shape.
        sample_weight: Passed on to the wrapped loss.
    """

    def __init__(self, base_loss, sharpness: float = 3.0, name: str | None = None):
        base_loss = _wrapped_loss(base_loss)
        if isinstance(sharpness, bool) or not float(sharpness) >= 1.0:
            raise ValueError(f"sharpness must be a number >= 1; received {sharpness!r}")
        super().__init__(
            name=name or f"sharpened_{base_loss.name}",
            reduction=base_loss.reduction,
            dtype="float32",
        )
        self.base_loss = base_loss
        self.sharpness = float(sharpness)

    def call(self, y_true, y_pred):
        return self.base_loss.call(y_true, sharpen(y_pred, self.sharpness))

    def __call__(self, y_true, y_pred, sample_weight=None):
        return self.base_loss(y_true, sharpen(y_pred, self.sharpness), sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {
            "base_loss": keras.saving.serialize_keras_object(self.base_loss),
            "sharpness": self.sharpness,
            "name": self.name,
        }


def deep_supervision_losses(
    base_loss: keras.losses.Loss,
    output_names: Sequence[str],
    weights: Sequence[float] | Mapping[str, float] | None = None,
    pooling: str = "average",
) -> tuple[dict[str, keras.losses.Loss], dict[str, float]]:
    """Losses and loss weights for a model whose outputs are a dict of full-size and side maps.

    Every output gets its own copy of `base_loss` wrapped in `ResizedTargetLoss`, so outputs
    at any integer fraction of the mask's size (and the full-size output, for which the
    wrapper changes nothing) all take the same full-size mask. Keras wants one target per
    output: map the data set's mask to a dict, e.g.
    `dataset.map(lambda x, y: (x, dict.fromkeys(output_names, y)))`.

    Example:

    ```python
    losses, loss_weights = deep_supervision_losses(
        JaccardLoss(), ["prob", "side_1", "side_2"], weights=[1.0, 0.5, 0.25]
    )
    model.compile(optimizer="adam", loss=losses, loss_weights=loss_weights)
    ```

    Args:
        base_loss: The loss applied to every output, e.g. `JaccardLoss()`.
        output_names: The model's output names, e.g. `["prob", "side_1", "side_2"]`.
        weights: One non-negative weight per output (a sequence in the order of
            `output_names`, or a dict by name); None weights every output 1.
        pooling: How masks are pooled to the side outputs' size; see `resize_target`.

    Returns:
        `(losses, loss_weights)`: two dicts keyed by output name, for `Model.compile`.

    Raises:
        ValueError: no output names, repeated names, or weights that do not match them.
    """
    names = list(output_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"output_names must be distinct and non-empty; received {names!r}")
    if weights is None:
        weight_list = [1.0] * len(names)
    elif isinstance(weights, Mapping):
        if set(weights) != set(names):
            raise ValueError(
                f"weights must have one entry per output {sorted(names)}; received keys "
                f"{sorted(weights)}"
            )
        weight_list = [weights[name] for name in names]
    else:
        weight_list = list(weights)
        if len(weight_list) != len(names):
            raise ValueError(
                f"weights must have one value per output ({len(names)}: {names}); "
                f"received {len(weight_list)}"
            )
    if any(not weight >= 0 for weight in weight_list):
        raise ValueError(f"weights must be non-negative; received {weight_list}")
    config = keras.saving.serialize_keras_object(base_loss)
    losses = {
        name: ResizedTargetLoss(keras.saving.deserialize_keras_object(config), pooling=pooling)
        for name in names
    }
    loss_weights = {name: float(weight) for name, weight in zip(names, weight_list)}
    return losses, loss_weights
