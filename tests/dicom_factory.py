"""Real DICOM series for tests, written with pydicom from a voxel array in HU.

`write_series` writes one file per slice with valid file meta, an image storage SOP class and
fresh UIDs, the geometry tags of a chosen grid, and (fake) patient identifiers, so tests can
check geometry, sorting, error messages and that no identifier leaks anywhere.

Coordinates follow DICOM: ``origin`` and explicit slice positions are ImagePositionPatient
values in patient LPS millimetres; ``orientation`` is ImageOrientationPatient (row direction,
then column direction). The array is in the reader's layout ``(I, J, K)`` = (columns, rows,
slices): slice ``k`` is stored as ``array[:, :, k].T`` (Rows = J, Columns = I).

Example::

    from tests.dicom_factory import write_series

    hu = np.full((20, 30, 4), -1000, np.int16)   # 20 columns, 30 rows, 4 slices
    write_series(tmp_path / "ct", hu, pixel_spacing=(0.9, 0.5), spacing=2.5)
    volume = read_dicom_series(tmp_path / "ct")
"""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

# Fake identifiers that look real, so privacy tests can search outputs for each of them.
DEFAULT_PATIENT: dict[str, str] = {
    "PatientName": "Doe^Janet^Quincy",
    "PatientID": "PID-48151623",
    "PatientBirthDate": "19470314",
    "InstitutionName": "Saint Example Memorial Hospital",
    "StudyDate": "20230817",
    "AccessionNumber": "ACC-90210-77",
}

FILE_NAME_STYLES = ("shuffled", "ordered", "uid")
INSTANCE_NUMBER_STYLES = ("shuffled", "ordered", "reversed")


def _ds(value: float) -> DSfloat:
    # DS strings hold at most 16 characters; auto_format keeps the most precision that fits.
    return DSfloat(float(value), auto_format=True)


