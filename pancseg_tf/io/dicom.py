"""DICOM series discovery and reading into a `Volume` with the geometry the tags define.

Everything about placement comes from the geometry tags, never from file names or
InstanceNumber: slices are sorted by their position along the slice normal
``cross(row direction, column direction)``, and the affine is built from
ImageOrientationPatient, PixelSpacing and the ImagePositionPatient of the sorted slices, in
DICOM's patient LPS coordinates and then turned into nibabel's RAS+ (x and y negated).

Privacy: a series is named by its SeriesNumber and SeriesDescription only. No message, log line
or returned object holds a UID or a patient, study or institution field, except the slice headers
that `read_dicom_series_with_headers` returns for a DICOM SEG (`pancseg_tf.io.dicom_seg`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import Volume, check_affine, rescale_to_intensity
from pancseg_tf.messages import file_names_only

log = logging.getLogger("pancseg_tf.io")

PathLike = str | os.PathLike

# LPS (DICOM patient coordinates) -> RAS+ (nibabel): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Steps between consecutive slices may differ from the median step by this much (relative to
# it, with an absolute floor for positions rounded in the header) before the series counts as
# uneven. A missing slice is a 100% deviation; scanner rounding stays far below 1%.
STEP_RTOL = 1e-2
STEP_ATOL_MM = 5e-3
# Two slices closer than this along the normal are at the same position.
DUPLICATE_MM = 1e-3
# Per-slice ImageOrientationPatient values may differ by rounding only.
ORIENTATION_ATOL = 1e-3

_GEOMETRY_TAGS = {
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "PixelSpacing": "(0028,0030)",
}
_MATRIX_TAGS = {"Rows": "(0028,0010)", "Columns": "(0028,0011)"}


# === Discovery ===


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silences pydicom's warnings while a folder is read.

    pydicom warns about what it tolerates in a file (a DS value it cannot parse, more pixel
    bytes than Rows x Columns): printed, those lines would surround the command's one-line
    error. What matters for a volume is checked by this module itself.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        yield


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder, named without any identifier.

    Attributes:
        series_number: the SeriesNumber tag (None when absent).
        description: the SeriesDescription tag ("" when absent).
        modality: the Modality tag, e.g. ``"CT"`` or ``"MR"``.
        num_slices: number of image files in the series.
        files: the image files, in the order they were found (not slice order).
    """

    series_number: int | None
    description: str
    modality: str
    num_slices: int
    files: tuple[pathlib.Path, ...] = dataclasses.field(repr=False)

    @property
    def label(self) -> str:
        """How messages name the series, e.g. ``series 3 'Body 3.0'``."""
        parts = ["series"]
        if self.series_number is not None:
            parts.append(str(self.series_number))
        if self.description:
            parts.append(repr(self.description))
        return " ".join(parts) if len(parts) > 1 else "series (no number or description)"


# An image carries at least one of these; DICOMDIR, structured reports and presentation
# states carry none. A slice that lost some of them stays in its series, whose reading then
# names what is missing, rather than dropping out unnoticed.
_IMAGE_TAGS = ("Rows", "Columns", "ImagePositionPatient", "PixelSpacing")


def _is_image_header(ds) -> bool:
    return "SeriesInstanceUID" in ds and any(tag in ds for tag in _IMAGE_TAGS)


def _number_tag(ds, tag: str) -> tuple[object, float | None]:
    """A numeric tag's raw value and its number: ``(None, None)`` when absent or empty, ``NaN``
    when not a number."""
    value = ds.get(tag)
    if value is None or value == "":
        return None, None
    try:
        return value, float(value)
    except (TypeError, ValueError):
        return value, float("nan")


def _int_tag(ds, tag: str, default: int | None = None) -> int | None:
    """An integer tag's value; ``default`` when absent or empty; None when not an integer."""
    value, number = _number_tag(ds, tag)
    if value is None:
        return default
    return int(number) if number.is_integer() else None


