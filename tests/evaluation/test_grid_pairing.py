"""A label a few micrometres off its image's grid: `pancseg prepare` trains on it, so `pancseg
evaluate` must score it; prepare and evaluate draw the line at the same half voxel.

NIfTI stores its affines as float32, and a label saved by another tool commonly lands 1e-4 to
1e-2 mm from the image's grid. `pancseg predict` writes its mask on the image's grid exactly.
"""

import logging
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data.prepare import prepare_case
from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation import evaluate_predictions
from pancseg_tf.io.cohorts import discover_cohort
from pancseg_tf.synthetic import make_cohort

# Tiny model plane: the geometry of prepare runs, fast (the tests of tests/data/test_prepare.py).
SMALL = apply_overrides(Config(), ["preprocess.size=[48,48]", "preprocess.spacing_mm=2.0"])


def save(path: pathlib.Path, array: np.ndarray, affine: np.ndarray) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def moved(affine: np.ndarray, translation) -> np.ndarray:
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] += translation
    return out


def grid_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pancseg_tf.evaluation"
        and r.levelno == logging.WARNING
        and " mm" in r.getMessage()
    ]


# === A real CT: TotalSegmentator s0009 (1.5 mm voxels) ===


@pytest.fixture(scope="module")
def s0009(shared_data):
    folder = shared_data / "totalsegmentator_s0009"
    ct, label = nib.load(folder / "ct.nii.gz"), nib.load(folder / "pancreas.nii.gz")
    return folder / "ct.nii.gz", np.asarray(label.dataobj, np.uint8), ct.affine


# 0.005 mm: 3 um along x and 4 um along y, as another tool's float rounding leaves a label.
ROUNDING = (0.003, -0.004, 0.0)


def test_label_off_by_rounding_is_trained_on_and_scored(s0009, tmp_path, caplog):
    ct_path, pancreas, ct_affine = s0009
    label = save(tmp_path / "gt" / "s0009.nii.gz", pancreas, moved(ct_affine, ROUNDING))
    # pancseg predict's mask: on the image's grid exactly.
    save(tmp_path / "pred" / "s0009.nii.gz", pancreas, ct_affine)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,image,label,modality\ns0009,{ct_path},{label},ct\n")

    # prepare accepts the pair ...
    _, entry = prepare_case(discover_cohort(manifest)[0], SMALL)
    assert entry["pancreas_voxels"] > 0

    # ... evaluate with the label only: scored voxel by voxel, one warning naming the gap.
    with caplog.at_level(logging.WARNING, logger="pancseg_tf.evaluation"):
        summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "folder")
    assert summary["evaluated"] == ["s0009"] and summary["failed"] == []
    assert summary["metrics"]["dsc"]["mean"] == 1.0
    warnings = grid_warnings(caplog)
    assert len(warnings) == 1 and "s0009" in warnings[0] and "0.005 mm" in warnings[0]
    assert str(tmp_path) not in warnings[0]

    # ... evaluate with the cohort (its image known): the prediction is on the image's grid and
    # the label on the image's grid by prepare's rule, as prepare checked it: no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pancseg_tf.evaluation"):
        summary = evaluate_predictions(tmp_path / "pred", manifest, tmp_path / "cohort")
    assert summary["evaluated"] == ["s0009"] and summary["failed"] == []
    assert summary["metrics"]["dsc"]["mean"] == 1.0
    assert summary["cases_without_image"] == []  # the CT is shown under the masks
    assert grid_warnings(caplog) == []


def test_prediction_a_whole_voxel_away_is_still_refused(s0009, tmp_path):
    ct_path, pancreas, ct_affine = s0009
    label = save(tmp_path / "gt" / "s0009.nii.gz", pancreas, moved(ct_affine, ROUNDING))
    save(tmp_path / "pred" / "s0009.nii.gz", pancreas, moved(ct_affine, (1.5, 0.0, 0.0)))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,image,label,modality\ns0009,{ct_path},{label},ct\n")

    for truth, out in ((tmp_path / "gt", "folder"), (manifest, "cohort")):
        with pytest.raises(PancsegError, match="none of the 1 paired cases"):
            evaluate_predictions(tmp_path / "pred", truth, tmp_path / out)
        failed = (tmp_path / out / "summary.json").read_text(encoding="utf-8")
        assert "not on" in failed and "grid" in failed and "1.5 mm" in failed
        assert str(tmp_path) not in failed


# === prepare and evaluate agree at half a voxel ===


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("phantom") / "msd"
    return make_cohort(out, cases=1, shape=(64, 64, 20), spacing=(2.0, 2.0, 2.5), seed=5)


@pytest.mark.parametrize("side", [-1, 1], ids=["just-under-half-voxel", "just-over-half-voxel"])
def test_prepare_and_evaluate_agree_at_half_a_voxel(phantom, tmp_path, side):
    cohort = tmp_path / "msd"
    shutil.copytree(phantom, cohort)
    label_path = cohort / "labelsTr" / "synth_000.nii.gz"
    label = nib.load(label_path)
    array, affine = np.asarray(label.dataobj), label.affine
    half = 0.5 * float(np.linalg.norm(affine[:3, :3], axis=0).min())
    gap = half + side * 0.01  # along a diagonal in-plane: 0.6 x, 0.8 y
    save(label_path, array, moved(affine, (0.6 * gap, 0.8 * gap, 0.0)))
    save(tmp_path / "pred" / "synth_000.nii.gz", array, affine)  # on the image's grid
    gt_folder = tmp_path / "gt"
    gt_folder.mkdir()
    shutil.copy(label_path, gt_folder / "synth_000.nii.gz")

    try:
        prepare_case(discover_cohort(cohort)[0], SMALL)
        prepared = True
    except PancsegError as error:
        assert "not on the image's grid" in str(error)
        prepared = False

    evaluated = []
    for truth, out in ((gt_folder, "folder"), (cohort, "cohort")):
        try:
            summary = evaluate_predictions(tmp_path / "pred", truth, tmp_path / out)
        except PancsegError as error:
            assert "none of the 1 paired cases" in str(error)
            evaluated.append(False)
        else:
            assert summary["metrics"]["dsc"]["mean"] == 1.0
            evaluated.append(True)

    assert prepared is (side < 0)
    assert evaluated == [prepared, prepared]
