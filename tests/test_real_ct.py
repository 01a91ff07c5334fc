"""Real CT in the loop: per-case label values in a manifest, and capacity on a real scan.

The real cases of ``../shared/data`` (see its README): NIH Pancreas-CT 0002 (DICOM, manual
label, pancreas = 1), TotalSegmentator's s0009 (NIfTI, pancreas mask = 1) and its 3 mm example
(a multi-organ map: pancreas = 7, other organs other values).
"""

import pathlib

import numpy as np
import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import prepare_cohort
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.cohorts import discover_cohort
from pancseg_tf.preprocessing.geometry import GeometryPlan
from tests.benchmark_scripts import BENCHMARKS, load_script

# The quick config's grid (training/configs/quick.yaml), without its model section.
QUICK_GRID = [
    "preprocess.spacing_mm=1.6",
    "preprocess.slice_spacing_mm=2.5",
    "preprocess.size=[128,128]",
]


def write_manifest(path: pathlib.Path, rows: list[str]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["case_id,image,label,modality,label_values", *rows]) + "\n")
    return path


# === Per-case label values ===


def test_manifest_label_values_pick_each_cases_pancreas(
    tmp_path, shared_data, ts_ct_path, ts_labels_path
):
    s0009 = shared_data / "totalsegmentator_s0009"
    manifest = write_manifest(
        tmp_path / "manifest.csv",
        [
            f"ts_3mm,{ts_ct_path},{ts_labels_path},ct,totalsegmentator",
            f"ts_3mm_liver,{ts_ct_path},{ts_labels_path},ct,5",
            f"s0009,{s0009 / 'ct.nii.gz'},{s0009 / 'pancreas.nii.gz'},ct,",
        ],
    )
    cases = {c.case_id: c for c in discover_cohort(manifest)}
    assert cases["ts_3mm"].label_values == (7,)
    assert cases["ts_3mm_liver"].label_values == (5,)
    assert cases["s0009"].label_values is None  # the config's preprocess.label_values

    # The config's label values [1, 2] would take the 3 mm map's spleen and right kidney.
    config = apply_overrides(Config(), [*QUICK_GRID, "preprocess.label_values=[1,2]"])
    out = tmp_path / "prepared"
    index = prepare_cohort(manifest, out, config=config, progress=False)
    entries = {e["case_id"]: e for e in index["cases"]}
    labels = np.asarray(cases["ts_3mm"].load_label().array)
    for case_id, value in (("ts_3mm", 7), ("ts_3mm_liver", 5)):
        plan = GeometryPlan.from_dict(entries[case_id]["geometry"])
        expected = plan.forward((labels == value).astype(np.uint8), is_label=True)
        assert entries[case_id]["pancreas_voxels"] == int(expected.sum()) > 0
        assert entries[case_id]["label_values"] == [value]
    # The real files: 644 pancreas voxels against 7,114 for s0009 (README of ../shared/data);
    # on the 1.6 mm grid the pancreas is far smaller than the liver.
    assert entries["ts_3mm"]["pancreas_voxels"] < entries["ts_3mm_liver"]["pancreas_voxels"] / 10
    assert "label_values" not in entries["s0009"]
    assert entries["s0009"]["pancreas_voxels"] > 0


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("7", (7,)),
        ("1;2", (1, 2)),
        ('"2,1"', (1, 2)),
        ("1 2", (1, 2)),
        ("nih", (1,)),
        ("nonzero", "nonzero"),
    ],
)
def test_manifest_label_values_cell(tmp_path, ts_ct_path, ts_labels_path, cell, expected):
    manifest = write_manifest(tmp_path / "m.csv", [f"a,{ts_ct_path},{ts_labels_path},ct,{cell}"])
    assert discover_cohort(manifest)[0].label_values == expected


@pytest.mark.parametrize(
    "cell, label, message",
    [
        ("0", True, "label_values '0'.*>= 1"),
        ("liver", True, "label_values 'liver'"),
        ("7", False, "label_values but no label"),
    ],
)
def test_manifest_label_values_errors_name_the_row(
    tmp_path, ts_ct_path, ts_labels_path, cell, label, message
):
    label_path = ts_labels_path if label else ""
    manifest = write_manifest(tmp_path / "m.csv", [f"a,{ts_ct_path},{label_path},ct,{cell}"])
    with pytest.raises(PancsegError, match=f"row 2: case a.*{message}|row 2.*{message}"):
        discover_cohort(manifest, split="all")


def test_a_label_without_the_cases_values_is_refused(tmp_path, ts_ct_path, ts_labels_path):
    # 12 is in no structure of the map: prepare must not train this case on an empty mask.
    manifest = write_manifest(tmp_path / "m.csv", [f"a,{ts_ct_path},{ts_labels_path},ct,12"])
    with pytest.raises(PancsegError, match=r"none of the pancreas values \[12\]"):
        prepare_cohort(
            manifest, tmp_path / "out", config=apply_overrides(Config(), QUICK_GRID), progress=False
        )


# === Capacity on a real scan ===

#: What the one-case capacity run must reach on NIH 0002 (issue 17; see the two tests below).
CAPACITY_BOUND = 0.80


