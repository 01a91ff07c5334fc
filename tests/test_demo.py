"""`pancseg demo`: the whole path, through the same code, on a smaller cohort."""

import json

import pytest


@pytest.mark.large
def test_demo_runs_the_whole_path_and_resumes(tmp_path, capsys):
    from pancseg_tf.demo import print_demo_summary, run_demo

    out = tmp_path / "demo"
    small = dict(
        overrides=(
            "preprocess.size=[64, 64]",
            "preprocess.spacing_mm=2.4",
            "model.base_filters=4",
            "model.depth=3",
            "train.stage1_epochs=2",
            "train.stage2_epochs=2",
            "train.freeze_cnn_epochs=1",
            "train.steps_per_epoch=3",
            "train.validation_cases=1",
        ),
        train_cases=3,
        heldout_cases=2,
        shape=(96, 96, 24),
    )
    summary = run_demo(out, **small)
    assert summary["num_cases"]["evaluated"] == 2
    for path in (
        "run/model.keras",
        "run/stage1.keras",
        "report/index.html",
        "report/summary.md",
        "predictions/synth_000.nii.gz",
    ):
        assert (out / path).is_file(), path
    export = out / "exports" / "pancseg" / "1"
    assert (export / "saved_model.pb").is_file()
    print_demo_summary(out, summary)
    printed = capsys.readouterr().out
    assert "DSC (%)" in printed and "pancseg predict" in printed and str(export) in printed
    # A rerun resumes: nothing is trained or exported again.
    log_before = (out / "run" / "log.csv").read_text()
    again = run_demo(out, **small)
    assert (out / "run" / "log.csv").read_text() == log_before
    assert not (out / "exports" / "pancseg" / "2").exists()
    assert again["metrics"]["dsc"]["mean"] == pytest.approx(summary["metrics"]["dsc"]["mean"])
    assert json.loads((out / "demo.json").read_text())["modality"] == "ct"


def test_demo_refuses_a_foreign_folder(tmp_path):
    from pancseg_tf.demo import run_demo
    from pancseg_tf.errors import PancsegError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PancsegError, match="not a pancseg demo folder"):
        run_demo(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.large
def test_demo_model_leaves_the_chest_of_a_real_ct_alone(tmp_path, nih_series_dir, nih_label_path):
    """The model `pancseg demo` ships, trained on synthetic phantoms alone, marks nothing in the
    chest of NIH Pancreas-CT 0002: its slices 45 mm and more above the pancreas (slices 0-18 of
    195), which hold the lower heart on the liver dome, the lung bases and the spine (looked at).

    Measured on 2 cores: with phantoms that were all abdomen (before they had a chest, and a
    vertebral marrow within the soft-tissue window) the demo's CNN marked 18,777 voxels there,
    in the vertebral bodies, and 178,208 in all; with them, none there (54,466 in all, in bowel
    in front of the pancreas: the real scan stays far from the phantoms). The test's small demo
    (6 training steps) marks most of the scan and cannot tell, hence the shipped settings.

    With a fixed ~50 HU myocardium in the phantoms (an unenhanced heart muscle) the chest was
    left alone in some runs and not in others (CI: 2,921 voxels there; here, before
    post-processing, 2,103 voxels in the heart and 318,336 in all): NIH 0002's heart reads a
    median of 90 HU, the pancreas' brightness. With the phantoms' myocardium drawn per case in
    50-115 HU, two demo runs here marked 27 and 0 heart voxels before post-processing (324 and
    680 in the chest, in its wall; 49,124 and 67,126 in all) and none after.
    """
    import nibabel as nib
    import numpy as np

    from pancseg_tf.demo import run_demo
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.io import read_dicom_series

    run_demo(tmp_path / "demo", heldout_cases=1)
    volume = read_dicom_series(nih_series_dir)
    label = np.asarray(nib.load(nih_label_path).dataobj) > 0
    assert label.shape == volume.array.shape
    np.testing.assert_allclose(volume.affine[2, :2], 0.0)  # axial: world z depends on k alone
    z = volume.affine[2, 2] * np.arange(volume.array.shape[2]) + volume.affine[2, 3]
    chest = z >= z[label.any(axis=(0, 1))].max() + 45.0
    assert np.flatnonzero(chest).tolist() == list(range(19))
    mask = Segmenter.from_path(tmp_path / "demo" / "run").segment(volume).mask
    assert mask.shape == volume.array.shape
    assert int(np.count_nonzero(mask[:, :, chest])) == 0