def _scan(folder: pathlib.Path) -> tuple[list[SeriesInfo], list[list], int]:
    """Headers of every DICOM image under ``folder``, grouped by series.

    Returns:
        (infos, headers per info, number of files seen).
    """
    import pydicom

    if not folder.exists():
        raise PancsegError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise PancsegError(f"{folder} is not a folder: expected a folder of DICOM files")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    groups: dict[str, list] = {}
    paths: dict[str, list[pathlib.Path]] = {}
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID) if _is_image_header(ds) else None
        except PermissionError as error:
            # Not skipped: a slice the user may not read would leave a gap in the series.
            raise PancsegError(
                f"{folder}: cannot read the file {path.name}: {error.strerror}"
            ) from None
        except Exception:  # not DICOM (InvalidDicomError) or damaged: skipped alike
            uid = None
        if uid is None:
            skipped += 1
            continue
        groups.setdefault(uid, []).append(ds)
        paths.setdefault(uid, []).append(path)
    if skipped:
        log.debug("ignored %d files that are not DICOM images in %s", skipped, folder)
    infos, headers = [], []
    for uid, group in groups.items():
        first = group[0]
        infos.append(
            SeriesInfo(
                series_number=_int_tag(first, "SeriesNumber"),
                description=str(first.get("SeriesDescription", "") or "").strip(),
                modality=str(first.get("Modality", "") or "").strip(),
                num_slices=len(group),
                files=tuple(paths[uid]),
            )
        )
        headers.append(group)
    order = sorted(
        range(len(infos)),
        key=lambda i: (
            infos[i].series_number is None,
            infos[i].series_number or 0,
            infos[i].description,
        ),
    )
    return [infos[i] for i in order], [headers[i] for i in order], len(files)


def list_dicom_series(folder: PathLike) -> list[SeriesInfo]:
    """The image series under ``folder`` (searched recursively), reading headers only.

    Files that are not DICOM images are ignored. Series are told apart by their
    SeriesInstanceUID, which is never returned.

    Args:
        folder: the folder.

    Returns:
        One `SeriesInfo` per series, sorted by SeriesNumber; empty when there is none.

    Raises:
        PancsegError: ``folder`` does not exist or is not a folder.
    """
    with _quiet_pydicom():
        return _scan(pathlib.Path(folder))[0]


def _choose(
    folder: pathlib.Path, infos: list[SeriesInfo], series: int | None, num_files: int
) -> int:
    if num_files == 0:
        raise PancsegError(f"no files in {folder}: expected a folder of DICOM files")
    if not infos:
        raise PancsegError(
            f"no DICOM series found in {folder} ({num_files} files, none of them a DICOM image)"
        )
    available = ", ".join(f"{info.label} ({info.num_slices} slices)" for info in infos)
    if series is None:
        chosen = max(range(len(infos)), key=lambda i: infos[i].num_slices)
    else:
        matches = [i for i, info in enumerate(infos) if info.series_number == series]
        if not matches:
            raise PancsegError(f"no series number {series} in {folder}: found {available}")
        if len(matches) > 1:
            raise PancsegError(
                f"{len(matches)} series in {folder} have number {series} ({available}): "
                "put each series in its own folder"
            )
        chosen = matches[0]
    info = infos[chosen]
    if len(infos) > 1:
        log.info(
            "%s holds %d series (%s); reading %s (%d slices)",
            folder,
            len(infos),
            available,
            info.label,
            info.num_slices,
        )
    else:
        log.debug("reading %s (%d slices) from %s", info.label, info.num_slices, folder)
    return chosen


# === Geometry ===


@dataclasses.dataclass
class _Geometry:
    order: np.ndarray  # sorted slice index -> header index
    affine: np.ndarray  # 4x4 RAS+
    rows: int
    columns: int


def _floats(ds, tag: str, count: int, where: str) -> np.ndarray:
    values = ds.get(tag)
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.array([])
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise PancsegError(
            f"{where}: DICOM tag {tag} {_GEOMETRY_TAGS[tag]} has value {values!s:.60}; "
            f"expected {count} numbers"
        )
    return array


