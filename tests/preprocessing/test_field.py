"""The model's in-plane field against the body: what a plan leaves out, and the wider field that
holds the whole body box (`GeometryPlan.covering_body`), on a synthetic wide body and on NIH
Pancreas-CT 0002 at the quick grid (1.6 mm, 128 x 128: a 205 mm field)."""

import numpy as np
import pytest

from pancseg_tf.io.volume import Volume
from pancseg_tf.preprocessing import plan_geometry


def wide_body(width_mm: float = 320.0, depth_mm: float = 200.0, spacing: float = 2.0) -> Volume:
    """Air around an elliptical soft-tissue body, 2 mm voxels, a flipped axis (LPS-like)."""
    shape = (200, 150, 12)
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing
    body = (x[:, None] / (width_mm / 2)) ** 2 + (y[None, :] / (depth_mm / 2)) ** 2 <= 1.0
    array = np.where(body[:, :, None], 40.0, -1000.0).astype(np.float32) * np.ones(shape[2])
    affine = np.diag([-spacing, spacing, 2.5, 1.0])
    return Volume(array=array.astype(np.int16), affine=affine, modality="ct")


def test_field_box_is_what_the_inverse_fills():
    volume = wide_body()
    plan = plan_geometry(volume, spacing_mm=4.0, slice_spacing_mm=2.5, size=(32, 32))
    filled = plan.reorientation.apply(plan.inverse(np.ones(plan.model_shape, np.float32)) > 0)
    x0, x1, y0, y1 = plan.field_box
    expected = np.zeros(filled.shape, bool)
    expected[x0:x1, y0:y1] = True
    assert np.array_equal(filled, expected)
    # 32 pixels of 4 mm = 128 mm against a 320 x 200 mm body (+ 10 mm margins): cut off.
    assert not plan.covers_body


def test_covering_body_holds_the_body_box_at_the_same_spacing():
    volume = wide_body()
    plan = plan_geometry(volume, spacing_mm=4.0, slice_spacing_mm=2.5, size=(32, 32))
    wide = plan.covering_body()
    assert wide.covers_body and wide.spacing_mm == plan.spacing_mm
    assert wide.size[0] >= 32 and wide.size[1] >= 32
    # The fewest pixels: 340 x 220 mm of body box at 4 mm, within a pixel of rounding.
    i0, i1, j0, j1 = wide.body_box
    assert wide.size[0] <= (i1 - i0) * 2.0 / 4.0 + 2 and wide.size[1] <= (j1 - j0) * 2.0 / 4.0 + 2
    ones = wide.inverse(np.ones(wide.model_shape, np.float32))
    assert ones.shape == volume.shape  # the volume's own grid
    assert (wide.reorientation.apply(ones)[i0:i1, j0:j1] >= 0.5).all()
    # Everything else is the same mapping: a model-grid pixel lands where it did.
    assert (
        np.allclose(wide.model_affine[:3, :3], plan.model_affine[:3, :3])
        and wide.slice_spacing_mm == plan.slice_spacing_mm
    )


def test_a_body_that_fits_keeps_its_plan():
    volume = wide_body(width_mm=100.0, depth_mm=80.0)
    plan = plan_geometry(volume, spacing_mm=4.0, slice_spacing_mm=2.5, size=(48, 48))
    assert plan.covers_body and plan.covering_body() is plan


def test_label_outside_field_counts_voxels_by_their_centres():
    volume = wide_body()
    plan = plan_geometry(volume, spacing_mm=4.0, slice_spacing_mm=2.5, size=(32, 32))
    label = np.zeros(volume.shape, np.uint8)
    label[90:110, 70:80, 3:6] = 1  # the centre of the body: inside
    label[25:35, 70:80, 3:6] = 1  # 130-150 mm to one side, in the body: outside
    assert plan.label_outside_field(label) == (300, 900)
    assert plan.covering_body().label_outside_field(label) == (0, 900)


@pytest.mark.large
def test_nih_pancreas_outside_the_quick_field_is_covered_by_the_tiled_field(
    nih_series_dir, nih_label_path
):
    from pancseg_tf.io import read_dicom_series, read_nifti
    from pancseg_tf.preprocessing import map_labels

    volume = read_dicom_series(nih_series_dir)
    pancreas = map_labels(read_nifti(nih_label_path).array, "nih", strict=True)
    plan = plan_geometry(volume, spacing_mm=1.6, slice_spacing_mm=2.5, size=(128, 128))
    outside, total = plan.label_outside_field(pancreas)
    # Measured: 1,443 of 110,797 voxels (1.3 %), the tail beyond the 205 mm field.
    assert total == 110_797 and 1_000 < outside < 2_000
    wide = plan.covering_body()
    assert wide.covers_body and wide.label_outside_field(pancreas) == (0, total)
    assert wide.size[0] > 128 and wide.size[1] > 128  # a 412 x 306 mm body box
    # The tiled field's forward and inverse cover the whole body box on the scan's own grid...
    ones = wide.inverse(np.ones(wide.model_shape, np.float32))
    assert ones.shape == volume.shape
    i0, i1, j0, j1 = wide.body_box
    assert (wide.reorientation.apply(ones)[i0:i1, j0:j1] >= 0.5).all()
    # ... an all-ones model on it marks every pancreas voxel, where the model-size field did not.
    assert (ones[pancreas > 0] >= 0.5).all()
    narrow = plan.inverse(np.ones(plan.model_shape, np.float32))
    assert int(np.count_nonzero(narrow[pancreas > 0] < 0.5)) == outside
    # The label through the tiled field and back is the label (the model-size field's DSC
    # would include the lost tail).
    back = wide.inverse(wide.forward(pancreas, is_label=True).astype(np.float32)) >= 0.5
    mask = pancreas > 0
    assert 2 * (back & mask).sum() / (back.sum() + mask.sum()) > 0.85
