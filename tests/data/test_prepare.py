"""`pancseg prepare`: the TFRecord format, shards and index, resuming, slices, bad cases."""

import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import merge_indexes, prepare_cohort
from pancseg_tf.data.prepare import prepare_case
from pancseg_tf.data.tfrecord import (
    crc32c,
    decode_case,
    decode_example,
    encode_example,
    masked_crc32c,
    read_tfrecord,
    write_tfrecord_atomic,
)
from pancseg_tf.errors import PancsegError
from pancseg_tf.io import read_nifti
from pancseg_tf.io.cohorts import discover_cohort
from pancseg_tf.synthetic import make_cohort

# Tiny synthetic volumes: 64 x 64 x 20 voxels of 2 x 2 x 2.5 mm; a 48 x 48 model plane at 2 mm.
SMALL = ["preprocess.size=[48,48]", "preprocess.spacing_mm=2.0"]


def small_config(*overrides: str) -> Config:
    return apply_overrides(Config(), [*SMALL, *overrides])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("cohort") / "ct"
    return make_cohort(out, cases=3, shape=(64, 64, 20), spacing=(2.0, 2.0, 2.5), seed=7)


@pytest.fixture(scope="module")
def prepared(cohort, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "out"
    index = prepare_cohort(cohort, out, config=small_config(), progress=False)
    return out, index


def tree(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# === The record format ===


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),  # the CRC-32C check value
        (bytes(32), 0x8A9136AA),  # RFC 3720 test vectors
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
    ],
)
def test_crc32c_known_values(data, expected):
    assert crc32c(data) == expected


