"""The phantom's canvas: a tissue label map with millimetre coordinates, the shapes painted into
it (ellipsoids, tubes along a centre line), and the smooth random fields that make outlines
irregular.

NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pancseg_tf.synthetic.tissues import TISSUE_INDEX

__all__ = ["Canvas", "bezier", "smooth_field"]


class Canvas:
    """A tissue label map with millimetre coordinates and the shapes painted into it.

    Coordinates are millimetres from the volume's centre: x along i (to the subject's right in the
    RAS storage used here), y along j (anterior), z along k (superior).
    """

    def __init__(self, shape, spacing, coarse):
        self.x, self.y, self.z = (
            (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)
            for n, s in zip(shape, spacing)
        )
        self.tissue = np.full(shape, TISSUE_INDEX["air"], dtype=np.uint8)
        self.coarse = coarse  # smooth unit-variance field (organ outlines, lobulation)

    def window(self, lo, hi):
        """Index slices covering the box [lo, hi] in mm (clipped to the volume), or None."""
        slices = []
        for axis_coords, a, b in zip((self.x, self.y, self.z), lo, hi):
            start = int(np.searchsorted(axis_coords, a, side="left"))
            stop = int(np.searchsorted(axis_coords, b, side="right"))
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def grids(self, window):
        """Broadcastable x, y, z coordinate arrays of a window."""
        sx, sy, sz = window
        return self.x[sx, None, None], self.y[None, sy, None], self.z[None, None, sz]

    def ellipsoid(self, centre, radii, *, angle=0.0, wobble=0.0):
        """Window and mask of an ellipsoid, turned by ``angle`` (radians) in the axial plane.

        ``wobble`` makes the outline irregular with the smooth coarse field (0 = exact).
        """
        reach = max(radii[0], radii[1]) * (1.0 + wobble) + 1.0
        lo = (centre[0] - reach, centre[1] - reach, centre[2] - radii[2] * (1.0 + wobble) - 1.0)
        hi = (centre[0] + reach, centre[1] + reach, centre[2] + radii[2] * (1.0 + wobble) + 1.0)
        window = self.window(lo, hi)
        if window is None:
            return None, None
        x, y, z = self.grids(window)
        dx, dy = x - centre[0], y - centre[1]
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        q = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
        if wobble:
            q = q - wobble * self.coarse[window]
        return window, q < 1.0

    def tube(self, points, radii_xy, radii_z, *, wobble=0.0):
        """Window and mask of a tube: the union of ellipsoids centred on a sampled centre line.

        Returns the window, the mask and the normalised distance ``q`` (< 1 inside).
        """
        reach_xy = float(np.max(radii_xy)) * (1.0 + wobble) + 1.0
        reach_z = float(np.max(radii_z)) * (1.0 + wobble) + 1.0
        lo = points.min(axis=0) - (reach_xy, reach_xy, reach_z)
        hi = points.max(axis=0) + (reach_xy, reach_xy, reach_z)
        window = self.window(lo, hi)
        if window is None:
            return None, None, None
        x, y, z = self.grids(window)
        q = np.full(tuple(s.stop - s.start for s in window), np.inf, dtype=np.float32)
        for (px, py, pz), rxy, rz in zip(points, radii_xy, radii_z):
            in_plane = ((x - px) ** 2 + (y - py) ** 2) / np.float32(rxy * rxy)
            qi = in_plane + (z - pz) ** 2 / np.float32(rz * rz)
            np.minimum(q, qi, out=q)
        if wobble:
            q = q - wobble * self.coarse[window]
        return window, q < 1.0, q

    def paint(self, tissue, window, mask, *, where=None):
        """Set ``tissue`` inside ``mask``; ``where`` lists the tissues it may replace."""
        if window is None:
            return
        region = self.tissue[window]
        if where is not None:
            mask = mask & np.isin(region, [TISSUE_INDEX[w] for w in where])
        region[mask] = TISSUE_INDEX[tissue]


def smooth_field(rng, shape, spacing, scale_mm):
    """Unit-variance smooth random field, correlated over about ``scale_mm``."""
    # Noise on a grid 4x (in-plane) / 2x (z) coarser, smoothed there and interpolated up: a full-
    # resolution Gaussian of this width would cost ten times more.
    factors = (4, 4, 2)
    coarse_shape = tuple(max(2, -(-n // f)) for n, f in zip(shape, factors))
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    sigma = tuple(scale_mm / (s * f) for s, f in zip(spacing, factors))
    field = ndimage.gaussian_filter(field, sigma, mode="wrap")
    zoom = tuple(n / c for n, c in zip(shape, coarse_shape))
    field = ndimage.zoom(field, zoom, order=1, grid_mode=True, mode="grid-wrap")
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def bezier(p0, p1, p2, t):
    """Quadratic Bezier curve points, shape (len(t), 3)."""
    t = t[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
