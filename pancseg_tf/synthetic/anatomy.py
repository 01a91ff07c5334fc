"""The phantom's anatomy: a small abdomen painted into a tissue label map, with its pancreas
label and the slices on which the pancreas is ambiguous on its own.

Body outline with subcutaneous fat and a muscle wall, liver, spleen, kidneys, spine, aorta,
inferior vena cava, portal and splenic veins, stomach (fluid with a gas cap), gallbladder, a
duodenal C-loop around the pancreatic head, bowel loops, and a pancreas with head, body and tail
along a smooth curved centre line; above the diaphragm the lungs, ribs and heart, below the iliac
crests the iliac wings and the bladder. Coordinates are millimetres from the volume's centre in
RAS storage (`pancseg_tf.synthetic.canvas.Canvas`); `pancseg_tf.synthetic.tissues` gives the
tissues their intensities.

NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from pancseg_tf.synthetic.canvas import Canvas, bezier, smooth_field
from pancseg_tf.synthetic.tissues import TISSUE_INDEX

__all__ = ["paint_anatomy"]

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


def paint_anatomy(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> tuple[Canvas, np.ndarray, list[int]]:
    """Paints one phantom's tissues (see `pancseg_tf.synthetic.make_phantom`).

    Args:
        rng: the random generator; the same generator state paints the same phantom.
        shape: volume shape ``(I, J, K)``, checked (`pancseg_tf.synthetic.phantom.check_shape`).
        spacing: voxel size in mm along i, j, k, checked.

    Returns:
        ``(canvas, label, ambiguous_slices)``: the canvas with its tissue label map, the pancreas
        label ``uint8`` {0, 1} of ``shape`` and the sorted slice indices k of the ambiguous
        slices.
    """
    X, Y, Z = shape
    sx, sy, sz = spacing
    fov_x, fov_y, fov_z = X * sx, Y * sy, Z * sz

    coarse = smooth_field(rng, shape, spacing, scale_mm=6.0)
    canvas = Canvas(shape, spacing, coarse)
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
    canvas.tissue[body] = TISSUE_INDEX["subcutaneous_fat"]
    canvas.tissue[qb < (1.0 - fat_t) ** 2 + outline] = TISSUE_INDEX["muscle"]
    inner = qb < (1.0 - fat_t - wall_t) ** 2 + outline
    canvas.tissue[inner] = TISSUE_INDEX["visceral_fat"]
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
    centre = bezier(head, ctrl, tail, t)
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
    label &= (canvas.tissue == TISSUE_INDEX["pancreas"]).astype(np.uint8)

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
        ring &= ~inside & np.isin(tissue, [TISSUE_INDEX[name] for name in _DISPLACEABLE])
        tissue[ring] = TISSUE_INDEX["lookalike"]
        tissue[inside] = TISSUE_INDEX["pancreas_ambiguous"]
    return canvas, label, ambiguous


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
    140-250 HU in a 50-115 HU myocardium (enhanced, it matches the pancreas), ringed by
    epicardial fat and lung; it rests on the dome at the midline, left of centre, its long axis
    turned to the left and front.
    """
    u = rng.uniform
    A, B, s = body.A, body.B, body.s
    dome = _diaphragm(canvas, rng, body, zat, zlen)
    z = canvas.z[None, None, :]
    above = inner & (z > dome[:, :, None])
    viscera = np.isin(canvas.tissue, [TISSUE_INDEX[name] for name in _SOFT_VISCERA])
    # the diaphragm
    canvas.tissue[above & viscera & (z < dome[:, :, None] + 4.0)] = TISSUE_INDEX["muscle"]
    lungs = above & viscera & (z >= dome[:, :, None] + 4.0)
    canvas.tissue[lungs] = TISSUE_INDEX["lung"]
    # vessels in cross-section
    canvas.tissue[lungs & (canvas.coarse > 1.9)] = TISSUE_INDEX["lung_vessel"]
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
