"""`pancseg evaluate --prepared`: the cases whose pancreas lies partly outside the model's field."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import prepare_cohort
from pancseg_tf.evaluation import evaluate_predictions
from pancseg_tf.evaluation.report import OUTSIDE_FIELD_KEY
from pancseg_tf.synthetic import make_cohort


def read_metrics(out):
    with open(out / "metrics.csv", newline="") as file:
        return {row["case"]: row for row in csv.DictReader(file)}


def test_prepared_cases_that_fit_are_stated_and_unknown_ones_counted(tmp_path):
    """Two synthetic cases prepared at a field that holds them, one case the index lacks."""
    make_cohort(tmp_path / "cohort", cases=2, seed=3, shape=(64, 64, 16))
    config = apply_overrides(Config(), ["preprocess.size=[48, 48]", "preprocess.spacing_mm=3.2"])
    prepare_cohort(tmp_path / "cohort", tmp_path / "data", config=config, progress=False)
    labels = tmp_path / "cohort" / "labelsTr"
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        for name in ("synth_000", "synth_001"):
            shutil.copy(labels / f"{name}.nii.gz", tmp_path / folder / f"{name}.nii.gz")
        shutil.copy(labels / "synth_000.nii.gz", tmp_path / folder / "other.nii.gz")

    summary = evaluate_predictions(
        tmp_path / "pred", tmp_path / "gt", tmp_path / "report", prepared=tmp_path / "data"
    )
    assert summary["outside_field"] == {
        "field": {"size": [48, 48], "spacing_mm": 3.2},
        "cases": [],
        "unknown": ["other"],
    }
    rows = read_metrics(tmp_path / "report")
    assert [rows[c][OUTSIDE_FIELD_KEY] for c in ("other", "synth_000", "synth_001")] == [
        "",
        "0.0",
        "0.0",
    ]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert (
        "No evaluated case has pancreas outside the model's 48 x 48 field of 3.2 mm pixels "
        "(153.6 x 153.6 mm). Unknown for 1 case(s)"
    ) in text
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<th>pancreas outside the field (%)</th>" in page
    # The column is the cases table's last one.
    assert page.count("<td>0.00</td></tr>") == 2 and page.count("<td>n/a</td></tr>") == 1

    # Without a prepared folder the report states nothing about the field.
    summary = evaluate_predictions(tmp_path / "pred", tmp_path / "gt", tmp_path / "plain")
    assert summary["outside_field"] is None
    assert OUTSIDE_FIELD_KEY not in next(iter(read_metrics(tmp_path / "plain").values()))
    assert "field" not in (tmp_path / "plain" / "summary.md").read_text()


@pytest.mark.large
def test_nih_case_lists_the_pancreas_outside_the_quick_field(nih_root, nih_label_path, tmp_path):
    """NIH 0002 prepared at 128 x 128 pixels of 1.6 mm loses 1.30 % of its pancreas: evaluate
    (its own label as the prediction) says so on the terminal, in summary.md, index.html and
    metrics.csv."""
    config = apply_overrides(
        Config(),
        ["preprocess.label_values=[1]", "preprocess.spacing_mm=1.6", "preprocess.size=[128,128]"],
    )
    prepare_cohort(nih_root, tmp_path / "data", config=config, progress=False)
    (tmp_path / "pred").mkdir()
    shutil.copy(nih_label_path, tmp_path / "pred" / "PANCREAS_0002.nii.gz")
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", "evaluate", tmp_path / "pred", nih_root,
         "-o", report, "--prepared", tmp_path / "data"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = (
        "1 evaluated case has pancreas outside the model's 128 x 128 field of 1.6 mm pixels "
        "(204.8 x 204.8 mm), which training never sees: PANCREAS_0002 (1.30 %)."
    )
    assert line in proc.stdout.splitlines()
    fraction = round(1443 / 110797, 6)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["outside_field"]["cases"] == [{"case": "PANCREAS_0002", "fraction": fraction}]
    assert summary["metrics"]["dsc"]["mean"] == 1.0
    assert float(read_metrics(report)["PANCREAS_0002"][OUTSIDE_FIELD_KEY]) == fraction
    text = (report / "summary.md").read_text()
    assert line in text and "| PANCREAS_0002 | 1.30 |" in text
    page = (report / "index.html").read_text()
    assert '<p id="outside-field">' in page and "<td>1.30</td></tr>" in page
