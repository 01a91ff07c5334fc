"""An error names the file, never the folders above it (issue #18.7).

Folders may carry a patient's name (``/data/DOE_JOHN_19600101/ct.nii.gz``), and nibabel's,
pydicom's and the system's messages name the file they failed on in full. Every bad input here
sits under such a folder: a corrupt NIfTI, a truncated ``.nii.gz``, a DICOM folder without a
DICOM image, a DICOM slice whose pixel data were cut short, a file that may not be read, and a
manifest that lists them by absolute path. ``pancseg convert``, ``prepare``, ``predict`` and
``evaluate`` report each in one line that names the file, exit with their error status, print no
traceback, and neither that line nor any file they write names the folder.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.messages import file_names_only
from tests.dicom_factory import write_series
from tests.test_predict import tiny_run  # noqa: F401 - the module-scoped fixture

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PATIENT = "DOE_JOHN_19600101"


# === The rule, on a hand-written table ===


@pytest.mark.parametrize(
    "message, shown",
    [
        # nibabel, unquoted and quoted.
        (
            f"File /data/{PATIENT}/ct.nii.gz is not a gzip file",
            "File ct.nii.gz is not a gzip file",
        ),
        (
            f'Cannot work out file type of "/data/{PATIENT}/ct.nii"',
            'Cannot work out file type of "ct.nii"',
        ),
        # An OSError's repr: the quoted path whole, spaces included.
        (
            "[Errno 2] No such file or directory: '/data/DOE JOHN/IM 1.dcm'",
            "[Errno 2] No such file or directory: 'IM 1.dcm'",
        ),
        # Before a colon, after '=' (Keras), relative, home and dotted forms.
        (f"cannot read /data/{PATIENT}/ct.nii.gz: truncated", "cannot read ct.nii.gz: truncated"),
        (f"filepath=/runs/{PATIENT}/model.keras. Please", "filepath=model.keras. Please"),
        (f"read {PATIENT}/ct.nii.gz and {PATIENT}/a/b", "read ct.nii.gz and b"),
        (f"in ~/{PATIENT}/x.nii and ./{PATIENT}/y.nii", "in x.nii and y.nii"),
        # A folder with spaces that is not on this disk: followed to the path below it.
        (
            "could not write /nowhere/DOE JOHN/ct.nii.gz: File too large",
            "could not write ct.nii.gz: File too large",
        ),
        # Two paths in one message.
        ("could not read /a/b.nii.gz or /c/d.nii.gz", "could not read b.nii.gz or d.nii.gz"),
        # Not paths: ratios, abbreviations, progress counters, URLs, InputPathDisplay's forms.
        ("N/A and/or [3/12] 1.5/2.5 km/h", "N/A and/or [3/12] 1.5/2.5 km/h"),
        (
            "http://localhost:8501/v1/models/pancseg:predict refused it",
            "http://localhost:8501/v1/models/pancseg:predict refused it",
        ),
        ("gs://bucket/cases/ct.nii.gz failed", "gs://bucket/cases/ct.nii.gz failed"),
        ("cannot prepare case 2: nih/…: bad", "cannot prepare case 2: nih/…: bad"),
        ("No such file: '1.000000-NA-59319/…'", "No such file: '1.000000-NA-59319/…'"),
        ("case 3: <image>/IM0001.dcm", "case 3: <image>/IM0001.dcm"),
        ("the model's input isn't 'N/A'", "the model's input isn't 'N/A'"),
    ],
)
def test_paths_in_errors_show_their_last_component(message, shown):
    assert file_names_only(message) == shown
    assert file_names_only(shown) == shown  # once is enough


def test_a_folder_with_spaces_on_disk_is_followed_to_its_file(tmp_path):
    folder = tmp_path / "DOE JOHN 1960"
    folder.mkdir()
    shown = file_names_only(f"could not write {folder}/ct.nii.gz: File too large")
    assert shown == "could not write ct.nii.gz: File too large"


# === The commands ===


def pancseg(*args, as_user: bool = False) -> subprocess.CompletedProcess:
    """The command in a fresh process; ``as_user``: without root's power to read any file."""
    command = [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)]
    if as_user and os.geteuid() == 0:
        command = [*_WITHOUT_READ_OVERRIDE, *command]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quiet TensorFlow by itself
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