def test_capacity_bound_is_out_of_reach_of_a_gross_geometry_fault(nih_label_path):
    """The bound's reach, checked: NIH 0002's label scored against itself through a geometry
    fault (mirrored along any axis, or 2 slices = 2 mm off along z) stays below it, so a run
    whose geometry is that wrong fails the capacity test however well it learned. (One slice
    off reads 0.835: a shift that small is for the millimetre geometry test without training.)"""
    import nibabel as nib

    from pancseg_tf.evaluation.metrics import dice

    label = np.asarray(nib.load(nih_label_path).dataobj) > 0
    faults = {
        "mirrored in x": label[::-1],
        "mirrored in y": label[:, ::-1],
        "mirrored in z": label[:, :, ::-1],
        "2 slices up": np.roll(label, 2, axis=2),
        "2 slices down": np.roll(label, -2, axis=2),
    }
    scores = {name: round(dice(faulty, label), 3) for name, faulty in faults.items()}
    assert max(scores.values()) < CAPACITY_BOUND, scores
    assert dice(label, label) == 1.0


@pytest.mark.large
def test_capacity_quick_config_fits_one_real_nih_scan(tmp_path, nih_root):
    """The quick config trained on NIH Pancreas-CT 0002 alone segments that scan, DSC >= 0.80.

    Not accuracy (it is the training scan): capacity. It fails when the geometry, the HU
    window, the crops or the labels do not line up on a real scan, since the network then
    cannot learn even the one case it sees. NIH rather than s0009: the paper's dataset, a
    manual label, the DICOM path with its -y column direction, and a body (412 x 306 mm)
    wider than the quick grid's 205 mm field, with the end of the pancreas' tail beyond it:
    prepare keeps the whole body (a 258 x 192 plane), training cuts the model's 128 x 128 from
    it at random offsets, and validation and `pancseg predict` both tile it. The quick grid's
    round trip alone caps this case at DSC 0.894. Scored on the scan's own grid (512 x 512 x
    195) by `pancseg evaluate`, for stage 1 and for the model the run ships; the commands and
    the recipe (the quick config's 8 stage-1 epochs of 40 steps, one stage-2 epoch, no
    augmentation) are `benchmarks/real_ct_capacity.py`'s, whose recorded runs are
    `benchmarks/results/real_ct_capacity.json` (seeds 0-2: stage 1 0.855-0.872, shipped
    0.859-0.872; with 192 stage-1 steps seed 1 had stopped at 0.76). One case means no held-out
    case: ``train.validation_fraction=0`` validates on it.

    The bound is also out of reach of a geometry fault: the label scored against itself
    mirrored in any axis or 2 slices (2 mm) off stays below 0.80 (the test above). Millimetre
    geometry is held without training, by
    tests/preprocessing/test_geometry.py::test_nih_case_keeps_its_pancreas_through_the_model_grid.
    """
    bench = load_script(BENCHMARKS / "real_ct_capacity.py", "real_ct_capacity")
    result = bench.capacity_run(nih_root, tmp_path, seed=0)
    # The whole body's plane (the field predict tiles), and nothing of the pancreas left out.
    assert result["entry"] == {
        "size": [258, 192], "body_box": [0, 258, 0, 192], "label_outside_field_voxels": 0
    }  # fmt: skip
    splits = result["splits"]
    assert splits["train"] == splits["validation"] == ["PANCREAS_0002"]
    scores = result["dsc"]
    assert scores["stage1"] >= CAPACITY_BOUND, result
    assert scores["shipped"] >= CAPACITY_BOUND, result
    # The run's validation is `pancseg predict`'s computation: the same tiles over the same
    # whole-body plane, from the same stored intensities, back to the scan's grid.
    for name in ("stage1", "shipped"):
        assert result["validation_dsc"][name] == pytest.approx(scores[name], abs=1e-4), result


# === The demo model on a real chest (benchmarks/demo_real_ct.py) ===


def test_demo_real_ct_measures_nih_0002s_chest(nih_series_dir, nih_label_path):
    """The benchmark's chest is NIH 0002's slices 45 mm and more above its pancreas, 0-18 of 195
    (looked at: the heart, the liver dome from slice 3, the lung bases, the spine), and its measure
    counts marks there: the label itself scores DSC 1 with none in the chest; a mark on a chest
    slice is counted with its HU."""
    import nibabel as nib

    from pancseg_tf.io import read_dicom_series

    bench = load_script(BENCHMARKS / "demo_real_ct.py", "demo_real_ct")
    volume = read_dicom_series(nih_series_dir)
    label = np.asarray(nib.load(nih_label_path).dataobj) > 0
    chest = bench.chest_slices(volume, label)
    assert np.flatnonzero(chest).tolist() == list(range(19))
    itself = bench.measure(label.astype(np.uint8), volume, label, chest)
    assert itself["dsc"] == 1.0 and itself["chest_voxels"] == 0 and itself["slices"] == [63, 131]
    marked = label.copy()
    marked[250:260, 300:310, 5] = True  # 100 voxels on chest slice 5
    row = bench.measure(marked, volume, label, chest)
    assert row["chest_voxels"] == 100 and row["slices"] == [5, 131]
    assert row["chest_share"] == round(100 / (label.sum() + 100), 4)
    assert row["chest_median_hu"] == float(np.median(volume.array[250:260, 300:310, 5]))
