"""NIfTI reading, atomic writing and `read_volume` dispatch, on the real TotalSegmentator CT."""

import gzip
import os
import pathlib
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.io import Volume, read_nifti, read_volume, write_nifti, write_volume
from pancseg_tf.preprocessing import to_canonical

# A gantry tilt of about 14 degrees: the slice axis leans 0.5 mm in y per 2 mm in z.
SHEARED_AFFINE = np.array(
    [
        [-0.8, 0.0, 0.0, 12.5],
        [0.0, -0.8, 0.5, -30.0],
        [0.0, 0.0, 2.0, 40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def save(array, affine, path, *, qform_code=1, sform_code=1, slope=None, inter=None):
    """A NIfTI written by nibabel directly, to feed the reader what other tools write."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    img.to_filename(str(path))
    return path


# === Reading the real CT ===


def test_totalsegmentator_ct_geometry(ts_ct_path):
    volume = read_nifti(ts_ct_path)

    assert volume.shape == (122, 101, 30)
    assert volume.array.dtype == np.int16  # stored HU are kept, not turned into float
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert volume.orientation == ("R", "A", "S")
    assert (volume.qform_code, volume.sform_code) == (0, 2)
    assert volume.modality == "ct"
    assert volume.source == str(ts_ct_path)
    # Air around the body and soft tissue inside it.
    assert volume.array.min() <= -1000
    assert -200 < np.median(volume.array[40:80, 40:60, 10:20]) < 200


def test_totalsegmentator_labels_pancreas_count(ts_labels_path, ts_ct_path):
    labels = read_nifti(ts_labels_path)
    ct = read_nifti(ts_ct_path)

    assert labels.array.dtype == np.uint8
    assert int((labels.array == 7).sum()) == 644
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-6)


# === Scaling and dtypes ===


# (stored dtype, scl_slope, scl_inter, expected dtype, expected first value for stored 3)
SCALING_TABLE = [
    (np.int16, None, None, np.int16, 3),  # no scaling: stored dtype kept
    (np.uint16, None, None, np.uint16, 3),
    (np.float64, None, None, np.float64, 3.0),
    (np.int16, 1.0, 0.0, np.int16, 3),  # identity scaling counts as none
    (np.uint16, 1.0, -1024.0, np.int16, -1021),  # exact integers in int16 range
    (np.int16, 2.0, 10.0, np.int16, 16),
    (np.int16, 0.5, 0.0, np.float32, 1.5),  # fractional: float32
    (np.uint16, 1.0, 40000.0, np.float32, 40003.0),  # beyond int16: float32
]


@pytest.mark.parametrize(("stored", "slope", "inter", "dtype", "first"), SCALING_TABLE)
def test_scaling_applied_only_when_set(tmp_path, stored, slope, inter, dtype, first):
    raw = (np.arange(2 * 3 * 4).reshape(2, 3, 4) + 3).astype(stored)  # (2, 3, 4), raw[0,0,0]=3
    path = save(raw, np.eye(4), tmp_path / "x.nii.gz", slope=slope, inter=inter)

    volume = read_nifti(path)

    assert volume.array.dtype == dtype
    assert volume.array[0, 0, 0] == first
    expected = raw.astype(np.float64) * (slope or 1.0) + (inter or 0.0)
    np.testing.assert_allclose(volume.array, expected)


def test_big_endian_file_becomes_native(tmp_path):
    raw = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    path = save(raw, np.eye(4), tmp_path / "be.nii")

    volume = read_nifti(path)

    assert volume.array.dtype.isnative
    np.testing.assert_array_equal(volume.array, raw)


def test_trailing_singleton_time_axis_is_squeezed(tmp_path):
    path = save(
        np.ones((2, 3, 4, 1), np.float32), np.diag([2.0, 3.0, 4.0, 1.0]), tmp_path / "t.nii"
    )

    volume = read_nifti(path)

    assert volume.shape == (2, 3, 4)
    assert volume.spacing == pytest.approx((2.0, 3.0, 4.0))


# === Bad inputs ===


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(PancsegError, match=f"no such file: {missing}"):
        read_nifti(missing)
    with pytest.raises(PancsegError, match="no such file or folder"):
        read_volume(missing)


def test_truncated_gzip(tmp_path, ts_ct_path):
    data = ts_ct_path.read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(PancsegError, match=r"cut\.nii\.gz: the file is truncated") as info:
        read_nifti(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nii"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(PancsegError, match=f"could not read NIfTI file .*{name}") as info:
        read_nifti(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((4, 5), r"shape \(4, 5\) \(2D\); expected a 3D volume"),
        ((4, 5, 6, 2), r"shape \(4, 5, 6, 2\) \(4D\); expected a 3D volume"),
    ],
)
def test_not_3d(tmp_path, shape, message):
    path = save(np.zeros(shape, np.float32), np.eye(4), tmp_path / "x.nii.gz")
    with pytest.raises(PancsegError, match=message):
        read_nifti(path)


def test_non_finite_voxels_are_counted(tmp_path):
    array = np.zeros((3, 4, 5), np.float32)  # 60 voxels
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.nan
    array[2, 3, 4] = np.inf
    path = save(array, np.eye(4), tmp_path / "nan.nii.gz")

    with pytest.raises(PancsegError, match=r"3 of 60 voxels are not finite \(2 NaN, 1 Inf\)"):
        read_nifti(path)


@pytest.mark.parametrize(
    ("affine", "message"),
    [
        (np.zeros((4, 4)), "zero voxel size"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "zero voxel size"),
        (np.diag([1.0, 1.0, np.inf, 1.0]), "contains NaN or Inf"),
        # Columns 0 and 1 parallel: a plane, not a volume.
        (np.array([[1.0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular"),
    ],
)
def test_bad_affine(tmp_path, affine, message):
    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), None)
    img.header.set_sform(affine, code=1)  # a qform could not even hold these
    path = tmp_path / "bad.nii"
    img.to_filename(str(path))

    with pytest.raises(PancsegError, match=message):
        read_nifti(path)


def test_read_volume_rejects_unknown_files(tmp_path):
    other = tmp_path / "scan.mha"
    other.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(PancsegError, match="expected a .nii or .nii.gz file or a folder"):
        read_volume(other)


def test_read_volume_points_a_single_dicom_file_to_its_folder(ts_dicom_dir):
    one = sorted(ts_dicom_dir.iterdir())[0]
    with pytest.raises(PancsegError, match="single DICOM file: pass the folder"):
        read_volume(one)


def test_read_volume_modality(ts_ct_path):
    assert read_volume(ts_ct_path).modality == "ct"
    assert read_volume(ts_ct_path, modality="mri").modality == "mri"
    with pytest.raises(PancsegError, match="modality must be one of"):
        read_volume(ts_ct_path, modality="pet")


# === Writing ===


def test_mask_round_trip_keeps_grid_and_codes(tmp_path, ts_ct_path, ts_labels_path):
    ct = read_nifti(ts_ct_path)
    mask = (read_nifti(ts_labels_path).array == 7).astype(np.uint8)

    out = write_nifti(mask, ct, tmp_path / "sub" / "mask.nii.gz")
    back = read_nifti(out)

    assert out == tmp_path / "sub" / "mask.nii.gz"
    assert back.shape == ct.shape
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)
    assert (back.qform_code, back.sform_code) == (ct.qform_code, ct.sform_code)
    header = nib.load(out).header
    for field in ("descrip", "db_name", "aux_file", "intent_name"):
        assert header[field].item() == b""
    assert header.get_xyzt_units()[0] == "mm"


@pytest.mark.parametrize(("unit", "per_mm"), [("meter", 1e-3), ("micron", 1e3)])
def test_spatial_unit_other_than_mm(tmp_path, ts_ct_path, unit, per_mm):
    """A file whose xyzt_units say metres or micrometres holds its affine in that unit.

    Readers that apply the unit (ITK, SimpleITK, 3D Slicer) scale it to mm; the volume must be in
    mm too (3 mm voxels, not 0.003 or 3000), and its mask must be written in the file's own unit
    and numbers, so that every reader, with or without the unit, puts it on the input's grid.
    """
    ct = nib.load(ts_ct_path)
    affine = ct.affine.copy()
    affine[:3] *= per_mm
    img = nib.Nifti1Image(np.asarray(ct.dataobj), affine)
    img.header.set_xyzt_units(unit, "sec")
    source = tmp_path / f"ct_{unit}.nii.gz"
    img.to_filename(str(source))

    volume = read_nifti(source)

    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    np.testing.assert_allclose(volume.affine, ct.affine, atol=1e-4)

    out = write_nifti((volume.array > 0).astype(np.uint8), volume, tmp_path / "mask.nii.gz")

    written = nib.load(out)
    assert written.header.get_xyzt_units()[0] == unit
    np.testing.assert_allclose(written.affine, affine, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(read_nifti(out).affine, ct.affine, atol=1e-4)


def test_undefined_spatial_unit_code_is_read_as_mm(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    img.header["xyzt_units"] = 5  # bits 0-2 = 5: no NIfTI spatial unit
    img.to_filename(str(tmp_path / "odd_unit.nii"))

    volume = read_nifti(tmp_path / "odd_unit.nii")

    assert volume.spatial_unit == "mm"
    assert volume.spacing == pytest.approx((0.7, 0.8, 2.5))


def test_disagreeing_qform_and_sform_are_both_written_back(tmp_path, ts_ct_path, caplog):
    """qform (code 1) and sform (code 2) that place the voxels differently.

    Readers disagree on such a file: nibabel and FSL take the sform, ITK (and so 3D Slicer) the
    qform when the sform code is not 1 and the two differ. The reader uses the sform and says
    so; the mask keeps both, each with its code, so every reader puts it where it puts the CT.
    """
    ct = nib.load(ts_ct_path)
    # Stored with its first axis running right to left (not canonical RAS), as many scans are.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = ct.shape[0] - 1
    sform = ct.affine @ flip
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]
    qform = turn @ sform
    img = nib.Nifti1Image(np.asarray(ct.dataobj)[::-1], sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    source = tmp_path / "two_forms.nii.gz"
    img.to_filename(str(source))

    with caplog.at_level("WARNING", logger="pancseg_tf.io"):
        volume = read_nifti(source)
    out = write_nifti((volume.array > 0).astype(np.uint8), volume, tmp_path / "mask.nii.gz")

    np.testing.assert_allclose(volume.affine, sform, atol=1e-4)
    assert "qform and sform disagree" in caplog.text
    header = nib.load(out).header
    written_qform, qform_code = header.get_qform(coded=True)
    written_sform, sform_code = header.get_sform(coded=True)
    assert (qform_code, sform_code) == (1, 2)
    np.testing.assert_allclose(written_qform, qform, atol=1e-4)
    np.testing.assert_allclose(written_sform, sform, atol=1e-4)

    # The canonical volume's qform moves with its axes: a mask written on it keeps each form
    # on the same world positions (the original qform would put it elsewhere in ITK).
    canonical, _ = to_canonical(volume)
    out = write_nifti((canonical.array > 0).astype(np.uint8), canonical, tmp_path / "canon.nii")
    back = nib.load(out)
    ijk = np.array([[0, 0, 0, 1], [10, 20, 5, 1]], float).T
    original_ijk = np.linalg.solve(volume.affine, canonical.affine) @ ijk  # canonical -> original
    assert not np.allclose(original_ijk, ijk)  # the test CT is not stored canonical
    np.testing.assert_allclose(back.header.get_qform() @ ijk, qform @ original_ijk, atol=1e-3)
    np.testing.assert_allclose(back.header.get_sform() @ ijk, sform @ original_ijk, atol=1e-3)


def test_probabilities_round_trip_float32_uncompressed(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    probabilities = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)

    out = write_nifti(probabilities, reference, tmp_path / "p.nii")
    back = read_nifti(out)

    assert out.read_bytes()[344:348] == b"n+1\x00"  # plain single-file NIfTI-1, not gzip
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, probabilities)
    assert (back.qform_code, back.sform_code) == (1, 1)


@pytest.mark.parametrize(
    ("array", "dtype", "expected"),
    [
        (np.ones((2, 2, 2), bool), None, np.uint8),
        (np.ones((2, 2, 2), np.int64), None, np.int32),
        (np.ones((2, 2, 2), np.float64), np.float32, np.float32),
        (np.ones((2, 2, 2), np.float32), "uint8", np.uint8),
    ],
)
def test_written_dtype(tmp_path, array, dtype, expected):
    reference = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    out = write_nifti(array, reference, tmp_path / "x.nii.gz", dtype=dtype)
    assert nib.load(out).get_data_dtype() == expected


def test_sheared_reference_is_written_as_sform_alone(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), SHEARED_AFFINE, qform_code=0)
    assert reference.is_sheared

    out = write_nifti(np.ones((3, 4, 5), np.uint8), reference, tmp_path / "tilt.nii.gz")

    header = nib.load(out).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 1)
    np.testing.assert_allclose(read_nifti(out).affine, SHEARED_AFFINE, atol=1e-4)


def test_write_volume_keeps_dtype_and_geometry(tmp_path, ts_ct_path):
    ct = read_nifti(ts_ct_path)
    back = read_nifti(write_volume(ct, tmp_path / "copy.nii.gz"))

    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, ct.array)
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)


def test_refuses_to_overwrite_the_input(tmp_path, ts_ct_path):
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(ts_ct_path.read_bytes())
    ct = read_nifti(source)
    other_input = tmp_path / "labels.nii.gz"

    with pytest.raises(PancsegError, match="refusing to overwrite the input"):
        write_nifti(ct.array, ct, tmp_path / "." / "ct.nii.gz")
    with pytest.raises(PancsegError, match="refusing to overwrite the input"):
        write_volume(ct, source)
    with pytest.raises(PancsegError, match="refusing to overwrite the input"):
        write_nifti(ct.array, ct, other_input, protect=[other_input])
    assert source.read_bytes() == ts_ct_path.read_bytes()


def test_wrong_shape_writes_nothing(tmp_path):
    reference = Volume(np.zeros((3, 4, 5), np.int16), np.eye(4))
    with pytest.raises(PancsegError, match=r"array shape \(3, 5, 4\) differs .* \(3, 4, 5\)"):
        write_nifti(np.zeros((3, 5, 4), np.uint8), reference, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_output_suffix_is_checked(tmp_path):
    reference = Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))
    with pytest.raises(PancsegError, match="must end in .nii.gz or .nii"):
        write_nifti(reference.array, reference, tmp_path / "mask.nrrd")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    """A write cut short by the OS (here a file-size limit) changes nothing on disk."""
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous result")
    script = textwrap.dedent(
        """
        import resource, signal, sys
        import numpy as np
        from pancseg_tf.errors import PancsegError
        from pancseg_tf.io import Volume, write_nifti

        reference = Volume(np.zeros((48, 48, 48), np.int16), np.eye(4))
        noise = np.random.default_rng(0).random((48, 48, 48)).astype(np.float32)  # ~440 kB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            write_nifti(noise, reference, sys.argv[1])
        except PancsegError as error:
            print(error)
            sys.exit(3)
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"could not write {out}: File too large"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
    assert out.read_bytes() == b"previous result"


def test_written_file_is_complete_gzip(tmp_path):
    reference = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4))
    out = write_nifti(np.ones((4, 4, 4), np.uint8), reference, tmp_path / "m.nii.gz")
    with gzip.open(out) as f:
        assert len(f.read()) == 352 + 64  # header + extension flag + 4*4*4 uint8 voxels
    assert [p.name for p in pathlib.Path(tmp_path).iterdir()] == ["m.nii.gz"]
