"""Volume metrics: hand-computed tables, agreement with MedPy, empty cases, slice consistency."""

import math

import medpy.metric.binary as medpy_binary
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation import (
    CASE_KEYS,
    SUMMARY_KEYS,
    assd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    precision,
    recall,
    relative_volume_difference,
    slice_consistency,
    summarize,
    surface_distances,
)

# MedPy's private helper that defines the directed distances; getattr avoids name mangling.
medpy_surface_distances = getattr(medpy_binary, "__surface_distances")


def _blob(rng: np.random.Generator, shape, sigma=2.0, level=0.1) -> np.ndarray:
    """A random smooth blob: Gaussian-smoothed noise thresholded (bool, ``shape``)."""
    return gaussian_filter(rng.standard_normal(shape), sigma) > level


def _cylinder(shape=(16, 16, 16), centre=(8, 8), radius=4, slices=(3, 13)) -> np.ndarray:
    """A disc of ``radius`` in every slice k in [slices[0], slices[1]) (bool, ``shape``)."""
    i, j = np.mgrid[: shape[0], : shape[1]]
    disc = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2
    mask = np.zeros(shape, dtype=bool)
    mask[:, :, slices[0] : slices[1]] = disc[:, :, None]
    return mask


# === Overlap metrics: hand-computed tables ===

# (pred, gt) -> (dsc, ji, precision, recall, rvd); tp = |P ∩ G|.
OVERLAP_CASES = [
    pytest.param(
        # (2, 3): tp=1, |P|=2, |G|=2
        [[1, 1, 0], [0, 0, 0]],
        [[1, 0, 0], [1, 0, 0]],
        (0.5, 1 / 3, 0.5, 0.5, 0.0),
        id="2d-half-overlap",
    ),
    pytest.param(
        # (3, 3): P is the top row of G's two rows: tp=3, |P|=3, |G|=6
        [[1, 1, 1], [0, 0, 0], [0, 0, 0]],
        [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
        (2 / 3, 0.5, 1.0, 0.5, -0.5),
        id="2d-pred-inside-gt",
    ),
    pytest.param(
        # (2, 2, 2): P everything, G two voxels: tp=2, |P|=8, |G|=2
        np.ones((2, 2, 2), dtype=np.uint8),
        [[[1, 0], [0, 0]], [[0, 0], [0, 1]]],
        (0.4, 0.25, 0.25, 1.0, 3.0),
        id="3d-pred-covers-gt",
    ),
    pytest.param(
        # (2, 2, 2) integer labels: non-zero (2) is foreground; tp=1, |P|=2, |G|=3
        [[[2, 0], [0, 0]], [[0, 0], [2, 0]]],
        [[[1, 1], [0, 0]], [[0, 0], [0, 1]]],
        (0.4, 0.25, 0.5, 1 / 3, -1 / 3),
        id="3d-integer-labels",
    ),
    pytest.param(
        # (1, 2, 3) disjoint: tp=0, |P|=1, |G|=2
        [[[1, 0, 0], [0, 0, 0]]],
        [[[0, 0, 0], [0, 1, 1]]],
        (0.0, 0.0, 0.0, 0.0, -0.5),
        id="3d-disjoint",
    ),
]


@pytest.mark.parametrize("pred, gt, expected", OVERLAP_CASES)
def test_overlap_metrics_hand_computed(pred, gt, expected):
    got = (
        dice(pred, gt),
        jaccard(pred, gt),
        precision(pred, gt),
        recall(pred, gt),
        relative_volume_difference(pred, gt),
    )
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pred, gt, expected", OVERLAP_CASES)
def test_overlap_metrics_agree_with_medpy(pred, gt, expected):
    pred, gt = np.asarray(pred), np.asarray(gt)
    assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt))
    assert jaccard(pred, gt) == pytest.approx(medpy_binary.jc(pred, gt))
    assert precision(pred, gt) == pytest.approx(medpy_binary.precision(pred, gt))
    assert recall(pred, gt) == pytest.approx(medpy_binary.recall(pred, gt))
    assert relative_volume_difference(pred, gt) == pytest.approx(medpy_binary.ravd(pred, gt))