# Root reads a file whatever its mode: dropping the two capabilities that let it makes a mode of
# 000 stop root too (setpriv, util-linux), and /root/venv stays usable (root still owns it).
_WITHOUT_READ_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _unreadable(path: pathlib.Path) -> None:
    """Makes ``path`` unreadable for `pancseg` with ``as_user``; skips where that cannot be."""
    path.chmod(0)
    if os.geteuid() != 0:
        if os.access(path, os.R_OK):
            pytest.skip("this user reads files of mode 000 (a capability?)")
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a file of mode 000 stays readable")
    probe = subprocess.run([*_WITHOUT_READ_OVERRIDE, "cat", str(path)], capture_output=True)
    if probe.returncode == 0 or b"Permission denied" not in probe.stderr:
        pytest.skip(f"cannot drop root's read override here: {probe.stderr.decode().strip()}")


def assert_names_no_folder(proc: subprocess.CompletedProcess, status: int, *names: str) -> str:
    """The status, only the command's own lines, no traceback, each name and no folder."""
    assert proc.returncode == status, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("pancseg: ") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert PATIENT not in proc.stderr + proc.stdout, proc.stderr
    for name in names:
        assert name in proc.stderr, (name, proc.stderr)
    return proc.stderr


def assert_no_file_names_the_folder(folder: pathlib.Path) -> int:
    """No file written under ``folder`` holds the patient's folder name (nor is named so)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        assert PATIENT not in str(path.relative_to(folder)), path
        assert PATIENT.encode() not in path.read_bytes(), path
    return len(files)


@pytest.fixture()
def patient(tmp_path) -> dict[str, pathlib.Path]:
    """Bad inputs in a folder named after a patient, with good ones to pair them with."""
    root = tmp_path / "data" / PATIENT
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    array = rng.integers(-100, 200, size=(40, 40, 12)).astype(np.int16)
    good = root / "good.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0])), str(good))
    corrupt = root / "corrupt.nii"
    corrupt.write_bytes(bytes(348) + rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    truncated = root / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    locked = root / "locked.nii.gz"
    shutil.copyfile(good, locked)
    # A DICOM folder that holds a text file and no DICOM image.
    not_dicom = root / "not_dicom"
    not_dicom.mkdir()
    (not_dicom / "IM0001.dcm").write_text("referral letter, not an image\n" * 20)
    # A series with one slice cut short (its header reads, its pixel data do not).
    hu = np.full((40, 40, 6), -1000, np.int16)
    hu[5:35, 5:35] = 40
    cut = root / "cut_series"
    files = write_series(cut, hu, pixel_spacing=(3.0, 3.0), spacing=3.0, file_names="ordered")
    files[2].write_bytes(files[2].read_bytes()[:-300])
    # A series with a slice that may not be read.
    locked_series = root / "locked_series"
    files = write_series(locked_series, hu, pixel_spacing=(3.0, 3.0), spacing=3.0, seed=1)
    locked_slice = files[3]
    return {
        "root": root,
        "good": good,
        "corrupt": corrupt,
        "truncated": truncated,
        "locked": locked,
        "not_dicom": not_dicom,
        "cut_series": cut,
        "locked_series": locked_series,
        "locked_slice": locked_slice,
    }


@pytest.mark.parametrize(
    "key, said",
    [
        ("corrupt", "corrupt.nii"),
        ("truncated", "truncated.nii.gz: the file is truncated"),
        ("not_dicom", "no DICOM series found in not_dicom"),
        ("cut_series", "could not decode slice 3 of 6"),
    ],
)
def test_convert_names_the_bad_input_not_its_folder(patient, tmp_path, key, said):
    out = tmp_path / "out"
    proc = pancseg("convert", patient[key], out / "ct.nii.gz")
    assert_names_no_folder(proc, 2, said)
    assert not (out / "ct.nii.gz").exists()


def test_convert_names_an_unreadable_file_not_its_folder(patient, tmp_path):
    _unreadable(patient["locked"])
    proc = pancseg("convert", patient["locked"], tmp_path / "a.nii.gz", as_user=True)
    assert_names_no_folder(proc, 2, "locked.nii.gz: Permission denied")
    # A slice that may not be read stops the series (skipped, it would leave a gap in it).
    _unreadable(patient["locked_slice"])
    proc = pancseg("convert", patient["locked_series"], tmp_path / "b.nii.gz", as_user=True)
    name = patient["locked_slice"].name
    assert_names_no_folder(proc, 2, f"locked_series: cannot read the file {name}: Permission")


def _manifest(patient, folder: pathlib.Path, images: list[str]) -> pathlib.Path:
    """A CSV manifest listing ``images`` of the patient's folder by absolute path."""
    folder.mkdir()
    rows = ["case_id,image,label"]
    rows += [f"case{i},{patient[key]},{patient['good']}" for i, key in enumerate(images, 1)]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_prepare_names_a_listed_file_not_its_folder(patient, tmp_path):
    manifest = _manifest(patient, tmp_path / "cohort", ["corrupt", "truncated"])
    small = ("--set", "preprocess.size=[32, 32]", "--set", "preprocess.spacing_mm=4.0")
    out = tmp_path / "prepared"
    proc = pancseg("prepare", manifest, out, *small)
    assert_names_no_folder(proc, 2, "case1", "corrupt.nii")
    # With --skip-bad: a warning per case (log lines follow the rule too), the index says why.
    proc = pancseg("prepare", manifest, out, *small, "--skip-bad")
    assert_names_no_folder(proc, 0, "skipping case case1", "skipping case case2", "truncated")
    assert "case2" in (out / "index.json").read_text()
    assert assert_no_file_names_the_folder(out) >= 3
    # A listed file that is missing.
    missing = _manifest(patient, tmp_path / "missing", ["good"])
    missing.write_text(missing.read_text().replace("good.nii.gz,", "gone.nii.gz,", 1))
    proc = pancseg("prepare", missing, tmp_path / "prepared2", *small)
    assert_names_no_folder(proc, 2, "image not found: gone.nii.gz")


