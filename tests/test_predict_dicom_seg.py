"""`pancseg predict --output-format dicom-seg`: the SEG holds exactly the voxels of the NIfTI mask.

A tiny untrained run segments the JPEG 2000 TotalSegmentator series (a copy given the study and
series UIDs its anonymisation removed) and the NIH Pancreas-CT 0002 series (read in place: its
column direction is -y, which trips naive readers); the same run writes NIfTI, and the SEG's
frames, placed by their own geometry, must equal that mask voxel for voxel.
"""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.io.test_dicom_seg import copy_with_study_uids, seg_voxels
from tests.test_predict import pancseg

hd = pytest.importorskip("highdicom")

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder: an untrained tiny contextual model on 48 x 48 slices, and its config."""
    import keras

    from pancseg_tf.config import Config, apply_overrides, save_config
    from pancseg_tf.models import ContextualSegmenter, SliceCNN

    folder = tmp_path_factory.mktemp("run")
    settings = [
        "preprocess.size=[48, 48]",
        "preprocess.spacing_mm=4.0",
        "preprocess.slice_spacing_mm=3.0",
    ]
    save_config(apply_overrides(Config(), settings), folder / "config.yaml")
    keras.utils.set_random_seed(0)
    model = ContextualSegmenter(
        slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=(48, 48)),
        lstm_filters=4,
        lstm_resolution=2,
    )
    model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def ts_series(ts_dicom_dir, tmp_path_factory):
    return copy_with_study_uids(ts_dicom_dir, tmp_path_factory.mktemp("series") / "ct_dicom")


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: "), proc.stderr
    return lines[0]


def _threshold_between(probabilities: np.ndarray) -> float:
    """A threshold that marks about a tenth of the voxels, between two distinct values."""
    values = np.unique(probabilities[(probabilities > 0) & (probabilities < 1)])
    assert values.size > 10, "the model's probabilities are constant"
    upper = int(0.9 * values.size)
    return float((values[upper - 1] + values[upper]) / 2)


@pytest.mark.large
@pytest.mark.parametrize("which", ["totalsegmentator_jpeg2000", "nih_0002"])
def test_seg_holds_exactly_the_nifti_mask(run, which, request, tmp_path):
    from pancseg_tf.io import read_volume

    series = request.getfixturevalue("ts_series" if which.startswith("total") else "nih_series_dir")
    case = series.name
    volume = read_volume(series)
    flags: list = []
    proc = pancseg("predict", run, series, "-o", tmp_path / "nifti", "--probabilities")
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(nib.load(str(tmp_path / "nifti" / f"{case}.nii.gz")).dataobj)
    if not 0 < mask.sum() < mask.size:
        # An untrained model may mark nothing or everything at the run's threshold: pick one
        # inside its range of probabilities so that the comparison below means something.
        probabilities = np.asarray(
            nib.load(str(tmp_path / "nifti" / f"{case}_prob.nii.gz")).dataobj
        )
        flags = ["--threshold", _threshold_between(probabilities), "--no-postprocess"]
        proc = pancseg("predict", run, series, "-o", tmp_path / "nifti", *flags)
        assert proc.returncode == 0, proc.stderr
        mask = np.asarray(nib.load(str(tmp_path / "nifti" / f"{case}.nii.gz")).dataobj)
    assert 0 < mask.sum() < mask.size, "a mask neither empty nor full"

    out = tmp_path / "seg"
    proc = pancseg("predict", run, series, "-o", out, "--output-format", "dicom-seg", *flags)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 1 of 1 DICOM SEG(s) to {out}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{case}.dcm"]
    seg = hd.seg.segread(out / f"{case}.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "Pancreas"
    np.testing.assert_array_equal(seg_voxels(seg, volume.affine, volume.shape), mask)


def test_nifti_input_is_one_line(run, ts_ct_path, tmp_path):
    out = tmp_path / "out"
    proc = pancseg("predict", run, ts_ct_path, "-o", out, "--output-format", "dicom-seg")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "dicom-seg needs DICOM series input" in line and "ct_3mm.nii.gz" in line
    assert not out.exists() or list(out.iterdir()) == []


def test_without_highdicom_is_one_line_naming_the_extra(run, ts_series, tmp_path):
    # highdicom made unimportable in the command's process, as on an install without the extra.
    code = (
        "import sys; sys.modules['highdicom'] = None; from pancseg_tf.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "out"
    args = ["predict", run, ts_series, "-o", out, "--output-format", "dicom-seg"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert 'pip install "pancseg-tf[dicom-seg]"' in one_error_line(proc)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.large
def test_series_without_study_uid_fails_that_case_in_one_line(run, ts_dicom_dir, tmp_path):
    out = tmp_path / "out"
    proc = pancseg("predict", run, ts_dicom_dir, "-o", out, "--output-format", "dicom-seg")
    assert proc.returncode == 1, proc.stderr
    assert "ct_dicom failed: series in ct_dicom: DICOM tag StudyInstanceUID" in proc.stderr
    assert "Traceback" not in proc.stderr and "wrote 0 of 1" in proc.stdout
    assert list(out.iterdir()) == []