@pytest.mark.parametrize("size", [4095, 4096, 10_007, 300_001])
def test_crc32c_lanes_match_the_byte_loop(size):
    # Inputs from 4096 bytes on take the vectorised lane path; it must equal the plain loop.
    from pancseg_tf.data.tfrecord import _crc_update_python

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc_update_python(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_tfrecord_bytes_equal_tensorflow_writer(tmp_path):
    import tensorflow as tf

    records = [
        encode_example({"a": b"xyz", "n": np.array([-3, 0, 2**40]), "f": np.array([1.5, -2.0])}),
        np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        b"",
    ]
    ours = write_tfrecord_atomic(tmp_path / "ours.tfrecord", records)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    assert list(read_tfrecord(ours)) == records
    assert list(tf.data.TFRecordDataset(str(ours)).as_numpy_iterator()) == records


def test_example_encoding_parses_in_tensorflow():
    import tensorflow as tf

    data = encode_example(
        {"b": [b"p", b"q"], "i": np.array([-1, 7]), "f": np.array([0.25], np.float32), "s": "ct"}
    )
    example = tf.train.Example.FromString(data).features.feature
    assert list(example["b"].bytes_list.value) == [b"p", b"q"]
    assert list(example["i"].int64_list.value) == [-1, 7]
    assert list(example["f"].float_list.value) == [0.25]
    assert list(example["s"].bytes_list.value) == [b"ct"]
    back = decode_example(data)
    assert back["b"] == [b"p", b"q"] and back["s"] == [b"ct"]
    np.testing.assert_array_equal(back["i"], [-1, 7])
    # Keys are written sorted, so equal features give equal bytes in any insertion order.
    assert encode_example({"s": "ct", "i": np.array([-1, 7])}) == encode_example(
        {"i": np.array([-1, 7]), "s": "ct"}
    )


def test_corrupt_shard_is_reported(tmp_path):
    path = write_tfrecord_atomic(tmp_path / "x.tfrecord", [b"hello world"])
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF  # a byte of the record's data
    path.write_bytes(bytes(data))
    with pytest.raises(PancsegError, match="corrupt"):
        list(read_tfrecord(path))
    assert masked_crc32c(b"hello world") != masked_crc32c(bytes(data[12:23]))


# === Preparing a cohort ===


def test_prepare_writes_shards_and_index(prepared, cohort):
    out, index = prepared
    config = small_config()
    assert index["format"] == "pancseg_tf.prepared" and index["version"] == 2
    assert index["preprocess_hash"] == config.hash("preprocess")
    assert index["preprocess"] == config.to_dict()["preprocess"]
    assert [c["case_id"] for c in index["cases"]] == ["synth_000", "synth_001", "synth_002"]
    assert index["shards"] == [f"shards/synth_00{i}.tfrecord" for i in range(3)]
    assert index["skipped"] == [] and index["missing"] == []
    assert json.loads((out / "index.json").read_text()) == index
    for entry in index["cases"]:
        (record,) = list(read_tfrecord(out / entry["shard"]))
        case = decode_case(record)
        k = entry["num_slices"]
        assert k == 20  # 20 slices of 2.5 mm kept at 2.5 mm
        # The plane holds the whole body: at least the model's 48 x 48, wider where it is.
        height, width = entry["size"]
        assert height >= 48 and width >= 48
        assert case["image"].shape == case["label"].shape == (k, height, width)
        assert case["image"].dtype == np.int16 and case["label"].dtype == np.uint8
        assert set(np.unique(case["label"])) == {0, 1}
        assert -1024 <= case["image"].min() and case["image"].max() < 3000
        positive = np.flatnonzero(case["label"].reshape(k, -1).sum(axis=1))
        assert entry["positive_slices"] == positive.tolist() and len(positive) > 0
        assert entry["pancreas_voxels"] == int(case["label"].sum())
        assert entry["original"]["shape"] == [64, 64, 20]
        assert entry["spacing_mm"] == pytest.approx([2.0, 2.0, 2.5])
        assert entry["geometry"]["size"] == [height, width]
        h0, h1, w0, w1 = entry["body_box"]
        assert 0 <= h0 < h1 <= height and 0 <= w0 < w1 <= width
    # Nothing outside OUT is named: not the cohort's path.
    assert str(cohort) not in (out / "index.json").read_text()


def test_prepared_label_lies_on_the_pancreas(prepared, cohort):
    # The synthetic pancreas enhances to about 100 HU: the prepared label must still cover it.
    out, index = prepared
    for entry in index["cases"]:
        case = decode_case(next(read_tfrecord(out / entry["shard"])))
        original = read_nifti(cohort / "imagesTr" / f"{entry['case_id']}.nii.gz").array
        label = read_nifti(cohort / "labelsTr" / f"{entry['case_id']}.nii.gz").array
        expected = original[label > 0].mean()
        assert case["image"][case["label"] > 0].mean() == pytest.approx(expected, abs=15)


def test_rerun_skips_finished_cases_and_keeps_bytes(prepared, cohort, tmp_path):
    out, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = tree(copy)
    stamps = {p: p.stat().st_mtime_ns for p in (copy / "shards").iterdir()}
    index = prepare_cohort(cohort, copy, config=small_config(), progress=False)
    assert tree(copy) == before
    assert {p: p.stat().st_mtime_ns for p in (copy / "shards").iterdir()} == stamps
    assert index["num_cases"] == 3


def test_parallel_workers_give_the_same_bytes(prepared, cohort, tmp_path):
    out, _ = prepared
    prepare_cohort(cohort, tmp_path / "par", config=small_config(), workers=2, progress=False)
    assert tree(tmp_path / "par") == tree(out)


def test_slices_merge_into_the_index_of_one_run(prepared, cohort, tmp_path):
    out, index = prepared
    sliced = tmp_path / "sliced"
    first = prepare_cohort(
        cohort, sliced, config=small_config(), num_shards=2, shard_index=1, progress=False
    )
    # Slice 1 of 2 holds the second of the sorted case ids; the others are missing so far.
    assert [c["case_id"] for c in first["cases"]] == ["synth_001"]
    assert first["missing"] == ["synth_000", "synth_002"]
    last = prepare_cohort(
        cohort, sliced, config=small_config(), num_shards=2, shard_index=0, progress=False
    )
    assert last == index
    assert tree(sliced) == tree(out)
    assert merge_indexes(sliced) == index


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_shards": 2}, "go together"),
        ({"shard_index": 0}, "go together"),
        ({"num_shards": 2, "shard_index": 2}, r"shard_index must be in \[0, 2\)"),
        ({"num_shards": 0, "shard_index": 0}, "num_shards must be an integer >= 1"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"format": "nifti"}, "format must be one of"),
    ],
)
def test_bad_arguments(cohort, tmp_path, kwargs, message):
    with pytest.raises(PancsegError, match=message):
        prepare_cohort(cohort, tmp_path / "out", config=small_config(), progress=False, **kwargs)


