"""`evaluate_predictions`: pairing, per-case failures, the report files, and a real CT."""

import csv
import html.parser
import json
import logging
import pathlib
import re
import shutil

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation import CASE_KEYS, REPORT_KEYS, evaluate_predictions
from pancseg_tf.evaluation.figures import canonical_case, radiological_view
from pancseg_tf.io import Volume
from pancseg_tf.synthetic import make_cohort

SHAPE = (24, 20, 12)  # (I, J, K) of the hand-made cases
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def save(path: pathlib.Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def box(shape=SHAPE, i=(8, 12), j=(6, 10), k=(4, 8)) -> np.ndarray:
    """A uint8 cuboid mask; the default is 4 x 4 x 4 = 64 voxels."""
    mask = np.zeros(shape, np.uint8)
    mask[i[0] : i[1], j[0] : j[1], k[0] : k[1]] = 1
    return mask


def read_metrics(out: pathlib.Path) -> dict[str, dict[str, str]]:
    with open(out / "metrics.csv", newline="") as file:
        return {row["case"]: row for row in csv.DictReader(file)}


def read_summary(out: pathlib.Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


class _Links(html.parser.HTMLParser):
    """Collects every href / src and checks that tags open and close in order."""

    VOID = {"meta", "img", "br", "link", "hr", "input", "area"}

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def html_links(out: pathlib.Path) -> list[str]:
    parser = _Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    parser.close()
    assert parser.stack == []
    return parser.links


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> pathlib.Path:
    """A synthetic MSD cohort of 3 CT cases, (64, 64, 16) voxels."""
    return make_cohort(
        tmp_path_factory.mktemp("cohort") / "msd", cases=3, seed=3, shape=(64, 64, 16)
    )


# === Perfect and shifted predictions ===


def test_perfect_predictions_give_dsc_1(cohort, tmp_path):
    # Predictions are the cohort's own labels, paired by file name with labelsTr/.
    pred = tmp_path / "pred"
    shutil.copytree(cohort / "labelsTr", pred)
    summary = evaluate_predictions(pred, cohort / "labelsTr", tmp_path / "report")

    rows = read_metrics(tmp_path / "report")
    assert sorted(rows) == ["synth_000", "synth_001", "synth_002"]
    for row in rows.values():
        assert float(row["dsc"]) == 1.0 and float(row["ji"]) == 1.0
        assert float(row["hd95_mm"]) == 0.0 and row["pred_empty"] == "False"
    assert summary["metrics"]["dsc"] == pytest.approx(
        {
            "mean": 1.0,
            "std": 0.0,
            "min": 1.0,
            "max": 1.0,
            "n": 3,
            "n_undefined": 0,
            "n_empty": 0,
            "n_excluded": 0,
        }  # fmt: skip
    )
    assert read_summary(tmp_path / "report") == summary
    assert summary["ground_truth"] == "folder"
    assert summary["evaluated"] == ["synth_000", "synth_001", "synth_002"]
    assert summary["cases_without_image"] == summary["evaluated"]  # no images given
    assert "| DSC (%) | 100.0 ± 0.0 | 100.0 | 100.0 | 3 |" in (
        tmp_path / "report" / "summary.md"
    ).read_text(encoding="utf-8")


# (shift along i in voxels) -> (DSC, JI) of a 4 x 4 x 4 cube against itself shifted:
# overlap (4 - s) * 16 voxels, DSC = 2 * overlap / 128, JI = overlap / (128 - overlap).
SHIFTS = [
    pytest.param(0, 1.0, 1.0, id="no-shift"),
    pytest.param(1, 0.75, 48 / 80, id="shift-1"),
    pytest.param(2, 0.5, 32 / 96, id="shift-2"),
    pytest.param(4, 0.0, 0.0, id="disjoint"),
]


@pytest.mark.parametrize(("shift", "expected_dsc", "expected_ji"), SHIFTS)
def test_shifted_prediction_gives_hand_computed_dsc(tmp_path, shift, expected_dsc, expected_ji):
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii.gz", box(i=(8 + shift, 12 + shift)))
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    row = read_metrics(tmp_path / "out")["a"]
    assert float(row["dsc"]) == pytest.approx(expected_dsc)
    assert float(row["ji"]) == pytest.approx(expected_ji)
    assert int(row["pred_voxels"]) == int(row["gt_voxels"]) == 64
    assert float(row["gt_volume_ml"]) == pytest.approx(64 * 0.8 * 0.8 * 2.5 / 1000)
    assert summary["metrics"]["dsc"]["mean"] == pytest.approx(expected_dsc)
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert f"| DSC (%) | {100 * expected_dsc:.1f} ± 0.0 |" in md


def test_distances_use_the_ground_truths_spacing(tmp_path):
    # A one-voxel shift along i is 0.8 mm with this affine, 3 mm with a 3 mm grid.
    for name, spacing in (("fine", 0.8), ("coarse", 3.0)):
        affine = np.diag([spacing, 1.0, 1.0, 1.0])
        save(tmp_path / "gt" / f"{name}.nii.gz", box(), affine)
        save(tmp_path / "pred" / f"{name}.nii.gz", box(i=(9, 13)), affine)
    evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    rows = read_metrics(tmp_path / "out")
    assert float(rows["fine"]["hd95_mm"]) == pytest.approx(0.8)
    assert float(rows["coarse"]["hd95_mm"]) == pytest.approx(3.0)


def test_volumes_of_a_gantry_tilted_grid_use_the_voxels_true_volume(tmp_path):
    # A CT tilted 20 degrees about i: the k axis leans towards j, so a voxel is a parallelepiped
    # of 0.8 x 0.8 x 2.5 mm sides and 0.8 * 0.8 * 2.5 * cos(20 deg) mm^3, not their product.
    tilt = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = [[0.8, 0, 0], [0, 0.8, 2.5 * np.sin(tilt)], [0, 0, 2.5 * np.cos(tilt)]]
    save(tmp_path / "gt" / "tilted.nii.gz", box(), affine)
    save(tmp_path / "pred" / "tilted.nii.gz", box(), affine)
    evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    row = read_metrics(tmp_path / "out")["tilted"]
    voxel_mm3 = 0.8 * 0.8 * 2.5 * np.cos(tilt)
    assert float(row["gt_volume_ml"]) == pytest.approx(64 * voxel_mm3 / 1000)
    assert float(row["pred_volume_ml"]) == pytest.approx(64 * voxel_mm3 / 1000)


# === Pairing ===


def test_folder_pairing_by_file_name_and_unpaired_cases(tmp_path):
    save(tmp_path / "gt" / "both_1.nii.gz", box())
    save(tmp_path / "gt" / "both_2.nii", box())  # .nii pairs as well as .nii.gz
    save(tmp_path / "gt" / "truth_only.nii.gz", box())
    save(tmp_path / "pred" / "both_1.nii.gz", box())
    save(tmp_path / "pred" / "both_2.nii.gz", box(i=(9, 13)))
    save(tmp_path / "pred" / "pred_only.nii.gz", box())
    save(tmp_path / "pred" / ".hidden.nii.gz", box())  # a macOS ._ file or a writer's temp file
    (tmp_path / "pred" / "notes.txt").write_text("not a mask")
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    assert summary["evaluated"] == ["both_1", "both_2"]
    assert summary["unpaired"] == {
        "prediction_only": ["pred_only"],
        "ground_truth_only": ["truth_only"],
    }
    assert summary["num_cases"] == {
        "evaluated": 2, "failed": 0, "prediction_only": 1, "ground_truth_only": 1
    }  # fmt: skip
    assert float(read_metrics(tmp_path / "out")["both_2"]["dsc"]) == pytest.approx(0.75)
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "pred_only: prediction without ground truth" in page
    assert "truth_only: ground truth without prediction" in page
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "- pred_only: prediction without ground truth" in md
    assert "- truth_only: ground truth without prediction" in md


def test_probability_maps_are_ignored(tmp_path):
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a_prob.nii.gz", box().astype(np.float32) * 0.7)
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    assert summary["evaluated"] == ["a"]
    assert summary["unpaired"]["prediction_only"] == [] and summary["failed"] == []


def test_cohort_pairing_by_case_id_uses_its_images(cohort, tmp_path):
    # Two of the three cohort cases have a prediction; one prediction has no cohort case.
    pred = tmp_path / "pred"
    for case in ("synth_000", "synth_002"):
        pred.mkdir(exist_ok=True)
        shutil.copy(cohort / "labelsTr" / f"{case}.nii.gz", pred / f"{case}.nii.gz")
    image = nib.load(cohort / "labelsTr" / "synth_000.nii.gz")
    save(pred / "other.nii.gz", np.asarray(image.dataobj), image.affine)
    summary = evaluate_predictions(pred, cohort, tmp_path / "out", gt_labels=(1,))

    assert summary["ground_truth"] == "cohort"
    assert summary["evaluated"] == ["synth_000", "synth_002"]
    assert summary["unpaired"] == {
        "prediction_only": ["other"],
        "ground_truth_only": ["synth_001"],
    }
    assert summary["metrics"]["dsc"]["mean"] == 1.0
    assert summary["cases_without_image"] == []  # the cohort's CT is under every montage
    assert summary["gt_labels"] == [1]


def test_images_folder_with_nnunet_names(cohort, tmp_path):
    pred, images = tmp_path / "pred", tmp_path / "images"
    images.mkdir()
    shutil.copytree(cohort / "labelsTr", pred)
    shutil.copy(cohort / "imagesTr" / "synth_000.nii.gz", images / "synth_000_0000.nii.gz")
    shutil.copy(cohort / "imagesTr" / "synth_001.nii.gz", images / "synth_001.nii.gz")
    summary = evaluate_predictions(pred, cohort / "labelsTr", tmp_path / "out", images=images)

    assert summary["cases_without_image"] == ["synth_002"]


# A label map with TotalSegmentator's values: 7 pancreas, 5 liver, 6 stomach. The prediction is
# the pancreas (64 voxels); the liver has 48 and the stomach 16 voxels.
def _multi_organ() -> np.ndarray:
    label = box() * 7
    label[0:3, 0:4, 0:4] = 5
    label[20:24, 16:20, 11:12] = 6
    return label


LABEL_VALUES = [
    pytest.param((7,), 1.0, id="pancreas-7"),
    pytest.param(None, 2 * 64 / (64 + 64 + 48 + 16), id="nonzero"),
    pytest.param((5, 7), 2 * 64 / (64 + 64 + 48), id="pancreas-and-liver"),
    pytest.param((6,), 0.0, id="stomach"),
]


@pytest.mark.parametrize(("gt_labels", "expected_dsc"), LABEL_VALUES)
def test_gt_labels_select_the_pancreas(tmp_path, gt_labels, expected_dsc):
    save(tmp_path / "gt" / "a.nii.gz", _multi_organ())
    save(tmp_path / "pred" / "a.nii.gz", box())
    summary = evaluate_predictions(
        tmp_path / "pred", tmp_path / "gt", tmp_path / "out", gt_labels=gt_labels
    )
    assert summary["metrics"]["dsc"]["mean"] == pytest.approx(expected_dsc)


def test_manifest_label_values_apply_to_their_own_cases(tmp_path):
    # A CSV manifest names each case's pancreas values (prepare trains on them); evaluate must
    # score against the same organ: its own values for "own", gt_labels for the empty cell.
    image = save(tmp_path / "data" / "ct.nii.gz", np.full(SHAPE, -1000, np.int16))
    for case in ("own", "default"):
        save(tmp_path / "data" / f"{case}_label.nii.gz", _multi_organ())
        save(tmp_path / "pred" / f"{case}.nii.gz", box())
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(
        "case_id,image,label,modality,label_values\n"
        f"own,{image.name},own_label.nii.gz,ct,7\n"
        f"default,{image.name},default_label.nii.gz,ct,\n"
    )
    summary = evaluate_predictions(tmp_path / "pred", manifest, tmp_path / "out", gt_labels=(5, 7))

    rows = read_metrics(tmp_path / "out")
    assert float(rows["own"]["dsc"]) == 1.0  # label 7 alone, not the liver (5) as well
    assert float(rows["default"]["dsc"]) == pytest.approx(2 * 64 / (64 + 64 + 48))
    assert summary["gt_labels"] == [5, 7]
    assert summary["case_label_values"] == {"own": [7]}


# === Per-case failures ===


def test_grid_mismatch_and_non_binary_fail_their_case_only(tmp_path):
    save(tmp_path / "gt" / "good.nii.gz", box())
    save(tmp_path / "pred" / "good.nii.gz", box())
    save(tmp_path / "gt" / "shape.nii.gz", box())
    save(tmp_path / "pred" / "shape.nii.gz", box(shape=(24, 20, 13)))
    moved = AFFINE.copy()
    moved[0, 3] = 0.8  # one voxel along i: not the truth's voxels
    save(tmp_path / "gt" / "affine.nii.gz", box())
    save(tmp_path / "pred" / "affine.nii.gz", box(), moved)
    within = AFFINE.copy()
    within[1, 3] = 2e-5  # within the tolerance: the same grid
    save(tmp_path / "gt" / "close.nii.gz", box())
    save(tmp_path / "pred" / "close.nii.gz", box(), within)
    rounded = AFFINE.copy()
    rounded[0, 3] = 0.01  # 0.01 mm, under half a voxel: the voxels prepare trains on (warned)
    save(tmp_path / "gt" / "rounded.nii.gz", box())
    save(tmp_path / "pred" / "rounded.nii.gz", box(), rounded)
    save(tmp_path / "gt" / "values.nii.gz", box())
    save(tmp_path / "pred" / "values.nii.gz", box() * 2)
    save(tmp_path / "gt" / "broken.nii.gz", box())
    (tmp_path / "pred" / "broken.nii.gz").write_bytes(b"not gzip at all")
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    assert summary["evaluated"] == ["close", "good", "rounded"]
    reasons = {entry["case"]: entry["reason"] for entry in summary["failed"]}
    assert sorted(reasons) == ["affine", "broken", "shape", "values"]
    assert "shape (24, 20, 13) differs from (24, 20, 12)" in reasons["shape"]
    assert "affines differ" in reasons["affine"] and "0.8 mm" in reasons["affine"]
    assert "half a voxel (0.4 mm)" in reasons["affine"]
    assert "values [2]" in reasons["values"]
    assert "broken.nii.gz" in reasons["broken"]
    # Reasons name files, never the folders they sit in.
    assert str(tmp_path) not in json.dumps(summary)
    assert sorted(read_metrics(tmp_path / "out")) == ["close", "good", "rounded"]
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    for case in reasons:
        assert f"<li>{case}: " in page and f"- {case}: " in md


def test_every_paired_case_failing_writes_the_report_then_raises(tmp_path):
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii.gz", box() * 3)
    with pytest.raises(PancsegError, match=r"none of the 1 paired cases .* case a: .*values \[3\]"):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    summary = read_summary(tmp_path / "out")
    assert summary["failed"][0]["case"] == "a"
    assert summary["metrics"]["dsc"]["n"] == 0 and summary["metrics"]["dsc"]["mean"] is None
    assert not (tmp_path / "out" / "dsc_boxplot.png").exists()
    assert all((tmp_path / "out" / link).is_file() for link in html_links(tmp_path / "out"))


def test_empty_ground_truth_is_kept_and_its_rvd_reported_undefined(tmp_path):
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "gt" / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    save(tmp_path / "pred" / "empty.nii.gz", box())
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    assert summary["metrics"]["dsc"]["n"] == 2 and summary["metrics"]["dsc"]["mean"] == 0.5
    assert summary["metrics"]["rvd"]["n"] == 1 and summary["metrics"]["rvd"]["n_undefined"] == 1
    assert read_metrics(tmp_path / "out")["empty"]["rvd"] == "nan"
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "RVD (%): 1 case(s) undefined" in md
    assert "1 case(s) with an empty prediction or ground truth" in md


# === Errors for the whole run ===


def test_nothing_pairable_raises_before_writing(tmp_path):
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "b.nii.gz", box())
    with pytest.raises(PancsegError, match=r"no prediction pairs with a ground truth: 1 .*\(b\)"):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _no_masks(tmp_path):
    save(tmp_path / "pred" / "a_prob.nii.gz", box().astype(np.float32))
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {}


def _missing_pred(tmp_path):
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {}


def _not_a_truth(tmp_path):
    save(tmp_path / "pred" / "a.nii.gz", box())
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "readme.txt").write_text("nothing here")
    return {}