# === Surface distances: hand-computed ===


def test_surface_distances_two_points_anisotropic():
    # (5, 8): one pixel each, 3 columns apart at 0.5 mm per column -> 1.5 mm both ways.
    pred = np.zeros((5, 8), dtype=bool)
    gt = np.zeros((5, 8), dtype=bool)
    pred[2, 5] = True
    gt[2, 2] = True
    to_gt, to_pred = surface_distances(pred, gt, (1.0, 0.5))
    np.testing.assert_array_equal(to_gt, [1.5])
    np.testing.assert_array_equal(to_pred, [1.5])
    assert hd95(pred, gt, (1.0, 0.5)) == 1.5
    assert assd(pred, gt, (1.0, 0.5)) == 1.5


def test_surface_of_a_square_leaves_out_its_centre():
    # (5, 5): a 3x3 square has 8 surface pixels with face connectivity; its copy is 0 away.
    square = np.zeros((5, 5), dtype=bool)
    square[1:4, 1:4] = True
    to_gt, to_pred = surface_distances(square, square, (1.0, 1.0))
    assert to_gt.shape == to_pred.shape == (8,)
    assert not to_gt.any()


def test_assd_pools_voxels_rather_than_averaging_directions():
    # (1, 7): P = pixel 0, G = pixels 0..4; in a one-row array every pixel of G is surface.
    # P -> G: [0]; G -> P: [0, 1, 2, 3, 4]; pooled mean 10/6, while the mean of the two
    # directed means (MedPy 0.4) would be (0 + 2) / 2 = 1.
    pred = np.zeros((1, 7), dtype=bool)
    gt = np.zeros((1, 7), dtype=bool)
    pred[0, 0] = True
    gt[0, 0:5] = True
    assert assd(pred, gt, (1.0, 1.0)) == pytest.approx(10 / 6)
    assert assd(pred, gt, (1.0, 1.0)) == pytest.approx(medpy_binary.assd(pred, gt))


# === Surface distances: agreement with MedPy on random anisotropic blobs ===

RANDOM_CASES = [
    # (seed, shape, spacing, touch_border)
    (0, (24, 28, 12), (0.8, 0.8, 2.5), False),
    (1, (24, 28, 12), (0.8, 0.8, 2.5), True),
    (2, (20, 20, 16), (0.7, 0.7, 1.0), False),
    (3, (20, 20, 16), (0.7, 0.7, 1.0), True),
    (4, (32, 24, 10), (0.66, 0.66, 3.0), False),
    (5, (32, 24, 10), (0.66, 0.66, 3.0), True),
    (6, (18, 26, 14), (1.5, 0.9, 2.0), False),
    (7, (18, 26, 14), (1.5, 0.9, 2.0), True),
    (8, (28, 28, 8), (0.8, 0.8, 5.0), True),
    (9, (16, 16, 16), (1.0, 1.0, 1.0), False),
]


def _random_pair(seed, shape, touch_border):
    """Two correlated random blobs (bool, ``shape``), optionally reaching the array border."""
    rng = np.random.default_rng(seed)
    gt = _blob(rng, shape)
    # A prediction that is mostly right: the truth perturbed by its own smooth noise.
    pred = gt ^ (gaussian_filter(rng.standard_normal(shape), 1.5) > 0.35)
    if touch_border:
        gt[0, 2:9, 1:6] = True
        pred[-1, :, -1] = True
        gt[:, -1, 0] = True
    else:
        inner = tuple(slice(2, s - 2) for s in shape)
        keep = np.zeros(shape, dtype=bool)
        keep[inner] = True
        gt &= keep
        pred &= keep
    assert gt.any() and pred.any()
    return pred, gt


def _touches_border(mask: np.ndarray) -> bool:
    return any(
        np.take(mask, index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1)
    )