def test_other_config_in_the_same_folder_is_refused(prepared, cohort, tmp_path):
    out, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other = small_config("preprocess.spacing_mm=2.5")
    with pytest.raises(PancsegError, match="another preprocessing config"):
        prepare_cohort(cohort, copy, config=other, progress=False)


def test_a_folder_prepared_by_the_central_field_version_is_refused(prepared, cohort, tmp_path):
    """Version 1 kept each case's central field only: training, validation and a resumed
    prepare refuse it with one line naming the fix, rather than mixing its planes in."""
    from pancseg_tf.data import load_index

    out, _ = prepared
    old = tmp_path / "old"
    shutil.copytree(out, old)
    index = json.loads((old / "index.json").read_text())
    (old / "index.json").write_text(json.dumps({**index, "version": 1}))
    with pytest.raises(PancsegError, match="earlier pancseg.*prepare the cohort again"):
        load_index(old)
    with pytest.raises(PancsegError, match="earlier pancseg.*prepare the cohort again"):
        prepare_cohort(cohort, old, config=small_config(), progress=False)
    # Killed before its first index: the case entries alone say which version wrote them.
    (old / "index.json").unlink()
    entry = json.loads((old / "cases" / "synth_000.json").read_text())
    del entry["version"]
    (old / "cases" / "synth_000.json").write_text(json.dumps(entry))
    with pytest.raises(PancsegError, match="earlier pancseg.*prepare the cohort again"):
        prepare_cohort(cohort, old, config=small_config(), progress=False)


@pytest.fixture()
def broken_cohort(cohort, tmp_path) -> pathlib.Path:
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    (broken / "imagesTr" / "synth_001.nii.gz").write_bytes(b"\x1f\x8b not a gzip file")
    return broken


def test_corrupt_case_stops_the_run_naming_it(broken_cohort, tmp_path):
    with pytest.raises(PancsegError, match="case synth_001") as info:
        prepare_cohort(broken_cohort, tmp_path / "out", config=small_config(), progress=False)
    assert "--skip-bad" in str(info.value)


def test_skip_bad_skips_and_a_fixed_case_is_prepared_later(broken_cohort, cohort, tmp_path):
    out = tmp_path / "out"
    index = prepare_cohort(broken_cohort, out, config=small_config(), skip_bad=True, progress=False)
    assert [c["case_id"] for c in index["cases"]] == ["synth_000", "synth_002"]
    assert [s["case_id"] for s in index["skipped"]] == ["synth_001"]
    # The reason is kept, the file's path is not (folder names may hold a study date).
    assert "<image>" in index["skipped"][0]["error"]
    assert str(broken_cohort) not in (out / "index.json").read_text()
    # Fix the file and rerun: the skipped case is prepared, the others are kept.
    shutil.copy(cohort / "imagesTr" / "synth_001.nii.gz", broken_cohort / "imagesTr")
    index = prepare_cohort(broken_cohort, out, config=small_config(), progress=False)
    assert index["num_cases"] == 3 and index["skipped"] == []


def test_label_on_another_grid_is_refused(cohort, tmp_path):
    import nibabel as nib

    moved = tmp_path / "moved"
    shutil.copytree(cohort, moved)
    path = moved / "labelsTr" / "synth_000.nii.gz"
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += 10.0  # 10 mm off: five voxels
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    case = discover_cohort(moved)[0]
    with pytest.raises(PancsegError, match="not on the image's grid"):
        prepare_case(case, small_config())


def test_mri_is_stored_as_float16_with_percentiles(tmp_path):
    from pancseg_tf.preprocessing.intensity import mri_percentiles

    cohort = make_cohort(
        tmp_path / "mri", cases=1, modality="mri", shape=(64, 64, 20), spacing=(2, 2, 2.5)
    )
    index = prepare_cohort(
        cohort, tmp_path / "out", config=small_config("preprocess.modality=mri"), progress=False
    )
    entry = index["cases"][0]
    case = decode_case(next(read_tfrecord(tmp_path / "out" / entry["shard"])))
    assert case["image"].dtype == np.float16 and case["modality"] == "mri"
    original = read_nifti(cohort / "imagesTr" / "synth_000.nii.gz", modality="mri").array
    expected = mri_percentiles(original, 0.5, 99.5)
    np.testing.assert_allclose(case["percentiles"], expected, rtol=1e-5)
    assert entry["intensity"]["percentiles"] == pytest.approx(expected, rel=1e-5)


