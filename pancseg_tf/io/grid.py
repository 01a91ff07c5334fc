"""Whether two volumes lie on the same voxel grid: one measure, `grid_gap_mm`, and the two rules
built on it.

- `same_grid`, strict: the same shape and every corner voxel within `GRID_TOLERANCE_MM`. A mask
  that ``pancseg predict`` writes is on its input's grid by this rule (its affine is the
  input's, to float32 rounding).
- `label_grid_problem`, a label on its image's grid: the same shape and every corner voxel
  less than half the image's smallest voxel away (`half_voxel_mm`), so each label voxel is the
  image voxel at the same index. NIfTI stores affines as float32, and a label saved by another
  tool commonly lands 1e-4 to 1e-2 mm off its image; ``pancseg prepare`` trains on such a pair
  and ``pancseg evaluate`` scores it, both by this rule.

Numpy only; messages name no path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "GRID_TOLERANCE_MM",
    "grid_gap_mm",
    "half_voxel_mm",
    "label_grid_problem",
    "same_grid",
]

#: Two grids are the same when every corner voxel of the volume lands within this many mm.
GRID_TOLERANCE_MM = 1e-4


class Grid(Protocol):
    """What the rules read of a volume (a `pancseg_tf.io.Volume` has both)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    affine: np.ndarray


def grid_gap_mm(affine_a: np.ndarray, affine_b: np.ndarray, shape: Sequence[int]) -> float:
    """The largest distance in mm between where the two affines put a voxel of the volume.

    The difference of two affines moves each voxel linearly in its index, so the farthest one is
    a corner voxel of the volume: the largest of the 8 corners' Euclidean distances.

    Args:
        affine_a: 4x4 voxel-to-world matrix (mm).
        affine_b: 4x4 voxel-to-world matrix (mm).
        shape: the volume's ``(I, J, K)``.

    Returns:
        The distance in mm (0.0 for the same affine).
    """
    i, j, k = (max(int(n) - 1, 0) for n in shape[:3])
    corners = np.array(
        [[a, b, c, 1.0] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=np.float64
    ).T  # (4, 8)
    difference = np.asarray(affine_a, np.float64) - np.asarray(affine_b, np.float64)
    return float(np.linalg.norm((difference @ corners)[:3], axis=0).max())


def half_voxel_mm(affine: np.ndarray) -> float:
    """Half the smallest voxel size of the affine's grid, in mm (the column norms of its 3x3)."""
    return 0.5 * float(np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0).min())


def same_grid(a: Grid, b: Grid) -> str | None:
    """None when ``a`` and ``b`` share a grid strictly (same shape, every corner voxel within
    `GRID_TOLERANCE_MM`), else why not (no paths in it)."""
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} differs from {tuple(b.shape)}"
    gap = grid_gap_mm(a.affine, b.affine, a.shape)
    if gap > GRID_TOLERANCE_MM:
        return (
            f"affines differ: the volume's corners are up to {gap:.3g} mm apart "
            f"(tolerance {GRID_TOLERANCE_MM:g} mm)"
        )
    return None


def label_grid_problem(image: Grid, label: Grid) -> str | None:
    """None when ``label`` is on ``image``'s grid by prepare's rule, else why not (no paths).

    The rule: the same shape, and every corner voxel less than half the image's smallest voxel
    away (`grid_gap_mm` < `half_voxel_mm`). Then every label voxel lies nearest the image voxel
    at its own index, so the two are compared voxel by voxel; a label half a voxel or more away
    would mark the wrong voxels.
    """
    if tuple(label.shape) != tuple(image.shape):
        return f"shape {tuple(label.shape)} differs from {tuple(image.shape)}"
    gap = grid_gap_mm(image.affine, label.affine, image.shape)
    half = half_voxel_mm(image.affine)
    if gap >= half:
        return (
            f"affines differ: the volume's corners are up to {gap:.3g} mm apart, half a voxel "
            f"({half:.3g} mm) or more"
        )
    return None