@pytest.mark.parametrize("seed, shape, spacing, touch_border", RANDOM_CASES)
def test_distances_agree_with_medpy(seed, shape, spacing, touch_border):
    pred, gt = _random_pair(seed, shape, touch_border)
    assert _touches_border(pred | gt) == touch_border
    assert hd95(pred, gt, spacing) == pytest.approx(medpy_binary.hd95(pred, gt, spacing), rel=1e-6)
    assert assd(pred, gt, spacing) == pytest.approx(medpy_binary.assd(pred, gt, spacing), rel=1e-6)
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(to_gt, medpy_surface_distances(pred, gt, spacing), rtol=1e-6)
    np.testing.assert_allclose(to_pred, medpy_surface_distances(gt, pred, spacing), rtol=1e-6)


@pytest.mark.parametrize("connectivity", [2, 3])
def test_distances_agree_with_medpy_for_other_connectivities(connectivity):
    pred, gt = _random_pair(11, (20, 22, 12), touch_border=True)
    spacing = (0.8, 0.8, 2.5)
    assert hd95(pred, gt, spacing, connectivity=connectivity) == pytest.approx(
        medpy_binary.hd95(pred, gt, spacing, connectivity), rel=1e-6
    )
    assert assd(pred, gt, spacing, connectivity=connectivity) == pytest.approx(
        medpy_binary.assd(pred, gt, spacing, connectivity), rel=1e-6
    )


@pytest.mark.parametrize("seed, shape, spacing, touch_border", RANDOM_CASES[:4])
def test_bounding_box_crop_changes_nothing(seed, shape, spacing, touch_border):
    pred, gt = _random_pair(seed, shape, touch_border)
    cropped = surface_distances(pred, gt, spacing, crop=True)
    full = surface_distances(pred, gt, spacing, crop=False)
    for a, b in zip(cropped, full):
        np.testing.assert_array_equal(a, b)


def test_crop_of_small_objects_in_a_large_volume_changes_nothing():
    # (64, 64, 40): two small objects far from the border and one touching it; the crop box
    # is a fraction of the volume.
    shape = (64, 64, 40)
    pred = np.zeros(shape, dtype=bool)
    gt = np.zeros(shape, dtype=bool)
    gt[20:30, 22:31, 10:16] = True
    pred[21:32, 20:30, 11:18] = True
    pred[0:3, 25:27, 12:14] = True
    spacing = (0.7, 0.7, 2.5)
    cropped = surface_distances(pred, gt, spacing, crop=True)
    full = surface_distances(pred, gt, spacing, crop=False)
    for a, b in zip(cropped, full):
        np.testing.assert_array_equal(a, b)
    assert hd95(pred, gt, spacing) == pytest.approx(medpy_binary.hd95(pred, gt, spacing))


# === Empty masks ===

SHAPE = (4, 5, 6)
SPACING = (1.0, 2.0, 0.5)
DIAGONAL = math.sqrt(4.0**2 + 10.0**2 + 3.0**2)  # sqrt(sum((shape * spacing)^2)) in mm
EMPTY = np.zeros(SHAPE, dtype=bool)
SOME = np.zeros(SHAPE, dtype=bool)
SOME[1:3, 1:4, 2:5] = True

# pred, gt -> (dsc, ji, precision, recall, rvd, hd95, assd)
EMPTY_CASES = [
    pytest.param(EMPTY, EMPTY, (1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0), id="both-empty"),
    pytest.param(EMPTY, SOME, (0.0, 0.0, 0.0, 0.0, -1.0, DIAGONAL, DIAGONAL), id="pred-empty"),
    pytest.param(SOME, EMPTY, (0.0, 0.0, 0.0, 0.0, math.nan, DIAGONAL, DIAGONAL), id="gt-empty"),
]


@pytest.mark.parametrize("pred, gt, expected", EMPTY_CASES)
def test_empty_masks_have_documented_values(pred, gt, expected):
    got = (
        dice(pred, gt),
        jaccard(pred, gt),
        precision(pred, gt),
        recall(pred, gt),
        relative_volume_difference(pred, gt),
        hd95(pred, gt, SPACING),
        assd(pred, gt, SPACING),
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("pred, gt, expected", EMPTY_CASES)
def test_empty_case_row_is_flagged(pred, gt, expected):
    row = evaluate_case(pred, gt, SPACING)
    assert row["pred_empty"] is (not pred.any())
    assert row["gt_empty"] is (not gt.any())
    got = [row[k] for k in ("dsc", "ji", "precision", "recall", "rvd", "hd95_mm", "assd_mm")]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, equal_nan=True)
    assert math.isfinite(row["slice_consistency"])


