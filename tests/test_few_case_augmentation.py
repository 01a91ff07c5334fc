"""benchmarks/few_case_augmentation.py: the manifest of each fold and the amendment's rule (the
runs themselves are benchmarks/PROTOCOL.md's, amendment 2026-12-06 (b))."""

import csv
import importlib
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fca():
    """The script as a module, with ``sys.path`` as it was afterwards (the script puts
    ``benchmarks/`` first, where ``benchmarks/serving.py`` would shadow ``serving/``)."""
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("few_case_augmentation")
    finally:
        sys.path[:] = saved


def test_each_fold_trains_on_the_other_real_scan(tmp_path, shared_data, fca):
    for held_out in fca.TRAINING_CASES:
        training = [c for c in fca.TRAINING_CASES if c is not held_out]
        fca.write_manifest(tmp_path / "m.csv", shared_data, training)
        with open(tmp_path / "m.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["case_id"] for r in rows] == [c[0] for c in training] != [held_out[0]]
        for row in rows:
            assert pathlib.Path(row["image"]).is_file() and pathlib.Path(row["label"]).is_file()


def test_intensity_is_chosen_only_when_it_wins_on_every_held_out_scan(fca):
    def fold(off, on):
        return {"off": {"dsc": off}, "intensity": {"dsc": on}}

    assert fca.decide({"a": fold(0.1, 0.2), "b": fold(0.3, 0.31)}) == "intensity"
    assert fca.decide({"a": fold(0.1, 0.2), "b": fold(0.3, 0.3)}) == "off"  # a tie is no win
    assert fca.decide({"a": fold(0.0, 0.0), "b": fold(0.5, 0.9)}) == "off"
    assert fca.decide({}) == "off"
