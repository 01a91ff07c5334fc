"""benchmarks/few_case_phantoms.py: each arm's manifest and the amendment's rule (the runs
themselves are benchmarks/PROTOCOL.md's, amendment 2026-12-07 (i))."""

import pathlib

import pytest

from pancseg_tf.io.cohorts import discover_cohort
from pancseg_tf.synthetic import make_cohort
from tests.benchmark_scripts import BENCHMARKS, load_script


@pytest.fixture(scope="module")
def fcp():
    return load_script(BENCHMARKS / "few_case_phantoms.py", "few_case_phantoms")


def test_the_phantom_arm_adds_the_phantoms_to_the_held_in_scan(tmp_path, shared_data, fcp):
    cohort = make_cohort(tmp_path / "phantoms", cases=2, shape=(32, 32, 12), seed=11)
    phantoms = fcp.phantom_cases(pathlib.Path(cohort))
    assert [p[0] for p in phantoms] == ["synth_000", "synth_001"]
    held_out, held_in = fcp.TRAINING_CASES
    fcp.write_manifest(tmp_path / "m.csv", shared_data, [held_in, *phantoms])
    cases = {c.case_id: c for c in discover_cohort(tmp_path / "m.csv", split="all")}
    assert sorted(cases) == sorted([held_in[0], "synth_000", "synth_001"])
    for case in cases.values():
        assert pathlib.Path(case.image).is_file() and pathlib.Path(case.label).is_file()
    assert cases["synth_000"].label_values == (1,)


def test_the_phantoms_are_chosen_only_when_they_win_on_every_held_out_scan(fcp):
    def fold(real, mixed):
        return {"real": {"dsc": real}, "real_and_phantoms": {"dsc": mixed}}

    assert fcp.decide({"a": fold(0.1, 0.2), "b": fold(0.3, 0.31)}) == "real_and_phantoms"
    assert fcp.decide({"a": fold(0.1, 0.2), "b": fold(0.3, 0.3)}) == "real"  # a tie is no win
    assert fcp.decide({"a": fold(0.0, 0.0), "b": fold(0.5, 0.9)}) == "real"
    assert fcp.decide({}) == "real"
