"""`pancseg_tf.io.grid`: the one grid gap and the two rules built on it (hand-computed cases)."""

import numpy as np
import pytest

from pancseg_tf.io import Volume
from pancseg_tf.io.grid import (
    GRID_TOLERANCE_MM,
    grid_gap_mm,
    half_voxel_mm,
    label_grid_problem,
    same_grid,
)

SHAPE = (5, 4, 3)  # (I, J, K): corners at i in {0, 4}, j in {0, 3}, k in {0, 2}
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def moved(translation=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    affine = AFFINE.copy()
    affine[:3, :3] *= np.asarray(scale)
    affine[:3, 3] += translation
    return affine


# (other affine) -> the largest corner distance in mm from AFFINE on SHAPE.
GAPS = [
    pytest.param(AFFINE, 0.0, id="same"),
    pytest.param(moved((0.005, 0, 0)), 0.005, id="float-rounding-x"),
    pytest.param(moved((0.3, 0.4, 0)), 0.5, id="diagonal-3-4-5"),  # a distance, not per axis
    # A voxel size 1 % larger along i moves the far corner i = 4 by 4 * 0.008 = 0.032 mm.
    pytest.param(moved(scale=(1.01, 1, 1)), 0.032, id="spacing-1-percent"),
    pytest.param(moved((0, 0, -2.5)), 2.5, id="one-slice"),
]


@pytest.mark.parametrize(("other", "expected"), GAPS)
def test_grid_gap_is_the_largest_corner_distance(other, expected):
    assert grid_gap_mm(AFFINE, other, SHAPE) == pytest.approx(expected, abs=1e-12)
    assert grid_gap_mm(other, AFFINE, SHAPE) == pytest.approx(expected, abs=1e-12)


def test_half_voxel_is_half_the_smallest_voxel_size():
    assert half_voxel_mm(AFFINE) == pytest.approx(0.4)
    tilted = np.eye(4)
    tilted[:3, :3] = [[0.7, 0, 0], [0, 0.6, 0.8], [0, 0.8, 0.6]]  # column norms 0.7, 1, 1
    assert half_voxel_mm(tilted) == pytest.approx(0.35)


def volume(affine=AFFINE, shape=SHAPE) -> Volume:
    return Volume(np.zeros(shape, np.uint8), affine)


# (gap along x in mm) -> same_grid (strict) holds?, label_grid_problem (prepare's rule) holds?
RULES = [
    pytest.param(0.0, True, True, id="identical"),
    pytest.param(0.5 * GRID_TOLERANCE_MM, True, True, id="within-tolerance"),
    pytest.param(0.005, False, True, id="float32-or-other-tool"),
    pytest.param(0.399, False, True, id="just-under-half-voxel"),
    pytest.param(0.4, False, False, id="half-voxel"),
    pytest.param(0.8, False, False, id="one-voxel"),
]


@pytest.mark.parametrize(("gap", "strict", "prepare_rule"), RULES)
def test_the_strict_and_the_half_voxel_rule(gap, strict, prepare_rule):
    image, label = volume(), volume(moved((gap, 0, 0)))
    assert (same_grid(image, label) is None) is strict
    assert (label_grid_problem(image, label) is None) is prepare_rule


def test_problems_say_why_and_name_no_path():
    image = volume()
    assert same_grid(image, volume(shape=(5, 4, 4))) == "shape (5, 4, 3) differs from (5, 4, 4)"
    assert label_grid_problem(image, volume(shape=(5, 4, 4))) == (
        "shape (5, 4, 4) differs from (5, 4, 3)"  # the label's, then the image's
    )
    problem = label_grid_problem(image, volume(moved((0.8, 0, 0))))
    assert "0.8 mm" in problem and "half a voxel (0.4 mm)" in problem
    assert "0.005 mm" in same_grid(image, volume(moved((0.005, 0, 0))))
