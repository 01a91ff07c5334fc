"""Odd NIfTI files and DICOM series for the fuzzed reader tests, written byte by byte.

`write_raw_nifti` writes a NIfTI-1 file from header fields exactly as given (any ``dim``,
``pixdim``, datatype code, qform / sform code, scaling), without the checks and fixes nibabel
applies when it writes an image, so the reader sees what a broken or unusual writer produces.
`expected_nifti_affine` is an oracle for the voxel-to-world affine such a header defines,
computed from the NIfTI-1 standard's formulas rather than from nibabel.

`write_dicom_case` writes one or two DICOM series through `tests.dicom_factory.write_series`
from a `DicomCase` (geometry, tags to drop or spoil, transfer syntax) and returns what a correct
reader must produce for the series it should choose.

Example::

    from tests.fuzz_factory import write_raw_nifti

    data = np.arange(24, dtype=np.int16)
    write_raw_nifti(tmp_path / "odd.nii", dim=(3, 2, 3, 4), datatype=4, data=data.tobytes(),
                    pixdim=(1, 0.0, 1, 1), qform_code=1, sform_code=0)
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
import pydicom

from tests.dicom_factory import slice_positions_lps, write_series

# NIfTI-1 datatype code -> numpy dtype of the stored values (little endian), or None where the
# code has no numpy counterpart here (binary, float128 on most platforms, complex256, junk).
NIFTI_DTYPES: dict[int, np.dtype | None] = {
    2: np.dtype("u1"),
    4: np.dtype("<i2"),
    8: np.dtype("<i4"),
    16: np.dtype("<f4"),
    32: np.dtype("<c8"),
    64: np.dtype("<f8"),
    128: np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]),
    256: np.dtype("i1"),
    512: np.dtype("<u2"),
    768: np.dtype("<u4"),
    1024: np.dtype("<i8"),
    1280: np.dtype("<u8"),
    1792: np.dtype("<c16"),
    2304: np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")]),
    # No usable numpy dtype: the reader must refuse these.
    1: None,  # DT_BINARY (1 bit per voxel)
    1536: None,  # DT_FLOAT128
    2048: None,  # DT_COMPLEX256
    3: None,  # not a NIfTI datatype code
}

# Header bytes (348) plus the 4-byte extension flag: where the voxel data start by default.
VOX_OFFSET = 352


def _bitpix(datatype: int) -> int:
    dtype = NIFTI_DTYPES.get(datatype)
    return 8 * dtype.itemsize if dtype is not None else 16


def write_raw_nifti(
    path: str | pathlib.Path,
    *,
    dim: Sequence[int],
    datatype: int,
    data: bytes,
    pixdim: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    qform_code: int = 0,
    sform_code: int = 0,
    quatern: Sequence[float] = (0.0, 0.0, 0.0),
    qoffset: Sequence[float] = (0.0, 0.0, 0.0),
    srow: np.ndarray | None = None,
    scl_slope: float = 0.0,
    scl_inter: float = 0.0,
) -> pathlib.Path:
    """Write a single-file NIfTI-1 (``.nii`` or, by suffix, ``.nii.gz``) with these fields.

    Args:
        path: the file; a ``.gz`` suffix compresses it.
        dim: ``dim[0]`` (number of dimensions) followed by the sizes; padded with 1 to 8 values.
        datatype: NIfTI datatype code (see `NIFTI_DTYPES`); ``bitpix`` follows from it.
        data: the voxel bytes, written right after the header (`VOX_OFFSET`) as they are
            (Fortran order is the caller's business; fewer bytes than ``dim`` asks for make a
            truncated file).
        pixdim: ``pixdim[0]`` (qfac) and the voxel sizes; padded with 1.
        qform_code, sform_code: the two codes, any int16.
        quatern: ``quatern_b, quatern_c, quatern_d``.
        qoffset: ``qoffset_x, qoffset_y, qoffset_z``.
        srow: ``(3, 4)`` sform rows; default the identity.
        scl_slope, scl_inter: data scaling (slope 0 means none, as the standard says).

    Returns:
        The path written.
    """
    import nibabel as nib

    path = pathlib.Path(path)
    header = nib.Nifti1Header()
    dims = list(dim) + [1] * (8 - len(dim))
    header["dim"] = np.asarray(dims[:8], dtype=np.int16)
    pix = list(pixdim) + [1.0] * (8 - len(pixdim))
    header["pixdim"] = np.asarray(pix[:8], dtype=np.float32)
    header["datatype"] = datatype
    header["bitpix"] = _bitpix(datatype)
    header["vox_offset"] = VOX_OFFSET
    header["scl_slope"] = scl_slope
    header["scl_inter"] = scl_inter
    header["qform_code"] = qform_code
    header["sform_code"] = sform_code
    header["quatern_b"], header["quatern_c"], header["quatern_d"] = quatern
    header["qoffset_x"], header["qoffset_y"], header["qoffset_z"] = qoffset
    rows = np.eye(4)[:3] if srow is None else np.asarray(srow, dtype=np.float64)
    header["srow_x"], header["srow_y"], header["srow_z"] = rows
    header["xyzt_units"] = 2 | 8  # mm, s
    blob = header.binaryblock + b"\x00" * 4 + data  # 4 zero bytes: no extensions
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path


def quaternion_matrix(b: float, c: float, d: float) -> np.ndarray | None:
    """The NIfTI-1 rotation of quaternion ``(b, c, d)``, or None when ``b² + c² + d² > 1``.

    The standard (nifti1.h, "METHOD 2") takes ``a = sqrt(1 - b² - c² - d²)``; a sum slightly
    above 1 from float32 rounding counts as ``a = 0``.
    """
    b, c, d = (float(np.float32(v)) for v in (b, c, d))
    rest = 1.0 - (b * b + c * c + d * d)
    if rest < -1e-6:
        return None
    a = np.sqrt(max(rest, 0.0))
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )


def expected_nifti_affine(
    *,
    pixdim: Sequence[float],
    qform_code: int,
    sform_code: int,
    quatern: Sequence[float],
    qoffset: Sequence[float],
    srow: np.ndarray | None,
) -> np.ndarray | None:
    """The affine the standard defines for these fields, with float32 storage applied.

    sform when ``sform_code > 0`` (nibabel's preference, and the standard's "METHOD 3"), else
    qform when ``qform_code > 0`` ("METHOD 2"), else None ("METHOD 1", no orientation: only the
    voxel sizes are defined, which the caller checks on their own).

    Returns:
        4x4 float64, or None for METHOD 1 and for a quaternion outside the unit ball.
    """
    f32 = np.float32
    if sform_code > 0:
        rows = np.eye(4)[:3] if srow is None else np.asarray(srow, dtype=f32).astype(np.float64)
        return np.vstack([rows, [0.0, 0.0, 0.0, 1.0]])
    if qform_code > 0:
        rotation = quaternion_matrix(*quatern)
        if rotation is None:
            return None
        pix = [float(f32(v)) for v in list(pixdim) + [1.0] * (4 - len(pixdim))]
        qfac = -1.0 if pix[0] == -1.0 else 1.0
        zooms = np.array([pix[1], pix[2], pix[3] * qfac])
        affine = np.eye(4)
        affine[:3, :3] = rotation * zooms
        affine[:3, 3] = [float(f32(v)) for v in qoffset]
        return affine
    return None


# === DICOM ===


@dataclasses.dataclass
class DicomCase:
    """One DICOM folder to write: a main series and, optionally, a second one beside it.

    Attributes:
        hu: ``(I, J, K)`` values of the main series (columns, rows, slices), integers.
        orientation: ImageOrientationPatient.
        pixel_spacing: PixelSpacing (row spacing, column spacing).
        positions: ``(K, 3)`` ImagePositionPatient per slice (LPS mm), as written; None: one
            ``slice_thickness`` apart along the normal.
        slice_thickness: SliceThickness (what a single slice's third axis takes).
        rescale: (RescaleSlope, RescaleIntercept) as written.
        transfer_syntax: the transfer syntax UID.
        drop: (tag keyword, slice indices) pairs: the tag is removed from those slices.
        spoil: (tag keyword, value) pairs: the tag gets this value in every slice.
        second_slices: number of slices of a second series in the same folder (0: none).
    """

    hu: np.ndarray
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    positions: np.ndarray | None = None
    slice_thickness: float = 1.0
    rescale: tuple[float, float] = (1.0, -1024.0)
    transfer_syntax: str = pydicom.uid.ExplicitVRLittleEndian
    drop: tuple[tuple[str, tuple[int, ...]], ...] = ()
    spoil: tuple[tuple[str, object], ...] = ()
    second_slices: int = 0


def write_dicom_case(folder: pathlib.Path, case: DicomCase) -> list[pathlib.Path]:
    """Write the case's series into ``folder``; returns the main series' files in slice order.

    The second series, when asked for, has the main series' geometry but its own values
    (stored values + 7) and SeriesNumber 2; the main series is number 1.
    """
    num_slices = case.hu.shape[2]
    positions = (
        slice_positions_lps(num_slices, spacing=case.slice_thickness, orientation=case.orientation)
        if case.positions is None
        else np.asarray(case.positions, dtype=np.float64)
    )
    files = write_series(
        folder,
        case.hu,
        pixel_spacing=case.pixel_spacing,
        spacing=case.slice_thickness,
        slice_positions=positions,
        orientation=case.orientation,
        rescale=case.rescale,
        transfer_syntax=case.transfer_syntax,
        series_number=1,
        seed=1,
    )
    if case.second_slices:
        write_series(
            folder,
            case.hu[:, :, : case.second_slices] + 7 * case.rescale[0],
            pixel_spacing=case.pixel_spacing,
            slice_positions=positions[: case.second_slices],
            orientation=case.orientation,
            rescale=case.rescale,
            series_number=2,
            description="second series",
            seed=2,
        )
    for keyword, slices in case.drop:
        for k in slices:
            ds = pydicom.dcmread(files[k])
            if keyword in ds:
                delattr(ds, keyword)
            ds.save_as(files[k], enforce_file_format=True)
    if case.spoil:
        for path in files:
            ds = pydicom.dcmread(path)
            with warnings.catch_warnings():  # pydicom warns about the invalid values we want
                warnings.simplefilter("ignore")
                for keyword, value in case.spoil:
                    setattr(ds, keyword, value)
                ds.save_as(path, enforce_file_format=True)
    return files
