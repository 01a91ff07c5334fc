"""Volume metrics in millimetres for evaluating a predicted pancreas mask against the truth.

Everything here is plain numpy / scipy and runs on the host after prediction; the streaming
Keras metrics used during training live in ``pancseg_tf/metrics.py``.

Masks are boolean or integer arrays of the same shape, ``(I, J, K)`` for a volume (2-D arrays
work too); any non-zero voxel is foreground, as in MedPy. ``spacing`` is the voxel size in mm
along the same axes (``Volume.spacing``).

Definitions (P = predicted foreground, G = ground-truth foreground, |.| = voxel count):

- ``dice`` (DSC) = 2|P ∩ G| / (|P| + |G|); ``jaccard`` (JI) = |P ∩ G| / |P ∪ G|.
- ``precision`` = |P ∩ G| / |P|; ``recall`` = |P ∩ G| / |G|.
- ``relative_volume_difference`` (RVD) = (|P| - |G|) / |G|, signed: negative when the prediction
  is too small, positive when too large (MedPy's ``ravd``).
- Surfaces and distances exactly as MedPy 0.5 (``medpy.metric.binary``): a mask's surface is
  ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, connectivity))`` with scipy's
  default ``border_value=0`` (so foreground on the array border is surface); the directed
  distances from P to G are ``distance_transform_edt(~surface_G, sampling=spacing)`` read at
  P's surface voxels, in mm.
- ``hd95`` = 95th percentile (numpy's default linear interpolation) of the two directed
  distance arrays pooled together (``np.hstack``), as MedPy's ``hd95``. MONAI's
  ``compute_hausdorff_distance(percentile=95)`` takes the larger of the two directed 95th
  percentiles instead, which differs when the two directions disagree (a small false-positive
  blob far away moves MONAI's value more): compare numbers across tools with that in mind.
- ``assd`` = mean of the two directed distance arrays pooled together, i.e. every surface voxel
  of both masks weighs the same (Heimann et al. 2009). This is MedPy >= 0.5's ``assd``; MedPy
  0.4 averaged the two directed means instead, which weighs a small surface as much as a large
  one (MedPy issues #108 and #131 changed it). The two differ when the surfaces differ in size.

Both masks are cropped to their joint bounding box plus one voxel before erosion and distance
transform, which changes no value: outside the box both masks are background, which is also what
``binary_erosion`` (``border_value=0``) assumes beyond an array's edge, and every surface voxel
stays inside the crop, where the Euclidean distances do not depend on the array's extent. The
one-voxel margin keeps a real background layer around the objects so the crop does not even
lean on that default. A 512 x 512 x 200 CT then costs only its pancreas box (about 0.4 s).

Empty masks. Every metric returns a documented number for an empty mask instead of raising
(as MedPy does) or returning ``inf``; the single NaN (RVD of an empty truth, below) is counted
by ``summarize``, never dropped silently. ``evaluate_case`` adds ``pred_empty`` / ``gt_empty``
flags so tables can count or exclude such cases (``summarize(..., exclude_empty=True)``). Only
the low-level ``surface_distances`` reports the raw truth: ``inf`` for a surface with no partner.

==============================  =====================  ===============================
metric                          both masks empty       exactly one mask empty
==============================  =====================  ===============================
DSC, JI                         1                      0
precision                       1                      0
recall                          1                      0
RVD                             0                      -1 if P is empty; NaN if G is empty
HD95, ASSD (mm)                 0                      diagonal of the volume in mm
slice consistency               0                      see ``slice_consistency``
==============================  =====================  ===============================

Why: two empty masks agree perfectly, so they score as a perfect case; a missed or a
hallucinated organ is the worst outcome, so every score takes its worst value. A surface
distance to a surface that does not exist is infinite; instead of ``inf`` (which turns any mean
into ``inf``) it is the length of the volume's diagonal, sqrt(sum((shape_i * spacing_i)^2)),
larger than any distance two voxels of the array can have, so such a case always ranks below
every real one and a mean stays finite (the worst-case penalty some challenges use). Only RVD
with an empty truth has no sensible finite value (any volume is infinitely too large); it is
NaN, and ``summarize`` leaves it out of the statistics and reports it in ``n_undefined``.

What others do: nnU-Net v2 (``nnunetv2/evaluation/evaluate_predictions.py``) sets Dice and IoU
to NaN when both masks are empty and averages with ``np.nanmean``, so such cases drop out of
its means silently; one empty mask gives Dice 0 there too. MONAI's ``DiceMetric`` gives NaN for
an empty truth by default (``ignore_empty=True``) and, with ``ignore_empty=False``, 1 when both
are empty and 0 otherwise; its Hausdorff and surface distances warn and return ``inf`` or NaN
for an empty mask, and its reductions skip NaNs (reporting ``not_nans``). MedPy's own
``precision`` / ``recall`` return 0 on division by zero and its distances raise
``RuntimeError``. We keep every case in the table with a documented value instead.

Slice consistency: see ``slice_consistency``; the paper argues that its ConvLSTM makes the
segmentation consistent from slice to slice but never measures it, so this score does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from pancseg_tf.errors import PancsegError

__all__ = [
    "CASE_KEYS",
    "SUMMARY_KEYS",
    "SliceConsistency",
    "assd",
    "dice",
    "evaluate_case",
    "hd95",
    "jaccard",
    "precision",
    "recall",
    "relative_volume_difference",
    "slice_consistency",
    "summarize",
    "surface_distances",
]

# The metric columns of `evaluate_case` that `summarize` aggregates by default.
SUMMARY_KEYS: tuple[str, ...] = (
    "dsc",
    "ji",
    "precision",
    "recall",
    "hd95_mm",
    "assd_mm",
    "rvd",
    "slice_consistency",
)

# Every key of the dictionary `evaluate_case` returns, in table order.
CASE_KEYS: tuple[str, ...] = (
    *SUMMARY_KEYS,
    "slice_area_jump",
    "slice_overlap_jump",
    "pred_voxels",
    "gt_voxels",
    "pred_volume_ml",
    "gt_volume_ml",
    "pred_empty",
    "gt_empty",
)


# === Input checks ===


def _masks(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays of one shape, or a PancsegError saying what is wrong."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise PancsegError(
            f"prediction shape {pred.shape} and ground-truth shape {gt.shape} differ; "
            "expected two masks of the same shape"
        )
    if pred.ndim == 0:
        raise PancsegError("expected mask arrays with at least one axis, got scalars")
    for name, mask in (("prediction", pred), ("ground truth", gt)):
        # Floats are refused rather than thresholded here: a probability map needs a threshold
        # the caller chooses, and silently using != 0 would count every tiny probability.
        if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
            raise PancsegError(
                f"{name} mask has dtype {mask.dtype}; expected a boolean or integer mask "
                "(threshold probabilities first)"
            )
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def _spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """The voxel size as a float64 array of length ``ndim``, or a PancsegError."""
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise PancsegError(
            f"spacing {spacing!r} is not a sequence of numbers; expected {ndim} voxel sizes in mm"
        ) from None
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise PancsegError(
            f"spacing {tuple(np.atleast_1d(values).tolist())} is not valid for {ndim}-D masks; "
            f"expected {ndim} positive voxel sizes in mm, one per array axis"
        )
    return values


# === Overlap metrics ===


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(|P ∩ G|, |P|, |G|) of two boolean masks."""
    return (
        int(np.count_nonzero(pred & gt)),
        int(np.count_nonzero(pred)),
        int(np.count_nonzero(gt)),
    )


