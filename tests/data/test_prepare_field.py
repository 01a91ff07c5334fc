"""`pancseg prepare` keeps each case's whole body, and says when a label lies outside it.

NIH 0002, whose body is wider than the quick config's 205 mm field, is prepared whole by the
real-CT capacity test (tests/test_real_ct.py), which checks its plane and that nothing of its
pancreas is left out.
"""

import logging

import nibabel as nib
import numpy as np

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import prepare_cohort
from pancseg_tf.synthetic import make_cohort


def _config(*overrides: str) -> Config:
    return apply_overrides(Config(), ["preprocess.spacing_mm=3.2", *overrides])


def test_a_body_wider_than_the_field_is_prepared_whole(tmp_path, caplog):
    """Phantom bodies (drawn on 64 x 64 voxels of 1.9 mm) against a 24 x 24 field of 3.2 mm
    pixels (77 mm): the planes are widened to hold each body's box, and no pancreas voxel is
    left out."""
    make_cohort(tmp_path / "cohort", cases=2, seed=3, shape=(64, 64, 16))
    with caplog.at_level(logging.INFO, logger="pancseg_tf.data"):
        index = prepare_cohort(
            tmp_path / "cohort", tmp_path / "out", config=_config("preprocess.size=[24, 24]")
        )
    for entry in index["cases"]:
        height, width = entry["size"]
        assert height > 24 and width > 24, entry["size"]
        assert entry["geometry"]["size"] == [height, width]
        # The fewest pixels that hold the body's box: the box fills the plane but for rounding.
        h0, h1, w0, w1 = entry["body_box"]
        assert h0 <= 1 and h1 >= height - 1 and w0 <= 1 and w1 >= width - 1, entry["body_box"]
        assert entry["label_outside_field_voxels"] == 0
        assert entry["label_outside_field_fraction"] == 0.0
    assert "outside the body" not in caplog.text


def test_a_label_outside_the_body_is_warned_about(tmp_path, caplog):
    """A label voxel in the air beside the body (a label from another scan, or a body found too
    small) lies outside every prepared plane: prepare says so, per case, in one line."""
    cohort = make_cohort(tmp_path / "cohort", cases=1, seed=3, shape=(64, 64, 16))
    path = cohort / "labelsTr" / "synth_000.nii.gz"
    label = nib.load(path)
    data = np.asarray(label.dataobj).copy()
    data[0:2, 0:2, 5:7] = 1  # a corner of the field of view: air
    nib.save(nib.Nifti1Image(data, label.affine, label.header), path)
    with caplog.at_level(logging.WARNING, logger="pancseg_tf.data"):
        index = prepare_cohort(cohort, tmp_path / "out", config=_config("preprocess.size=[24, 24]"))
    (entry,) = index["cases"]
    assert entry["label_outside_field_voxels"] == 8
    (line,) = [r.getMessage() for r in caplog.records if "outside the body" in r.getMessage()]
    assert line.startswith("case synth_000: ") and "(8 voxels)" in line
