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
