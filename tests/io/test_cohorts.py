"""Cohort discovery on the real NIH case and on MSD, NIH and manifest layouts built in tmp_path."""

import json
import logging
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.cohorts import Case, ambiguous_slices, discover_cohort


def write_nifti(path: pathlib.Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def tiny_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 200, size=(6, 5, 4)).astype(np.int16)


def tiny_label(seed: int) -> np.ndarray:
    label = np.zeros((6, 5, 4), np.uint8)
    label[1 + seed % 3 : 4, 1:3, 1:3] = 1
    return label


def make_msd(root: pathlib.Path, *, nnunet: bool, modality: str = "CT", junk: bool = True):
    """A tiny Task07-like folder: 3 training cases, 2 test cases, MSD or nnU-Net v2 names."""
    suffix = "_0000" if nnunet else ""
    training = []
    for n in (1, 4, 10):
        case = f"pancreas_{n:03d}"
        write_nifti(root / "imagesTr" / f"{case}{suffix}.nii.gz", tiny_image(n))
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", tiny_label(n))
        training.append(
            {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        )
    for n in (2, 3):
        write_nifti(root / "imagesTs" / f"pancreas_{n:03d}{suffix}.nii.gz", tiny_image(n))
    if junk:  # what the MSD tarball ships from a Mac: AppleDouble files beside every image
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (root / folder / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    if nnunet:  # nnU-Net v2: channel_names, no file list
        dataset = {"channel_names": {"0": modality}, "labels": {"background": 0, "pancreas": 1}}
    else:
        dataset = {
            "name": "Pancreas",
            "modality": {"0": modality},
            "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
            "numTraining": 3,
            "training": training,
            "test": ["./imagesTs/pancreas_002.nii.gz", "./imagesTs/pancreas_003.nii.gz"],
        }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


# === NIH Pancreas-CT: the real case ===


def test_shared_nih_case_is_discovered_with_its_label(nih_root, nih_series_dir, nih_label_path):
    for path in (nih_root, nih_root / "Pancreas-CT"):
        cases = discover_cohort(path)
        assert cases == [Case("PANCREAS_0002", nih_series_dir, nih_label_path, "ct")]
    assert discover_cohort(nih_root, format="nih", split="all") == cases
    assert discover_cohort(nih_root, split="test") == []


def test_shared_nih_label_lands_on_its_pancreas(nih_root):
    (case,) = discover_cohort(nih_root)
    image, label = case.load_image(), case.load_label()
    assert image.shape == label.shape == (512, 512, 195)
    np.testing.assert_allclose(image.affine, label.affine, atol=1e-3)
    pancreas = label.array > 0
    assert int(pancreas.sum()) == 110_797
    # The enhanced pancreas is ~100 HU; a label flipped in y would sit on fat and bowel.
    assert 60.0 < float(image.array[pancreas].mean()) < 160.0


# === NIH layout built in tmp_path (links to the real files) ===


def make_nih(root: pathlib.Path, nih_series_dir: pathlib.Path, nih_label_path: pathlib.Path):
    """Pancreas-CT with case 0001 (a real series and a 2-file scout), 0025 empty, 0070 absent."""
    images = root / "Pancreas-CT"
    study = images / "PANCREAS_0001" / "study"
    study.mkdir(parents=True)
    os.symlink(nih_series_dir, study / "series-ct")
    scout = study / "series-scout"
    scout.mkdir()
    for name in sorted(p.name for p in nih_series_dir.iterdir())[:2]:
        os.symlink(nih_series_dir / name, scout / name)
    (images / "PANCREAS_0025").mkdir()
    labels = root / "TCIA_pancreas_labels-02-05-2017"
    labels.mkdir()
    for n in (1, 25, 70):
        os.symlink(nih_label_path, labels / f"label{n:04d}.nii.gz")
    (labels / "._label0001.nii.gz").write_bytes(b"junk")
    return images, labels


def test_nih_layout_picks_the_largest_series_and_skips_empty_cases(
    tmp_path, nih_series_dir, nih_label_path, caplog
):
    images, labels = make_nih(tmp_path, nih_series_dir, nih_label_path)
    with caplog.at_level(logging.WARNING, logger="pancseg_tf.io"):
        cases = discover_cohort(tmp_path)
    assert cases == [
        Case(
            "PANCREAS_0001",
            images / "PANCREAS_0001" / "study" / "series-ct",
            labels / "label0001.nii.gz",
        )
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "pancseg_tf.io"]
    assert any("PANCREAS_0025" in m and "skipped" in m for m in messages), messages
    assert any("PANCREAS_0070" in m and "skipped" in m for m in messages), messages


def test_nih_labels_dir_elsewhere_and_missing_label(tmp_path, nih_series_dir, nih_label_path):
    images, labels = make_nih(tmp_path / "download", nih_series_dir, nih_label_path)
    moved = tmp_path / "my_labels"
    labels.rename(moved)
    with pytest.raises(PancsegError, match="labels_dir"):
        discover_cohort(images)
    (case,) = discover_cohort(images, labels_dir=moved)
    assert case.label == moved / "label0001.nii.gz"
    (moved / "label0001.nii.gz").unlink()
    with pytest.raises(PancsegError, match=r"PANCREAS_0001.*label0001\.nii\.gz"):
        discover_cohort(images, labels_dir=moved)


# === MSD / nnU-Net ===


@pytest.mark.parametrize("nnunet", [False, True], ids=["msd_names", "nnunet_v2_names"])
def test_msd_layout_both_naming_conventions(tmp_path, nnunet):
    root = make_msd(tmp_path / "Task07_Pancreas", nnunet=nnunet)
    suffix = "_0000" if nnunet else ""
    train = discover_cohort(root)
    assert [c.case_id for c in train] == ["pancreas_001", "pancreas_004", "pancreas_010"]
    for case in train:
        assert case.image == root / "imagesTr" / f"{case.case_id}{suffix}.nii.gz"
        assert case.label == root / "labelsTr" / f"{case.case_id}.nii.gz"
        assert case.modality == "ct"
    test = discover_cohort(root, split="test")
    assert [(c.case_id, c.label) for c in test] == [("pancreas_002", None), ("pancreas_003", None)]
    assert test[0].image == root / "imagesTs" / f"pancreas_002{suffix}.nii.gz"
    everything = discover_cohort(root / "dataset.json", format="msd", split="all")
    assert [c.case_id for c in everything] == [
        "pancreas_001",
        "pancreas_002",
        "pancreas_003",
        "pancreas_004",
        "pancreas_010",
    ]


def test_msd_cases_load(tmp_path):
    root = make_msd(tmp_path, nnunet=False, junk=False)
    case = discover_cohort(root)[1]
    image, label = case.load_image(), case.load_label()
    np.testing.assert_array_equal(image.array, tiny_image(4))
    np.testing.assert_array_equal(label.array, tiny_label(4))
    assert image.spacing == pytest.approx((1.0, 1.0, 2.0))
    with pytest.raises(PancsegError, match="pancreas_002 has no label"):
        discover_cohort(root, split="test")[0].load_label()


def test_msd_listed_names_with_nnunet_files(tmp_path):
    # a Task07 copy converted to nnU-Net names but keeping the MSD dataset.json
    root = make_msd(tmp_path, nnunet=True)
    msd = make_msd(tmp_path / "msd", nnunet=False)
    (root / "dataset.json").write_text((msd / "dataset.json").read_text())
    cases = discover_cohort(root, split="all")
    assert cases[0].image == root / "imagesTr" / "pancreas_001_0000.nii.gz"
    assert cases[1].image == root / "imagesTs" / "pancreas_002_0000.nii.gz"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("CT", "ct"), ("MRI", "mri"), ("T1", "mri"), ("T2", "mri"), ("MR", "mri")],
)
def test_msd_modality_from_dataset_json(tmp_path, name, expected):
    for nnunet in (False, True):
        root = make_msd(tmp_path / str(nnunet), nnunet=nnunet, modality=name)
        assert {c.modality for c in discover_cohort(root, split="all")} == {expected}


