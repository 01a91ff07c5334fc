"""DICOM series reading: geometry from the tags, slice order, series choice, errors, privacy."""

import gzip
import logging
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pancseg_tf.errors import PancsegError
from pancseg_tf.io import (
    SeriesInfo,
    list_dicom_series,
    read_dicom_series,
    read_nifti,
    read_volume,
    write_nifti,
)
from tests.dicom_factory import DEFAULT_PATIENT, rewrite_files, write_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def world(volume, ijk):
    """RAS+ position in mm of voxel index ``ijk``."""
    return volume.affine[:3, :3] @ np.asarray(ijk, dtype=np.float64) + volume.affine[:3, 3]


def slice_headers(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    normal = np.cross(
        np.array(headers[0].ImageOrientationPatient[:3], float),
        np.array(headers[0].ImageOrientationPatient[3:], float),
    )
    return sorted(headers, key=lambda ds: normal @ np.array(ds.ImagePositionPatient, float))


# === Real series ===


def test_totalsegmentator_jpeg2000_series_in_hu(ts_dicom_dir):
    volume = read_dicom_series(ts_dicom_dir)

    assert volume.shape == (512, 512, 20)
    assert volume.array.dtype == np.int16
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert volume.orientation == ("L", "P", "S")  # LPS tags, axial, feet to head
    assert volume.modality == "ct"
    assert (volume.qform_code, volume.sform_code) == (1, 1)
    # Stored 0..2460 with intercept -1024: air outside the body, soft tissue in the middle.
    assert volume.array.min() == -1024
    assert np.median(volume.array[:30, :30, :]) < -950
    assert -100 < np.median(volume.array[236:276, 236:276, :]) < 150


@pytest.mark.parametrize("series_fixture", ["ts_dicom_dir", "nih_series_dir"])
def test_first_and_last_slice_world_positions(request, series_fixture):
    folder = request.getfixturevalue(series_fixture)
    volume = read_dicom_series(folder)
    headers = slice_headers(folder)

    for k, ds in [(0, headers[0]), (volume.shape[2] - 1, headers[-1])]:
        expected = LPS_TO_RAS @ np.array(ds.ImagePositionPatient, dtype=np.float64)
        np.testing.assert_allclose(world(volume, (0, 0, k)), expected, atol=1e-4)


def test_nih_label_lands_on_pancreas_without_flip(nih_series_dir, nih_label_path):
    ct = read_dicom_series(nih_series_dir)
    label = read_nifti(nih_label_path)

    assert ct.shape == label.shape == (512, 512, 195)
    np.testing.assert_allclose(ct.affine, label.affine, atol=1e-4)
    mask = label.array > 0
    assert int(mask.sum()) == 110_797
    assert 60 < ct.array[mask].mean() < 160


# === Synthetic geometry: orientation, non-square pixels ===

# Marker voxel (i, j, k) = (3, 17, 2) in a 20-column x 30-row x 4-slice series, column spacing
# 0.5 mm (along rows, i), row spacing 0.9 mm (between rows, j), slices 2.5 mm apart, slice 0 at
# LPS (10, -20, 30). World RAS positions worked out by hand:
#   LPS = origin + 3 * 0.5 * row_dir + 17 * 0.9 * col_dir + 2 * 2.5 * normal; RAS = (-x, -y, z).
ORIENTATION_TABLE = [
    # orientation,        normal,     marker RAS,             axis codes
    ((1, 0, 0, 0, 1, 0), (0, 0, 1), (-11.5, 4.7, 35.0), ("L", "P", "S")),
    ((1, 0, 0, 0, -1, 0), (0, 0, -1), (-11.5, 35.3, 25.0), ("L", "A", "I")),
    ((0, 1, 0, 0, 0, -1), (-1, 0, 0), (-5.0, 18.5, 14.7), ("P", "I", "R")),
    ((1, 0, 0, 0, 0, -1), (0, 1, 0), (-11.5, 15.0, 14.7), ("L", "I", "P")),
]


@pytest.mark.parametrize(("orientation", "normal", "marker_ras", "codes"), ORIENTATION_TABLE)
def test_non_square_pixels_marker_lands_in_place(tmp_path, orientation, normal, marker_ras, codes):
    hu = np.full((20, 30, 4), -1000, np.int16)  # (I columns, J rows, K slices)
    hu[3, 17, 2] = 500
    write_series(
        tmp_path,
        hu,
        pixel_spacing=(0.9, 0.5),
        spacing=2.5,
        orientation=orientation,
        origin=(10.0, -20.0, 30.0),
    )

    volume = read_dicom_series(tmp_path)

    assert volume.shape == (20, 30, 4)
    assert np.argwhere(volume.array == 500).tolist() == [[3, 17, 2]]
    assert volume.spacing == pytest.approx((0.5, 0.9, 2.5))
    assert volume.orientation == codes
    np.testing.assert_allclose(world(volume, (3, 17, 2)), marker_ras, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 2], LPS_TO_RAS @ (2.5 * np.array(normal)))


