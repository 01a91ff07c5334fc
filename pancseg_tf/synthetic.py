"""Seeded synthetic abdominal CT- and MRI-like phantoms with a pancreas, and an MSD-layout cohort.

Each phantom is a small abdomen: body outline with subcutaneous fat and a muscle wall, liver,
spleen, kidneys, spine, aorta, inferior vena cava, portal and splenic veins, stomach (fluid with a
gas cap), gallbladder, a duodenal C-loop around the pancreatic head, bowel loops, and a pancreas
with head, body and tail along a smooth curved centre line whose outline changes smoothly from
slice to slice. Intensities are Hounsfield units of a portal-venous-phase CT, or arbitrary units of
a T1-weighted-like MRI with a smooth multiplicative bias field and Rician noise.

The phantoms are hard in the way the paper addresses: on a few recorded slices the pancreas cannot
be told from its surroundings on that slice alone. There a bowel-like look-alike with the pancreas'
own intensity fills the fat around it and the pancreas itself takes the look-alike's intensity, so
the contrast between the pancreas and a ring around it drops to about zero; the slices above and
below stay clear, so the outline is recoverable from the neighbouring slices (what the paper's
bidirectional ConvLSTM learns to do) but not from the slice alone.

NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pathlib
import re
import secrets

import numpy as np
from scipy import ndimage

from pancseg_tf.errors import PancsegError

DEFAULT_SHAPE = (192, 192, 64)
DEFAULT_SPACING = (0.8, 0.8, 2.5)
GENERATOR = "pancseg_tf.synthetic"
AMBIGUOUS_SLICES_FILE = "ambiguous_slices.json"

# === Tissues ===

# Tissue classes of the phantom's label map, painted in this order of precedence where they meet.
_TISSUES = (
    "air",
    "subcutaneous_fat",
    "muscle",
    "visceral_fat",
    "liver",
    "spleen",
    "kidney_cortex",
    "kidney_medulla",
    "renal_sinus_fat",
    "cortical_bone",
    "cancellous_bone",
    "disc",
    "csf",
    "aorta",
    "ivc",
    "portal_vein",
    "stomach_wall",
    "fluid",
    "gas",
    "duodenum",
    "bowel",
    "gallbladder",
    "lung",
    "lung_vessel",
    "myocardium",
    "blood_pool",
    "urine",
    "contrast_bowel",
    "pancreas",
    "pancreas_ambiguous",
    "lookalike",
)
_T = {name: index for index, name in enumerate(_TISSUES)}

# CT of the portal venous phase: (mean HU, texture amplitude HU). The pancreas enhances to about
# 100-130 HU; collapsed duodenum and bowel loops enhance to within ~30 HU of it, as in real scans.
_CT_HU = {
    "air": (-1000.0, 0.0),
    "subcutaneous_fat": (-105.0, 8.0),
    "muscle": (50.0, 8.0),
    "visceral_fat": (-90.0, 10.0),
    "liver": (65.0, 6.0),
    "spleen": (95.0, 6.0),
    "kidney_cortex": (150.0, 10.0),
    "kidney_medulla": (105.0, 8.0),
    "renal_sinus_fat": (-80.0, 10.0),
    "cortical_bone": (850.0, 80.0),
    "cancellous_bone": (230.0, 40.0),  # mean replaced per case (180-280 HU, as NIH's lumbar spine)
    "disc": (90.0, 8.0),
    "csf": (10.0, 4.0),
    "aorta": (180.0, 6.0),
    "ivc": (140.0, 6.0),
    "portal_vein": (170.0, 6.0),
    "stomach_wall": (75.0, 8.0),
    "fluid": (12.0, 4.0),
    "gas": (-950.0, 20.0),
    "duodenum": (85.0, 10.0),
    "bowel": (70.0, 12.0),
    "gallbladder": (8.0, 3.0),
    "lung": (-850.0, 30.0),
    "lung_vessel": (150.0, 20.0),
    "myocardium": (50.0, 8.0),
    "blood_pool": (200.0, 10.0),  # mean replaced per case (150-250 HU)
    "urine": (10.0, 4.0),
    "contrast_bowel": (250.0, 25.0),  # positive oral contrast, mean replaced per case
    "pancreas": (110.0, 14.0),  # mean replaced per case (100-120 HU)
    "pancreas_ambiguous": (110.0, 14.0),  # set to the look-alike's mean
    "lookalike": (105.0, 14.0),  # set per case to within a few HU of the pancreas
}

# T1-weighted-like MRI, arbitrary units: fat bright, pancreas relatively bright (T1-hyperintense
# acinar tissue) against bowel and liver, fluid dark, flowing blood and cortical bone dark.
_MRI_T1 = {
    "air": (0.0, 0.0),
    "subcutaneous_fat": (850.0, 30.0),
    "muscle": (300.0, 15.0),
    "visceral_fat": (800.0, 35.0),
    "liver": (480.0, 15.0),
    "spleen": (330.0, 12.0),
    "kidney_cortex": (420.0, 15.0),
    "kidney_medulla": (300.0, 12.0),
    "renal_sinus_fat": (780.0, 30.0),
    "cortical_bone": (40.0, 10.0),
    "cancellous_bone": (560.0, 30.0),
    "disc": (280.0, 15.0),
    "csf": (120.0, 8.0),
    "aorta": (70.0, 10.0),
    "ivc": (90.0, 10.0),
    "portal_vein": (100.0, 10.0),
    "stomach_wall": (320.0, 15.0),
    "fluid": (110.0, 8.0),
    "gas": (5.0, 2.0),
    "duodenum": (340.0, 20.0),
    "bowel": (330.0, 25.0),
    "gallbladder": (140.0, 8.0),
    "lung": (20.0, 6.0),
    "lung_vessel": (60.0, 10.0),
    "myocardium": (310.0, 15.0),
    "blood_pool": (480.0, 25.0),  # gradient-echo inflow: bright, a T1 look-alike
    "urine": (100.0, 8.0),
    "contrast_bowel": (650.0, 30.0),  # T1-bright oral contrast
    "pancreas": (560.0, 25.0),
    "pancreas_ambiguous": (560.0, 25.0),
    "lookalike": (550.0, 25.0),
}

# Tissues that an ambiguous slice's look-alike may displace (never organs, vessels or bone).
_DISPLACEABLE = (
    "visceral_fat",
    "bowel",
    "contrast_bowel",
    "duodenum",
    "fluid",
    "gas",
    "stomach_wall",
)


# === Geometry ===


class _Canvas:
    """A tissue label map with millimetre coordinates and the shapes painted into it.

    Coordinates are millimetres from the volume's centre: x along i (to the subject's right in the
    RAS storage used here), y along j (anterior), z along k (superior).
    """

    def __init__(self, shape, spacing, coarse):
        self.x, self.y, self.z = (
            (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)
            for n, s in zip(shape, spacing)
        )
        self.tissue = np.full(shape, _T["air"], dtype=np.uint8)
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
            mask = mask & np.isin(region, [_T[w] for w in where])
        region[mask] = _T[tissue]


def _smooth_field(rng, shape, spacing, scale_mm):
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


def _bezier(p0, p1, p2, t):
    """Quadratic Bezier curve points, shape (len(t), 3)."""
    t = t[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


# === Phantom ===


def make_phantom(
    rng: np.random.Generator,
    *,
    modality: str = "ct",
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    bias_field: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One synthetic abdominal CT- or MRI-like volume with its pancreas label.

    Storage order is RAS: i runs to the subject's right, j anterior, k superior (slice index).
    The body fills the field of view (about 130 x 100 mm at the default size, a compact abdomen)
    and the pancreas is drawn relatively larger than in an adult, so that a demo learns it at low
    resolution: it spans about a third of the slices and 0.4-1 % of the voxels. A few slices
    inside its range (2-4 at the default size, single or in pairs, never at its ends) are
    ambiguous on their own: a look-alike with the pancreas' intensity fills the fat around it
    there, while the slices above and below stay clear.

    Args:
        rng: the random generator; the same generator state gives the same phantom.
        modality: ``"ct"`` (Hounsfield units, portal venous phase) or ``"mri"``
            (T1-weighted-like, arbitrary units 0 to ~1000, with a bias field and Rician noise).
        shape: volume shape ``(I, J, K)``; at least ``(32, 32, 12)``.
        spacing: voxel size in mm along i, j, k.
        bias_field: MRI only: multiply by a smooth bias field (``False`` gives the same phantom
            without it; the random draws are the same either way).

    Returns:
        ``(image, label, ambiguous_slices)``: image of shape ``(I, J, K)``, ``int16`` HU for CT or
        ``float32`` for MRI; label ``uint8`` {0, 1} of the same shape (1 = pancreas); the sorted
        slice indices k of the ambiguous slices.

    Raises:
        PancsegError: for an unknown modality, a too small shape or a non-positive spacing.
    """
    if modality not in ("ct", "mri"):
        raise PancsegError(f"modality must be 'ct' or 'mri', got {modality!r}")
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    X, Y, Z = shape
    sx, sy, sz = spacing
    fov_x, fov_y, fov_z = X * sx, Y * sy, Z * sz

    coarse = _smooth_field(rng, shape, spacing, scale_mm=6.0)
    canvas = _Canvas(shape, spacing, coarse)
    x, y, z = canvas.x, canvas.y, canvas.z
    u = rng.uniform

    # --- body: ellipse with subcutaneous fat and a muscle wall, slightly narrower posteriorly ---
    A = u(0.38, 0.45) * fov_x  # half-width (left-right), mm
    B = min(u(0.70, 0.80) * A, 0.46 * fov_y)  # half-depth (antero-posterior)
    bx, by = u(-0.03, 0.03) * fov_x, u(-0.04, 0.02) * fov_y
    s = A / 150.0  # in-plane size scale relative to an adult abdomen (half-width ~150 mm)
    zn = z / (fov_z / 2.0)  # normalised z in [-1, 1]
    a_z = A * (1.0 + 0.04 * np.sin(1.3 * zn + u(0, 2 * np.pi)))
    b_z = B * (1.0 + 0.03 * np.sin(1.1 * zn + u(0, 2 * np.pi)))
    dx = (x - bx)[:, None, None]
    dy = (y - by)[None, :, None]
    b_post = np.where(dy < 0, 0.92, 1.0).astype(np.float32)
    qb = (dx / a_z) ** 2 + (dy / (b_z * b_post)) ** 2
    fat_t = u(0.06, 0.12)
    wall_t = u(0.05, 0.07)
    outline = 0.015 * coarse
    body = qb < 1.0 + outline
    canvas.tissue[body] = _T["subcutaneous_fat"]
    canvas.tissue[qb < (1.0 - fat_t) ** 2 + outline] = _T["muscle"]
    inner = qb < (1.0 - fat_t - wall_t) ** 2 + outline
    canvas.tissue[inner] = _T["visceral_fat"]
    # the ribs' layer: the inner two thirds of the muscle wall
    rib_layer = ~inner & (qb < (1.0 - fat_t - 0.35 * wall_t) ** 2 + outline)
    del qb, dx, dy, b_post

    # --- z layout: the thorax above the diaphragm (the top 17-23 % of the slices), the abdomen,
    # the pelvis below the iliac crests (the bottom 8-12 %) ---
    z_hi = fov_z / 2.0 - u(0.17, 0.23) * fov_z
    z_lo = -fov_z / 2.0 + u(0.08, 0.12) * fov_z
    ab_c, ab_h = (z_hi + z_lo) / 2.0, (z_hi - z_lo) / 2.0

    def at(uu, vv):  # body-relative position (fractions of A and B) -> mm
        return bx + uu * A, by + vv * B

    def zat(w):  # position: fraction of the abdomen's half z extent from its centre -> mm
        return ab_c + w * ab_h

    def zlen(w):  # length: fraction of the abdomen's half z extent -> mm
        return w * ab_h

    # --- spine, canal, paraspinal and psoas muscles (the whole z range) ---
    spx, spy = at(u(-0.03, 0.03), -0.62)
    zc, zr = 0.0, 0.6 * fov_z
    w, m = canvas.ellipsoid((spx - 0.22 * A, spy - 0.12 * B, zc), (0.16 * A, 0.2 * B, zr))
    canvas.paint("muscle", w, m)
    w, m = canvas.ellipsoid((spx + 0.22 * A, spy - 0.12 * B, zc), (0.16 * A, 0.2 * B, zr))
    canvas.paint("muscle", w, m)
    vert_r = 20.0 * s
    w, m = canvas.ellipsoid((spx, spy, zc), (vert_r, 0.85 * vert_r, zr))
    canvas.paint("cortical_bone", w, m)
    w, m = canvas.ellipsoid((spx, spy, zc), (vert_r - 3.0 * s, 0.85 * vert_r - 3.0 * s, zr))
    canvas.paint("cancellous_bone", w, m)
    # intervertebral discs (~90 HU: round and as bright as the pancreas, on a real CT a classic
    # false positive) between vertebral bodies of marrow within the soft-tissue window
    w, m = canvas.ellipsoid((spx, spy, zc), (vert_r, 0.85 * vert_r, zr))
    pitch = zlen(u(30.0, 36.0) / 60.0)
    disc = (canvas.z[w[2]] / pitch + u(0.0, 1.0)) % 1.0 < 0.28
    canvas.paint("disc", w, m & disc[None, None, :])
    canal_y = spy - 0.85 * vert_r - 9.0 * s
    w, m = canvas.ellipsoid((spx, canal_y, zc), (12.0 * s, 10.0 * s, zr))
    canvas.paint("cortical_bone", w, m)
    w, m = canvas.ellipsoid((spx, canal_y, zc), (8.0 * s, 7.0 * s, zr))
    canvas.paint("csf", w, m)
    w, m = canvas.ellipsoid((spx, canal_y - 16.0 * s, zc), (5.0 * s, 14.0 * s, zr))
    canvas.paint("cortical_bone", w, m, where=("muscle", "visceral_fat"))
    for side in (-1, 1):  # psoas: lower abdomen, growing downwards
        w, m = canvas.ellipsoid(
            (spx + side * 1.9 * vert_r, spy + 0.2 * vert_r, zat(-1.1)),
            (13.0 * s, 11.0 * s, zlen(1.3)),
            wobble=0.08,
        )
        canvas.paint("muscle", w, m, where=("visceral_fat",))

    # --- pancreas centre line: head right of midline, body arching over the spine, tail to the
    # splenic hilum (left, posterior, higher) ---
    pz = zat(u(-0.12, 0.12))
    head = np.array([*at(u(0.14, 0.24), u(-0.02, 0.10)), pz - zlen(u(0.08, 0.14))])
    tail = np.array([*at(u(-0.58, -0.48), u(-0.22, -0.08)), pz + zlen(u(0.12, 0.2))])
    ctrl = np.array([*at(u(-0.15, 0.0), u(0.22, 0.42)), pz + zlen(u(-0.04, 0.06))])
    t = np.linspace(0.0, 1.0, 48)
    centre = _bezier(head, ctrl, tail, t)
    r_head, r_body, r_tail = (u(0.17, 0.20) * A, u(0.105, 0.125) * A, u(0.085, 0.10) * A)
    radii_xy = np.interp(t, [0.0, 0.18, 0.5, 1.0], [r_head, r_body * 1.05, r_body, r_tail])
    rz_scale = zlen(1.0) / 60.0  # z sizes follow the abdomen's z extent
    rz_head, rz_body, rz_tail = (u(14.0, 18.0), u(9.0, 11.0), u(8.0, 10.0))
    radii_z = rz_scale * np.interp(t, [0.0, 0.18, 0.5, 1.0], [rz_head, rz_body, rz_body, rz_tail])

    # --- organs ---
    # aorta (left of midline, in front of the spine; in the chest the descending aorta beside the
    # spine) from its bifurcation up, and IVC (right) from the iliac veins' confluence to the heart
    ao_x, ao_y = spx - 0.35 * vert_r, spy + 0.85 * vert_r + 14.0 * s
    z_bif, z_top = zat(-0.95), fov_z / 2.0 + 5.0
    aorta = np.concatenate(
        [
            np.linspace((ao_x, ao_y, z_bif), (ao_x, ao_y, zat(0.8)), 16),
            np.linspace(
                (ao_x, ao_y, zat(0.8)), (spx - 1.3 * vert_r, spy + 0.3 * vert_r, z_top), 12
            ),
        ]
    )
    w, m, _ = canvas.tube(aorta, np.full(len(aorta), 12.0 * s), np.full(len(aorta), 12.0 * s))
    canvas.paint("aorta", w, m)
    ivc_x, ivc_y = spx + 1.5 * vert_r, ao_y - 2.0 * s
    ivc = np.linspace((ivc_x, ivc_y, z_bif - 3.0 * s), (ivc_x, ivc_y, zat(1.1)), 20)
    w, m, _ = canvas.tube(ivc, np.full(len(ivc), 12.0 * s), np.full(len(ivc), 12.0 * s))
    canvas.paint("ivc", w, m)
    # kidneys: cortex, medulla, sinus fat; mid to lower abdomen, left one a little higher
    for side, zk in ((1, u(-0.35, -0.15)), (-1, u(-0.2, 0.0))):
        kc = (*at(side * u(0.42, 0.5), u(-0.5, -0.4)), zat(zk))
        angle = side * u(0.3, 0.6)
        radii = np.array([24.0 * s, 34.0 * s, zlen(0.4)])
        for tissue, f in (
            ("kidney_cortex", 1.0),
            ("kidney_medulla", 0.72),
            ("renal_sinus_fat", 0.4),
        ):
            w, m = canvas.ellipsoid(kc, radii * (f, f, max(f, 0.8)), angle=angle, wobble=0.04)
            canvas.paint(tissue, w, m)
    # liver: right upper abdomen, its lower tip lateral to the duodenum and pancreatic head
    w, m = canvas.ellipsoid(
        (*at(u(0.6, 0.66), u(0.0, 0.12)), zat(u(0.75, 0.95))),
        (0.42 * A, 0.8 * B, zlen(u(1.05, 1.2))),
        angle=u(-0.2, 0.1),
        wobble=0.05,
    )
    canvas.paint("liver", w, m, where=("visceral_fat",))
    # gallbladder: under the liver, anterior, at the level of the pancreatic head
    w, m = canvas.ellipsoid(
        (*at(u(0.35, 0.45), u(0.35, 0.5)), head[2] + zlen(0.08)),
        (14.0 * s, 20.0 * s, zlen(0.18)),
        angle=u(-0.5, 0.5),
    )
    canvas.paint("gallbladder", w, m, where=("visceral_fat", "liver"))
    # spleen: left, posterior, upper abdomen
    w, m = canvas.ellipsoid(
        (*at(u(-0.72, -0.64), u(-0.25, -0.05)), zat(u(0.45, 0.7))),
        (0.2 * A, 0.38 * B, zlen(u(0.45, 0.6))),
        angle=u(-0.7, -0.3),
        wobble=0.05,
    )
    canvas.paint("spleen", w, m, where=("visceral_fat", "muscle"))
    # stomach: left anterior, upper abdomen; fluid with a gas cap anteriorly (the patient is supine)
    st_c = (*at(u(-0.38, -0.25), u(0.3, 0.45)), zat(u(0.55, 0.75)))
    st_r = (0.3 * A, 0.38 * B, zlen(u(0.4, 0.55)))
    w, m = canvas.ellipsoid(st_c, st_r, angle=u(-0.4, 0.0), wobble=0.04)
    canvas.paint("stomach_wall", w, m, where=("visceral_fat",))
    w, m = canvas.ellipsoid(st_c, (st_r[0] - 4.0 * s, st_r[1] - 4.0 * s, st_r[2]), wobble=0.04)
    canvas.paint("fluid", w, m, where=("stomach_wall",))
    if w is not None:
        gas = m & (canvas.grids(w)[1] > st_c[1] + 0.45 * st_r[1])
        canvas.paint("gas", w, gas, where=("fluid",))
    # duodenum: descending part lateral to the head, horizontal part below it, crossing to the left
    r_duo = u(0.085, 0.1) * A
    d_x = head[0] + radii_xy[0] + 0.8 * r_duo
    d_top = head[2] + radii_z[0] * 0.6
    d_low = head[2] - radii_z[0] - r_duo * rz_scale * 0.9
    duo = np.concatenate(
        [
            np.linspace(
                (d_x - 0.3 * r_duo, head[1] + 0.2 * r_duo, d_top), (d_x, head[1], d_low), 12
            ),
            np.linspace((d_x, head[1], d_low), (ao_x - 0.3 * A, ao_y + 24.0 * s, d_low), 16),
        ]
    )
    w, m, _ = canvas.tube(duo, np.full(len(duo), r_duo), np.full(len(duo), r_duo * 0.9 * rz_scale))
    canvas.paint("duodenum", w, m, where=("visceral_fat", "liver", "muscle"))
    # transverse colon: anterior, sagging between the flexures, gas and stool inside
    colon_t = np.linspace(0.0, 1.0, 24)
    colon = np.stack(
        [
            bx + A * np.interp(colon_t, [0, 1], [u(0.45, 0.6), u(-0.65, -0.5)]),
            by + B * (u(0.5, 0.62) - 0.08 * np.sin(np.pi * colon_t)),
            pz + zlen(u(-0.1, 0.05)) - zlen(u(0.1, 0.3)) * np.sin(np.pi * colon_t),
        ],
        axis=1,
    )
    r_colon = u(0.1, 0.13) * A
    w, m, q = canvas.tube(colon, np.full(24, r_colon), np.full(24, r_colon * 0.7), wobble=0.1)
    canvas.paint("bowel", w, m, where=("visceral_fat",))
    if w is not None:
        canvas.paint("gas", w, q < 0.3, where=("bowel",))
    # small-bowel loops: lower and anterior abdomen, some up beside the pancreas
    for _ in range(int(rng.integers(8, 12))):
        w, m = canvas.ellipsoid(
            (*at(u(-0.6, 0.5), u(-0.1, 0.55)), zat(u(-1.25, 0.05))),
            (u(0.08, 0.13) * A, u(0.08, 0.13) * A, zlen(u(0.1, 0.2))),
            wobble=0.1,
        )
        canvas.paint("bowel", w, m, where=("visceral_fat",))
        content = rng.random()
        if w is not None and content < 0.6:  # loops hold gas, fluid or positive oral contrast
            lumen = ndimage.binary_erosion(m, iterations=3)
            kind = "gas" if content < 0.17 else "fluid" if content < 0.35 else "contrast_bowel"
            canvas.paint(kind, w, lumen, where=("bowel",))

    # --- beyond the abdomen: the chest above the diaphragm, the pelvis below the crests ---
    body = _Body(bx, by, A, B, s, fat_t + wall_t, spx, spy, vert_r, ao_x, ao_y, ivc_x, ivc_y)
    _paint_ribs(canvas, rng, body, rib_layer, zat, zlen)
    _paint_thorax(canvas, rng, body, inner, zat, zlen)
    _paint_pelvis(canvas, rng, body, zat, zlen, z_bif)
    del inner, rib_layer

    # --- pancreas (over everything painted so far), then the veins along it ---
    w_p, m_p, _ = canvas.tube(centre, radii_xy, radii_z, wobble=0.22)
    canvas.paint("pancreas", w_p, m_p)
    label = np.zeros(shape, dtype=np.uint8)
    if w_p is not None:
        label[w_p][m_p] = 1
    # splenic vein along the posterior border of body and tail; the superior mesenteric vein
    # rising behind the neck; both touch but never cut into the pancreas
    tangent = np.gradient(centre[:, :2], axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # points posteriorly (-y)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.sign(-normal[:, 1:2] + 1e-9)
    sv = t >= 0.3
    r_vein = 5.0 * s
    sv_points = centre[sv].copy()
    sv_points[:, :2] += normal[sv] * (radii_xy[sv, None] + 0.6 * r_vein)
    w, m, _ = canvas.tube(sv_points, np.full(sv.sum(), r_vein), np.full(sv.sum(), r_vein))
    canvas.paint("portal_vein", w, m, where=("visceral_fat", "bowel", "muscle"))
    neck = centre[int(0.3 * len(t))]
    smv = np.linspace(
        (neck[0] + 0.2 * r_vein, sv_points[0, 1], neck[2]),
        (neck[0] + 0.2 * r_vein, sv_points[0, 1] + 4.0 * s, zat(-1.2)),
        12,
    )
    w, m, _ = canvas.tube(smv, np.full(len(smv), 1.2 * r_vein), np.full(len(smv), 1.2 * r_vein))
    canvas.paint("portal_vein", w, m, where=("visceral_fat", "bowel", "duodenum", "muscle"))
    # the superior mesenteric artery, left of the vein: a small bright circle beside the neck
    sma = smv.copy()
    sma[:, 0] -= 2.6 * r_vein
    sma[:, 2] = np.minimum(sma[:, 2], neck[2] + zlen(0.15))
    w, m, _ = canvas.tube(sma, np.full(len(sma), 0.8 * r_vein), np.full(len(sma), 0.8 * r_vein))
    canvas.paint("aorta", w, m, where=("visceral_fat", "bowel", "duodenum", "contrast_bowel"))
    label &= (canvas.tissue == _T["pancreas"]).astype(np.uint8)

    # --- ambiguous slices: a look-alike fills the fat around the pancreas on that slice alone ---
    ambiguous = _pick_ambiguous(rng, label)
    for k in ambiguous:
        inside = label[:, :, k].astype(bool)
        distance = ndimage.distance_transform_edt(~inside, sampling=(sx, sy))
        # a band of irregular width plus a few loop-sized lumps where bowel touches: the
        # look-alike's outer outline must not simply trace a dilated pancreas
        reach = rng.uniform(4.0, 7.0) * max(1.0, 2.0 * s) * (1.0 + 0.5 * coarse[:, :, k])
        ring = (distance > 0) & (distance < np.maximum(reach, 3.0))
        edge_i, edge_j = np.nonzero((distance > 0) & (distance < 1.5 * sx))
        for n in rng.choice(len(edge_i), size=min(len(edge_i), int(rng.integers(2, 5)))):
            r_lump = rng.uniform(0.06, 0.11) * A
            ring |= (x[:, None] - x[edge_i[n]]) ** 2 + (y[None, :] - y[edge_j[n]]) ** 2 < r_lump**2
        tissue = canvas.tissue[:, :, k]
        ring &= ~inside & np.isin(tissue, [_T[name] for name in _DISPLACEABLE])
        tissue[ring] = _T["lookalike"]
        tissue[inside] = _T["pancreas_ambiguous"]

    # --- intensities ---
    table = dict(_CT_HU if modality == "ct" else _MRI_T1)
    if modality == "ct":
        p_mean = u(100.0, 118.0)
        look_mean = p_mean - u(2.0, 8.0)
    else:
        p_mean = _MRI_T1["pancreas"][0] * u(0.95, 1.05)
        look_mean = p_mean * u(0.97, 1.0)
    table["pancreas"] = (p_mean, table["pancreas"][1])
    table["pancreas_ambiguous"] = (look_mean, table["pancreas"][1])
    table["lookalike"] = (look_mean, table["lookalike"][1])
    if modality == "ct":
        table["blood_pool"] = (u(150.0, 250.0), table["blood_pool"][1])
        table["contrast_bowel"] = (u(180.0, 320.0), table["contrast_bowel"][1])
        table["cancellous_bone"] = (u(180.0, 280.0), table["cancellous_bone"][1])
    else:
        table["blood_pool"] = (table["blood_pool"][0] * u(0.9, 1.1), table["blood_pool"][1])
        table["contrast_bowel"] = (table["contrast_bowel"][0] * u(0.9, 1.1), 30.0)
    means = np.array([table[name][0] for name in _TISSUES], dtype=np.float32)
    amps = np.array([table[name][1] for name in _TISSUES], dtype=np.float32)
    texture = rng.standard_normal(shape, dtype=np.float32)
    # lobulated texture: correlated over ~1.5 mm in-plane, about a slice in z
    texture = ndimage.gaussian_filter(texture, (1.5 / sx, 1.5 / sy, 0.5))
    texture /= max(float(texture.std()), 1e-6)
    image = means[canvas.tissue] + amps[canvas.tissue] * texture
    del texture
    # partial-volume blur: a small point spread in-plane, the slice profile along z
    image = ndimage.gaussian_filter(image, (0.5 / sx, 0.5 / sy, 0.3))

    # bias coefficients are drawn for CT too, so that the random stream stays aligned
    bias_coef = rng.normal(0.0, 0.12, size=5)
    bias_coef[:2] = np.sign(bias_coef[:2] + 1e-9) * rng.uniform(0.18, 0.3, size=2)
    if modality == "ct":
        image += rng.normal(0.0, u(10.0, 18.0), size=shape).astype(np.float32)
        return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label, ambiguous
    if bias_field:
        xn = (x / (fov_x / 2.0))[:, None, None]
        yn = (y / (fov_y / 2.0))[None, :, None]
        znn = zn[None, None, :]
        log_bias = (
            bias_coef[0] * xn
            + bias_coef[1] * yn
            + bias_coef[2] * znn
            + bias_coef[3] * xn * yn
            + bias_coef[4] * (xn**2 + yn**2 - 0.6)
        )
        image *= np.exp(log_bias).astype(np.float32)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    sigma = u(12.0, 20.0)
    real = image + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    image = np.sqrt(real * real + imag * imag)
    return image.astype(np.float32), label, ambiguous


@dataclasses.dataclass(frozen=True)
class _Body:
    """Where a phantom's body and midline structures are, in mm (see `make_phantom`)."""

    bx: float  # body centre
    by: float
    A: float  # body half-width and half-depth
    B: float
    s: float  # in-plane size scale relative to an adult
    wall: float  # subcutaneous fat + muscle wall, as a fraction of the half axes
    spx: float  # vertebral body centre and radius
    spy: float
    vert_r: float
    ao_x: float  # abdominal aorta
    ao_y: float
    ivc_x: float
    ivc_y: float


_SOFT_VISCERA = (
    "visceral_fat",
    "liver",
    "spleen",
    "kidney_cortex",
    "kidney_medulla",
    "renal_sinus_fat",
    "ivc",
    "portal_vein",
    "stomach_wall",
    "fluid",
    "gas",
    "duodenum",
    "bowel",
    "contrast_bowel",
    "gallbladder",
)


def _paint_ribs(canvas, rng, body, rib_layer, zat, zlen):
    """Ribs in the muscle wall of the chest and upper abdomen, sloping down anteriorly.

    In an axial slice a rib cage shows as a row of bone segments along the body wall; each rib
    is a band of the wall's inner layer, ~10 mm of every ~24 mm (scaled with the abdomen's z).
    """
    u = rng.uniform
    pitch = zlen(u(22.0, 26.0) / 60.0)
    slope = pitch * u(2.0, 2.6)  # how much lower a rib is in front than at the back
    phase = u(0.0, 1.0)
    du = ((canvas.x - body.bx) / body.A)[:, None, None]
    dv = ((canvas.y - body.by) / body.B)[None, :, None]
    rib_z = (canvas.z[None, None, :] + slope * (dv + 1.0) / 2.0) / pitch + phase
    ribs = rib_layer & (rib_z % 1.0 < 0.35) & (canvas.z[None, None, :] > zat(0.3))
    ribs &= ~((np.abs(du) < 0.2) & (dv > 0))  # the costal cartilages in front: no bone
    canvas.paint("cortical_bone", (slice(None),) * 3, ribs, where=("muscle",))


def _diaphragm(canvas, rng, body, zat, zlen):
    """The diaphragm's height (mm) over the axial plane: two domes, the right one higher.

    At the body's midline it is the top of the abdomen; towards the body wall, and most at the
    back (the costophrenic recesses), the lungs reach lower, so the slices of the domes show the
    liver, spleen and stomach ringed by lung.
    """
    u = rng.uniform
    du = ((canvas.x - body.bx) / body.A)[:, None]
    dv = ((canvas.y - body.by) / body.B)[None, :]
    r2 = (du**2 + dv**2) / (1.0 - body.wall) ** 2
    depth, left_drop = u(0.2, 0.3), u(0.03, 0.08)
    drop = depth * r2 + left_drop * (du < 0) + 0.1 * np.maximum(-dv, 0.0)
    return (zat(1.0) - zlen(1.0) * drop).astype(np.float32)


def _paint_thorax(canvas, rng, body, inner, zat, zlen):
    """Above the diaphragm: lungs (with vessels), the heart on the dome, the diaphragm itself.

    The heart is the chest's pancreas look-alike on CT: a contrast-filled blood pool of
    150-250 HU in a ~40-60 HU myocardium, ringed by epicardial fat and lung; it rests on the
    dome at the midline, left of centre, its long axis turned to the left and front.
    """
    u = rng.uniform
    A, B, s = body.A, body.B, body.s
    dome = _diaphragm(canvas, rng, body, zat, zlen)
    z = canvas.z[None, None, :]
    above = inner & (z > dome[:, :, None])
    viscera = np.isin(canvas.tissue, [_T[name] for name in _SOFT_VISCERA])
    canvas.tissue[above & viscera & (z < dome[:, :, None] + 4.0)] = _T["muscle"]  # the diaphragm
    lungs = above & viscera & (z >= dome[:, :, None] + 4.0)
    canvas.tissue[lungs] = _T["lung"]
    canvas.tissue[lungs & (canvas.coarse > 1.9)] = _T["lung_vessel"]  # vessels in cross-section
    del lungs, viscera

    # the heart: epicardial fat, myocardium, then three chambers' blood pool
    hx, hy = body.bx + u(-0.22, -0.08) * A, body.by + u(0.05, 0.25) * B
    i = int(np.clip(np.searchsorted(canvas.x, hx), 0, len(canvas.x) - 1))
    j = int(np.clip(np.searchsorted(canvas.y, hy), 0, len(canvas.y) - 1))
    rx, ry, rz = u(52.0, 62.0) * s, u(40.0, 48.0) * s, zlen(u(0.75, 0.95))
    hz = float(dome[i, j]) + 0.6 * rz
    angle = u(-0.9, -0.5)
    replaceable = ("lung", "lung_vessel", "muscle", "visceral_fat", *_SOFT_VISCERA)

    def paint_heart(tissue, centre, radii, where):
        w, m = canvas.ellipsoid(centre, radii, angle=angle, wobble=0.03)
        if w is not None:
            canvas.paint(tissue, w, m & above[w], where=where)

    paint_heart("visceral_fat", (hx, hy, hz), (1.12 * rx, 1.15 * ry, rz), replaceable)
    paint_heart("myocardium", (hx, hy, hz), (rx, ry, rz), replaceable)
    c, sn = np.cos(angle), np.sin(angle)
    for along, across, fx, fy in (
        (0.25, -0.2, 0.45, 0.5),  # left ventricle
        (0.1, 0.45, 0.5, 0.28),  # right ventricle
        (-0.5, 0.0, 0.3, 0.45),  # right atrium
    ):
        ox, oy = along * rx, across * ry
        centre = (hx + c * ox - sn * oy, hy + sn * ox + c * oy, hz)
        paint_heart("blood_pool", centre, (fx * rx, fy * ry, 0.85 * rz), ("myocardium",))


def _paint_pelvis(canvas, rng, body, zat, zlen, z_bif):
    """Below the iliac crests: iliac wings in their muscles, iliac vessels, the bladder.

    The bladder is a round fluid structure of ~0-20 HU (urine) with a thin wall; the iliac wings
    are plates of cortical bone around marrow, running from the sacrum forwards and outwards.
    """
    u = rng.uniform
    A, B, s = body.A, body.B, body.s
    soft = ("visceral_fat", "bowel", "contrast_bowel", "fluid", "gas", "duodenum")
    centre = (body.bx + u(-0.05, 0.05) * A, body.by + u(0.25, 0.4) * B, zat(u(-1.4, -1.25)))
    radii = (u(0.25, 0.32) * A, u(0.2, 0.26) * B, zlen(u(0.3, 0.4)))
    w, m = canvas.ellipsoid(centre, radii, wobble=0.03)
    canvas.paint("muscle", w, m, where=soft)  # the bladder wall
    w, m = canvas.ellipsoid(centre, (radii[0] - 3.0 * s, radii[1] - 3.0 * s, radii[2]), wobble=0.03)
    canvas.paint("urine", w, m, where=("muscle",))
    for side in (-1, 1):
        centre = (body.bx + side * u(0.5, 0.58) * A, body.by + u(-0.3, -0.15) * B, zat(-1.35))
        angle = side * u(0.6, 0.9)
        w, m = canvas.ellipsoid(centre, (0.36 * A, 0.2 * A, zlen(0.5)), angle=angle, wobble=0.05)
        canvas.paint("muscle", w, m, where=soft)  # iliacus inside, gluteal muscles outside
        w, m = canvas.ellipsoid(centre, (0.32 * A, 0.07 * A, zlen(0.45)), angle=angle)
        canvas.paint("cortical_bone", w, m, where=("muscle", *soft))
        w, m = canvas.ellipsoid(centre, (0.3 * A, 0.035 * A, zlen(0.43)), angle=angle)
        canvas.paint("cancellous_bone", w, m, where=("cortical_bone",))
        # common iliac artery and vein, diverging from the bifurcation towards the pelvic wall
        for tissue, (x0, y0), r in (
            ("aorta", (body.ao_x, body.ao_y), 8.0 * s),
            ("ivc", (body.ivc_x, body.ivc_y), 9.0 * s),
        ):
            end = (centre[0] - side * 0.25 * A, y0 + 0.05 * B, canvas.z[0] - 5.0)
            path = np.linspace((x0, y0, z_bif), end, 10)
            w, m, _ = canvas.tube(path, np.full(10, r), np.full(10, r))
            canvas.paint(tissue, w, m, where=("muscle", *soft))


def _pick_ambiguous(rng, label):
    """2-4 slice indices inside the pancreas' range (single or pairs, never at its ends).

    Every chosen slice has a clear neighbour above or below, and groups are at least two clear
    slices apart, so each is resolvable from its neighbours. Fewer are chosen when the pancreas
    spans too few slices.
    """
    area = label.sum(axis=(0, 1))
    slices = np.flatnonzero(area)
    if len(slices) == 0:
        return []
    margin = max(2, len(slices) // 6)
    candidates = [int(k) for k in slices[margin:-margin] if area[k] >= 0.3 * area.max()]
    target = int(rng.integers(2, 5))
    chosen: list[int] = []
    for k in rng.permutation(candidates):
        if len(chosen) >= target:
            break
        k = int(k)
        group = [k, k + 1] if (rng.random() < 0.4 and k + 1 in candidates) else [k]
        if len(chosen) + len(group) > target:
            group = [k]
        if all(abs(g - c) >= 3 for g in group for c in chosen):
            chosen.extend(group)
    return sorted(chosen)


def _check_shape(shape):
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise PancsegError(f"shape must be three integers (I, J, K), got {shape!r}") from None
    if len(shape) != 3 or shape[0] < 32 or shape[1] < 32 or shape[2] < 12:
        raise PancsegError(f"shape must be (I, J, K) of at least (32, 32, 12), got {shape}")
    return shape


def _check_spacing(spacing):
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise PancsegError(f"spacing must be three numbers in mm, got {spacing!r}") from None
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise PancsegError(f"spacing must be three positive numbers in mm, got {spacing}")
    return spacing


# === Cohort ===


def make_cohort(
    out: str | os.PathLike,
    *,
    cases: int = 8,
    modality: str = "ct",
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes a seeded synthetic cohort in the Medical Segmentation Decathlon (MSD) layout.

    ``OUT/dataset.json``, ``OUT/imagesTr/synth_000.nii.gz`` ... (CT as int16 HU, MRI as float32),
    ``OUT/labelsTr/synth_000.nii.gz`` ... (uint8, 1 = pancreas) and ``OUT/ambiguous_slices.json``
    (case id -> indices k of the slices whose pancreas is ambiguous on its own). Cases vary in
    body size, organ and pancreas position, size and curvature, in-plane spacing (``spacing``
    scaled by 0.875-1.125, so 0.7-0.9 mm at the default) and the affine's origin; the affine is
    RAS (diagonal) and the slice spacing is ``spacing[2]``.

    The same arguments give byte-identical files (gzip without a timestamp) with the same NumPy and
    SciPy on the same platform, and case ``n`` is the same whatever the number of cases. Every
    file is written under a temporary name and renamed; ``dataset.json`` comes last.

    Args:
        out: the output folder; it must not exist or be empty, unless ``overwrite``.
        cases: number of cases (>= 1).
        modality: ``"ct"`` or ``"mri"``.
        seed: the random seed.
        shape: volume shape ``(I, J, K)`` of every case.
        spacing: nominal voxel size in mm.
        overwrite: replace a previous synthetic cohort in ``out`` (a folder holding anything else
            is never overwritten).

    Returns:
        The output folder.

    Raises:
        PancsegError: for bad arguments, or when ``out`` holds files that are not a previous
            synthetic cohort (or any files, without ``overwrite``).
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise PancsegError(f"cases must be an integer >= 1, got {cases!r}")
    if modality not in ("ct", "mri"):
        raise PancsegError(f"modality must be 'ct' or 'mri', got {modality!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PancsegError(f"seed must be an integer >= 0, got {seed!r}")
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    out = pathlib.Path(out)
    _check_output_folder(out, overwrite)

    images, labels = out / "imagesTr", out / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    ambiguous: dict[str, list[int]] = {}
    training = []
    for n, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(cases))):
        rng = np.random.default_rng(child)
        factor = rng.uniform(0.875, 1.125)
        case_spacing = (
            round(spacing[0] * factor, 4),
            round(spacing[1] * factor, 4),
            round(spacing[2], 4),
        )
        origin = [
            round(-(shape[0] - 1) / 2 * case_spacing[0] + rng.uniform(-20, 20), 2),
            round(-(shape[1] - 1) / 2 * case_spacing[1] + rng.uniform(-20, 20), 2),
            round(-rng.uniform(100.0, 400.0), 2),
        ]
        affine = np.diag([*case_spacing, 1.0])
        affine[:3, 3] = origin
        image, label, slices = make_phantom(
            rng, modality=modality, shape=shape, spacing=case_spacing
        )
        case_id = f"synth_{n:03d}"
        _write_atomic(images / f"{case_id}.nii.gz", _nifti_gz_bytes(image, affine))
        _write_atomic(labels / f"{case_id}.nii.gz", _nifti_gz_bytes(label, affine))
        ambiguous[case_id] = slices
        training.append(
            {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
        )
    _remove_stale_cases(out, set(ambiguous))

    name = "CT" if modality == "ct" else "MRI"
    _write_atomic(out / AMBIGUOUS_SLICES_FILE, _ambiguous_json_bytes(ambiguous))
    dataset = {
        "name": f"pancseg_tf synthetic {name}",
        "description": (
            f"Synthetic abdominal {name}-like phantoms with a pancreas label, generated by "
            f"{GENERATOR} (seed {seed}). Not patient data. {AMBIGUOUS_SLICES_FILE} lists the "
            "slices on which the pancreas is ambiguous on its own."
        ),
        "reference": "pancseg_tf",
        "tensorImageSize": "3D",
        "modality": {"0": name},
        "labels": {"0": "background", "1": "pancreas"},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "synthetic": {
            "generator": GENERATOR,
            "seed": int(seed),
            "modality": modality,
            "shape": list(shape),
            "spacing": list(spacing),
        },
    }
    _write_atomic(out / "dataset.json", _json_bytes(dataset))
    return out


_SYNTH_FILE = re.compile(r"synth_\d+\.nii\.gz")


def _is_synthetic_cohort(folder: pathlib.Path) -> bool:
    try:
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(dataset, dict) and (dataset.get("synthetic") or {}).get("generator") == (
        GENERATOR
    )


def _check_output_folder(out: pathlib.Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PancsegError(f"output {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise PancsegError(
            f"output folder {out} is not empty: choose a new folder (or pass overwrite=True to "
            "replace a previous synthetic cohort)"
        )
    if not _is_synthetic_cohort(out):
        raise PancsegError(
            f"output folder {out} is not empty and holds no pancseg_tf synthetic cohort "
            "(no dataset.json written by it): refusing to overwrite it"
        )


def _remove_stale_cases(out: pathlib.Path, keep: set[str]) -> None:
    """After an overwrite with fewer cases, remove the previous run's extra synth_* files."""
    for sub in ("imagesTr", "labelsTr"):
        for path in (out / sub).iterdir():
            if _SYNTH_FILE.fullmatch(path.name) and path.name[: -len(".nii.gz")] not in keep:
                path.unlink()


def _nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes, identical for identical input (gzip header without a time)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"pancseg_tf synthetic phantom"
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=1) as gz:
        gz.write(image.to_bytes())
    return buffer.getvalue()


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _ambiguous_json_bytes(ambiguous: dict[str, list[int]]) -> bytes:
    """One line per case: ``"synth_000": [21, 26]``."""
    lines = [f"  {json.dumps(case)}: {json.dumps(slices)}" for case, slices in ambiguous.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes under a hidden temporary name in the same folder, then renames over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
