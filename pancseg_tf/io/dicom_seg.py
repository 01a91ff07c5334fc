"""A pancreas mask on a DICOM series' grid as a DICOM Segmentation (SEG), written atomically.

A SEG is a derived object of the patient's study: one frame per source slice that holds pancreas,
each placed by its source slice's ImagePositionPatient and ImageOrientationPatient (highdicom takes
them from the source headers), and references to the source series and every source instance.
It must carry the Patient and Study module attributes of its source to be filed beside it: this
is the package's one output that copies patient and study identifiers, written only when the user
asks for it (``pancseg predict --output-format dicom-seg``). Nothing here logs or prints them:
highdicom's own warnings (which quote the patient name) are silenced while the SEG is built.

highdicom is an optional dependency (``pip install "pancseg-tf[dicom-seg]"``), imported only here
and only when a SEG is written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from pancseg_tf import atomic
from pancseg_tf._version import __version__
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import Volume

log = logging.getLogger("pancseg_tf.io")

PathLike = str | os.PathLike

INSTALL_HINT = 'writing a DICOM SEG needs highdicom: pip install "pancseg-tf[dicom-seg]"'
#: Series number of the SEG: far above the scanner's usual range, so viewers list it after the
#: series it segments.
SEG_SERIES_NUMBER = 9901
ALGORITHM_NAME = "pancseg_tf"
SEGMENT_LABEL = "Pancreas"

# What a SEG needs from every source slice to reference it and share its frame of reference.
_REQUIRED_UIDS = {
    "StudyInstanceUID": "(0020,000D)",
    "SeriesInstanceUID": "(0020,000E)",
    "SOPInstanceUID": "(0008,0018)",
    "SOPClassUID": "(0008,0016)",
    "FrameOfReferenceUID": "(0020,0052)",
}
# Type 2 attributes of the Patient and General Study modules (present, possibly empty) that
# highdicom reads from the source; an exporter that dropped one leaves it empty in the SEG, as the
# standard writes an unknown value.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# PS3.10: the file meta's Media Storage SOP Class / Instance UIDs are those of the dataset, so
# an anonymiser that emptied the dataset's copies left the values here.
_FILE_META_FALLBACK = {
    "SOPInstanceUID": "MediaStorageSOPInstanceUID",
    "SOPClassUID": "MediaStorageSOPClassUID",
}


def import_highdicom():
    """Imports highdicom, or raises one line saying how to install it.

    Raises:
        PancsegError: highdicom is not installed.
    """
    try:
        import highdicom
    except ImportError:
        raise PancsegError(INSTALL_HINT) from None
    return highdicom


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """Silences highdicom's and pydicom's warnings and highdicom's log while a SEG is built.

    They quote source values (highdicom warns about a patient name with one component, naming
    it), and nothing of the patient's may reach the terminal.
    """
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _slice_thickness(volume: Volume, first) -> tuple[float, float]:
    """(SliceThickness, SpacingBetweenSlices) in mm for the SEG's pixel measures.

    The spacing is the distance between consecutive planes along the slice normal, measured
    from the slice positions (the reader's mean step; for one slice, its fallback step). The
    thickness is the source's SliceThickness where it has one, else that spacing: NIH
    Pancreas-CT's series have an empty SliceThickness, and a SEG without one in its Pixel
    Measures Sequence is refused by readers (highdicom's own `highdicom.seg.segread` among them).
    """
    axes = volume.affine[:3, :3]
    normal = np.cross(axes[:, 0], axes[:, 1])
    normal /= np.linalg.norm(normal)
    between = round(float(abs(axes[:, 2] @ normal)), 6)
    try:
        thickness = float(first.get("SliceThickness"))
    except (TypeError, ValueError):
        thickness = float("nan")
    return (thickness if np.isfinite(thickness) and thickness > 0 else between), between


def _source_headers(headers: Sequence, where: str, thickness: float) -> list:
    """The headers with every UID a SEG needs, a SliceThickness and the Patient and Study
    modules' type 2 attributes; copies where one was added.

    highdicom takes the SEG's pixel measures from the first source header (it replaces the ones
    given to it with the source's when their pixel spacings agree), so a missing SliceThickness
    is supplied here, on copies, as well as in the pixel measures passed to it.

    Raises:
        PancsegError: a slice lacks a UID that cannot be recovered (the anonymised
            TotalSegmentator example has no StudyInstanceUID or SeriesInstanceUID): a SEG
            could not name the study and series it belongs to.
    """
    fixed = []
    for ds in headers:
        missing = [tag for tag in _REQUIRED_UIDS if not str(ds.get(tag, "") or "").strip()]
        recovered = {
            tag: str(ds.file_meta.get(_FILE_META_FALLBACK[tag], "") or "").strip()
            for tag in missing
            if tag in _FILE_META_FALLBACK and getattr(ds, "file_meta", None) is not None
        }
        lost = [tag for tag in missing if not recovered.get(tag)]
        if lost:
            count = sum(1 for other in headers if not str(other.get(lost[0], "") or "").strip())
            raise PancsegError(
                f"{where}: DICOM tag {lost[0]} {_REQUIRED_UIDS[lost[0]]} is empty or missing in "
                f"{count} of {len(headers)} slices; a DICOM SEG must reference the study, series "
                "and frame of reference of its source (write --output-format nifti instead)"
            )
        if ds.get("SliceThickness") in (None, ""):
            recovered["SliceThickness"] = thickness
        recovered.update({tag: "" for tag in _TYPE2_PATIENT_STUDY if tag not in ds})
        if recovered:
            ds = copy.deepcopy(ds)  # the caller's headers stay as read
            for tag, value in recovered.items():
                setattr(ds, tag, value)
        fixed.append(ds)
    return fixed


def segment_description(highdicom):
    """The pancreas segment: SNOMED CT codes of DICOM's segmentation context groups, and this
    package as the algorithm (family Artificial Intelligence, name and version)."""
    from pydicom.sr.codedict import codes

    return highdicom.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        # CID 7150 Segmentation Property Categories, CID 7151 anatomic structures.
        segmented_property_category=codes.cid7150.AnatomicalStructure,
        segmented_property_type=codes.cid7151.Pancreas,
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=highdicom.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME,
            version=__version__,
            family=codes.cid7162.ArtificialIntelligence,
        ),
    )


def build_segmentation(mask: np.ndarray, volume: Volume, headers: Sequence):
    """A binary DICOM Segmentation of ``mask`` on the source series of ``volume``.

    Frame ``k`` is ``mask[:, :, k].T`` (rows x columns of source slice ``headers[k]``), placed by
    that slice's own position and orientation: no resampling, the mask is on the series' grid.
    Slices without pancreas are left out (all are kept for an empty mask: a SEG needs a frame).

    Args:
        mask: binary voxels (bool or integers 0 / 1) of shape ``volume.shape`` = (columns, rows,
            slices), the layout `pancseg_tf.io.dicom.read_dicom_series` gives.
        volume: the series read as a `Volume`.
        headers: the slices' headers in the volume's slice order, as
            `pancseg_tf.io.dicom.read_dicom_series_with_headers` returns them (pixel data need
            not be loaded).

    Returns:
        A `highdicom.seg.Segmentation` with the source's Patient and Study attributes.

    Raises:
        PancsegError: highdicom is missing; the mask's shape or values, or the headers' number
            or matrix size, do not fit the series; a slice lacks a UID the SEG must reference;
            highdicom refuses the series.
    """
    highdicom = import_highdicom()
    where = f"series in {volume.source}" if volume.source else "series"
    mask = np.asarray(mask)
    if tuple(mask.shape) != volume.shape:
        raise PancsegError(
            f"{where}: mask shape {tuple(mask.shape)} differs from the series grid {volume.shape}"
        )
    if mask.dtype != bool:
        other = (mask != 0) & (mask != 1)
        if other.any():
            raise PancsegError(
                f"{where}: mask holds values {np.unique(mask[other])[:6].tolist()}; expected a "
                "binary mask of 0 and 1"
            )
    columns, rows, slices = volume.shape
    if len(headers) != slices:
        raise PancsegError(
            f"{where}: {len(headers)} slice headers for a volume of {slices} slices; expected "
            "one header per slice, in the volume's order"
        )
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    if sizes != {(rows, columns)}:
        raise PancsegError(
            f"{where}: slice headers have matrix sizes {sorted(sizes)} (rows, columns); "
            f"expected ({rows}, {columns})"
        )
    thickness, between = _slice_thickness(volume, headers[0])
    sources = _source_headers(headers, where, thickness)
    pixel_measures = highdicom.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in sources[0].PixelSpacing],
        slice_thickness=thickness,
        spacing_between_slices=between,
    )
    frames = np.ascontiguousarray(np.transpose(mask != 0, (2, 1, 0))).astype(np.uint8)
    with _quiet_highdicom():
        try:
            return highdicom.seg.Segmentation(
                source_images=sources,
                pixel_array=frames,
                segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment_description(highdicom)],
                series_instance_uid=highdicom.UID(),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=highdicom.UID(),
                instance_number=1,
                manufacturer=ALGORITHM_NAME,
                manufacturer_model_name=ALGORITHM_NAME,
                software_versions=__version__,
                device_serial_number="none",
                pixel_measures=pixel_measures,
                omit_empty_frames=bool(frames.any()),
                content_label="PANCREAS",
                content_description=f"pancreas segmented by {ALGORITHM_NAME} {__version__}",
                series_description=f"{ALGORITHM_NAME} pancreas",
            )
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            # highdicom's messages may quote source values: its type only (--debug has it all).
            raise PancsegError(
                f"{where}: highdicom could not build a DICOM SEG from this series "
                f"({type(error).__name__}; rerun with --debug for details)"
            ) from error


def write_segmentation(
    mask: np.ndarray, volume: Volume, headers: Sequence, path: PathLike
) -> pathlib.Path:
    """Writes ``mask`` as a DICOM SEG of its source series to ``path``, atomically.

    Args:
        mask, volume, headers: as `build_segmentation`.
        path: the file to write (e.g. ``OUT/<case>.dcm``); must not lie inside the source series'
            folder, whose series it would change.

    Returns:
        The written path.

    Raises:
        PancsegError: as `build_segmentation`; a path inside the source folder; an
            operating-system error while writing (the message ends with its reason).
    """
    path = pathlib.Path(path)
    if volume.source:
        source = pathlib.Path(volume.source).resolve()
        if path.resolve().is_relative_to(source):
            raise PancsegError(
                f"refusing to write the DICOM SEG {path} inside the input folder {volume.source}: "
                "it would add a series to the input; write it elsewhere"
            )
    if path.is_dir():
        raise PancsegError(f"cannot write {path}: it is a folder")
    seg = build_segmentation(mask, volume, headers)
    buffer = io.BytesIO()
    with _quiet_highdicom():
        seg.save_as(buffer, enforce_file_format=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, buffer.getvalue())
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split())
        raise PancsegError(f"could not write {path}: {reason}") from None
    log.debug("wrote %s (%d frames)", path, int(seg.NumberOfFrames))
    return path