# === Slice order ===


@pytest.mark.parametrize("file_names", ["shuffled", "uid", "ordered"])
@pytest.mark.parametrize("instance_numbers", ["shuffled", "reversed"])
def test_slices_sorted_by_position_not_name_or_instance(tmp_path, file_names, instance_numbers):
    hu = np.zeros((4, 3, 6), np.int16)
    hu += (100 * np.arange(6)).astype(np.int16)  # slice k holds 100 k
    write_series(
        tmp_path, hu, spacing=1.5, file_names=file_names, instance_numbers=instance_numbers
    )

    volume = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(volume.array[0, 0, :], [0, 100, 200, 300, 400, 500])


def test_slices_stored_against_the_normal_come_out_along_it(tmp_path):
    hu = np.zeros((4, 3, 5), np.int16) + (10 * np.arange(5)).astype(np.int16)
    # Slice k sits at (4 - k) * 2 mm along the normal: the file order runs backwards.
    write_series(tmp_path, hu, slice_positions=[8.0, 6.0, 4.0, 2.0, 0.0], spacing=2.0)

    volume = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(volume.array[0, 0, :], [40, 30, 20, 10, 0])
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, 2.0])
    np.testing.assert_allclose(volume.affine[:3, 3], [0, 0, 0.0])


# === Intensities and encodings ===


# (RescaleSlope, RescaleIntercept, modality, expected dtype, expected volume modality)
RESCALE_TABLE = [
    (1.0, -1024.0, "CT", np.int16, "ct"),
    (2.0, -1000.0, "CT", np.int16, "ct"),
    (0.5, 0.25, "CT", np.float32, "ct"),
    (1.0, 0.0, "MR", np.int16, "mri"),
]


@pytest.mark.parametrize(("slope", "intercept", "modality", "dtype", "kind"), RESCALE_TABLE)
def test_rescale_per_slice(tmp_path, slope, intercept, modality, dtype, kind):
    stored = np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7  # (2, 3, 4)
    values = stored * slope + intercept
    write_series(tmp_path, values, rescale=(slope, intercept), modality=modality)

    volume = read_dicom_series(tmp_path)

    assert volume.array.dtype == dtype
    assert volume.modality == kind
    np.testing.assert_array_equal(volume.array, values)


def test_rescale_differs_between_slices(tmp_path):
    files = write_series(tmp_path, np.zeros((2, 2, 3), np.int16), rescale=(1.0, 0.0))
    rewrite_files(files[1:2], RescaleIntercept=-1024)  # slice 1 only: stored 0 -> -1024 HU

    volume = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(volume.array[0, 0, :], [0, -1024, 0])


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
)
def test_transfer_syntaxes_decode_to_the_same_values(tmp_path, transfer_syntax):
    # 32 x 32: OpenJPEG's default number of resolutions needs tiles at least this big.
    hu = np.random.default_rng(1).integers(-1024, 2000, size=(32, 32, 2)).astype(np.int16)
    write_series(tmp_path, hu, transfer_syntax=transfer_syntax)

    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, hu)


