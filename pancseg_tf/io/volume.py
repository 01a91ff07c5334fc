"""`Volume`: a 3D image with its voxel-to-world geometry, the unit the package passes around."""

from __future__ import annotations

import dataclasses

import numpy as np

MODALITIES = ("ct", "mri")


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
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "ct"
    source: str = ""
    qform_code: int = 1
    sform_code: int = 1

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")

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