def _dice(tp: int, n_pred: int, n_gt: int) -> float:
    return 1.0 if n_pred + n_gt == 0 else 2.0 * tp / (n_pred + n_gt)


def _jaccard(tp: int, n_pred: int, n_gt: int) -> float:
    union = n_pred + n_gt - tp
    return 1.0 if union == 0 else tp / union


def _precision(tp: int, n_pred: int, n_gt: int) -> float:
    if n_pred == 0:
        return 1.0 if n_gt == 0 else 0.0
    return tp / n_pred


def _recall(tp: int, n_pred: int, n_gt: int) -> float:
    if n_gt == 0:
        return 1.0 if n_pred == 0 else 0.0
    return tp / n_gt


def _rvd(n_pred: int, n_gt: int) -> float:
    if n_gt == 0:
        return 0.0 if n_pred == 0 else math.nan
    return (n_pred - n_gt) / n_gt


def dice(pred: ArrayLike, gt: ArrayLike) -> float:
    """Dice similarity coefficient 2|P ∩ G| / (|P| + |G|).

    Args:
        pred: predicted mask, boolean or integer, any shape (e.g. ``(I, J, K)``).
        gt: ground-truth mask of the same shape.

    Returns:
        DSC in [0, 1]; 1 when both masks are empty, 0 when exactly one is.

    Raises:
        PancsegError: when the shapes differ or a mask is not boolean or integer.
    """
    return _dice(*_counts(*_masks(pred, gt)))