def test_missing_decoder_plugin_is_named(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    files = write_series(tmp_path, np.zeros((4, 4, 2), np.int16))
    for path in files:  # relabel as JPEG-LS: the reader must stop before decoding
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([ds.PixelData])
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.save_as(path, enforce_file_format=True)

    with pytest.raises(PancsegError) as info:
        read_dicom_series(tmp_path)
    message = str(info.value)
    assert "1.2.840.10008.1.2.4.80 (JPEG-LS Lossless Image Compression)" in message
    assert "plugin is missing" in message
    assert "pylibjpeg-libjpeg" in message


# === Series discovery and choice ===


@pytest.fixture
def three_series(tmp_path):
    """A folder with series 1 (3 slices), 2 (6 slices, in a subfolder) and 7 (4 slices)."""
    hu = np.zeros((4, 4, 6), np.int16)
    write_series(tmp_path, hu[..., :3], series_number=1, description="scout")
    write_series(tmp_path / "sub", hu + 1, series_number=2, description="abdomen")
    write_series(tmp_path, hu[..., :4] + 2, series_number=7, description="arterial", seed=5)
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "junk.dcm").write_bytes(np.random.default_rng(0).bytes(600))
    return tmp_path


def test_list_dicom_series(three_series):
    infos = list_dicom_series(three_series)

    assert [(s.series_number, s.description, s.modality, s.num_slices) for s in infos] == [
        (1, "scout", "CT", 3),
        (2, "abdomen", "CT", 6),
        (7, "arterial", "CT", 4),
    ]
    assert all(isinstance(s, SeriesInfo) and len(s.files) == s.num_slices for s in infos)
    assert infos[1].label == "series 2 'abdomen'"


def test_most_slices_chosen_and_logged(three_series, caplog):
    with caplog.at_level(logging.INFO, logger="pancseg_tf.io"):
        volume = read_dicom_series(three_series)

    assert volume.shape == (4, 4, 6)
    assert volume.array.max() == 1
    assert "reading series 2 'abdomen' (6 slices)" in caplog.text


def test_series_chosen_by_number(three_series):
    volume = read_volume(three_series, series=7)
    assert volume.shape == (4, 4, 4)
    assert volume.array.max() == 2

    with pytest.raises(PancsegError, match=r"no series number 5 in .*series 7 'arterial'"):
        read_dicom_series(three_series, series=5)


# === Bad input ===