def slice_positions_lps(
    num_slices: int,
    *,
    spacing: float = 1.0,
    slice_positions: Sequence[float] | np.ndarray | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """ImagePositionPatient of each slice, shape ``(num_slices, 3)``, in LPS mm.

    Args:
        num_slices: K.
        spacing: distance between slices along the normal, used when ``slice_positions``
            is None.
        slice_positions: either K distances along the normal from ``origin``, or a
            ``(K, 3)`` array of full positions (e.g. a gantry tilt, duplicates).
        orientation: ImageOrientationPatient.
        origin: position of slice 0.
    """
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    origin = np.asarray(origin, dtype=np.float64)
    if slice_positions is None:
        return origin + np.arange(num_slices)[:, None] * spacing * normal
    positions = np.asarray(slice_positions, dtype=np.float64)
    if positions.ndim == 1:
        positions = origin + positions[:, None] * normal
    if positions.shape != (num_slices, 3):
        raise ValueError(f"need {num_slices} slice positions, got shape {positions.shape}")
    return positions


def write_series(
    folder: str | pathlib.Path,
    array: np.ndarray,
    *,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    spacing: float = 1.0,
    slice_positions: Sequence[float] | np.ndarray | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    rescale: tuple[float, float] = (1.0, -1024.0),
    series_number: int | None = 1,
    description: str = "synthetic series",
    modality: str = "CT",
    patient: Mapping[str, str] | None = None,
    file_names: str = "shuffled",
    instance_numbers: str = "shuffled",
    skip_slices: Iterable[int] = (),
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    drop_tags: Iterable[str] = (),
    extra_tags: Mapping[str, object] | None = None,
    seed: int = 0,
) -> list[pathlib.Path]:
    """Write ``array`` as a DICOM series, one file per slice.

    Args:
        folder: created if missing; may already hold other series.
        array: ``(I, J, K)`` = (columns, rows, slices) values in HU (or MR intensity); each
            must be an integer after inverse rescaling.
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` in mm: row spacing is
            the distance between rows (along the column direction, J), column spacing the
            distance between columns (along the row direction, I).
        spacing: distance between slices along the normal (when ``slice_positions`` is None).
        slice_positions: see `slice_positions_lps`.
        orientation: ImageOrientationPatient.
        origin: ImagePositionPatient of slice 0 (LPS mm).
        rescale: ``(RescaleSlope, RescaleIntercept)``; stored = (value - intercept) / slope.
        series_number: SeriesNumber (None leaves the tag out).
        description: SeriesDescription.
        modality: ``"CT"`` (CT Image Storage) or ``"MR"`` (MR Image Storage).
        patient: identifier tags by keyword; default `DEFAULT_PATIENT`.
        file_names: ``"shuffled"`` (numbered names in random order), ``"ordered"`` (names in
            slice order) or ``"uid"`` (the SOPInstanceUID, as many PACS exports do).
        instance_numbers: ``"shuffled"``, ``"ordered"`` or ``"reversed"`` InstanceNumber.
        skip_slices: slice indices k not to write (a missing slice).
        transfer_syntax: a transfer syntax UID; compressed ones need a pydicom encoder.
        study_uid: StudyInstanceUID to share between series (default: a new one).
        drop_tags: keywords removed from every file (e.g. ``"ImagePositionPatient"``).
        extra_tags: more tags by keyword, set in every file.
        seed: seed of the shuffles.

    Returns:
        The written files, in slice order (skipped slices left out).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be (I, J, K), got shape {array.shape}")
    if file_names not in FILE_NAME_STYLES:
        raise ValueError(f"file_names must be one of {FILE_NAME_STYLES}, got {file_names!r}")
    if instance_numbers not in INSTANCE_NUMBER_STYLES:
        raise ValueError(
            f"instance_numbers must be one of {INSTANCE_NUMBER_STYLES}, got {instance_numbers!r}"
        )
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns, rows, num_slices = array.shape
    rng = np.random.default_rng(seed)

    slope, intercept = rescale
    stored = (array.astype(np.float64) - intercept) / slope
    if not np.allclose(stored, np.rint(stored), atol=1e-6):
        raise ValueError("array values are not integers after inverse rescaling")
    stored = np.rint(stored)
    signed = bool(stored.min() < 0)
    pixel_dtype = np.int16 if signed else np.uint16
    info = np.iinfo(pixel_dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"stored values [{stored.min()}, {stored.max()}] do not fit {pixel_dtype}")
    stored = stored.astype(pixel_dtype)

    positions = slice_positions_lps(
        num_slices,
        spacing=spacing,
        slice_positions=slice_positions,
        orientation=orientation,
        origin=origin,
    )
    name_order = rng.permutation(num_slices)
    instance_order = {
        "shuffled": rng.permutation(num_slices),
        "ordered": np.arange(num_slices),
        "reversed": np.arange(num_slices)[::-1],
    }[instance_numbers]
    sop_class = MRImageStorage if modality.upper() == "MR" else CTImageStorage
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    identity = dict(DEFAULT_PATIENT if patient is None else patient)
    skip = {int(k) for k in skip_slices}
    now = datetime.datetime(2024, 1, 2, 3, 4, 5)

    written = []
    for k in range(num_slices):
        if k in skip:
            continue
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        for keyword, value in identity.items():
            setattr(ds, keyword, value)
        if series_number is not None:
            ds.SeriesNumber = int(series_number)
        ds.SeriesDescription = description
        ds.InstanceNumber = int(instance_order[k]) + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
        ds.SliceThickness = _ds(spacing)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "HU" if modality.upper() == "CT" else "US"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        for keyword, value in (extra_tags or {}).items():
            setattr(ds, keyword, value)
        for keyword in drop_tags:
            if keyword in ds:
                delattr(ds, keyword)

        ts = UID(transfer_syntax)
        if ts.is_compressed:
            ds.compress(ts)
        else:
            ds.file_meta.TransferSyntaxUID = ts

        if file_names == "ordered":
            name = f"S{series_uid[-6:]}_slice{k:04d}.dcm"
        elif file_names == "uid":
            name = f"{sop_uid}.dcm"
        else:
            # The UID part keeps series written into one folder from overwriting each other.
            name = f"IM{series_uid[-6:]}_{int(name_order[k]):04d}.dcm"
        path = folder / name
        if path.exists():
            raise FileExistsError(f"{path} exists: write each series once per folder")
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def rewrite_files(paths: Iterable[pathlib.Path], **tags: object) -> None:
    """Set tags (by keyword) in existing files, e.g. to make one slice inconsistent."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