def jaccard(pred: ArrayLike, gt: ArrayLike) -> float:
    """Jaccard index (intersection over union) |P ∩ G| / |P ∪ G|, the paper's JI.

    Returns:
        JI in [0, 1]; 1 when both masks are empty, 0 when exactly one is.

    Arguments and errors as `dice`.
    """
    return _jaccard(*_counts(*_masks(pred, gt)))


def precision(pred: ArrayLike, gt: ArrayLike) -> float:
    """Precision (positive predictive value) |P ∩ G| / |P|.

    Returns:
        Precision in [0, 1]; for an empty prediction 1 when the truth is empty too (nothing to
        find, nothing claimed), else 0 (a missed organ is the worst case; MedPy also gives 0).

    Arguments and errors as `dice`.
    """
    return _precision(*_counts(*_masks(pred, gt)))


def recall(pred: ArrayLike, gt: ArrayLike) -> float:
    """Recall (sensitivity) |P ∩ G| / |G|.

    Returns:
        Recall in [0, 1]; for an empty truth 1 when the prediction is empty too, else 0 (a
        hallucinated organ is the worst case; MedPy also gives 0).

    Arguments and errors as `dice`.
    """
    return _recall(*_counts(*_masks(pred, gt)))


def relative_volume_difference(pred: ArrayLike, gt: ArrayLike) -> float:
    """Signed relative volume difference (|P| - |G|) / |G|.

    Negative when the prediction is smaller than the truth (-1 for an empty prediction),
    positive when larger; 0 is the right volume (which does not mean the right place). Same
    sign convention as MedPy's ``ravd``. Voxel counts suffice: the voxel volume cancels.

    Args:
        pred: predicted mask, boolean or integer, any shape (e.g. ``(I, J, K)``).
        gt: ground-truth mask of the same shape.

    Returns:
        RVD in [-1, inf); 0 when both masks are empty; NaN when only the truth is empty (no
        finite value is meaningful; ``summarize`` counts it in ``n_undefined``).

    Raises:
        PancsegError: when the shapes differ or a mask is not boolean or integer.
    """
    _, n_pred, n_gt = _counts(*_masks(pred, gt))
    return _rvd(n_pred, n_gt)


# === Surface distances ===


def _joint_box(pred: np.ndarray, gt: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of P ∪ G grown by ``margin`` voxels and clipped to the array."""
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(np.any(union, axis=others))
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + 1 + margin, union.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def _surface(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    # scipy's default border_value=0, as MedPy: foreground on the array border is surface.
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1)


def _directed(surface_from: np.ndarray, surface_to: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances in mm from each voxel of ``surface_from`` to the nearest of ``surface_to``."""
    return distance_transform_edt(~surface_to, sampling=spacing)[surface_from]


def _diagonal_mm(shape: tuple[int, ...], spacing: np.ndarray) -> float:
    """Length of the volume's diagonal in mm: more than any distance between two of its voxels."""
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * spacing) ** 2)))