def _duplicate_case(tmp_path):
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii", box())
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {}


def _bad_labels(tmp_path):
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {"gt_labels": (0,)}


def _out_is_input(tmp_path):
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {"out": tmp_path / "pred"}


def _images_not_a_folder(tmp_path):
    save(tmp_path / "pred" / "a.nii.gz", box())
    save(tmp_path / "gt" / "a.nii.gz", box())
    return {"images": tmp_path / "nowhere"}


RUN_ERRORS = [
    pytest.param(_no_masks, r"no predicted masks in .*_prob", id="only-probability-maps"),
    pytest.param(_missing_pred, r"predictions .*pred: no such folder", id="no-pred-folder"),
    pytest.param(
        _not_a_truth,
        r"not a folder of label files .* as a cohort failed: .*recognised layouts",
        id="bad-gt",
    ),
    pytest.param(_duplicate_case, r"two files for case a: a\.nii and a\.nii\.gz", id="dup"),
    pytest.param(_bad_labels, r"label values must be one or more integers >= 1", id="label-0"),
    pytest.param(_out_is_input, r"is an input folder", id="out-is-pred"),
    pytest.param(_images_not_a_folder, r"images .*nowhere is not a folder", id="bad-images"),
]


@pytest.mark.parametrize(("setup", "message"), RUN_ERRORS)
def test_run_errors(tmp_path, setup, message):
    kwargs = {"out": tmp_path / "out", **setup(tmp_path)}
    out = kwargs.pop("out")
    with pytest.raises(PancsegError, match=message):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt", out, **kwargs)