def test_evaluate_names_the_bad_prediction_not_its_folder(patient, tmp_path):
    pred, gt = patient["root"] / "pred", patient["root"] / "gt"
    pred.mkdir()
    gt.mkdir()
    for case, key in (("a", "corrupt"), ("b", "truncated"), ("c", "locked")):
        name = f"{case}.nii.gz" if key != "corrupt" else f"{case}.nii"
        shutil.copyfile(patient[key], pred / name)
        shutil.copyfile(patient["good"], gt / name)
    shutil.copyfile(patient["good"], pred / "d.nii.gz")
    (gt / "d.nii.gz").write_bytes(patient["truncated"].read_bytes())
    _unreadable(pred / "c.nii.gz")
    report = tmp_path / "report"
    proc = pancseg("evaluate", pred, gt, "-o", report, as_user=True)
    said = assert_names_no_folder(
        proc, 2, "a.nii", "b.nii.gz: the file is truncated", "c.nii.gz: Permission denied"
    )
    assert "d.nii.gz" in said
    # The report's files (summary.json lists each failure's reason) name no folder either.
    assert assert_no_file_names_the_folder(report) >= 4


@pytest.mark.large
def test_predict_names_each_bad_input_not_its_folder(patient, tiny_run, tmp_path):  # noqa: F811
    _unreadable(patient["locked"])
    _unreadable(patient["locked_slice"])
    manifest = _manifest(patient, tmp_path / "cohort", ["truncated"])
    inputs = [patient[k] for k in ("corrupt", "locked", "not_dicom", "cut_series")]
    inputs += [patient["locked_series"], manifest]
    out = tmp_path / "masks"
    proc = pancseg("predict", tiny_run, *inputs, "-o", out, as_user=True)
    # Each case fails on its own line (status 1: a case failed), naming its file.
    said = assert_names_no_folder(
        proc,
        1,
        "corrupt failed",
        "locked.nii.gz: Permission denied",
        "not_dicom failed",
        "could not decode slice 3 of 6",
        "locked_series failed",
        "case1 failed",
    )
    assert "wrote 0 of 6" in proc.stdout
    # A cohort's case: its image shown as <image> (`predict_io.hide_found_paths`).
    assert "could not read NIfTI file <image>: the file is truncated" in said
    assert not list(out.glob("*.nii*"))
    # A model in a folder named after a patient (a run copied beside the data): its name only.
    run = patient["root"] / "run"
    run.mkdir()
    shutil.copyfile(tiny_run / "config.yaml", run / "config.yaml")
    (run / "model.keras").write_bytes((tiny_run / "model.keras").read_bytes()[:3000])
    proc = pancseg("predict", run, patient["good"], "-o", out)
    assert_names_no_folder(proc, 2, "model.keras is not a .keras model")