def test_diagonal_penalty_exceeds_every_real_distance():
    # (4, 5, 6): the two opposite corner voxels are the farthest pair the array allows.
    pred = np.zeros(SHAPE, dtype=bool)
    gt = np.zeros(SHAPE, dtype=bool)
    pred[0, 0, 0] = True
    gt[-1, -1, -1] = True
    assert hd95(pred, gt, SPACING) < hd95(EMPTY, gt, SPACING) == pytest.approx(DIAGONAL)


def test_surface_distances_of_an_empty_mask_are_empty_and_infinite():
    to_gt, to_pred = surface_distances(EMPTY, SOME, SPACING)
    assert to_gt.shape == (0,)
    # SOME is a 2x3x3 block, two voxels thick: every voxel is on its surface.
    assert to_pred.shape == (int(np.count_nonzero(SOME)),)
    assert np.all(np.isinf(to_pred))
    both = surface_distances(EMPTY, EMPTY, SPACING)
    assert both[0].shape == both[1].shape == (0,)


# === Slice consistency ===


def test_slice_consistency_hand_computed_missing_slice():
    # (2, 2, 4) slices along axis 2; G full in all 4 slices (areas 4, 4, 4, 4); P lacks
    # slice 1 (areas 4, 0, 4, 4). Pairs (0,1), (1,2), (2,3): area terms 4/4, 4/4, 0;
    # overlap terms 1, 1, 0 -> both components 2/3, score 2/3.
    gt = np.ones((2, 2, 4), dtype=bool)
    pred = gt.copy()
    pred[:, :, 1] = False
    result = slice_consistency(pred, gt)
    assert result.area_jump == pytest.approx(2 / 3)
    assert result.overlap_jump == pytest.approx(2 / 3)
    assert result.score == pytest.approx(2 / 3)
    assert (result.num_pairs, result.first_slice, result.last_slice) == (3, 0, 3)


def test_slice_consistency_hand_computed_half_slice():
    # (2, 2, 4): as above but P keeps half of slice 1 (area 2, inside the truth).
    # Area terms 2/4, 2/4, 0 -> 1/3; 2-D Dice 2*2/(4+2) = 2/3 -> overlap terms 1/3, 1/3, 0
    # -> 2/9; score (1/3 + 2/9) / 2 = 5/18.
    gt = np.ones((2, 2, 4), dtype=bool)
    pred = gt.copy()
    pred[1, :, 1] = False
    result = slice_consistency(pred, gt)
    assert result.area_jump == pytest.approx(1 / 3)
    assert result.overlap_jump == pytest.approx(2 / 9)
    assert result.score == pytest.approx(5 / 18)


def test_slice_consistency_of_the_truth_itself_is_zero():
    gt = _blob(np.random.default_rng(3), (24, 24, 12))
    result = slice_consistency(gt, gt)
    assert result.score == result.area_jump == result.overlap_jump == 0.0
    assert result.num_pairs > 0


def test_missing_middle_slice_is_worse_than_a_smooth_error():
    # (16, 16, 16): a cylinder over slices 3..12. An eroded prediction (radius 3 instead of 4)
    # has a lower DSC but changes between slices exactly as the truth does; dropping one
    # middle slice keeps a higher DSC but flickers.
    gt = _cylinder()
    eroded = _cylinder(radius=3)
    missing = gt.copy()
    missing[:, :, 8] = False
    assert dice(eroded, gt) < dice(missing, gt)
    assert slice_consistency(eroded, gt).score == 0.0
    assert slice_consistency(missing, gt).score > 0.1


def test_alternating_in_plane_shift_flickers_while_a_constant_shift_does_not():
    gt = _cylinder()
    shifted = _cylinder(centre=(9, 8))
    alternating = gt.copy()
    alternating[:, :, 4:12:2] = shifted[:, :, 4:12:2]
    assert slice_consistency(shifted, gt).score == 0.0
    assert slice_consistency(alternating, gt).overlap_jump > 0.0
    assert slice_consistency(alternating, gt).area_jump == 0.0


