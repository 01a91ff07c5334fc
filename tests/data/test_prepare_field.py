"""`pancseg prepare` counts the pancreas that the model's in-plane field leaves out, per case."""

import logging

import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import prepare_cohort
from pancseg_tf.data.prepare import cases_outside_field
from pancseg_tf.synthetic import make_cohort


def test_synthetic_cases_lose_nothing_and_are_not_listed(tmp_path, caplog):
    make_cohort(tmp_path / "cohort", cases=2, seed=3, shape=(64, 64, 16))
    config = apply_overrides(Config(), ["preprocess.size=[48, 48]", "preprocess.spacing_mm=3.2"])
    with caplog.at_level(logging.INFO, logger="pancseg_tf.data"):
        index = prepare_cohort(tmp_path / "cohort", tmp_path / "out", config=config)
    for entry in index["cases"]:
        assert entry["label_outside_field_voxels"] == 0
        assert entry["label_outside_field_fraction"] == 0.0
    assert cases_outside_field(index) == []
    assert "outside the model's" not in caplog.text


@pytest.mark.large
def test_nih_case_at_the_quick_grid_is_warned_about_and_recorded(nih_root, tmp_path, caplog):
    config = apply_overrides(
        Config(),
        ["preprocess.label_values=[1]", "preprocess.spacing_mm=1.6", "preprocess.size=[128,128]"],
    )
    with caplog.at_level(logging.WARNING, logger="pancseg_tf.data"):
        index = prepare_cohort(nih_root, tmp_path / "nih", config=config, progress=False)
    (entry,) = index["cases"]
    # 1,443 of its 110,797 pancreas voxels lie beyond the 205 mm field (the tail).
    assert entry["label_outside_field_voxels"] == 1443
    assert entry["label_outside_field_fraction"] == round(1443 / 110797, 6)
    assert cases_outside_field(index) == [("PANCREAS_0002", round(1443 / 110797, 6))]
    (line,) = [r.getMessage() for r in caplog.records if "outside the model's" in r.getMessage()]
    assert line.startswith("case PANCREAS_0002: 1.30 % of its pancreas (1443 voxels)")
    assert "128 x 128 field of 1.6 mm pixels" in line
    for secret in ("20151124", "NIH", "11-24-2015", str(nih_root)):
        assert secret not in line