def _geometry(headers: Sequence, where: str, allow_uneven: bool) -> _Geometry:
    for tag, number in {**_MATRIX_TAGS, **_GEOMETRY_TAGS}.items():
        missing = sum(1 for ds in headers if ds.get(tag) in (None, ""))
        if missing:
            raise PancsegError(
                f"{where}: DICOM tag {tag} {number} is missing in {missing} of {len(headers)} "
                "slices; expected it in every slice to place the image in space"
            )
    for tag, number in _MATRIX_TAGS.items():
        for ds in headers:
            value = _int_tag(ds, tag)
            if value is None or value < 1:
                raise PancsegError(
                    f"{where}: DICOM tag {tag} {number} has value {ds.get(tag)!s:.20}; "
                    "expected a positive whole number of pixels"
                )
    sizes = {(_int_tag(ds, "Rows"), _int_tag(ds, "Columns")) for ds in headers}
    if len(sizes) > 1:
        raise PancsegError(
            f"{where}: slices have different matrix sizes {sorted(sizes)} (rows, columns); "
            "expected one size for the whole series"
        )
    rows, columns = sizes.pop()

    orientations = np.stack([_floats(ds, "ImageOrientationPatient", 6, where) for ds in headers])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_ATOL:
        raise PancsegError(
            f"{where}: slices have different ImageOrientationPatient values; expected one "
            "orientation for the whole series (a localizer mixed in?)"
        )
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    row_norm, col_norm = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if row_norm < 1e-6 or col_norm < 1e-6 or abs(row_dir @ col_dir) / row_norm / col_norm > 1e-3:
        raise PancsegError(
            f"{where}: ImageOrientationPatient {orientations[0].round(6).tolist()} does not give "
            "two perpendicular unit directions"
        )
    row_dir, col_dir = row_dir / row_norm, col_dir / col_norm
    normal = np.cross(row_dir, col_dir)

    spacings = np.stack([_floats(ds, "PixelSpacing", 2, where) for ds in headers])
    if np.any(spacings <= 0) or np.abs(spacings - spacings[0]).max() > 1e-4 * spacings[0].max():
        raise PancsegError(
            f"{where}: PixelSpacing must be positive and equal in every slice, got values "
            f"from {spacings.min(axis=0).tolist()} to {spacings.max(axis=0).tolist()} mm"
        )
    # PixelSpacing = [between rows (along the column direction), between columns].
    row_spacing, col_spacing = spacings[0]

    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, where) for ds in headers])
    keys = positions @ normal
    order = np.argsort(keys, kind="stable")
    positions, keys = positions[order], keys[order]

    if len(headers) == 1:
        ds = headers[0]
        thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0
        step = normal * abs(float(thickness))
    else:
        gaps = np.diff(keys)
        duplicates = np.flatnonzero(gaps < DUPLICATE_MM)
        if duplicates.size:
            k = int(duplicates[0])
            raise PancsegError(
                f"{where}: {duplicates.size + 1} slices share a position, e.g. slices {k + 1} "
                f"and {k + 2} (of {len(keys)}, in position order) both at {keys[k]:.4f} mm "
                "along the slice normal; expected one slice per position (two acquisitions "
                "in one series?)"
            )
        steps = np.diff(positions, axis=0)
        expected = np.median(steps, axis=0)
        deviation = np.linalg.norm(steps - expected, axis=1)
        tolerance = max(STEP_RTOL * float(np.linalg.norm(expected)), STEP_ATOL_MM)
        step = (positions[-1] - positions[0]) / (len(keys) - 1)
        if deviation.max() > tolerance:
            k = int(np.argmax(deviation))
            problem = (
                f"slice spacing is uneven ({int((deviation > tolerance).sum())} of "
                f"{len(steps)} steps): between slice positions {keys[k]:.4f} mm and "
                f"{keys[k + 1]:.4f} mm along the slice normal the step is "
                f"{np.linalg.norm(steps[k]):.4f} mm, expected {np.linalg.norm(expected):.4f} mm"
                + (" (a missing slice?)" if gaps[k] > 1.5 * (expected @ normal) else "")
            )
            if not allow_uneven:
                raise PancsegError(
                    f"{where}: {problem}; pass --allow-uneven (allow_uneven=True) to read it "
                    f"with the mean spacing {np.linalg.norm(step):.4f} mm"
                )
            log.warning(
                "%s: %s; reading it with the mean spacing %.4f mm",
                where,
                problem,
                np.linalg.norm(step),
            )

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return _Geometry(order=order, affine=LPS_TO_RAS @ lps, rows=rows, columns=columns)