def test_slice_consistency_is_shift_and_field_of_view_invariant():
    rng = np.random.default_rng(5)
    gt = np.zeros((20, 20, 24), dtype=bool)
    gt[4:16, 4:16, 6:14] = _blob(rng, (12, 12, 8), sigma=1.5, level=-0.2)
    pred = gt & ~(gaussian_filter(rng.standard_normal(gt.shape), 1.0) > 0.15)
    reference = slice_consistency(pred, gt).score
    assert reference > 0.0
    for shift in [(2, 0, 0), (0, -3, 0), (0, 0, 4), (1, 1, -3)]:
        moved = slice_consistency(np.roll(pred, shift, (0, 1, 2)), np.roll(gt, shift, (0, 1, 2)))
        assert moved.score == pytest.approx(reference)
    padded = [np.pad(m, ((3, 3), (0, 5), (10, 10))) for m in (pred, gt)]
    assert slice_consistency(*padded).score == pytest.approx(reference)


def test_slice_axis_follows_the_array():
    rng = np.random.default_rng(6)
    gt = _blob(rng, (14, 16, 10), sigma=1.5)
    pred = _blob(rng, (14, 16, 10), sigma=1.5)
    expected = slice_consistency(pred, gt, axis=2)
    moved = slice_consistency(np.moveaxis(pred, 2, 0), np.moveaxis(gt, 2, 0), axis=0)
    assert moved == expected
    assert slice_consistency(pred, gt, axis=-1) == expected


def test_slice_consistency_stays_in_unit_interval_on_noise():
    rng = np.random.default_rng(7)
    gt = _cylinder()
    noise = rng.random(gt.shape) < 0.5
    result = slice_consistency(noise, gt)
    for value in (result.score, result.area_jump, result.overlap_jump):
        assert 0.0 < value <= 1.0


def test_slice_consistency_empty_cases():
    both = slice_consistency(EMPTY, EMPTY)
    assert (both.score, both.num_pairs, both.first_slice) == (0.0, 0, -1)
    # One predicted slice and an empty truth: the pairs entering and leaving it jump fully.
    lone = np.zeros(SHAPE, dtype=bool)
    lone[1:3, 1:3, 3] = True
    hallucinated = slice_consistency(lone, EMPTY)
    assert (hallucinated.score, hallucinated.num_pairs) == (1.0, 2)
    # A missed organ: the prediction never jumps, so it does not flicker.
    assert slice_consistency(EMPTY, SOME).score == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"axis": 3}, "slice axis 3"), ({"axis": -4}, "slice axis -4"), ({"margin": -1}, "margin")],
)
def test_slice_consistency_rejects_bad_options(kwargs, message):
    with pytest.raises(PancsegError, match=message):
        slice_consistency(SOME, SOME, **kwargs)


# === Per case ===


def test_evaluate_case_matches_the_single_metrics():
    pred, gt = _random_pair(1, (24, 28, 12), touch_border=True)
    spacing = (0.8, 0.8, 2.5)
    row = evaluate_case(pred.astype(np.uint8), gt.astype(np.int32), spacing)
    assert tuple(row) == CASE_KEYS
    assert row["dsc"] == dice(pred, gt)
    assert row["ji"] == jaccard(pred, gt)
    assert row["precision"] == precision(pred, gt)
    assert row["recall"] == recall(pred, gt)
    assert row["rvd"] == relative_volume_difference(pred, gt)
    assert row["hd95_mm"] == hd95(pred, gt, spacing)
    assert row["assd_mm"] == assd(pred, gt, spacing)
    consistency = slice_consistency(pred, gt)
    assert row["slice_consistency"] == consistency.score
    assert row["slice_area_jump"] == consistency.area_jump
    assert row["slice_overlap_jump"] == consistency.overlap_jump
    assert row["pred_voxels"] == np.count_nonzero(pred)
    assert row["gt_voxels"] == np.count_nonzero(gt)
    assert row["gt_volume_ml"] == pytest.approx(np.count_nonzero(gt) * 0.8 * 0.8 * 2.5 / 1000)
    assert row["pred_empty"] is False and row["gt_empty"] is False


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(PancsegError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        evaluate_case(SOME, np.zeros((4, 5, 7), dtype=bool), SPACING)
    with pytest.raises(PancsegError, match=r"\(2, 2\).*\(2, 3\)"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, math.nan, 1.0), "abc"]
)
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(PancsegError, match="spacing"):
        hd95(SOME, SOME, spacing)