def _surface_distance_pair(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: np.ndarray,
    connectivity: int,
    crop: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (P -> G, G -> P) of two non-empty boolean masks."""
    if crop:
        # Exact: beyond the joint box both masks are background (see the module docstring).
        box = _joint_box(pred, gt, margin=1)
        pred, gt = pred[box], gt[box]
    footprint = generate_binary_structure(pred.ndim, connectivity)
    surface_pred = _surface(pred, footprint)
    surface_gt = _surface(gt, footprint)
    return (
        _directed(surface_pred, surface_gt, spacing),
        _directed(surface_gt, surface_pred, spacing),
    )


def surface_distances(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: Sequence[float],
    *,
    connectivity: int = 1,
    crop: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The directed surface distances in mm between two masks, exactly as MedPy defines them.

    Surface = ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, connectivity))``;
    the distance of a surface voxel of one mask is the Euclidean distance in mm (``spacing``
    per axis) to the nearest surface voxel of the other mask.

    Args:
        pred: predicted mask, boolean or integer, shape ``(I, J, K)`` (or any other).
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along each array axis, e.g. ``(0.8, 0.8, 2.5)``.
        connectivity: passed to ``scipy.ndimage.generate_binary_structure``; 1 (faces only)
            is MedPy's default and ours.
        crop: work on the joint bounding box plus one voxel (same values, much faster);
            ``False`` only to check that claim.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: float64 arrays of shape ``(surface voxels of pred,)`` and
        ``(surface voxels of gt,)``, ordered as the voxels in C order. When a mask is empty its
        own array is empty and the other array holds ``inf`` (there is no surface to reach);
        ``hd95`` and ``assd`` turn that into the documented penalty.

    Raises:
        PancsegError: when the shapes differ, a mask is not boolean or integer, or the spacing
            does not have one positive value per axis.
    """
    pred, gt = _masks(pred, gt)
    spacing_mm = _spacing(spacing, pred.ndim)
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty or gt_empty:
        footprint = generate_binary_structure(pred.ndim, connectivity)
        n_pred = 0 if pred_empty else int(np.count_nonzero(_surface(pred, footprint)))
        n_gt = 0 if gt_empty else int(np.count_nonzero(_surface(gt, footprint)))
        to_gt = np.full(n_pred, np.inf)
        to_pred = np.full(n_gt, np.inf)
        return to_gt, to_pred
    return _surface_distance_pair(pred, gt, spacing_mm, connectivity, crop)


def _distance_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray, connectivity: int
) -> tuple[float, float]:
    """(HD95, ASSD) in mm of two boolean masks, with the documented empty-mask values."""
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return 0.0, 0.0
    if pred_empty or gt_empty:
        penalty = _diagonal_mm(pred.shape, spacing)
        return penalty, penalty
    to_gt, to_pred = _surface_distance_pair(pred, gt, spacing, connectivity, crop=True)
    pooled = np.hstack((to_gt, to_pred))
    return float(np.percentile(pooled, 95)), float(pooled.mean())


def hd95(
    pred: ArrayLike, gt: ArrayLike, spacing: Sequence[float], *, connectivity: int = 1
) -> float:
    """95th percentile Hausdorff distance in mm, as MedPy's ``hd95``.

    The 95th percentile of the directed surface distances of both directions pooled together
    (``np.hstack``), not the larger of two directed percentiles.

    Args:
        pred: predicted mask, boolean or integer, shape ``(I, J, K)`` (or any other).
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along each array axis, e.g. ``(0.8, 0.8, 2.5)``.
        connectivity: surface connectivity, see ``surface_distances``.

    Returns:
        HD95 in mm; 0 when both masks are empty; the volume's diagonal in mm
        (sqrt(sum((shape_i * spacing_i)^2))) when exactly one is empty.

    Raises:
        PancsegError: when the shapes differ, a mask is not boolean or integer, or the spacing
            does not have one positive value per axis.
    """
    pred, gt = _masks(pred, gt)
    return _distance_metrics(pred, gt, _spacing(spacing, pred.ndim), connectivity)[0]


