"""Host geometry: canonical orientation, resampling to fixed mm, body crop, pad, and exact inverses.

Everything here runs on the host with numpy and scipy (no TensorFlow), one code path for
``prepare``, ``predict`` and the serving client. A `GeometryPlan` is computed once per volume by
`plan_geometry`; ``plan.forward`` takes any array on the volume's own grid to the model grid and
``plan.inverse`` takes the model's probabilities back to the volume's own grid, with the original
shape and the original affine recorded exactly.

The model grid:
    Arrays of shape ``(H, W, K)`` in canonical RAS+ voxel order (nibabel's closest canonical):

    * ``H`` (axis 0) is the patient's x axis, running from the subject's **left to right**;
    * ``W`` (axis 1) is the y axis, running from **posterior to anterior**;
    * ``K`` (axis 2) is the slice axis, running from **inferior to superior** (feet to head).

    So ``model[:, :, k]`` is an axial slice. To show it the radiological way (anterior up, the
    subject's right on the viewer's left), display ``model[::-1, ::-1, k].T``. In-plane pixels are
    ``spacing_mm`` apart (default 0.8 mm) whatever the scanner, so anatomy has the same size in
    pixels on every volume; slices are ``slice_spacing_mm`` apart (default 2.5 mm) or keep the
    native spacing when it is ``None``.

Pipeline (forward), with the inverse running the same steps backwards:
    1. `to_canonical`: axis permutations and flips only (no interpolation), exactly invertible.
    2. `body_crop_box`: a threshold on the body outline (never the label) gives an in-plane box
       that centres the model's field of view on the body.
    3. resampling in-plane to ``spacing_mm`` and along z to ``slice_spacing_mm`` (linear), with
       the crop or pad to ``size`` done in the same pass, one output slice at a time.

Interpolation of masks:
    Images are resampled with linear interpolation. Binary masks are resampled as their float
    version with linear interpolation and thresholded at 0.5 (``is_label=True``), in both
    directions: thresholding a linearly interpolated mask keeps its boundary where the two
    labels meet half way, so a structure neither grows nor shrinks, whereas nearest neighbour
    shifts boundaries by up to half a voxel and makes staircases when upsampling. ``inverse``
    returns probabilities (float32) interpolated linearly; the caller thresholds them, after
    resampling, never before.

Example:
    >>> plan = plan_geometry(volume, spacing_mm=0.8, slice_spacing_mm=2.5, size=(256, 256))
    >>> image = plan.forward(volume.array)              # (256, 256, K') float32
    >>> mask = plan.forward(label01, is_label=True)      # (256, 256, K') uint8 {0, 1}
    >>> prob = plan.inverse(model_probabilities)          # volume.shape float32
    >>> out = volume.with_array((prob >= 0.5).astype(np.uint8))  # same grid, same affine
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import nibabel.orientations as nio
import numpy as np
from scipy import ndimage

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import MODALITIES, Volume

# CT: air is about -1000 HU, fat about -100, soft tissue 0 to 100; -500 separates the body from
# the air around it whatever the window or the contrast phase.
CT_BODY_THRESHOLD_HU = -500.0
# MRI: no absolute scale, so the body is what is brighter than a fraction of a robust maximum
# (the 99.5th percentile, which ignores a few very bright vessels or artefacts).
MRI_BODY_FRACTION = 0.1
# CT value written where the model's field extends beyond the scanner's field of view: air.
CT_PAD_VALUE = -1024.0

# The body box is found on a subsampled copy: ~2 mm pixels and at most this many slices, so that
# a 512 x 512 x 600 volume costs a few MB; the margin covers what the subsampling can miss.
_BODY_PIXEL_MM = 2.0
_BODY_MAX_SLICES = 64

#: The most one float32 copy of a volume on the model grid may take. Past it the slice spacing
#: is typed wrong (0.001 for 1.0 makes a 64-slice volume 160,000 slices), and preparing or
#: predicting would otherwise end in the system's out-of-memory kill, with no message.
MAX_MODEL_GRID_BYTES = 4 << 30

_RAS = nio.axcodes2ornt(("R", "A", "S"))


# === Canonical orientation ===


@dataclasses.dataclass(frozen=True, eq=False)
class Reorientation:
    """The axis permutation and flips that take a volume's own grid to canonical RAS, and back.

    Only axes are permuted and flipped (no interpolation), so ``inverse(apply(a))`` is ``a``
    exactly. Both directions return views (no copy) when given numpy arrays.

    Attributes:
        original_shape: ``(I, J, K)`` of the volume's own grid.
        original_affine: the volume's own 4x4 affine (float64), recorded so that outputs carry
            it exactly.
        ornt: nibabel orientation transform ``(3, 2)`` from the original axes to canonical:
            row ``n`` is ``(canonical axis of original axis n, flip +1 / -1)``.
    """

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    ornt: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_shape", tuple(int(s) for s in self.original_shape))
        object.__setattr__(self, "original_affine", np.asarray(self.original_affine, np.float64))
        object.__setattr__(self, "ornt", np.asarray(self.ornt, dtype=np.int64).reshape(3, 2))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Shape of the canonical grid: ``original_shape`` permuted."""
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[int(target)] = self.original_shape[axis]
        return tuple(shape)  # type: ignore[return-value]

    @property
    def canonical_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the canonical grid (same world positions as the original)."""
        return self.original_affine @ nio.inv_ornt_aff(self.ornt, self.original_shape)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Original grid -> canonical grid.

        Args:
            array: shape ``original_shape`` (further trailing axes are carried along).

        Returns:
            A view of shape ``canonical_shape`` (plus trailing axes).

        Raises:
            PancsegError: if the array's first three axes are not ``original_shape``.
        """
        _check_shape(array, self.original_shape, "the original grid")
        return nio.apply_orientation(array, self.ornt)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Canonical grid -> original grid, exactly (the inverse of `apply`).

        Args:
            array: shape ``canonical_shape`` (further trailing axes are carried along).

        Returns:
            A view of shape ``original_shape`` (plus trailing axes).

        Raises:
            PancsegError: if the array's first three axes are not ``canonical_shape``.
        """
        _check_shape(array, self.canonical_shape, "the canonical grid")
        return nio.apply_orientation(array, nio.ornt_transform(_RAS, self.ornt))

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_shape": list(self.original_shape),
            "original_affine": self.original_affine.tolist(),
            "ornt": self.ornt.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reorientation:
        return cls(
            original_shape=tuple(data["original_shape"]),
            original_affine=np.asarray(data["original_affine"], dtype=np.float64),
            ornt=np.asarray(data["ornt"]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reorientation):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def reorientation_for(shape: tuple[int, ...], affine: np.ndarray) -> Reorientation:
    """The `Reorientation` of a grid to its closest canonical RAS+ orientation.

    Sheared affines (gantry tilt) get the closest axes: nibabel's ``io_orientation`` picks, for
    each voxel axis, the world axis it is most parallel to.
    """
    ornt = nio.ornt_transform(nio.io_orientation(affine), _RAS)
    return Reorientation(tuple(shape[:3]), np.asarray(affine, np.float64), ornt)


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """A volume in its closest canonical RAS+ orientation, and the way back.

    Args:
        volume: any volume; its array is ``(I, J, K)``.

    Returns:
        ``(canonical, reorientation)``: ``canonical.array`` is a view of ``volume.array``
        permuted and flipped so that axis 0 runs to the subject's right, axis 1 anterior and
        axis 2 superior; ``canonical.affine`` maps it to the same world positions.
        ``reorientation.inverse`` puts any canonical-grid array back on the original grid.
    """
    reorientation = reorientation_for(volume.shape, volume.affine)
    # A NIfTI file's own qform, kept where it disagrees with the sform, moves with the axes too:
    # a writer given the canonical volume must not store the original grid's qform.
    qform = volume.qform
    if qform is not None:
        qform = qform @ nio.inv_ornt_aff(reorientation.ornt, reorientation.original_shape)
    canonical = dataclasses.replace(
        volume,
        array=reorientation.apply(volume.array),
        affine=reorientation.canonical_affine,
        qform=qform,
    )
    return canonical, reorientation


# === Body crop ===


def body_crop_box(
    volume: Volume,
    *,
    threshold: float | None = None,
    margin_mm: float = 10.0,
) -> tuple[int, int, int, int]:
    """An in-plane box around the body, from a threshold on the image alone (never a label).

    The body is the largest 3D connected component of the voxels above the threshold: for CT
    ``> -500 HU`` (air is -1000, the body's tissues -100 and up), which leaves the table, tubes
    and noise out when they do not touch it; for MRI ``> threshold x`` the 99.5th percentile.
    The box of that component (filling its holes would not change the box, so it is not done)
    is widened by ``margin_mm`` and clipped to the grid. The search runs on a subsampled copy
    (about 2 mm pixels, at most 64 slices), so memory stays small on any volume; the margin
    covers what subsampling can miss.

    Args:
        volume: a volume whose axes 0 and 1 are the plane to crop (pass the canonical volume of
            `to_canonical`, whose axes 0 and 1 are the axial plane).
        threshold: CT: HU above which a voxel is body (default -500). MRI: fraction of the
            99.5th percentile above which a voxel is body (default 0.1).
        margin_mm: added on every side of the body's box.

    Returns:
        ``(i0, i1, j0, j1)``: the half-open box ``[i0, i1) x [j0, j1)`` on axes 0 and 1, the same
        for every slice. The whole plane when nothing passes the threshold.
    """
    shape = volume.shape
    spacing = volume.spacing
    step_i = max(1, int(_BODY_PIXEL_MM // spacing[0]))
    step_j = max(1, int(_BODY_PIXEL_MM // spacing[1]))
    step_k = max(1, math.ceil(shape[2] / _BODY_MAX_SLICES))
    sub = volume.array[::step_i, ::step_j, ::step_k]
    if volume.modality == "ct":
        level = CT_BODY_THRESHOLD_HU if threshold is None else float(threshold)
    else:
        fraction = MRI_BODY_FRACTION if threshold is None else float(threshold)
        level = fraction * float(np.percentile(sub, 99.5))
    labels, count = ndimage.label(sub > level)
    if count == 0:
        return (0, shape[0], 0, shape[1])
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    rows = np.flatnonzero(body.any(axis=(1, 2)))
    cols = np.flatnonzero(body.any(axis=(0, 2)))
    # A subsampled index n stands for the voxels after sample n - 1 up to before sample n + 1.
    i0, i1 = max(0, (rows[0] - 1) * step_i + 1), min(shape[0], (rows[-1] + 1) * step_i)
    j0, j1 = max(0, (cols[0] - 1) * step_j + 1), min(shape[1], (cols[-1] + 1) * step_j)
    mi = math.ceil(margin_mm / spacing[0])
    mj = math.ceil(margin_mm / spacing[1])
    return (
        int(max(0, i0 - mi)),
        int(min(shape[0], i1 + mi)),
        int(max(0, j0 - mj)),
        int(min(shape[1], j1 + mj)),
    )


# === Plan ===


@dataclasses.dataclass(frozen=True, eq=False)
class GeometryPlan:
    """Everything that maps one volume's own grid to the model grid and back.

    Built by `plan_geometry`; JSON-serialisable with `to_dict` / `from_dict` (floats survive a
    JSON round trip exactly), so ``prepare`` can store it next to the shards and ``predict`` or
    the serving client can invert what was done.

    The in-plane mapping is one affine per axis: model pixel ``u`` (axis 0) sits at canonical
    voxel coordinate ``x = (u + window_start[0] + 0.5) * r - 0.5`` with ``r = spacing_mm /
    native_spacing[0]``: pixel centres of the resampled grid are aligned with the canonical
    grid's field of view (``scipy.ndimage.zoom``'s ``grid_mode``), the spacing is exactly
    ``spacing_mm`` and the resampled grid has ``round(n / r)`` pixels. Slices map the same way
    with ``r = slice_spacing_mm / native_spacing[2]`` (``r = 1``, exact, for native).

    A sheared (gantry-tilted) volume keeps its shear on the model grid: resampling scales the
    canonical voxel axes, so slices stay the tilted planes the scanner acquired and the way
    back is exact; spacings are then measured along the voxel axes (the affine's column
    norms), so the slice spacing is the step along the tilted axis.

    Attributes:
        original_shape: ``(I, J, K)`` of the volume's own grid.
        original_affine: the volume's own affine, float64, exactly.
        ornt: the `Reorientation`'s ``(3, 2)`` orientation transform to canonical.
        modality: ``"ct"`` or ``"mri"``.
        spacing_mm: in-plane spacing of the model grid.
        slice_spacing_mm: slice spacing of the model grid; ``None`` keeps the native spacing.
        size: ``(H, W)`` of the model grid.
        native_spacing: spacing of the canonical grid in mm (column norms of its affine).
        resampled_shape: canonical grid resampled to the model spacing, before crop or pad.
        body_box: ``(i0, i1, j0, j1)``, the body's box on the canonical grid (half-open).
        window_start: first resampled pixel of the model's field on axes 0 and 1; negative
            values, or a window running past ``resampled_shape``, mean padding.
        pad_value: value of the padding in the image's own units (CT: -1024 HU, air; MRI: the
            volume's minimum).
    """

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    ornt: np.ndarray
    modality: str
    spacing_mm: float
    slice_spacing_mm: float | None
    size: tuple[int, int]
    native_spacing: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]
    body_box: tuple[int, int, int, int]
    window_start: tuple[int, int]
    pad_value: float

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "original_shape", tuple(int(v) for v in self.original_shape))
        set_(self, "original_affine", np.asarray(self.original_affine, dtype=np.float64))
        set_(self, "ornt", np.asarray(self.ornt, dtype=np.int64).reshape(3, 2))
        set_(self, "spacing_mm", float(self.spacing_mm))
        if self.slice_spacing_mm is not None:
            set_(self, "slice_spacing_mm", float(self.slice_spacing_mm))
        set_(self, "size", tuple(int(v) for v in self.size))
        set_(self, "native_spacing", tuple(float(v) for v in self.native_spacing))
        set_(self, "resampled_shape", tuple(int(v) for v in self.resampled_shape))
        set_(self, "body_box", tuple(int(v) for v in self.body_box))
        set_(self, "window_start", tuple(int(v) for v in self.window_start))
        set_(self, "pad_value", float(self.pad_value))

    # --- derived geometry ---

    @property
    def reorientation(self) -> Reorientation:
        return Reorientation(self.original_shape, self.original_affine, self.ornt)

    @property
    def slice_policy(self) -> str:
        """``"resample"`` (fixed slice spacing) or ``"native"`` (the volume's own)."""
        return "native" if self.slice_spacing_mm is None else "resample"

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """``(H, W, K')``: the shape `forward` returns."""
        return (self.size[0], self.size[1], self.resampled_shape[2])

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        """Voxel size of the model grid in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.model_affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def ratios(self) -> tuple[float, float, float]:
        """Canonical voxels per model voxel on each axis (> 1: the model grid is coarser)."""
        rz = (
            1.0 if self.slice_spacing_mm is None else self.slice_spacing_mm / self.native_spacing[2]
        )
        return (
            self.spacing_mm / self.native_spacing[0],
            self.spacing_mm / self.native_spacing[1],
            rz,
        )

    @property
    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the model grid (for writing model-grid arrays as NIfTI)."""
        r0, r1, rz = self.ratios
        s0, s1 = self.window_start
        to_canonical_index = np.array(
            [
                [r0, 0.0, 0.0, (s0 + 0.5) * r0 - 0.5],
                [0.0, r1, 0.0, (s1 + 0.5) * r1 - 0.5],
                [0.0, 0.0, rz, 0.5 * rz - 0.5],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        return self.reorientation.canonical_affine @ to_canonical_index

    @property
    def pad(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Pixels of padding ``((before, after), (before, after))`` on axes 0 and 1."""
        out = []
        for axis in (0, 1):
            start, n, size = self.window_start[axis], self.resampled_shape[axis], self.size[axis]
            out.append((max(0, -start), max(0, start + size - n)))
        return (out[0], out[1])

    @property
    def crop(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The resampled pixels ``((start, stop), (start, stop))`` that the model's field keeps."""
        out = []
        for axis in (0, 1):
            start, n, size = self.window_start[axis], self.resampled_shape[axis], self.size[axis]
            out.append((max(0, start), min(n, start + size)))
        return (out[0], out[1])

    @property
    def field_box(self) -> tuple[int, int, int, int]:
        """``(x0, x1, y0, y1)``: the canonical voxels (half-open, clipped to the grid) whose
        centres lie inside the model's in-plane field; the others are never seen by the model
        and get 0 from `inverse`."""
        nx, ny, _ = self.reorientation.canonical_shape
        r0, r1, _ = self.ratios
        x0, x1 = _covered(self.window_start[0], self.size[0], r0, nx)
        y0, y1 = _covered(self.window_start[1], self.size[1], r1, ny)
        return (x0, x1, y0, y1)

    @property
    def covers_body(self) -> bool:
        """Whether the in-plane field holds the whole body box."""
        x0, x1, y0, y1 = self.field_box
        i0, i1, j0, j1 = self.body_box
        return x0 <= i0 and i1 <= x1 and y0 <= j0 and j1 <= y1

    def covering_body(self) -> GeometryPlan:
        """This plan if its field holds the body box, else the same plan with a wider field.

        On each axis where the field misses part of the body box, the field is widened, at the
        same spacing, to the fewest pixels that hold the box (never fewer than ``size``); an
        axis whose field holds the box keeps its start and size. The result maps the volume
        the same way (`forward` and `inverse` take any field), so a model of ``size`` pixels
        can be run over it in overlapping tiles (`pancseg_tf.inference.tile_spans`).

        Returns:
            ``self`` (the very object) when `covers_body`, else a new plan whose ``size`` is
            at least this one's on both axes and whose `field_box` holds ``body_box``.
        """
        if self.covers_body:
            return self
        canonical_shape = self.reorientation.canonical_shape
        starts, sizes = list(self.window_start), list(self.size)
        for axis in (0, 1):
            lo, hi = self.body_box[2 * axis], self.body_box[2 * axis + 1]
            ratio, n = self.ratios[axis], canonical_shape[axis]
            covered = _covered(starts[axis], sizes[axis], ratio, n)
            if covered[0] <= lo and hi <= covered[1]:
                continue
            # Fewest pixels from the first one whose field reaches voxel lo to voxel hi - 1.
            start = math.floor((lo + 0.5) / ratio + 1e-9)
            size = max(1, math.floor((hi - 0.5) / ratio - start + 1e-9) + 1)
            while _covered(start, size, ratio, n)[0] > lo:
                start, size = start - 1, size + 1
            while _covered(start, size, ratio, n)[1] < hi:
                size += 1
            if size < self.size[axis]:  # a narrow box missed by rounding: keep the model's size
                start -= (self.size[axis] - size) // 2
                size = self.size[axis]
            starts[axis], sizes[axis] = start, size
        return dataclasses.replace(self, size=tuple(sizes), window_start=tuple(starts))

    def label_outside_field(self, label: np.ndarray) -> tuple[int, int]:
        """Voxels of a mask on the volume's own grid that lie outside the in-plane field.

        Args:
            label: ``original_shape`` array; nonzero voxels count (a {0, 1} pancreas mask).

        Returns:
            ``(outside, total)``: nonzero voxels whose centres lie outside `field_box`, and all
            nonzero voxels.

        Raises:
            PancsegError: if the array is not ``original_shape``.
        """
        _check_shape(label, self.original_shape, "the original grid", exact_ndim=True)
        canonical = self.reorientation.apply(label)
        x0, x1, y0, y1 = self.field_box
        total = int(np.count_nonzero(canonical))
        inside = int(np.count_nonzero(canonical[x0:x1, y0:y1]))
        return total - inside, total

    # --- forward and inverse ---

    def forward(self, array: np.ndarray, *, order: int = 1, is_label: bool = False) -> np.ndarray:
        """Original grid -> model grid, one output slice at a time.

        Args:
            array: ``original_shape`` array on the volume's own grid (any numeric dtype).
            order: 1 (linear, for images) or 0 (nearest neighbour, for multi-valued label maps
                that must keep their values; padded with 0).
            is_label: a binary {0, 1} mask: resampled as float with linear interpolation and
                thresholded at 0.5; ``order`` is then ignored.

        Returns:
            ``(H, W, K')`` float32 (``uint8`` {0, 1} when ``is_label``). Pixels outside the
            scanner's field of view are ``pad_value`` for images, 0 for labels (``order=0`` or
            ``is_label``).

        Raises:
            PancsegError: on a wrong shape or an order other than 0 or 1.
        """
        if order not in (0, 1):
            raise PancsegError(f"interpolation order must be 0 or 1, got {order}")
        _check_shape(array, self.original_shape, "the original grid", exact_ndim=True)
        fill = 0.0 if is_label or order == 0 else self.pad_value
        if is_label:
            order = 1
            low, high = np.min(array), np.max(array)
            if low < 0 or high > 1:
                raise PancsegError(
                    f"is_label expects a binary mask with values 0 and 1, got values from "
                    f"{low} to {high}; map the label values first (map_labels)"
                )
        canonical = self.reorientation.apply(array)
        height, width, num_slices = self.model_shape
        out = np.full((height, width, num_slices), fill, dtype=np.float32)
        (c0, c1), (d0, d1) = self.crop
        s0, s1 = self.window_start
        u0, u1, v0, v1 = c0 - s0, c1 - s0, d0 - s1, d1 - s1
        if u0 >= u1 or v0 >= v1:
            return out.astype(np.uint8) if is_label else out
        r0, r1, rz = self.ratios
        matrix = np.array([r0, r1])
        offset = np.array([(c0 + 0.5) * r0 - 0.5, (d0 + 0.5) * r1 - 0.5])

        def transform(plane: np.ndarray) -> np.ndarray:
            shape = (u1 - u0, v1 - v0)
            return ndimage.affine_transform(
                plane, matrix, offset=offset, output_shape=shape, order=order, mode="nearest"
            )

        for k, plane in _resample_slices(canonical, num_slices, rz, order, transform):
            out[u0:u1, v0:v1, k] = plane
        if is_label:
            return (out >= 0.5).astype(np.uint8)
        return out

    def inverse(self, probabilities: np.ndarray) -> np.ndarray:
        """Model grid -> original grid, for probabilities (or any continuous map).

        Linear interpolation along z and in-plane back to the canonical grid, then the exact
        reorientation back to the volume's own axes. Voxels outside the model's field of view
        get 0. Threshold the result (e.g. ``>= 0.5``) to get a mask: thresholding after
        resampling keeps boundaries where they were, thresholding before would not.

        Args:
            probabilities: ``(H, W, K')`` array on the model grid, values in [0, 1].

        Returns:
            float32 array of ``original_shape``; its affine is ``original_affine``.

        Raises:
            PancsegError: if the array is not ``(H, W, K')``.
        """
        _check_shape(probabilities, self.model_shape, "the model grid", exact_ndim=True)
        # Lay `out` out in memory so that each canonical (axial) slice written below is
        # contiguous or nearly so: the original axis that becomes z varies slowest.
        z_axis = int(np.flatnonzero(self.ornt[:, 0] == 2)[0])
        out = np.zeros(self.original_shape, dtype=np.float32, order="C" if z_axis == 0 else "F")
        # A writeable view of `out` in canonical order: filling it fills `out`, no copy.
        canonical = self.reorientation.apply(out)
        nx, ny, nz = canonical.shape
        height, width, _ = self.model_shape
        r0, r1, rz = self.ratios
        s0, s1 = self.window_start
        # Canonical voxels whose model coordinate lies within [-0.5, size - 0.5].
        x0, x1 = _covered(s0, height, r0, nx)
        y0, y1 = _covered(s1, width, r1, ny)
        if x0 >= x1 or y0 >= y1:
            return out
        matrix = np.array([1.0 / r0, 1.0 / r1])
        offset = np.array([(x0 + 0.5) / r0 - 0.5 - s0, (y0 + 0.5) / r1 - 0.5 - s1])

        def transform(plane: np.ndarray) -> np.ndarray:
            shape = (x1 - x0, y1 - y0)
            return ndimage.affine_transform(
                plane, matrix, offset=offset, output_shape=shape, order=1, mode="nearest"
            )

        for z, plane in _resample_slices(probabilities, nz, 1.0 / rz, 1, transform):
            canonical[x0:x1, y0:y1, z] = plane
        return out

    # --- serialisation ---

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `from_dict` rebuilds an equal plan."""
        return {
            "original_shape": list(self.original_shape),
            "original_affine": self.original_affine.tolist(),
            "ornt": self.ornt.tolist(),
            "modality": self.modality,
            "spacing_mm": self.spacing_mm,
            "slice_spacing_mm": self.slice_spacing_mm,
            "size": list(self.size),
            "native_spacing": list(self.native_spacing),
            "resampled_shape": list(self.resampled_shape),
            "body_box": list(self.body_box),
            "window_start": list(self.window_start),
            "pad_value": self.pad_value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeometryPlan:
        """Rebuilds a plan from `to_dict`'s output.

        Raises:
            PancsegError: on missing or unknown keys.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = names - set(data), set(data) - names
        if missing or unknown:
            raise PancsegError(
                f"geometry plan: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                f"expected exactly {sorted(names)}"
            )
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeometryPlan):
            return NotImplemented
        return self.to_dict() == other.to_dict()


def plan_geometry(
    volume: Volume,
    *,
    spacing_mm: float = 0.8,
    slice_spacing_mm: float | None = 2.5,
    size: tuple[int, int] = (256, 256),
    body_threshold: float | None = None,
    body_margin_mm: float = 10.0,
) -> GeometryPlan:
    """Plans the mapping of one volume to the model grid: orientation, spacing, body crop, pad.

    Slice spacing: the default is ``"resample"`` to 2.5 mm. The ConvLSTM learns how each slice
    relates to its neighbours; at one fixed spacing "the next slice" means the same distance
    on every scanner, so context learned on 1 mm NIH scans means the same on a 3 mm or 5 mm
    clinical scan, and a training window of T slices always spans T x 2.5 mm. 2.5 mm is a
    common clinical reconstruction (most MSD Task07 CTs have it; NIH Pancreas-CT has 1 mm),
    keeps the pancreas on 20-30 slices (it spans 69 mm cranio-caudally in the NIH test case),
    and brings a 600-slice thin-section volume down to 240 slices, which one bidirectional
    pass at inference holds in memory. ``slice_spacing_mm=None`` (``"native"``) keeps the
    volume's own slices (recorded in the plan): exact along z, for a cohort reconstructed at
    one spacing.

    In-plane: 0.8 mm is near the native pixel size of abdominal CT (0.6 to 0.98 mm), so
    resampling changes little; with ``size=(512, 512)`` the field is 410 mm, a whole abdomen.
    With ``(256, 256)`` it is 205 mm, centred on the body, which holds the pancreas but not the
    whole abdomen.

    Args:
        volume: the input volume on its own grid (never its label: the crop uses the image).
        spacing_mm: in-plane spacing of the model grid in mm.
        slice_spacing_mm: slice spacing of the model grid in mm, or ``None`` for native.
        size: ``(H, W)`` of the model grid.
        body_threshold: see `body_crop_box` (CT: HU, default -500; MRI: fraction of the 99.5th
            percentile, default 0.1).
        body_margin_mm: margin around the body's box.

    Returns:
        The `GeometryPlan`.

    Raises:
        PancsegError: on a non-positive spacing, a size under 1, a volume that is not 3D, or a
            model grid past `MAX_MODEL_GRID_BYTES`.
    """
    if not spacing_mm > 0:
        raise PancsegError(f"spacing_mm must be > 0, got {spacing_mm}")
    if slice_spacing_mm is not None and not slice_spacing_mm > 0:
        raise PancsegError(f"slice_spacing_mm must be > 0 or None (native), got {slice_spacing_mm}")
    if len(size) != 2 or min(size) < 1:
        raise PancsegError(f"size must be two positive sizes (H, W), got {tuple(size)}")
    if volume.array.ndim != 3:
        raise PancsegError(f"expected a 3D volume, got an array of shape {volume.array.shape}")
    if volume.modality not in MODALITIES:
        raise PancsegError(f"modality must be one of {MODALITIES}, got {volume.modality!r}")
    canonical, reorientation = to_canonical(volume)
    native = canonical.spacing
    if min(native) <= 0:
        raise PancsegError(f"the volume's affine has a zero voxel size: spacing {native}")
    shape = canonical.shape
    targets = (spacing_mm, spacing_mm, native[2] if slice_spacing_mm is None else slice_spacing_mm)
    resampled = tuple(
        max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, native, targets)
    )
    if slice_spacing_mm is None:
        resampled = (resampled[0], resampled[1], shape[2])
    grid_bytes = 4 * size[0] * size[1] * resampled[2]
    if grid_bytes > MAX_MODEL_GRID_BYTES:
        raise PancsegError(
            f"the model grid would hold {resampled[2]:,} slices of {size[0]} x {size[1]} "
            f"({grid_bytes / 2**30:.0f} GiB as float32) for this volume's {shape[2]} slices of "
            f"{native[2]:g} mm: check slice_spacing_mm ({slice_spacing_mm})"
        )
    box = body_crop_box(canonical, threshold=body_threshold, margin_mm=body_margin_mm)
    start = [
        _centred_start(lo, hi, spacing_mm / native[axis], size[axis])
        for axis, (lo, hi) in enumerate(((box[0], box[1]), (box[2], box[3])))
    ]
    if volume.modality == "ct":
        pad_value = CT_PAD_VALUE
    else:
        pad_value = float(np.min(volume.array))
    return GeometryPlan(
        original_shape=volume.shape,
        original_affine=volume.affine,
        ornt=reorientation.ornt,
        modality=volume.modality,
        spacing_mm=spacing_mm,
        slice_spacing_mm=slice_spacing_mm,
        size=tuple(size),
        native_spacing=native,
        resampled_shape=resampled,
        body_box=box,
        window_start=tuple(start),
        pad_value=pad_value,
    )


# === Helpers ===


def _resample_slices(
    source: np.ndarray,
    num_out: int,
    ratio: float,
    order: int,
    transform: Callable[[np.ndarray], np.ndarray],
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(k, transform(source interpolated at slice k))`` for ``k < num_out``, float32.

    Output slice ``k`` lies at source slice coordinate ``(k + 0.5) * ratio - 0.5``, clamped to the
    first and last slices (nearest at both ends); ``order`` 1 blends the two neighbouring source
    slices, 0 takes the nearest. The in-plane ``transform`` is linear, so it commutes with the
    blend: when there are fewer source slices than output slices (upsampling along z), each
    source slice is transformed once and the results are blended; otherwise the source slices
    are blended first and each output slice transformed once. Either way at most two planes are
    held, so memory is a few slices whatever the volume.
    """
    num_src = source.shape[2]
    transform_first = num_src < num_out
    cache: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if not transform_first:
            return np.ascontiguousarray(source[:, :, k], dtype=np.float32)
        if k not in cache:
            for old in [key for key in cache if key < k - 1]:
                del cache[old]
            cache[k] = transform(np.ascontiguousarray(source[:, :, k], dtype=np.float32))
        return cache[k]

    for k in range(num_out):
        position = (k + 0.5) * ratio - 0.5
        if order == 0:
            k0, k1, weight = math.floor(position + 0.5), 0, 0.0
        else:
            k0 = math.floor(position)
            k1, weight = k0 + 1, position - k0
        k0, k1 = min(max(k0, 0), num_src - 1), min(max(k1, 0), num_src - 1)
        # Exact (no blend) when the position falls on a slice, always so for native spacing.
        if k0 == k1 or weight < 1e-6:
            result = plane(k0)
        elif weight > 1.0 - 1e-6:
            result = plane(k1)
        else:
            result = plane(k0) * np.float32(1.0 - weight)
            result += np.float32(weight) * plane(k1)
        yield k, result if transform_first else transform(result)


def _centred_start(lo: int, hi: int, ratio: float, size: int) -> int:
    """First resampled pixel of a ``size``-pixel field centred on canonical voxels ``[lo, hi)``."""
    centre = (lo + hi - 1) / 2.0  # canonical voxel coordinate of the box's centre
    centre_resampled = (centre + 0.5) / ratio - 0.5
    return math.floor(centre_resampled - (size - 1) / 2.0 + 0.5)


def _covered(start: int, size: int, ratio: float, n: int) -> tuple[int, int]:
    """Canonical voxels ``[lo, hi)`` of one axis that fall inside the model's field.

    Canonical voxel ``x`` lies at model coordinate ``(x + 0.5) / ratio - 0.5 - start``; it is
    covered when that is in ``[-0.5, size - 0.5)``, i.e. ``start * ratio - 0.5 <= x <
    (start + size) * ratio - 0.5``.
    """
    lo = math.ceil(start * ratio - 0.5 - 1e-9)
    hi = math.ceil((start + size) * ratio - 0.5 - 1e-9)
    return max(0, lo), min(n, hi)


def _check_shape(
    array: np.ndarray, expected: tuple[int, ...], where: str, *, exact_ndim: bool = False
) -> None:
    shape = tuple(np.shape(array))
    ok = shape[: len(expected)] == tuple(expected) and len(shape) >= len(expected)
    if exact_ndim:
        ok = ok and len(shape) == len(expected)
    if not ok:
        raise PancsegError(f"array of shape {shape} does not fit {where}: expected {expected}")
