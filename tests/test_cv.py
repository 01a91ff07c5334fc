"""`pancseg cv`: fold assignment, the summary tables, and whole runs with --fold and resuming."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pancseg_tf.errors import PancsegError
from pancseg_tf.training.cv import (
    THRESHOLDS,
    assign_folds,
    load_folds,
    summary_markdown,
    write_summary,
)
from tests.training.test_trainer import TINY as TRAINER_TINY

# The trainer tests' tiny config, with a frozen-CNN epoch and half the (two) training cases
# held for validation.
TINY = {
    **TRAINER_TINY,
    "train": {**TRAINER_TINY["train"], "freeze_cnn_epochs": 1, "validation_fraction": 0.5},
}


def pancseg(*args, timeout=1800, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# --- folds ---


def test_nih_cohort_gets_the_literatures_split_by_case_number():
    # The current TCIA release lacks cases 25 and 70.
    ids = [f"PANCREAS_{i:04d}" for i in range(1, 83) if i not in (25, 70)]
    folds = assign_folds(list(reversed(ids)), 4)
    assert folds["scheme"] == "nih-case-number"
    numbers = [[int(c[-4:]) for c in fold] for fold in folds["folds"]]
    assert numbers[0] == list(range(1, 21))
    assert numbers[1] == [i for i in range(21, 41) if i != 25]
    assert numbers[2] == list(range(41, 62))
    assert numbers[3] == [i for i in range(62, 83) if i != 70]


def test_other_cohorts_get_a_balanced_seeded_split():
    ids = [f"case_{i:02d}" for i in range(11)]
    a = assign_folds(ids, 4, seed=3)
    assert a == assign_folds(list(reversed(ids)), 4, seed=3)  # by case id, not by order
    assert a["scheme"] == "seeded"
    assert sorted(c for f in a["folds"] for c in f) == ids
    assert sorted(len(f) for f in a["folds"]) == [2, 3, 3, 3]
    assert assign_folds(ids, 4, seed=4) != a
    # NIH ids with another fold count, or a subset missing a whole range: seeded.
    nih = [f"PANCREAS_{i:04d}" for i in range(1, 83)]
    assert assign_folds(nih, 5)["scheme"] == "seeded"
    assert assign_folds(nih[:30], 4)["scheme"] == "seeded"


@pytest.mark.parametrize(
    ("folds", "cases", "match"),
    [(1, 5, "--folds must be"), (6, 5, "at least 6"), (True, 5, "--folds must be")],
)
def test_bad_fold_counts(folds, cases, match):
    with pytest.raises(PancsegError, match=match):
        assign_folds([f"c{i}" for i in range(cases)], folds)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"folds": [["a", "b"], ["b", "c"]]}, "more than one fold: b"),
        ({"folds": [["a"], ["zz"]]}, "not in the cohort: zz"),
        ({"folds": [["a", "b", "c"]]}, "2 or more non-empty folds"),
        ({"folds": [["a"], []]}, "2 or more non-empty folds"),
        ([["a"], [3]], "2 or more non-empty folds"),
    ],
)
def test_bad_folds_files_are_refused(tmp_path, content, match):
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PancsegError, match=match):
        load_folds(path, ["a", "b", "c"])


def test_folds_file_as_a_bare_list_is_read(tmp_path):
    path = tmp_path / "folds.json"
    path.write_text(json.dumps([["b", "a"], ["c"]]))
    assert load_folds(path, ["a", "b", "c"])["folds"] == [["a", "b"], ["c"]]


# --- the summary ---


def _row(case, dsc, consistency=0.1, ambiguous=0.5):
    return {
        "case": case,
        "dsc": dsc,
        "ji": dsc / (2 - dsc),
        "dsc_ambiguous": ambiguous,
        "slice_consistency": consistency,
        "hd95_mm": 3.0,
        "assd_mm": 1.0,
        "dsc_at_threshold": [dsc - 0.01 * abs(t - 0.5) * 10 for t in THRESHOLDS],
    }


def _fold(out, loss, k, stages):
    folder = out / loss / f"fold_{k}"
    folder.mkdir(parents=True)
    record = {"loss": loss, "fold": k, "stages": {s: {"cases": rows} for s, rows in stages.items()}}
    (folder / "fold.json").write_text(json.dumps(record))


def test_summary_holds_the_papers_table_per_fold_and_overall(tmp_path):
    (tmp_path / "folds.json").write_text(json.dumps({"scheme": "seeded", "folds": [[], [], []]}))
    _fold(tmp_path, "jaccard", 0, {"stage1": [_row("a", 0.8), _row("b", 0.6)],
                                   "stage2": [_row("a", 0.9), _row("b", 0.7)]})  # fmt: skip
    _fold(tmp_path, "jaccard", 2, {"stage1": [_row("e", 0.7)], "stage2": [_row("e", 0.8)]})
    _fold(tmp_path, "bce", 0, {"stage1": [_row("a", 0.5, ambiguous=float("nan"))]})
    summary = write_summary(tmp_path)
    jac = summary["experiments"]["jaccard"]
    assert jac["folds_done"] == [0, 2]
    s1 = jac["stages"]["stage1"]
    assert s1["per_fold"]["0"]["dsc"]["mean"] == pytest.approx(0.7)
    assert s1["per_fold"]["0"]["dsc"]["min"] == pytest.approx(0.6)
    assert s1["overall"]["dsc"]["mean"] == pytest.approx(0.7)
    assert s1["overall"]["dsc"]["std"] == pytest.approx(np.std([0.8, 0.6, 0.7], ddof=1))
    assert jac["stages"]["stage2"]["overall"]["dsc"]["max"] == pytest.approx(0.9)
    assert s1["num_cases"] == 3
    # The curve's mean at 0.5 is the DSC; its spread the drop towards 0.1 / 0.9.
    assert s1["dsc_at_threshold"]["mean"][4] == pytest.approx(0.7)
    assert s1["dsc_threshold_spread"] == pytest.approx(0.04)
    bce = summary["experiments"]["bce"]
    assert list(bce["stages"]) == ["stage1"]
    assert bce["stages"]["stage1"]["overall"]["dsc_ambiguous"]["n_undefined"] == 1
    text = (tmp_path / "cv_summary.md").read_text()
    assert text == summary_markdown(summary)
    assert "folds done: 2 of 3" in text
    assert "| 0 | stage 2 (CNN + BiConvLSTM) | 2 | 80.0 ± 14.1 | 70.0 - 90.0 |" in text
    assert "| all | stage 1 (CNN) | 3 | 70.0 ± 10.0 |" in text
    # No ambiguous slice in bce's only case: "-", as from cv_summary.json's null, never "nan".
    assert "| binary cross-entropy | stage 1 (CNN) | 1 | 50.0 ± 0.0 | 33.3 ± 0.0 | - |" in text
    assert "nan" not in text
    # strict JSON: NaN written as null
    json.loads((tmp_path / "cv_summary.json").read_text(), parse_constant=pytest.fail)
    png = (tmp_path / "threshold_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


# --- scoring a fold ---


def test_held_out_cases_are_scored_with_their_own_label_values(tmp_path):
    """A manifest case's own pancreas values, which prepare trains on, are its truth when the
    fold scores it; the config's [1, 2] would take a multi-organ map's spleen and right kidney
    (TotalSegmentator's 1 and 2) instead of its pancreas (7)."""
    import nibabel as nib

    from pancseg_tf.config import Config, apply_overrides
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.models import SliceCNN
    from pancseg_tf.training.cv import segment_and_score

    affine = np.diag([1.6, 1.6, 2.5, 1.0])
    label = np.zeros((48, 48, 8), np.uint8)  # (I, J, K)
    label[20:28, 20:30, 2:6] = 7  # pancreas: 320 voxels
    label[5:15, 5:15, 1:7] = 1  # spleen: 600 voxels
    label[35:45, 5:15, 1:7] = 2  # right kidney: 600 voxels
    image = np.full(label.shape, -1000, np.int16)
    image[2:46, 2:46, :] = 40
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "labels.nii.gz"))
    (tmp_path / "manifest.csv").write_text(
        "case_id,image,label,modality,label_values\n"
        "own,ct.nii.gz,labels.nii.gz,ct,totalsegmentator\n"
        "config,ct.nii.gz,labels.nii.gz,ct,\n"
    )
    cases = discover_cohort(tmp_path / "manifest.csv")
    cfg = apply_overrides(
        Config(), ["preprocess.spacing_mm=1.6", "preprocess.size=[48,48]"]
    )  # label_values [1, 2], the default
    model = tmp_path / "stage1.keras"
    SliceCNN(base_filters=4, depth=2, input_size=(48, 48)).save(model)

    result = segment_and_score(
        model, cfg, cases, tmp_path / "pred", largest_component=False, ambiguous={}
    )
    rows = {row["case"]: row for row in result["cases"]}
    assert rows["own"]["gt_voxels"] == 320
    assert rows["config"]["gt_voxels"] == 1200