def test_mri_cohort_with_ct_config_names_the_fix(tmp_path):
    cohort = make_cohort(
        tmp_path / "mri", cases=1, modality="mri", shape=(64, 64, 20), spacing=(2, 2, 2.5)
    )
    with pytest.raises(PancsegError, match="preprocess.modality=mri"):
        prepare_cohort(cohort, tmp_path / "out", config=small_config(), progress=False)


def _prepare_in_fresh_process(case, config) -> bool:
    """Runs in a spawned process like a worker: is TensorFlow imported afterwards?"""
    from pancseg_tf.data import prepare

    prepare._worker_init()
    prepare.prepare_case(case, config)
    return "tensorflow" in sys.modules


def test_ct_workers_do_not_import_tensorflow(tmp_path):
    cohort = make_cohort(tmp_path / "ct", cases=1, shape=(32, 32, 12), spacing=(3, 3, 3))
    case = discover_cohort(cohort)[0]
    config = small_config()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_prepare_in_fresh_process, (case, config)) is False


# === Killed and resumed ===

# Each case takes about half a second at this fine grid, so the run can be killed half way.
HEAVY = ["preprocess.size=[192,192]", "preprocess.spacing_mm=0.5", "preprocess.slice_spacing_mm=1"]

_DRIVER = """
import sys
from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import prepare_cohort
if __name__ == "__main__":
    config = apply_overrides(Config(), sys.argv[3:])
    prepare_cohort(sys.argv[1], sys.argv[2], config=config, progress=False)
"""


def test_rerun_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    cohort = make_cohort(
        tmp_path / "cohort", cases=5, shape=(64, 64, 20), spacing=(2.0, 2.0, 2.5), seed=3
    )
    config = apply_overrides(Config(), HEAVY)
    clean = tmp_path / "clean"
    prepare_cohort(cohort, clean, config=config, progress=False)

    killed = tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(cohort), str(killed), *HEAVY])
    deadline = time.monotonic() + 120
    try:
        while not list((killed / "cases").glob("*.json")):
            assert proc.poll() is None, "prepare ended before its first case"
            assert time.monotonic() < deadline, "no case was prepared in 120 s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = sorted(p.stem for p in (killed / "cases").glob("*.json"))
    assert 1 <= len(done) < 5, f"the kill came too late to test resuming: {done}"
    assert not (killed / "index.json").exists()

    index = prepare_cohort(cohort, killed, config=config, progress=False)
    assert index["num_cases"] == 5
    assert tree(killed) == tree(clean)


# === The real NIH case ===


@pytest.mark.large
def test_nih_case_prepared_label_lies_on_the_pancreas(nih_root, tmp_path):
    # 512 x 512 x 195 DICOM at 0.898 x 0.898 x 1 mm -> 78 slices at 0.8 x 0.8 x 2.5 mm; the
    # default 256 x 256 field (205 mm) widened to the 412 x 306 mm body's box: 516 x 383.
    config = apply_overrides(Config(), ["preprocess.label_values=[1]"])
    index = prepare_cohort(nih_root, tmp_path / "nih", config=config, progress=False)
    (entry,) = index["cases"]
    assert entry["case_id"] == "PANCREAS_0002"
    assert entry["original"]["shape"] == [512, 512, 195]
    assert entry["num_slices"] == 78 and entry["size"] == [516, 383]
    assert entry["label_outside_field_voxels"] == 0
    case = decode_case(next(read_tfrecord(tmp_path / "nih" / entry["shard"])))
    label = case["label"] > 0
    # Pancreas on slices 63 to 131 of 195 at 1 mm: about 25-53 of 78 at 2.5 mm.
    assert entry["positive_slices"][0] in range(23, 28)
    assert entry["positive_slices"][-1] in range(50, 55)
    assert 60 <= case["image"][label].mean() <= 160
    # No patient field in the index: not the study date, institution or DICOM folder names.
    text = (tmp_path / "nih" / "index.json").read_text()
    for secret in ("20151124", "NIH", "Pancreas-63502", "11-24-2015", str(nih_root)):
        assert secret not in text