# === The report files ===


def test_report_files_and_links(cohort, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(cohort / "labelsTr", pred)
    label = nib.load(pred / "synth_001.nii.gz")
    shifted = np.roll(np.asarray(label.dataobj), 2, axis=1)
    save(pred / "synth_001.nii.gz", shifted, label.affine)
    save(pred / "unmatched.nii.gz", shifted, label.affine)
    out = tmp_path / "report"
    summary = evaluate_predictions(pred, cohort, out)

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # Each case's per-slice images sit in cases/<case>/, linked from its page.
    names = [name for name in files if not re.fullmatch(r"cases/synth_00\d/slice_\d{4}\.png", name)]
    assert names == [
        "cases/synth_000.html",
        "cases/synth_000.png",
        "cases/synth_001.html",
        "cases/synth_001.png",
        "cases/synth_002.html",
        "cases/synth_002.png",
        "dsc_boxplot.png",
        "index.html",
        "metrics.csv",
        "summary.json",
        "summary.md",
    ]  # and no temporary file is left behind
    links = html_links(out)
    assert set(links) == {*names} - {"index.html"}
    for link in links:
        assert not re.match(r"[a-z]+:|/", link)  # relative, no external resources
        assert (out / link).is_file()
    for page in out.glob("cases/*.html"):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        files_linked = {link for link in parser.links if not link.startswith("#")}
        assert all((page.parent / link).resolve().is_file() for link in files_linked)
        slices = {link for link in files_linked if "/slice_" in link}
        assert slices == {
            f"{page.stem}/{p.name}" for p in (out / "cases" / page.stem).glob("*.png")
        }
    for png in out.rglob("*.png"):
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with open(out / "metrics.csv", newline="") as file:
        assert next(csv.reader(file)) == ["case", *CASE_KEYS]
    dsc = summary["metrics"]["dsc"]
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert f"| DSC (%) | {100 * dsc['mean']:.1f} ± {100 * dsc['std']:.1f} |" in md
    assert re.search(r"\| JI \(%\) \| \d+\.\d ± \d+\.\d \| \d+\.\d \| \d+\.\d \| 3 \|", md)
    assert set(summary["metrics"]) == set(REPORT_KEYS)
    assert "- unmatched: prediction without ground truth" in md

    # A second run into the same folder replaces the files and still links only what exists.
    (pred / "synth_002.nii.gz").unlink()
    again = evaluate_predictions(pred, cohort, out)
    assert again["unpaired"]["ground_truth_only"] == ["synth_002"]
    assert "cases/synth_002.png" not in html_links(out)


def test_montage_shows_gt_and_prediction_outlines(tmp_path):
    # Prediction shifted off the truth: the montage holds green, red and yellow outline pixels.
    save(tmp_path / "gt" / "a.nii.gz", box())
    save(tmp_path / "pred" / "a.nii.gz", box(i=(9, 13)))
    evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")

    rgb = matplotlib.image.imread(tmp_path / "out" / "cases" / "a.png")[:, :, :3]
    for colour in ((0.0, 0.85, 0.0), (1.0, 0.1, 0.1), (1.0, 0.9, 0.0)):
        assert np.all(np.abs(rgb - colour) < 0.02, axis=2).sum() > 20


def test_display_is_radiological_for_ras_and_lps_storage():
    # A marker at the patient's right-anterior corner of slice k = 2 must show top-left, the
    # patient's left-posterior corner bottom-right, whatever the storage order.
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM-like: i towards the left, j posterior
    for affine, right_anterior, left_posterior in (
        (ras, (5, 3), (0, 0)),
        (lps, (0, 0), (5, 3)),
    ):
        mask = np.zeros((6, 4, 5), bool)
        mask[right_anterior[0], right_anterior[1], 2] = True
        other = np.zeros_like(mask)
        other[left_posterior[0], left_posterior[1], 2] = True
        canonical = canonical_case(mask, other, None, Volume(mask.astype(np.uint8), affine))
        gt_view = radiological_view(canonical.gt[:, :, 2])
        pred_view = radiological_view(canonical.pred[:, :, 2])
        assert gt_view.shape == (4, 6)  # rows anterior -> posterior, columns right -> left
        assert gt_view[0, 0] and gt_view.sum() == 1
        assert pred_view[-1, -1] and pred_view.sum() == 1


# === Progress lines ===


def test_one_progress_line_per_case_with_case_ids_only(tmp_path, caplog):
    for case in ("a", "b"):
        save(tmp_path / "gt" / f"{case}.nii.gz", box())
        save(tmp_path / "pred" / f"{case}.nii.gz", box())
    with caplog.at_level(logging.INFO, logger="pancseg_tf.evaluation"):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.name == "pancseg_tf.evaluation"]
    assert [line.split(":")[0] for line in lines[:2]] == ["[1/2] case a", "[2/2] case b"]
    assert lines[2].startswith("evaluated 2 cases")
    assert not any(str(tmp_path / "gt") in line or str(tmp_path / "pred") in line for line in lines)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pancseg_tf.evaluation"):
        evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", progress=False)
    assert [r for r in caplog.records if r.name == "pancseg_tf.evaluation"] == []


