"""`Volume`: a 3D image with its voxel-to-world geometry, the unit the package passes around,
and the checks every reader applies to what it builds one from (`rescale_to_intensity`,
`check_affine`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pancseg_tf.errors import PancsegError

MODALITIES = ("ct", "mri")

#: Millimetres per NIfTI spatial unit (``xyzt_units``): a file in metres or micrometres holds its
#: affine in that unit, and readers that honour the unit (ITK, SimpleITK, 3D Slicer) scale it.
MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


@dataclasses.dataclass
class Volume:
    """A 3D image and the geometry that places it in the patient.

    Attributes:
        array: voxel data of shape ``(I, J, K)`` in storage order (NIfTI's i, j, k; for a DICOM
            series i runs along a row (columns), j down the rows, k along the slice normal).
        affine: 4x4 float64 matrix mapping voxel indices ``(i, j, k, 1)`` to world millimetres in
            nibabel's RAS+ convention: +x points to the subject's Right, +y Anterior,
            +z Superior. (DICOM's patient coordinates are LPS: x and y negated.)
        modality: ``"ct"`` (array in Hounsfield units) or ``"mri"``.
        source: where the volume came from (a path), for messages. Never a patient field.
        qform_code: NIfTI qform code to write back (0 = unset). Readers of non-NIfTI input use 1
            (scanner) and ``sform_code`` 1 as well.
        sform_code: NIfTI sform code to write back.
        spatial_unit: the NIfTI spatial unit of the file the volume came from, one of
            `MM_PER_UNIT` (``"mm"`` also for a file that names none). ``affine`` is in mm
            whatever it is; a writer stores the affine back in this unit, so that an output
            lands on the file's grid in readers that apply the unit and in those that ignore it.
        qform: a NIfTI file's own qform (4x4, mm), kept only where both codes are set and it
            places the voxels elsewhere than ``affine`` (the sform): readers disagree on such a
            file (ITK may take the qform), so a writer stores both back as they were. None
            otherwise. It belongs to this grid: a volume with another affine has none.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "ct"
    source: str = ""
    qform_code: int = 1
    sform_code: int = 1
    spatial_unit: str = "mm"
    qform: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.qform is not None:
            self.qform = np.asarray(self.qform, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.spatial_unit not in MM_PER_UNIT:
            raise ValueError(
                f"spatial_unit must be one of {tuple(MM_PER_UNIT)}, got {self.spatial_unit!r}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (the column norms of the affine's 3x3 part)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Closest axis codes, e.g. ``("R", "A", "S")``: where each voxel axis points in RAS+."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def is_sheared(self) -> bool:
        """True when the voxel axes are not orthogonal (e.g. a gantry-tilted CT)."""
        rot = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        gram = rot.T @ rot
        return bool(np.abs(gram - np.eye(3)).max() > 1e-4)

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry around another voxel array of the same shape."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.shape}")
        return dataclasses.replace(self, array=array)


# === What every reader checks ===


def rescale_to_intensity(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``raw * slope + intercept`` as int16 when that is exact, else float32.

    CT values are Hounsfield units, integers in [-1024, 3071] on every scanner; int16 keeps them
    exactly at half the memory of float32. Anything else (fractional slope, values out of the
    int16 range, float input) becomes float32.

    Args:
        raw: stored values, any shape, integer or float dtype.
        slope: multiplier (DICOM RescaleSlope, NIfTI scl_slope).
        intercept: offset (DICOM RescaleIntercept, NIfTI scl_inter).

    Returns:
        Array of the same shape, dtype int16 or float32.
    """
    integral = (
        np.issubdtype(raw.dtype, np.integer)
        and float(slope).is_integer()
        and float(intercept).is_integer()
    )
    if integral:
        if raw.size == 0:
            return raw.astype(np.int16)
        lo, hi = int(raw.min()), int(raw.max())
        ends = sorted((lo * int(slope) + int(intercept), hi * int(slope) + int(intercept)))
        if ends[0] >= np.iinfo(np.int16).min and ends[1] <= np.iinfo(np.int16).max:
            out = raw.astype(np.int32)
            if slope != 1:
                out *= int(slope)
            if intercept != 0:
                out += int(intercept)
            return out.astype(np.int16)
    out = raw.astype(np.float32)
    if slope != 1:
        out *= np.float32(slope)
    if intercept != 0:
        out += np.float32(intercept)
    return out


def check_affine(affine: np.ndarray, source: str | os.PathLike) -> None:
    """Raise `PancsegError` unless ``affine`` is a finite, invertible voxel-to-world map."""
    if not np.all(np.isfinite(affine)):
        raise PancsegError(
            f"{source}: the voxel-to-world affine contains NaN or Inf "
            f"(rows {np.round(affine[:3], 4).tolist()}); expected finite values in mm"
        )
    linear = affine[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    if np.any(norms == 0):
        raise PancsegError(
            f"{source}: the voxel-to-world affine has a zero voxel size "
            f"(column norms {np.round(norms, 6).tolist()} mm); expected a positive size per axis"
        )
    # Scale-free test: the determinant of the column-normalised matrix is the volume of the
    # unit voxel cell, 1 for orthogonal axes and 0 for degenerate ones.
    if abs(np.linalg.det(linear / norms)) < 1e-6:
        raise PancsegError(
            f"{source}: the voxel-to-world affine is singular (its voxel axes are parallel); "
            "expected three independent axes"
        )
