"""DICOM SEG of a mask on a real series: read back with highdicom, placed in space frame by frame.

Each frame's voxels are found from its own Plane Position and Plane Orientation (and the Pixel
Measures), turned into voxel indices of the series' volume through its affine: never from the
frame order. On NIH Pancreas-CT 0002 (column direction -y, no SliceThickness) with its manual
label, and on the JPEG 2000 TotalSegmentator series with a one-sided bone mask.
"""

import logging
import pathlib
import warnings

import numpy as np
import pydicom
import pytest

from pancseg_tf import __version__
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.dicom import LPS_TO_RAS, read_dicom_series_with_headers
from pancseg_tf.io.dicom_seg import build_segmentation, write_segmentation

hd = pytest.importorskip("highdicom")


def seg_voxels(seg, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The SEG's pixels placed on the grid of ``affine`` / ``shape`` by each frame's geometry.

    Every frame pixel must fall on a voxel centre (to 1e-3 voxel) inside the grid, and no voxel
    may be covered twice.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    to_voxel = np.linalg.inv(affine) @ LPS_TO_RAS  # LPS millimetres -> voxel indices
    out = np.zeros(shape, np.uint8)
    covered = np.zeros(shape, bool)
    rows, cols = np.mgrid[0 : int(seg.Rows), 0 : int(seg.Columns)]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        orientation_item = item if "PlaneOrientationSequence" in item else shared
        cosines = orientation_item.PlaneOrientationSequence[0].ImageOrientationPatient
        row_dir, col_dir = np.array(cosines[:3], float), np.array(cosines[3:], float)
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        # DICOM: pixel (r, c) lies at position + c * column spacing * row direction
        # + r * row spacing * column direction (PixelSpacing = [row spacing, column spacing]).
        # Voxel indices are affine in (r, c): the frame's first pixel and one step along each.
        origin = to_voxel[:3, :3] @ position + to_voxel[:3, 3]
        step_c = to_voxel[:3, :3] @ (spacing[1] * row_dir)
        step_r = to_voxel[:3, :3] @ (spacing[0] * col_dir)
        exact = [np.rint(v).astype(int) for v in (origin, step_c, step_r)]
        for value, whole in zip((origin, step_c, step_r), exact):
            assert np.abs(value - whole).max() < 1e-4, f"frame {frame} is off the voxel grid"
        first, along_c, along_r = (v[:, None, None] for v in exact)
        index = first + along_c * cols + along_r * rows
        for axis in range(3):
            assert 0 <= index[axis].min() and index[axis].max() < shape[axis], frame
        i, j, k = index
        assert not covered[i, j, k].any(), f"frame {frame} covers voxels twice"
        covered[i, j, k] = True
        out[i, j, k] = pixels[frame]
    return out


def assert_references_source(seg, headers) -> None:
    """The SEG names the source study, series, frame of reference and every source slice, and
    each frame's source slice lies where the frame does."""
    series_uid = {str(ds.SeriesInstanceUID) for ds in headers}
    assert len(series_uid) == 1
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series_uid.pop()
    source = {
        str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID): ds for ds in headers
    }
    assert {
        str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence
    } == set(source)
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != headers[0].SeriesInstanceUID
    for item in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = item.DerivationImageSequence
        (image,) = derivation.SourceImageSequence
        slice_ds = source[str(image.ReferencedSOPInstanceUID)]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in slice_ds.ImagePositionPatient],
        )


def assert_pancreas_segment(seg) -> None:
    from pydicom.sr.codedict import codes

    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Pancreas"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == (
        "SCT",
        codes.SCT.AnatomicalStructure.value,
    )
    assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
        "SCT",
        "15776009",
        "Pancreas",
    )
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == "pancseg_tf"
    assert algorithm.AlgorithmVersion == __version__
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


# === NIH Pancreas-CT 0002: the manual label ===


@pytest.fixture(scope="module")
def nih(nih_series_dir, nih_label_path):
    from pancseg_tf.io import read_nifti

    volume, headers = read_dicom_series_with_headers(nih_series_dir)
    label = read_nifti(nih_label_path)
    return volume, headers, label


@pytest.mark.large
def test_nih_label_as_seg_reads_back_onto_its_voxels(nih, tmp_path, caplog):
    volume, headers, label = nih
    # The label lands on the CT without any flip: the same grid (NIH's columns run to -y).
    np.testing.assert_allclose(label.affine, volume.affine, atol=1e-4)
    assert headers[0].ImageOrientationPatient[4] == -1
    assert headers[0].get("SliceThickness") in (None, "")
    mask = label.array.astype(np.uint8)
    assert mask.sum() == 110_797

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_segmentation(mask, volume, headers, tmp_path / "PANCREAS_0002.dcm")
    # highdicom warns that the name PANCREAS_0002 has one component, quoting it: not printed.
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("highdicom")] == []
    seg = hd.seg.segread(path)

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 131 - 63 + 1  # the slices that hold pancreas
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    # The source has no SliceThickness: the measured 1.0 mm between slices stands in for it.
    assert float(measures.SliceThickness) == pytest.approx(1.0)
    assert float(measures.SpacingBetweenSlices) == pytest.approx(1.0)
    assert [float(v) for v in measures.PixelSpacing] == [0.8984375, 0.8984375]
    assert_references_source(seg, headers)
    assert_pancreas_segment(seg)
    # The Patient and Study modules are copied: a SEG is filed in its source's study.
    assert seg.PatientID == headers[0].PatientID
    assert seg.StudyDate == headers[0].StudyDate

    placed = seg_voxels(seg, volume.affine, volume.shape)
    np.testing.assert_array_equal(placed, mask)
    # The caller's headers are not changed by the SEG's stand-in SliceThickness.
    assert headers[0].get("SliceThickness") in (None, "")