# === Real data ===


def test_totalsegmentator_ct_pancreas_against_itself(tmp_path, ts_ct_path, ts_labels_path):
    # Label 7 of TotalSegmentator's map is the pancreas: written as a mask, it is the prediction;
    # the whole multi-organ map is the truth, mapped with gt_labels=(7,).
    labels = nib.load(ts_labels_path)
    mask = (np.asarray(labels.dataobj) == 7).astype(np.uint8)
    save(tmp_path / "pred" / "ct_3mm.nii.gz", mask, labels.affine)
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "ct_3mm.nii.gz").symlink_to(ts_labels_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ct_3mm.nii.gz").symlink_to(ts_ct_path)
    summary = evaluate_predictions(
        tmp_path / "pred",
        tmp_path / "gt",
        tmp_path / "out",
        gt_labels=(7,),
        images=tmp_path / "images",
    )

    assert summary["metrics"]["dsc"]["mean"] == 1.0
    assert summary["cases_without_image"] == []
    row = read_metrics(tmp_path / "out")["ct_3mm"]
    assert int(row["gt_voxels"]) == 644  # the pancreas of data/README.md
    assert float(row["gt_volume_ml"]) == pytest.approx(644 * 27 / 1000)
    assert matplotlib.image.imread(tmp_path / "out" / "cases" / "ct_3mm.png").ndim == 3