def test_empty_folder(tmp_path):
    with pytest.raises(PancsegError, match=f"no files in {tmp_path}"):
        read_volume(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "image.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(PancsegError, match=f"no DICOM series found in {tmp_path}"):
        read_volume(tmp_path)
    assert list_dicom_series(tmp_path) == []


def test_missing_slice_names_the_gap(tmp_path, caplog):
    hu = np.zeros((4, 4, 8), np.int16)
    write_series(tmp_path, hu, spacing=2.0, origin=(0, 0, 10.0), skip_slices=(3,))

    with pytest.raises(PancsegError) as info:
        read_dicom_series(tmp_path)
    message = str(info.value)
    assert "between slice positions 14.0000 mm and 18.0000 mm" in message
    assert "the step is 4.0000 mm, expected 2.0000 mm (a missing slice?)" in message
    assert "--allow-uneven" in message

    with caplog.at_level(logging.WARNING, logger="pancseg_tf.io"):
        volume = read_dicom_series(tmp_path, allow_uneven=True)
    assert volume.shape == (4, 4, 7)
    assert volume.spacing[2] == pytest.approx(14.0 / 6)  # mean step, 10 -> 24 mm in 6 steps
    assert "between slice positions 14.0000 mm and 18.0000 mm" in caplog.text


def test_duplicate_positions(tmp_path):
    write_series(tmp_path, np.zeros((4, 4, 5), np.int16), slice_positions=[0, 2, 4, 4, 6])
    with pytest.raises(PancsegError, match=r"2 slices share a position.*at 4\.0000 mm"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_tag(tmp_path, tag):
    write_series(tmp_path, np.zeros((4, 4, 3), np.int16), drop_tags=(tag,))
    with pytest.raises(PancsegError, match=f"DICOM tag {tag} .* is missing in 3 of 3 slices"):
        read_dicom_series(tmp_path)


def test_mixed_orientations(tmp_path):
    files = write_series(tmp_path, np.zeros((4, 4, 3), np.int16))
    rewrite_files(files[:1], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(PancsegError, match="different ImageOrientationPatient"):
        read_dicom_series(tmp_path)


def test_single_slice_uses_slice_thickness(tmp_path):
    write_series(tmp_path, np.zeros((5, 4, 1), np.int16), spacing=3.0, pixel_spacing=(0.8, 0.7))

    volume = read_dicom_series(tmp_path)

    assert volume.shape == (5, 4, 1)
    assert volume.spacing == pytest.approx((0.7, 0.8, 3.0))


def test_uneven_spacing_without_missing_slice(tmp_path):
    write_series(tmp_path, np.zeros((4, 4, 5), np.int16), slice_positions=[0, 2, 4, 6.5, 8.5])
    with pytest.raises(PancsegError) as info:
        read_dicom_series(tmp_path)
    message = str(info.value)
    assert "between slice positions 4.0000 mm and 6.5000 mm" in message
    assert "step is 2.5000 mm, expected 2.0000 mm" in message
    assert "missing slice" not in message


def test_multi_frame_is_refused(tmp_path):
    write_series(tmp_path, np.zeros((4, 4, 2), np.int16), extra_tags={"NumberOfFrames": 2})
    with pytest.raises(PancsegError, match=r"multi-frame DICOM \(2 frames in one file\)"):
        read_dicom_series(tmp_path)


# === Gantry tilt and writing back ===


def test_gantry_tilt_gives_sheared_affine_and_round_trips(tmp_path):
    step = np.array([0.0, 0.5, 2.0])  # LPS: 0.5 mm posterior per 2 mm up, a ~14 degree tilt
    positions = np.array([5.0, -7.0, 20.0]) + np.arange(5)[:, None] * step
    write_series(tmp_path / "ct", np.zeros((6, 4, 5), np.int16), slice_positions=positions)

    volume = read_dicom_series(tmp_path / "ct")

    assert volume.is_sheared
    assert (volume.qform_code, volume.sform_code) == (0, 1)
    np.testing.assert_allclose(volume.affine[:3, 2], LPS_TO_RAS @ step)
    out = write_nifti(np.ones(volume.shape, np.uint8), volume, tmp_path / "mask.nii.gz")
    header = nib.load(out).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 1)
    back = read_nifti(out)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)


def test_mask_round_trip_on_dicom_grid(tmp_path):
    write_series(tmp_path / "ct", np.zeros((5, 7, 3), np.int16), pixel_spacing=(0.7, 0.6))
    volume = read_dicom_series(tmp_path / "ct")
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 2, 1] = 1

    back = read_nifti(write_nifti(mask, volume, tmp_path / "mask.nii.gz"))

    assert back.shape == volume.shape
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert (back.qform_code, back.sform_code) == (1, 1)


# === Privacy ===


def _identifiers():
    return [v for v in DEFAULT_PATIENT.values()] + ["Doe", "Janet", "48151623"]


def test_identifiers_stay_out_of_logs_results_and_errors(tmp_path, caplog):
    hu = np.zeros((4, 4, 6), np.int16)
    write_series(tmp_path / "two", hu, series_number=3, description="venous")
    write_series(tmp_path / "two", hu[..., :2], series_number=4, description="scout")
    write_series(tmp_path / "gap", hu, skip_slices=(2,))

    texts = []
    with caplog.at_level(logging.DEBUG, logger="pancseg_tf"):
        texts.append(repr(list_dicom_series(tmp_path / "two")))
        volume = read_dicom_series(tmp_path / "two")
        texts.append(repr(volume))
        texts.append(str(vars(volume)))
        with pytest.raises(PancsegError) as info:
            read_dicom_series(tmp_path / "gap")
        texts.append(str(info.value))
        read_dicom_series(tmp_path / "gap", allow_uneven=True)
    texts.append(caplog.text)

    assert "reading series 3 'venous'" in caplog.text  # the log does name the series
    everything = "\n".join(texts)
    for value in _identifiers():
        assert value not in everything
    assert not re.search(r"\d+(\.\d+){5,}", everything)  # no UID either


def test_written_nifti_holds_no_identifier(tmp_path):
    write_series(tmp_path / "ct", np.zeros((4, 4, 3), np.int16))
    volume = read_dicom_series(tmp_path / "ct")

    out = write_nifti(np.zeros(volume.shape, np.uint8), volume, tmp_path / "mask.nii.gz")

    raw = out.read_bytes()
    content = gzip.decompress(raw)
    for value in _identifiers():
        assert value.encode() not in raw
        assert value.encode() not in content