# --- whole runs ---


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from pancseg_tf.synthetic import make_cohort

    root = tmp_path_factory.mktemp("cv")
    make_cohort(root / "cohort", cases=4, seed=5, shape=(96, 96, 24))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return root / "cohort", config


def _epochs(run):
    with open(run / "log.csv", newline="") as f:
        return [(int(r["stage"]), int(r["epoch"])) for r in csv.DictReader(f)]


@pytest.mark.large
def test_cv_one_fold_then_the_rest_after_a_kill(tiny_cohort, tmp_path):
    import nibabel as nib

    from pancseg_tf.inference import Segmenter

    cohort, config = tiny_cohort
    out = tmp_path / "cv"
    proc = pancseg("cv", cohort, out, "--folds", 2, "--fold", 0, "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "folds done: 1 of 2" in proc.stdout
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert sorted(c for f in folds for c in f) == [f"synth_{i:03d}" for i in range(4)]
    fold0 = out / "jaccard" / "fold_0"
    record = json.loads((fold0 / "fold.json").read_text())
    assert record["held_out"] == folds[0]
    assert sorted(record["train"] + record["validation"]) == folds[1]
    assert not (out / "jaccard" / "fold_1").exists()
    # Held-out masks on each case's own grid.
    for case in folds[0]:
        image = nib.load(cohort / "imagesTr" / f"{case}.nii.gz")
        for stage in ("stage1", "stage2"):
            mask = nib.load(fold0 / f"pred_{stage}" / f"{case}.nii.gz")
            assert mask.shape == image.shape
            np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
        assert len(record["stages"]["stage2"]["cases"]) == len(folds[0])
    # The post-processing chosen on validation is in the run's config, and predict follows it.
    choice = record["postprocessing"]
    assert set(choice) == {"stage1", "stage2"}
    for scores in choice.values():
        assert scores["largest_component"] == (scores["on"] >= scores["off"])
    # The shipped model (the stage that won on validation) is the run's model.keras; its
    # post-processing choice is the one the run's config carries.
    state = json.loads((fold0 / "run" / "state.json").read_text())
    shipped = state["shipped"]
    assert record["stages"]["shipped"]["stage"] == shipped
    assert record["stages"]["shipped"]["cases"] == record["stages"][shipped]["cases"]
    cfg = yaml.safe_load((fold0 / "run" / "config.yaml").read_text())
    assert cfg["postprocess"]["largest_component"] == choice[shipped]["largest_component"]
    assert cfg["provenance"]["postprocessing_on_validation"] == choice
    assert Segmenter.from_path(fold0 / "run").postprocess == choice[shipped]["largest_component"]

    # The remaining fold, killed in its training, then the same command again.
    done0 = (fold0 / "fold.json").read_bytes()
    command = [sys.executable, "-m", "pancseg_tf.cli", "cv", cohort, out, "--folds", "2"]
    command += ["--config", config]
    proc = subprocess.Popen(
        list(map(str, command)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log1 = out / "jaccard" / "fold_1" / "run" / "log.csv"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if log1.is_file() and len(_epochs(log1.parent)) >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "cv ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "jaccard" / "fold_1" / "fold.json").exists()
    proc = pancseg("cv", cohort, out, "--folds", 2, "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "fold 0: done, skipped" in proc.stderr
    assert (fold0 / "fold.json").read_bytes() == done0
    assert _epochs(log1.parent) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["experiments"]["jaccard"]["folds_done"] == [0, 1]
    assert summary["experiments"]["jaccard"]["stages"]["stage1"]["num_cases"] == 4
    assert "folds done: 2 of 2" in (out / "cv_summary.md").read_text()


@pytest.mark.large
def test_cv_loss_ablation_on_stage_1(tiny_cohort, tmp_path):
    cohort, config = tiny_cohort
    out = tmp_path / "ablation"
    proc = pancseg(
        "cv", cohort, out, "--folds", 2, "--fold", 1, "--config", config,
        "--losses", "dice,weighted_bce", "--stages", 1,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "cv_summary.json").read_text())
    assert sorted(summary["experiments"]) == ["dice", "weighted_bce"]
    for name, exp in summary["experiments"].items():
        assert list(exp["stages"]) == ["stage1"]
        assert exp["folds_done"] == [1]
        run_cfg = yaml.safe_load((out / name / "fold_1" / "run" / "config.yaml").read_text())
        assert run_cfg["train"]["loss"] == name
        assert not (out / name / "fold_1" / "run" / "model.keras").exists()
        assert len(exp["stages"]["stage1"]["dsc_at_threshold"]["mean"]) == len(THRESHOLDS)
    text = (out / "cv_summary.md").read_text()
    assert "| Dice | stage 1 (CNN) |" in text and "| class-weighted cross-entropy |" in text
    assert (out / "threshold_curves.png").read_bytes().startswith(b"\x89PNG")


def test_cv_errors_are_one_line(tiny_cohort, tmp_path):
    cohort, config = tiny_cohort
    for args, match in (
        (("--folds", "1"), "--folds must be an integer >= 2"),
        (("--losses", "jaccard,nope"), "--losses takes distinct names"),
        (("--fold", "7", "--folds", "2"), "--fold must be in 0..1"),
    ):
        proc = pancseg("cv", cohort, tmp_path / "o", "--config", config, *args)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("pancseg: error:")]
        assert len(lines) == 1 and match in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    # With TF_CONFIG set, "auto" would mean multi-worker: refused before anything is written.
    cluster = '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}'
    env = {**os.environ, "TF_CONFIG": cluster}
    proc = pancseg("cv", cohort, tmp_path / "o2", "--config", config, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "pancseg: error: TF_CONFIG is set" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o2").exists()
    proc = pancseg(
        "cv",
        cohort,
        tmp_path / "o3",
        "--config",
        config,
        "--strategy",
        "none",
        "--prepare-only",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
