"""The `pancseg` command as a user runs it: real processes, real files, one-line errors."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_factory import write_series

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-7731942",
    "PatientBirthDate": "19580214",
    "InstitutionName": "Saint Elsewhere Hospital",
    "StudyDate": "20190321",
    "AccessionNumber": "ACC55501234",
}


def pancseg(*args, cwd=None):
    """Runs the installed command in a fresh process; returns (status, stdout, stderr)."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quiet TensorFlow by itself
    proc = subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(status, stderr, *fragments):
    assert status == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pancseg: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_nifti(path, array, affine=None):
    nib.save(
        nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine),
        str(path),
    )
    return path


# === Good input ===


def test_help_lists_the_commands():
    status, out, _ = pancseg("--help")
    assert status == 0
    for command in ("info", "convert", "synth"):
        assert command in out


def test_info_on_real_nifti_json(ts_ct_path):
    status, out, err = pancseg("info", ts_ct_path, "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["shape"] == [122, 101, 30]
    assert info["spacing_mm"] == pytest.approx([3.0, 3.0, 3.0])
    assert info["orientation"] == ["R", "A", "S"]
    assert info["modality"] == "ct"
    assert info["min"] < -900 and info["max"] > 200
    assert err == ""


def test_info_and_convert_do_not_import_tensorflow(ts_ct_path, tmp_path):
    code = (
        "import sys; from pancseg_tf.cli import main; "
        f"main(['info', {str(ts_ct_path)!r}]); "
        f"main(['convert', {str(ts_ct_path)!r}, {str(tmp_path / 'x.nii.gz')!r}]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_importing_serving_or_inference_loads_only_what_is_named():
    # A client reads the serving contract's names without the segmenter, scipy or TensorFlow;
    # `pancseg_tf.inference`'s names load their own submodule on first use.
    code = (
        "import sys; import pancseg_tf.serving; from pancseg_tf.serving import constants; "
        "assert constants.SLICES == 'slices'; "
        "loaded = {m for m in sys.modules if m.startswith(('pancseg_tf.inference.', 'scipy', "
        "'tensorflow', 'keras'))}; "
        "assert loaded == {'pancseg_tf.inference.signature'}, sorted(loaded); "
        "from pancseg_tf.inference import Segmenter, chunk_spans; "
        "assert Segmenter.__module__ == 'pancseg_tf.inference.segmenter'; "
        "assert 'tensorflow' not in sys.modules; "
        "import pancseg_tf.inference as inference; "
        "assert set(inference.__all__) <= set(dir(inference)); "
        "[getattr(inference, name) for name in inference.__all__]"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_convert_dicom_keeps_grid_and_hu(ts_dicom_dir, tmp_path):
    out = tmp_path / "ct.nii.gz"
    status, stdout, err = pancseg("convert", ts_dicom_dir, out)
    assert status == 0, err
    img = nib.load(str(out))
    assert img.shape == (512, 512, 20)
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj)
    assert data.min() <= -1000 and data.max() > 300
    status, info_out, _ = pancseg("info", ts_dicom_dir, "--json")
    assert status == 0
    np.testing.assert_allclose(img.affine, json.loads(info_out)["affine"], atol=1e-4)


def test_synth_writes_a_cohort_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        status, _, err = pancseg("synth", tmp_path / name, "--cases", 1, "--seed", 3)
        assert status == 0, err
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert pathlib.Path("dataset.json") in a
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# === Bad input: one line, exit 2, nothing half-written ===


def test_nonexistent_path(tmp_path):
    status, _, err = pancseg("info", tmp_path / "nope.nii.gz")
    assert_one_line_error(status, err, "nope.nii.gz")


def test_a_folder_that_may_not_be_written_is_one_line(tmp_path):
    """Permission denied, not permitted, read-only: the user's to fix, not an internal error.
    /sys refuses new entries even to root (EPERM; EROFS where it is mounted read-only)."""
    target = pathlib.Path("/sys/pancseg_test_cannot_write_here")
    if not pathlib.Path("/sys").is_dir():
        pytest.skip("no /sys (not Linux)")
    status, _, err = pancseg("synth", target, "--cases", "1")
    # The path by its last component, as every path in an error (folders may name a patient).
    assert_one_line_error(status, err, f"cannot access {target.name}: ")
    assert "/sys" not in err
    assert any(r in err for r in ("not permitted", "Permission denied", "Read-only")), err
    assert not target.exists()


def test_truncated_nifti(ts_ct_path, tmp_path):
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(ts_ct_path.read_bytes()[:3000])
    out = tmp_path / "out.nii.gz"
    status, _, err = pancseg("convert", bad, out)
    assert_one_line_error(status, err, "truncated.nii.gz")
    assert list(tmp_path.iterdir()) == [bad]


def test_random_bytes_named_nifti(tmp_path):
    bad = tmp_path / "noise.nii.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    status, _, err = pancseg("info", bad)
    assert_one_line_error(status, err, "noise.nii.gz")
    gz = tmp_path / "gz_noise.nii.gz"
    gz.write_bytes(gzip.compress(np.random.default_rng(1).bytes(5000)))
    status, _, err = pancseg("info", gz)
    assert_one_line_error(status, err, "gz_noise.nii.gz")


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 4, 3)])
def test_not_3d(tmp_path, shape):
    path = write_nifti(tmp_path / "img.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    status, _, err = pancseg("info", path)
    assert_one_line_error(status, err, "3D")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad_value):
    data = np.zeros((8, 8, 4), np.float32)
    data[1, 2, 3] = bad_value
    path = write_nifti(tmp_path / "img.nii.gz", data)
    out = tmp_path / "out.nii.gz"
    status, _, err = pancseg("convert", path, out)
    assert_one_line_error(status, err)
    assert not out.exists()


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = pancseg("info", empty)
    assert_one_line_error(status, err, "empty")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    status, _, err = pancseg("info", folder)
    assert_one_line_error(status, err, "DICOM")