def assd(
    pred: ArrayLike, gt: ArrayLike, spacing: Sequence[float], *, connectivity: int = 1
) -> float:
    """Average symmetric surface distance in mm, as MedPy (>= 0.5) ``assd``.

    The mean of the directed surface distances of both directions pooled together: the sum of
    all distances divided by the number of surface voxels of both masks.

    Returns:
        ASSD in mm; 0 when both masks are empty; the volume's diagonal in mm when exactly one is.

    Arguments and errors as `hd95`.
    """
    pred, gt = _masks(pred, gt)
    return _distance_metrics(pred, gt, _spacing(spacing, pred.ndim), connectivity)[1]


# === Slice consistency ===


@dataclasses.dataclass(frozen=True)
class SliceConsistency:
    """The slice-consistency score of a prediction and its two components.

    Attributes:
        score: ``(area_jump + overlap_jump) / 2``, in [0, 1]; 0 = the prediction changes from
            slice to slice no more than the truth does, higher = flicker.
        area_jump: mean over slice pairs of the excess area change, in units of the truth's
            mean slice area, each pair capped at 1; in [0, 1].
        overlap_jump: mean over slice pairs of the excess of (1 - 2-D Dice between the two
            slices); in [0, 1].
        num_pairs: number of consecutive slice pairs scored.
        first_slice: index of the first slice of the scored range (inclusive); -1 when both
            masks are empty.
        last_slice: index of the last slice of the scored range (inclusive); -1 when both
            masks are empty.
    """

    score: float
    area_jump: float
    overlap_jump: float
    num_pairs: int
    first_slice: int
    last_slice: int