# === A sagittal series from the DICOM factory ===


def test_sagittal_series_without_type2_patient_fields(tmp_path):
    """Frames placed by an orientation other than axial, from a series whose exporter left
    out PatientSex, StudyID and StudyTime (the SEG gets them empty)."""
    from tests.dicom_factory import write_series

    rng = np.random.default_rng(3)
    hu = rng.integers(-100, 100, size=(24, 16, 9)).astype(np.int16)
    write_series(
        tmp_path / "sag",
        hu,
        pixel_spacing=(1.5, 0.7),
        spacing=2.5,
        orientation=(0, 1, 0, 0, 0, -1),
        origin=(30.0, -40.0, 100.0),
    )
    volume, headers = read_dicom_series_with_headers(tmp_path / "sag")
    assert "PatientSex" not in headers[0] and "StudyTime" not in headers[0]
    mask = (volume.array > 60).astype(np.uint8)
    mask[:, :, 0] = 0  # an empty slice, left out of the SEG
    seg = hd.seg.segread(write_segmentation(mask, volume, headers, tmp_path / "out" / "s.dcm"))
    assert int(seg.NumberOfFrames) == volume.shape[2] - 1
    assert seg.PatientSex == "" and seg.StudyID == ""
    assert_references_source(seg, headers)
    np.testing.assert_array_equal(seg_voxels(seg, volume.affine, volume.shape), mask)
    assert "PatientSex" not in headers[0]  # the caller's headers stay as read


# === The JPEG 2000 TotalSegmentator series ===


def copy_with_study_uids(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """The series with a StudyInstanceUID and SeriesInstanceUID, pixel data untouched.

    The TotalSegmentator example was anonymised down to empty study, series and SOP UIDs; a
    SEG cannot be filed without the first two. The SOP UIDs stay empty here (the file meta keeps
    them), and the JPEG 2000 pixel data are copied byte for byte.
    """
    target.mkdir(parents=True)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(target / path.name, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def ts_series(ts_dicom_dir, tmp_path_factory) -> pathlib.Path:
    return copy_with_study_uids(ts_dicom_dir, tmp_path_factory.mktemp("ts") / "ct_dicom")


@pytest.fixture(scope="module")
def ts_read(ts_series):
    """(volume, headers) of the copied series, read once."""
    return read_dicom_series_with_headers(ts_series)


def one_sided_bone(volume) -> np.ndarray:
    """Bone (> 300 HU) in the patient's right half (low i: the row direction runs to the
    patient's left) of the upper slices: non-empty and without a mirror symmetry to hide a
    flip of any axis."""
    mask = (volume.array > 300).astype(np.uint8)
    mask[volume.shape[0] // 2 :] = 0
    mask[:, :, : volume.shape[2] // 3] = 0
    return mask


def test_jpeg2000_series_as_seg_reads_back_onto_its_voxels(ts_read, tmp_path):
    volume, headers = ts_read
    assert headers[0].file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert not headers[0].SOPInstanceUID  # taken from the file meta for the SEG
    mask = one_sided_bone(volume)
    assert 1000 < mask.sum() and not np.array_equal(mask, mask[::-1]), "a one-sided mask"
    assert not np.array_equal(mask, mask[:, ::-1]) and not np.array_equal(mask, mask[:, :, ::-1])

    seg = hd.seg.segread(write_segmentation(mask, volume, headers, tmp_path / "ct_dicom.dcm"))

    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 3.0  # the source's own
    assert float(measures.SpacingBetweenSlices) == pytest.approx(2.0)
    assert_references_source(seg, headers)
    assert_pancreas_segment(seg)
    np.testing.assert_array_equal(seg_voxels(seg, volume.affine, volume.shape), mask)


def test_empty_mask_keeps_every_frame(ts_read, tmp_path):
    volume, headers = ts_read
    mask = np.zeros(volume.shape, np.uint8)
    seg = hd.seg.segread(write_segmentation(mask, volume, headers, tmp_path / "empty.dcm"))
    assert int(seg.NumberOfFrames) == volume.shape[2]
    np.testing.assert_array_equal(seg_voxels(seg, volume.affine, volume.shape), mask)


def test_series_without_study_uids_is_refused_in_one_line(ts_dicom_dir, tmp_path):
    volume, headers = read_dicom_series_with_headers(ts_dicom_dir)
    with pytest.raises(PancsegError, match=r"StudyInstanceUID \(0020,000D\) is empty") as error:
        write_segmentation(one_sided_bone(volume), volume, headers, tmp_path / "x.dcm")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ("shape", r"mask shape \(512, 512, 19\) differs from the series grid \(512, 512, 20\)"),
        ("values", r"mask holds values \[2\]; expected a binary mask"),
        ("headers", r"19 slice headers for a volume of 20 slices"),
    ],
)
def test_mask_that_does_not_fit_the_series_is_refused(ts_read, change, message):
    volume, headers = ts_read
    mask = one_sided_bone(volume)
    if change == "shape":
        mask = mask[:, :, :-1]
    elif change == "values":
        mask[0, 0, 0] = 2
    else:
        headers = headers[:-1]
    with pytest.raises(PancsegError, match=message):
        build_segmentation(mask, volume, headers)


def test_seg_is_not_written_into_the_input_folder(ts_series, ts_read):
    volume, headers = ts_read
    before = sorted(p.name for p in ts_series.iterdir())
    with pytest.raises(PancsegError, match="inside the input folder"):
        write_segmentation(one_sided_bone(volume), volume, headers, ts_series / "seg.dcm")
    assert sorted(p.name for p in ts_series.iterdir()) == before