def test_msd_missing_label_and_image_name_the_case(tmp_path):
    root = make_msd(tmp_path / "glob", nnunet=True)
    (root / "labelsTr" / "pancreas_004.nii.gz").unlink()
    with pytest.raises(PancsegError, match=r"pancreas_004.*labelsTr"):
        discover_cohort(root)
    root = make_msd(tmp_path / "listed", nnunet=False)
    (root / "imagesTr" / "pancreas_010.nii.gz").unlink()
    with pytest.raises(PancsegError, match=r"pancreas_010.*imagesTr"):
        discover_cohort(root)


def test_msd_refuses_multichannel_and_unknown_modality(tmp_path):
    root = make_msd(tmp_path / "a", nnunet=True)
    write_nifti(root / "imagesTr" / "pancreas_001_0001.nii.gz", tiny_image(0))
    with pytest.raises(PancsegError, match="channel 0001"):
        discover_cohort(root)
    root = make_msd(tmp_path / "b", nnunet=False)
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["modality"] = {"0": "T2", "1": "ADC"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(PancsegError, match="single-channel"):
        discover_cohort(root)
    dataset["modality"] = {"0": "PET"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(PancsegError, match="'PET'"):
        discover_cohort(root)


# === CSV manifest ===


def write_manifest(folder: pathlib.Path, rows: list[str]) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cohort.csv"
    path.write_text("\n".join(["case_id,image,label,modality", *rows]) + "\n")
    return path


def test_manifest_relative_and_absolute_paths(tmp_path, nih_series_dir):
    data = tmp_path / "data"
    write_nifti(data / "a.nii.gz", tiny_image(1))
    write_nifti(data / "a_label.nii.gz", tiny_label(1))
    write_nifti(data / "b.nii", tiny_image(2))
    manifest = write_manifest(
        tmp_path / "lists",
        [
            "case_b,../data/b.nii,,MRI",
            "case_a,../data/a.nii.gz,../data/a_label.nii.gz,",
            f"nih,{nih_series_dir},,ct",
        ],
    )
    train = discover_cohort(manifest)
    assert train == [
        Case(
            "case_a",
            manifest.parent / "../data/a.nii.gz",
            manifest.parent / "../data/a_label.nii.gz",
            "ct",
        )
    ]
    np.testing.assert_array_equal(train[0].load_label().array, tiny_label(1))
    test = discover_cohort(manifest, split="test")
    assert [(c.case_id, c.label, c.modality) for c in test] == [
        ("case_b", None, "mri"),
        ("nih", None, "ct"),
    ]
    assert test[1].image == nih_series_dir
    assert [c.case_id for c in discover_cohort(manifest, split="all")] == [
        "case_a",
        "case_b",
        "nih",
    ]


@pytest.mark.parametrize(
    "bad_id", ["../../x", "a/b", "a\\b", "..", ".", "", "x..y", ".hidden", "/abs", "a b"]
)
def test_manifest_rejects_unsafe_case_ids(tmp_path, bad_id):
    write_nifti(tmp_path / "a.nii.gz", tiny_image(1))
    manifest = write_manifest(tmp_path, ["ok,a.nii.gz,,", f'"{bad_id}",a.nii.gz,,'])
    with pytest.raises(PancsegError, match="row 3") as error:
        discover_cohort(manifest, split="all")
    assert "not safe as a file name" in str(error.value)


def test_manifest_errors_name_the_row_case_and_path(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", tiny_image(1))
    cases = [
        (["x,a.nii.gz,,", "x,a.nii.gz,,"], "row 3.*already used on row 2"),
        (["x,missing.nii.gz,,"], r"case x.*image not found.*missing\.nii\.gz"),
        (["x,a.nii.gz,nolabel.nii.gz,"], r"case x.*label file not found.*nolabel\.nii\.gz"),
        (["x,a.nii.gz,,pet"], "row 2.*'pet'"),
        (["x,,,"], "row 2.*no image"),
    ]
    for rows, message in cases:
        manifest = write_manifest(tmp_path, rows)
        with pytest.raises(PancsegError, match=message):
            discover_cohort(manifest, split="all")
    (tmp_path / "typo.csv").write_text("case_id,image,lable\nx,a.nii.gz,\n")
    with pytest.raises(PancsegError, match="lable"):
        discover_cohort(tmp_path / "typo.csv")


# === Unknown layouts, ambiguous slices ===


def test_unknown_layout_lists_the_recognised_ones(tmp_path):
    (tmp_path / "notes.txt").write_text("not a cohort")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(PancsegError, match="MSD.*NIH Pancreas-CT.*manifest"):
            discover_cohort(path)
    with pytest.raises(PancsegError, match="no such cohort"):
        discover_cohort(tmp_path / "nope")
    with pytest.raises(PancsegError, match="not an MSD"):
        discover_cohort(tmp_path, format="msd")
    with pytest.raises(PancsegError, match="split"):
        discover_cohort(tmp_path, split="val")
    with pytest.raises(PancsegError, match="format"):
        discover_cohort(tmp_path, format="nifti")


def test_ambiguous_slices_file(tmp_path):
    assert ambiguous_slices(tmp_path) == {}
    (tmp_path / "ambiguous_slices.json").write_text('{"synth_001": [9, 4], "synth_000": []}')
    assert ambiguous_slices(tmp_path) == {"synth_001": [4, 9], "synth_000": []}
    (tmp_path / "ambiguous_slices.json").write_text('{"synth_001": [4.5]}')
    with pytest.raises(PancsegError, match="ambiguous_slices.json"):
        ambiguous_slices(tmp_path)
