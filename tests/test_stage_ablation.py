"""benchmarks/stage_ablation.py end to end on a tiny synthetic cohort: train, control, score,
compare, provenance (the governed runs themselves are benchmarks/PROTOCOL.md's)."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "stage_ablation.py"
TINY = {
    "preprocess": {"spacing_mm": 3.2, "slice_spacing_mm": 2.5, "size": [48, 48]},
    "data": {"window": 3, "batch_size": 2, "slice_batch_size": 8, "shuffle_buffer": 16},
    "model": {"preset": "quick", "base_filters": 4, "depth": 2, "lstm_filters": 4},
    "train": {
        "stage1_epochs": 1,
        "stage2_epochs": 2,
        "steps_per_epoch": 2,
        "validation_fraction": 0.5,
        "validation_cases": 1,
    },
}


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=900,
    )


def test_a_run_without_a_model_needs_a_config(tmp_path):
    (tmp_path / "run").mkdir()
    proc = run(SCRIPT, "run", "cohort", "--data", "data", "--json", "o.json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "run holds no model.keras: train it, or pass --config" in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_reanalyse_compares_boundaries_from_the_recorded_rows(tmp_path):
    """The governed results recorded HD95 and ASSD per case; the reanalysis compares them
    without scoring anything again and leaves the rows as they were."""
    rows = {
        "stage1": [{"dsc": 0.80, "hd95_mm": 5.0, "assd_mm": 1.0}, {"dsc": 0.70, "hd95_mm": 6.0,
                   "assd_mm": 1.5}, {"dsc": 0.90, "hd95_mm": 4.0, "assd_mm": 0.8}],
        "stage2": [{"dsc": 0.81, "hd95_mm": 4.0, "assd_mm": 0.9}, {"dsc": 0.72, "hd95_mm": 5.0,
                   "assd_mm": 1.2}, {"dsc": 0.91, "hd95_mm": 3.5, "assd_mm": 0.7}],
    }  # fmt: skip
    for arm in rows.values():
        for row in arm:
            row.update(ji=row["dsc"], dsc_ambiguous=row["dsc"], slice_consistency=0.1)
    results = tmp_path / "results.json"
    original = {
        "provenance": {"git_commit": "abc"},
        "arms": {k: {"cases": v} for k, v in rows.items()},
    }
    results.write_text(json.dumps(original))
    proc = run(SCRIPT, "--reanalyse", results, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(results.read_text())
    for name, arm in report["arms"].items():
        assert arm["cases"] == rows[name]  # the recorded rows, unchanged
    assert report["provenance"] == original["provenance"]
    assert report["arms"]["stage2"]["summary"]["hd95_mm"]["mean"] == pytest.approx(12.5 / 3)
    hd95 = report["comparisons"]["stage2_vs_stage1"]["hd95_mm"]
    assert hd95["mean_difference"] == pytest.approx(-2.5 / 3)
    assert hd95["a_better_cases"] == 3 and hd95["method"]["higher_is_better"] is False
    assert report["comparisons"]["stage2_vs_stage1"]["assd_mm"]["n"] == 3
    assert report["reanalysis"]["provenance"]["command"].endswith(f"--reanalyse {results}")
    assert "stage2_vs_stage1 hd95_mm: -0.8333" in proc.stdout


@pytest.mark.large
def test_stage_ablation_end_to_end(tmp_path):
    pancseg = ["-m", "pancseg_tf.cli"]
    for args in (
        ["synth", "train", "--cases", "2", "--seed", "5"],
        ["synth", "test", "--cases", "2", "--seed", "6"],
    ):
        assert run(*pancseg, *args, cwd=tmp_path).returncode == 0
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = run(*pancseg, "prepare", "train", "data", "--config", "tiny.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    proc = run(
        SCRIPT, "run", "test", "--data", "data", "--config", "tiny.yaml", "--json", "out.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    runs = tmp_path / "run"

    # It trained the run itself, with the command it records.
    assert report["training_command"][:2] == ["pancseg", "train"]
    assert (runs / "stage1.keras").is_file() and (runs / "model.keras").is_file()
    prov = report["provenance"]
    assert prov["config_sha256"] == hashlib.sha256((runs / "config.yaml").read_bytes()).hexdigest()
    assert "stage_ablation.py run test" in prov["command"] and len(prov["git_commit"]) == 40

    # The control: the stage-1 CNN trained on for stage 2's optimizer steps, best epoch kept.
    control = report["control"]
    assert control["optimizer_steps"] == 2 * 2 and len(control["val_dsc"]) == 2
    assert control["best_val_dsc"] == max(control["val_dsc"])
    control_model = runs / "control" / "control.keras"
    assert report["arms"]["control"]["sha256"] != report["arms"]["stage1"]["sha256"]
    assert (
        report["arms"]["control"]["sha256"]
        == hashlib.sha256(control_model.read_bytes()).hexdigest()
    )

    # Every arm scored on both test cases; the shipped model is one of the stages, scored once.
    arms = report["arms"]
    assert set(arms) == {"stage1", "stage2", "control", "shipped"}
    assert report["cases"] == ["synth_000", "synth_001"]
    for arm in arms.values():
        assert [row["case"] for row in arm["cases"]] == report["cases"]
        assert all(0.0 <= row["dsc"] <= 1.0 for row in arm["cases"])
    shipped = json.loads((runs / "state.json").read_text()).get("shipped", "stage2")
    assert arms["shipped"]["same_as"] == shipped
    assert arms["shipped"]["cases"] == arms[shipped]["cases"]

    # The comparisons are the arms' own per-case differences.
    comparisons = report["comparisons"]
    assert set(comparisons) == {
        "stage2_vs_stage1",
        "stage2_vs_control",
        "control_vs_stage1",
        "shipped_vs_stage1",
    }
    for key, metrics in comparisons.items():
        a, b = key.split("_vs_")
        dsc = metrics["dsc"]
        diffs = [x["dsc"] - y["dsc"] for x, y in zip(arms[a]["cases"], arms[b]["cases"])]
        assert dsc["n"] == 2
        assert dsc["mean_difference"] == pytest.approx(sum(diffs) / 2)
        assert dsc["ci_low"] <= dsc["mean_difference"] <= dsc["ci_high"]
        assert dsc["verdict"] in ("A better", "B better", "no difference")
        assert metrics["slice_consistency"]["method"]["higher_is_better"] is False