# === Pixel data ===


def _check_decodable(headers: Sequence, where: str) -> None:
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom < 3: decoding errors are reported when they happen.
        return
    seen = set()
    for ds in headers:
        meta = getattr(ds, "file_meta", None)
        uid = None if meta is None else meta.get("TransferSyntaxUID")
        if uid is None or uid in seen:
            continue
        seen.add(uid)
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            raise PancsegError(
                f"{where}: pixel data use transfer syntax {uid} ({uid.name}), which no "
                "installed DICOM decoder supports; convert the series (e.g. with dcm2niix)"
            ) from None
        if not decoder.is_available:
            plugins = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise PancsegError(
                f"{where}: cannot decode transfer syntax {uid} ({uid.name}): its decoder "
                f"plugin is missing (install one of: {plugins})"
            )


def _decode(path: pathlib.Path, index: int, total: int, where: str, rows: int, columns: int):
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # a file that parsed a moment ago: anything is an I/O problem
        text = file_names_only(" ".join(str(error).split()))
        raise PancsegError(
            f"{where}: could not read slice {index + 1} of {total}: {text}"
        ) from None
    frames = _int_tag(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise PancsegError(
            f"{where}: multi-frame DICOM ({ds.get('NumberOfFrames')!s:.20} frames in one file) is "
            "not supported; expected one slice per file (convert with dcm2niix)"
        )
    if _int_tag(ds, "SamplesPerPixel", 1) != 1:
        raise PancsegError(
            f"{where}: pixel data have {ds.get('SamplesPerPixel')!s:.20} samples per pixel "
            "(colour?); expected a grey-scale image with 1"
        )
    uid = ds.file_meta.get("TransferSyntaxUID", "unknown")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # decoders (pylibjpeg, Pillow, gdcm) raise many types
        name = getattr(uid, "name", "")
        text = file_names_only(" ".join(str(error).split()))
        raise PancsegError(
            f"{where}: could not decode slice {index + 1} of {total} (transfer syntax {uid} "
            f"{name}): {text}"
        ) from None
    if pixels.shape != (rows, columns):
        raise PancsegError(
            f"{where}: slice {index + 1} of {total} decodes to shape {pixels.shape}; "
            f"expected ({rows}, {columns})"
        )
    slope = _rescale(ds, "RescaleSlope", 1.0, index, total, where)
    intercept = _rescale(ds, "RescaleIntercept", 0.0, index, total, where)
    return pixels, slope, intercept


def _rescale(ds, tag: str, default: float, index: int, total: int, where: str) -> float:
    """RescaleSlope or RescaleIntercept: ``default`` when absent or empty, else a finite number.

    A slope of 0 would map every pixel to the intercept: it is refused like NaN and Inf.
    """
    value, number = _number_tag(ds, tag)
    if value is None:
        return default
    if not np.isfinite(number) or (tag == "RescaleSlope" and number == 0):
        raise PancsegError(
            f"{where}: slice {index + 1} of {total} has {tag} {value!s:.20}; expected a finite "
            + ("non-zero " if tag == "RescaleSlope" else "")
            + "number"
        )
    return number


# === Reading ===


def read_dicom_series(
    folder: PathLike, *, series: int | None = None, allow_uneven: bool = False
) -> Volume:
    """Read one DICOM series from a folder into a `Volume` in RAS+ world coordinates.

    Slices are sorted along the slice normal ``cross(row_dir, col_dir)`` (ascending
    ``normal . ImagePositionPatient``), so the third voxel axis follows the normal. The voxel
    array is ``(I, J, K)`` = (columns, rows, slices): voxel ``[i, j, k]`` is pixel
    ``[row j, column i]`` of the k-th sorted slice. The affine maps them as DICOM does:
    column 0 = row direction x column spacing, column 1 = column direction x row spacing,
    column 2 = mean step between consecutive slice positions (a gantry tilt gives a sheared
    affine, recorded by ``qform_code = 0``), translation = first slice's ImagePositionPatient;
    all converted from LPS to RAS+. RescaleSlope / RescaleIntercept are applied per slice: int16
    when exact (CT in HU), else float32.

    Args:
        folder: folder holding the files (searched recursively; non-DICOM files are ignored).
        series: SeriesNumber to read when the folder holds several; default: the series with
            the most slices. The choice is logged (logger ``pancseg_tf.io``).
        allow_uneven: accept uneven spacing or a missing slice, using the mean step with a
            logged warning, instead of raising.

    Returns:
        `Volume` with modality ``"mri"`` for Modality MR and ``"ct"`` otherwise, ``source`` the
        folder, ``sform_code`` 1 and ``qform_code`` 1 (0 when sheared).

    Raises:
        PancsegError: empty folder; no DICOM series; unknown series number; missing or
            inconsistent geometry tags or Rows / Columns; duplicate slice positions; uneven
            spacing (unless ``allow_uneven``); a transfer syntax without an installed decoder;
            undecodable or multi-frame or colour pixel data; a RescaleSlope or
            RescaleIntercept that is not a finite number, a slope of 0, or rescaled values
            beyond the float32 range.
    """
    return read_dicom_series_with_headers(folder, series=series, allow_uneven=allow_uneven)[0]


def read_dicom_series_with_headers(
    folder: PathLike, *, series: int | None = None, allow_uneven: bool = False
) -> tuple[Volume, list]:
    """`read_dicom_series`, and the headers of the slices in the volume's slice order.

    For a derived DICOM object (a Segmentation) that must reference each source slice: its
    frame ``k`` is the volume's ``array[:, :, k].T``, the slice of ``headers[k]``.

    Args:
        folder, series, allow_uneven: as `read_dicom_series`.

    Returns:
        ``(volume, headers)``: the `Volume`, and one `pydicom.Dataset` per slice (read without
        pixel data, with its file meta) with ``headers[k]`` the slice at ``array[:, :, k]``.
        The headers hold the series' UIDs and patient and study fields: they are for a DICOM
        SEG only, never for a message, a log or another output.

    Raises:
        PancsegError: as `read_dicom_series`.
    """
    folder = pathlib.Path(folder)
    with _quiet_pydicom():
        return _read_series(folder, series, allow_uneven)


def _read_series(
    folder: pathlib.Path, series: int | None, allow_uneven: bool
) -> tuple[Volume, list]:
    infos, headers, num_files = _scan(folder)
    chosen = _choose(folder, infos, series, num_files)
    info, group = infos[chosen], headers[chosen]
    where = f"{info.label} in {folder}"

    geometry = _geometry(group, where, allow_uneven)
    _check_decodable(group, where)

    total = len(group)
    array = np.empty((geometry.columns, geometry.rows, total), dtype=np.int16)
    for k, index in enumerate(geometry.order):
        pixels, slope, intercept = _decode(
            info.files[index], k, total, where, geometry.rows, geometry.columns
        )
        with np.errstate(over="ignore"):  # an overflow to Inf is reported just below
            values = rescale_to_intensity(pixels, slope, intercept)
        if values.dtype == np.float32 and array.dtype == np.int16:
            array = array.astype(np.float32)
        array[:, :, k] = values.T
    if array.dtype == np.float32 and not np.all(np.isfinite(array)):
        raise PancsegError(
            f"{where}: RescaleSlope and RescaleIntercept take "
            f"{int((~np.isfinite(array)).sum())} of {array.size} voxels beyond the float32 "
            "range; expected finite intensities"
        )

    affine = geometry.affine
    check_affine(affine, where)
    volume = Volume(
        array=array,
        affine=affine,
        modality="mri" if info.modality.upper() == "MR" else "ct",
        source=str(folder),
        qform_code=1,
        sform_code=1,
    )
    if volume.is_sheared:
        # A qform is a rotation plus zooms: it cannot hold a tilt, so only the sform is valid.
        volume = dataclasses.replace(volume, qform_code=0)
    return volume, [group[index] for index in geometry.order]