def test_probability_maps_are_refused():
    with pytest.raises(PancsegError, match="float32.*boolean or integer"):
        dice(SOME.astype(np.float32), SOME)


# === Summary ===


def test_summarize_hand_checked_table():
    # dsc 0.8, 0.6, 0.7 -> mean 0.7, sample std 0.1; rvd has one undefined value (empty truth).
    rows = [
        {"dsc": 0.8, "rvd": 0.25, "pred_empty": False, "gt_empty": False},
        {"dsc": 0.6, "rvd": -0.25, "pred_empty": False, "gt_empty": False},
        {"dsc": 0.0, "rvd": math.nan, "pred_empty": False, "gt_empty": True},
        {"dsc": 0.7, "rvd": 0.5, "pred_empty": False, "gt_empty": False},
    ]
    table = summarize(rows, keys=("dsc", "rvd"))
    assert table["dsc"] == pytest.approx(
        {
            "mean": 0.525,
            "std": math.sqrt((0.275**2 + 0.075**2 + 0.525**2 + 0.175**2) / 3),
            "min": 0.0,
            "max": 0.8,
            "n": 4,
            "n_undefined": 0,
            "n_empty": 1,
            "n_excluded": 0,
        }
    )
    assert table["rvd"] == pytest.approx(
        {
            "mean": 0.5 / 3,
            "std": math.sqrt(((0.25 - 0.5 / 3) ** 2 + (0.25 + 0.5 / 3) ** 2 + (1 / 3) ** 2) / 2),
            "min": -0.25,
            "max": 0.5,
            "n": 3,
            "n_undefined": 1,
            "n_empty": 0,
            "n_excluded": 0,
        }
    )
    clean = summarize(rows, keys=("dsc",), exclude_empty=True)["dsc"]
    assert clean == pytest.approx(
        {
            "mean": 0.7,
            "std": 0.1,
            "min": 0.6,
            "max": 0.8,
            "n": 3,
            "n_undefined": 0,
            "n_empty": 0,
            "n_excluded": 1,
        }
    )


def test_summarize_evaluated_cases_covers_every_metric():
    rng = np.random.default_rng(8)
    rows = []
    for _ in range(3):
        gt = _blob(rng, (16, 16, 8))
        rows.append(evaluate_case(gt ^ _blob(rng, (16, 16, 8), level=1.0), gt, (0.8, 0.8, 2.5)))
    rows.append(evaluate_case(EMPTY, SOME, SPACING))
    table = summarize(rows)
    assert tuple(table) == SUMMARY_KEYS
    assert all(entry["n"] == 4 and entry["n_empty"] == 1 for entry in table.values())
    assert table["dsc"]["min"] == 0.0
    assert table["hd95_mm"]["max"] == pytest.approx(DIAGONAL)


def test_summarize_single_case_and_all_undefined():
    table = summarize([{"dsc": 0.9, "rvd": math.nan}], keys=("dsc", "rvd"))
    assert (table["dsc"]["mean"], table["dsc"]["std"], table["dsc"]["n"]) == (0.9, 0.0, 1)
    assert table["rvd"]["n"] == 0 and table["rvd"]["n_undefined"] == 1
    assert math.isnan(table["rvd"]["mean"])


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no cases"),
        ([{"ji": 0.5}], "row 0 has no 'dsc'"),
        ([{"dsc": "high"}], "dsc='high'"),
        ([{"dsc": True}], "dsc=True"),
    ],
)
def test_summarize_refuses_bad_rows(rows, message):
    with pytest.raises(PancsegError, match=message):
        summarize(rows, keys=("dsc",))