def slice_consistency(
    pred: ArrayLike, gt: ArrayLike, axis: int = 2, *, margin: int = 1
) -> SliceConsistency:
    """How much more the prediction jumps between consecutive slices than the anatomy does.

    The paper's bidirectional ConvLSTM is meant to make the segmentation consistent along the
    slice axis, which DSC / JI cannot see: a slice dropped in the middle of the organ costs
    little Dice but is an obvious error. For each pair of consecutive slices (k, k+1) along
    ``axis`` within the truth's slice range grown by ``margin`` slices (clipped to the array):

    - area term: ``min(1, max(0, |A_P(k+1) - A_P(k)| - |A_G(k+1) - A_G(k)|) / mean_A_G)``, where
      A is a slice's foreground area in voxels and ``mean_A_G`` the truth's mean area over its
      non-empty slices: how much of a typical slice appears or vanishes beyond what the anatomy
      explains;
    - overlap term: ``max(0, J_P(k) - J_G(k))`` with ``J(k) = 1 - Dice2D(slice k, slice k+1)``
      (0 when both slices are empty): how much more the predicted shape changes than the
      truth's.

    ``area_jump`` and ``overlap_jump`` are the means of the two terms over the pairs, and
    ``score`` their average, so all three lie in [0, 1]. Only jumps in excess of the truth's
    count: a prediction that is smoothly wrong (eroded, shifted in-plane) scores 0 here and is
    punished by DSC and the distances instead. The score does not depend on the in-plane
    spacing, on a shift of both masks, or on empty slices added far from the organ. Spurious
    blobs outside the truth's slice range are left to precision and HD95.

    Empty masks: both empty gives 0 (with ``num_pairs=0``); an empty truth takes its slice range
    and mean area from the prediction, so a hallucinated organ scores by its own flicker; an
    empty prediction of a present organ cannot flicker and scores 0 (DSC says it failed). A
    volume with a single slice in range has no pairs and scores 0.

    Args:
        pred: predicted mask, boolean or integer, shape ``(I, J, K)`` (at least 2-D).
        gt: ground-truth mask of the same shape.
        axis: the slice axis (2 = K, axial for RAS-ordered volumes).
        margin: slices before the truth's first and after its last slice that are scored too,
            so the organ's appearance and disappearance count.

    Returns:
        A ``SliceConsistency`` with the score and its components.

    Raises:
        PancsegError: when the shapes differ, a mask is not boolean or integer, the masks have
            fewer than 2 axes, ``axis`` is out of range, or ``margin`` is negative.
    """
    pred, gt = _masks(pred, gt)
    if pred.ndim < 2:
        raise PancsegError(f"slice consistency needs masks with 2 or more axes, got {pred.ndim}")
    if not -pred.ndim <= axis < pred.ndim:
        raise PancsegError(f"slice axis {axis} is out of range for {pred.ndim}-D masks")
    if margin < 0:
        raise PancsegError(f"slice margin must be >= 0, got {margin}")

    axis = axis % pred.ndim
    in_plane = tuple(a for a in range(pred.ndim) if a != axis)
    pred_area = np.count_nonzero(pred, axis=in_plane)
    gt_area = np.count_nonzero(gt, axis=in_plane)

    reference_area = gt_area if gt_area.any() else pred_area
    present = np.flatnonzero(reference_area)
    if present.size == 0:
        return SliceConsistency(0.0, 0.0, 0.0, 0, -1, -1)
    first = max(int(present[0]) - margin, 0)
    last = min(int(present[-1]) + margin, pred.shape[axis] - 1)
    if last == first:
        return SliceConsistency(0.0, 0.0, 0.0, 0, first, last)
    mean_area = float(reference_area[present].mean())

    def jumps(mask: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Only the scored slab is reshaped to (slices, voxels per slice): one reduction each.
        slab = np.moveaxis(mask, axis, 0)[first : last + 1].reshape(last + 1 - first, -1)
        a = area[first : last + 1].astype(np.float64)
        overlap = np.count_nonzero(slab[:-1] & slab[1:], axis=1)
        total = a[:-1] + a[1:]
        dice_2d = np.divide(2.0 * overlap, total, out=np.ones_like(total), where=total > 0)
        return np.abs(np.diff(a)), 1.0 - dice_2d

    pred_area_jump, pred_shape_jump = jumps(pred, pred_area)
    gt_area_jump, gt_shape_jump = jumps(gt, gt_area)
    area_terms = np.minimum(1.0, np.maximum(0.0, pred_area_jump - gt_area_jump) / mean_area)
    overlap_terms = np.maximum(0.0, pred_shape_jump - gt_shape_jump)
    area_jump = float(area_terms.mean())
    overlap_jump = float(overlap_terms.mean())
    return SliceConsistency(
        score=(area_jump + overlap_jump) / 2.0,
        area_jump=area_jump,
        overlap_jump=overlap_jump,
        num_pairs=int(area_terms.size),
        first_slice=first,
        last_slice=last,
    )


# === Per case and summary ===


def evaluate_case(
    pred: ArrayLike,
    gt: ArrayLike,
    spacing: Sequence[float],
    *,
    slice_axis: int = 2,
    connectivity: int = 1,
    voxel_volume_mm3: float | None = None,
) -> dict[str, float | int | bool]:
    """Every metric of one case, as one table row.

    Args:
        pred: predicted mask, boolean or integer, shape ``(I, J, K)``.
        gt: ground-truth mask of the same shape.
        spacing: voxel size in mm along ``(I, J, K)`` (``Volume.spacing``).
        slice_axis: the slice axis for ``slice_consistency``.
        connectivity: surface connectivity for the distances, see ``surface_distances``.
        voxel_volume_mm3: one voxel's volume for the ``*_volume_ml`` columns, ``|det|`` of the
            affine's 3x3 part; None: the product of ``spacing``, which is the same for
            orthogonal axes and too large by 1 / cos(tilt) on a gantry-tilted (sheared) grid.
            The distances always treat the axes as orthogonal, ``spacing`` apart.

    Returns:
        A dict with the keys of ``CASE_KEYS``: ``dsc``, ``ji``, ``precision``, ``recall``,
        ``hd95_mm``, ``assd_mm``, ``rvd``, ``slice_consistency`` (floats, with the documented
        empty-mask values), ``slice_area_jump``, ``slice_overlap_jump`` (its components),
        ``pred_voxels``, ``gt_voxels`` (ints), ``pred_volume_ml``, ``gt_volume_ml`` (floats)
        and ``pred_empty``, ``gt_empty`` (bools).

    Raises:
        PancsegError: when the shapes differ, a mask is not boolean or integer, the spacing
            does not have one positive value per axis, or the voxel volume is not positive.
    """
    pred, gt = _masks(pred, gt)
    spacing_mm = _spacing(spacing, pred.ndim)
    tp, n_pred, n_gt = _counts(pred, gt)
    hd95_mm, assd_mm = _distance_metrics(pred, gt, spacing_mm, connectivity)
    consistency = slice_consistency(pred, gt, axis=slice_axis)
    if voxel_volume_mm3 is None:
        voxel_volume_mm3 = float(np.prod(spacing_mm))
    elif not (math.isfinite(voxel_volume_mm3) and voxel_volume_mm3 > 0):
        raise PancsegError(
            f"voxel volume {voxel_volume_mm3!r} mm^3 is not valid; expected a positive number"
        )
    voxel_ml = float(voxel_volume_mm3) / 1000.0
    return {
        "dsc": _dice(tp, n_pred, n_gt),
        "ji": _jaccard(tp, n_pred, n_gt),
        "precision": _precision(tp, n_pred, n_gt),
        "recall": _recall(tp, n_pred, n_gt),
        "hd95_mm": hd95_mm,
        "assd_mm": assd_mm,
        "rvd": _rvd(n_pred, n_gt),
        "slice_consistency": consistency.score,
        "slice_area_jump": consistency.area_jump,
        "slice_overlap_jump": consistency.overlap_jump,
        "pred_voxels": n_pred,
        "gt_voxels": n_gt,
        "pred_volume_ml": n_pred * voxel_ml,
        "gt_volume_ml": n_gt * voxel_ml,
        "pred_empty": n_pred == 0,
        "gt_empty": n_gt == 0,
    }


def summarize(
    rows: Iterable[Mapping[str, object]],
    keys: Sequence[str] = SUMMARY_KEYS,
    *,
    exclude_empty: bool = False,
) -> dict[str, dict[str, float | int]]:
    """The paper's table: mean ± std, min and max of each metric over cases.

    Nothing is dropped silently: a value that is NaN or None (RVD with an empty truth) is left
    out of that metric's statistics and counted in ``n_undefined``; cases whose prediction or
    truth is empty keep their documented values (they count in ``n_empty``) unless
    ``exclude_empty`` drops them, counted in ``n_excluded``.

    Args:
        rows: per-case dicts, e.g. from ``evaluate_case``; each must hold every key of ``keys``.
            The ``pred_empty`` / ``gt_empty`` flags are read when present.
        keys: the metric columns to summarise.
        exclude_empty: leave out cases whose prediction or truth is empty.

    Returns:
        ``{key: {"mean", "std", "min", "max", "n", "n_undefined", "n_empty", "n_excluded"}}``.
        ``std`` is the sample standard deviation (ddof=1), 0 for a single value; ``n`` is the
        number of values in the statistics; when ``n`` is 0 the four statistics are NaN.

    Raises:
        PancsegError: when there are no rows, a row lacks a key, or a value is not a number.
    """
    rows = list(rows)
    if not rows:
        raise PancsegError("no cases to summarise; expected at least one per-case row")
    summary: dict[str, dict[str, float | int]] = {}
    for key in keys:
        values: list[float] = []
        n_undefined = n_empty = n_excluded = 0
        for index, row in enumerate(rows):
            if key not in row:
                raise PancsegError(f"case row {index} has no {key!r}; it has {sorted(row)}")
            empty = bool(row.get("pred_empty", False)) or bool(row.get("gt_empty", False))
            if empty and exclude_empty:
                n_excluded += 1
                continue
            value = row[key]
            if value is None:
                n_undefined += 1
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise PancsegError(f"case row {index} has {key}={value!r}; expected a number")
            if math.isnan(value):
                n_undefined += 1
                continue
            n_empty += int(empty)
            values.append(float(value))
        array = np.asarray(values, dtype=np.float64)
        n = int(array.size)
        summary[key] = {
            "mean": float(array.mean()) if n else math.nan,
            "std": float(array.std(ddof=1)) if n > 1 else (0.0 if n else math.nan),
            "min": float(array.min()) if n else math.nan,
            "max": float(array.max()) if n else math.nan,
            "n": n,
            "n_undefined": n_undefined,
            "n_empty": n_empty,
            "n_excluded": n_excluded,
        }
    return summary
