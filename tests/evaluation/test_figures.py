"""The report's figures: which slices a montage shows, its size, and the radiological view."""

import io

import numpy as np
import pytest
from PIL import Image

from pancseg_tf.evaluation.figures import (
    GT_COLOUR,
    MONTAGE_MIN_WIDTH,
    PRED_COLOUR,
    canonical_case,
    montage_png,
    render_slice,
    scroller_slices,
)
from pancseg_tf.io import Volume

SHAPE = (40, 32, 30)  # (I, J, K), RAS


def case(pred_extra=None, affine=None):
    """A cuboid "pancreas" on slices 8-19 (k), predicted exactly, plus ``pred_extra``."""
    gt = np.zeros(SHAPE, bool)
    gt[10:20, 12:18, 8:20] = True
    pred = gt.copy()
    if pred_extra is not None:
        pred |= pred_extra
    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    return canonical_case(gt, pred, None, Volume(gt.astype(np.uint8), affine))


def blob(k_range, i=(30, 33), j=(5, 8)):
    mask = np.zeros(SHAPE, bool)
    mask[i[0] : i[1], j[0] : j[1], k_range[0] : k_range[1]] = True
    return mask


# (false-positive slices, expected false-positive tiles): a blob away from the pancreas, one
# inside its slice range, none.
FALSE_POSITIVES = [
    pytest.param((24, 27), {24, 25, 26}, id="slices-without-pancreas"),
    pytest.param((12, 13), {12}, id="slice-with-pancreas"),
    pytest.param(None, set(), id="none"),
]


@pytest.mark.parametrize(("k_range", "slices"), FALSE_POSITIVES)
def test_montage_shows_a_false_positive_slice(k_range, slices):
    volume = case(None if k_range is None else blob(k_range))
    montage = montage_png("a", volume, None, dsc=0.9)

    reasons = {tile.k: tile.reason for tile in montage.tiles}
    shown = {k for k, reason in reasons.items() if reason.startswith("false positive")}
    assert (shown & slices) if slices else not shown
    assert all(reasons[k] == "pancreas" and 8 <= k < 20 for k in set(reasons) - shown)
    assert len(montage.tiles) == 12
    assert [tile.k for tile in montage.tiles] == sorted(reasons, reverse=True)  # superior first
    image = Image.open(io.BytesIO(montage.png))
    assert image.size == (montage.width, montage.height)
    assert montage.width >= MONTAGE_MIN_WIDTH >= 1000
    for tile in montage.tiles:
        assert 0 <= tile.left < tile.right <= montage.width
        assert 0 <= tile.top < tile.bottom <= montage.height


def test_montage_tiles_name_the_stored_slice_of_a_flipped_file():
    # k runs inferior -> superior in RAS order; a file stored head first numbers it backwards,
    # and the captions use the file's numbers: the blob is on stored slices 24-26.
    flipped = np.diag([0.8, 0.8, -2.5, 1.0])
    montage = montage_png("a", case(blob((24, 27)), flipped), None, dsc=0.9)
    tiles = [tile for tile in montage.tiles if tile.reason.startswith("false positive")]
    assert tiles and all(24 <= tile.stored <= 26 for tile in tiles)
    assert all(tile.k == SHAPE[2] - 1 - tile.stored for tile in montage.tiles)


def test_render_slice_is_radiological_and_square_in_mm():
    # A prediction-only marker at the patient's right-anterior corner shows at the top left.
    gt = np.zeros((20, 10, 3), bool)
    pred = np.zeros_like(gt)
    pred[16:20, 8:10, 1] = True  # high i = right, high j = anterior
    affine = np.diag([1.0, 2.0, 3.0, 1.0])  # the box is 20 mm wide and 20 mm tall
    volume = canonical_case(gt, pred, None, Volume(gt.astype(np.uint8), affine))
    rgb = render_slice(volume, 1, (slice(0, 20), slice(0, 10)), None, width=200)

    assert rgb.shape == (200, 200, 3) and rgb.dtype == np.uint8
    red = np.all(rgb == np.round(np.array(PRED_COLOUR) * 255), axis=2)
    rows, columns = np.nonzero(red)
    assert rows.max() < 40 and columns.max() < 40  # 4 mm x 4 mm in the top-left corner
    assert not np.all(rgb == np.round(np.array(GT_COLOUR) * 255), axis=2).any()


def test_scroller_covers_both_masks_with_two_more_slices():
    volume = case(blob((24, 27)))
    slices = scroller_slices(volume)
    assert slices == list(range(28, 5, -1))  # masks on 8-26, plus 6-7 and 27-28
    assert scroller_slices(case(np.zeros(SHAPE, bool))) == list(range(21, 5, -1))