def test_dicom_series_with_missing_slice(tmp_path):
    series = tmp_path / "series"
    write_series(series, np.zeros((16, 12, 8), np.int16), skip_slices=(4,))
    out = tmp_path / "out.nii.gz"
    status, _, err = pancseg("convert", series, out)
    assert_one_line_error(status, err)
    assert not out.exists()
    status, _, err = pancseg("convert", series, out, "--allow-uneven")
    assert status == 0, err
    assert out.exists()


def test_convert_refuses_to_overwrite_its_input(tmp_path, ts_ct_path):
    copy = tmp_path / "ct.nii.gz"
    copy.write_bytes(ts_ct_path.read_bytes())
    before = copy.read_bytes()
    status, _, err = pancseg("convert", copy, copy)
    assert_one_line_error(status, err, "input")
    assert copy.read_bytes() == before


def test_bad_output_suffix(tmp_path, ts_ct_path):
    status, _, err = pancseg("convert", ts_ct_path, tmp_path / "out.png")
    assert_one_line_error(status, err, ".nii")


def test_debug_shows_the_traceback(tmp_path):
    status, _, err = pancseg("--debug", "info", tmp_path / "nope.nii.gz")
    assert status == 2
    assert "Traceback" in err and "pancseg: error:" in err


# === Privacy ===


def test_info_on_the_nih_series_prints_no_study_date(nih_series_dir):
    status, out, err = pancseg("info", nih_series_dir)
    assert status == 0, err
    assert "512 x 512 x 195" in out
    for value in ("11-24-2015", "20151124", "NIH"):
        assert value not in out + err


def test_no_patient_field_in_any_output(tmp_path):
    series = tmp_path / "PAT"
    write_series(series, np.full((16, 12, 6), 40, np.int16), patient=PATIENT)
    out = tmp_path / "out.nii.gz"
    texts = []
    for args in (
        ("info", series),
        ("info", series, "--json"),
        ("convert", series, out),
        ("--debug", "info", series),
    ):
        status, stdout, stderr = pancseg(*args)
        assert status == 0, stderr
        texts += [stdout, stderr]
    blobs = [t.encode() for t in texts] + [gzip.decompress(out.read_bytes())]
    for value in PATIENT.values():
        for blob in blobs:
            assert value.encode() not in blob
            assert value.split("^")[0].encode() not in blob


def _manifest_case(tmp_path, label):
    image = np.full((32, 32, 8), -1000, np.int16)
    image[6:26, 6:26] = 40
    write_nifti(tmp_path / "img.nii.gz", image, np.diag([2.0, 2.0, 2.5, 1.0]))
    write_nifti(tmp_path / "lab.nii.gz", label, np.diag([2.0, 2.0, 2.5, 1.0]))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case_id,image,label,modality\ncase_a,img.nii.gz,lab.nii.gz,ct\n")
    return manifest


@pytest.mark.parametrize(
    "label, fragment",
    [
        (np.zeros((32, 32, 9), np.uint8), "shape"),  # image and label of different shapes
        (np.pad(np.full((2, 2, 1), 5, np.uint8), ((10, 20), (10, 20), (3, 4))), "[0, 5]"),
    ],
    ids=["shape_mismatch", "unexpected_values"],
)
def test_prepare_refuses_a_bad_label(tmp_path, label, fragment):
    manifest = _manifest_case(tmp_path, label)
    out = tmp_path / "prepared"
    status, _, err = pancseg("prepare", manifest, out)
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pancseg: error: ") and "case_a" in last and fragment in last, err
    assert "Traceback" not in err
    assert not (out / "index.json").exists()
    assert not list(out.rglob("*.tfrecord")) if out.exists() else True
