"""benchmarks/paired_stats.py (the protocol's paired comparison) and bench_common.provenance."""

import hashlib
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.benchmark_scripts import BENCHMARKS
from tests.benchmark_scripts import load_script as load

REPO = BENCHMARKS.parent


@pytest.fixture(scope="module")
def stats():
    return load(BENCHMARKS / "paired_stats.py", "paired_stats")


@pytest.fixture(scope="module")
def common():
    return load(BENCHMARKS / "bench_common.py", "bench_common")


# === paired_comparison ===

# scipy.stats.wilcoxon's documented example (Hollander & Wolfe's 15 differences): the negative
# differences hold ranks 10 and 14, so W = 24, and the exact two-sided p is 0.041259765625.
SCIPY_DOC_DIFFERENCES = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def test_wilcoxon_p_of_scipys_documented_example(stats):
    out = stats.paired_comparison(SCIPY_DOC_DIFFERENCES, [0] * 15)
    assert out["n"] == 15 and out["n_dropped"] == 0
    assert out["wilcoxon_p"] == pytest.approx(0.041259765625, abs=1e-12)
    assert out["mean_difference"] == pytest.approx(np.mean(SCIPY_DOC_DIFFERENCES))
    assert out["median_difference"] == 24.0  # the 8th of the 15 sorted differences
    assert (out["a_better_cases"], out["b_better_cases"], out["ties"]) == (13, 2, 0)


@pytest.mark.parametrize(
    ("a", "b", "p"),
    [
        # 5 positive differences, no ties: exact p = 2 * (1 / 2**5) = 0.0625.
        ([0.9, 0.8, 0.7, 0.6, 0.5], [0.89, 0.78, 0.67, 0.56, 0.45], 0.0625),
        # differences [0, 0, 1, 2, -1, 3]: zeros dropped ("wilcox"); ranks 1.5, 1.5, 3, 4, the
        # negative one 1.5: W+ = 8.5; of the 16 sign patterns 3 reach W+ >= 8.5 -> p = 6 / 16.
        ([5, 5, 6, 7, 4, 8], [5, 5, 5, 5, 5, 5], 0.375),
    ],
)
def test_wilcoxon_p_by_hand(stats, a, b, p):
    assert stats.paired_comparison(a, b)["wilcoxon_p"] == pytest.approx(p, abs=1e-12)


def test_the_interval_decides_the_words_not_the_p_value(stats):
    # Five cases, A ahead on each by 0.01 to 0.05: p = 0.0625 (> 0.05), but every bootstrap
    # resample of the cases has a positive mean, so the interval excludes 0: "A better".
    a, b = [0.9, 0.8, 0.7, 0.6, 0.5], [0.89, 0.78, 0.67, 0.56, 0.45]
    out = stats.paired_comparison(a, b)
    assert out["ci_low"] >= 0.01 - 1e-12 and out["ci_high"] <= 0.05 + 1e-12
    assert out["verdict"] == "A better"
    assert stats.paired_comparison(b, a)["verdict"] == "B better"
    # One case the other way round and the interval holds 0: "no difference".
    mixed = stats.paired_comparison([0.9, 0.8, 0.7, 0.6, 0.3], b)
    assert mixed["ci_low"] < 0 < mixed["ci_high"]
    assert mixed["verdict"] == "no difference"


def test_lower_is_better_turns_the_verdict_not_the_differences(stats):
    # Slice consistency: lower is better. A is lower on every case.
    a, b = [0.05, 0.04, 0.06, 0.05], [0.08, 0.07, 0.09, 0.10]
    out = stats.paired_comparison(a, b, higher_is_better=False)
    assert out["mean_difference"] < 0 and out["ci_high"] < 0
    assert out["verdict"] == "A better"
    assert (out["a_better_cases"], out["b_better_cases"]) == (4, 0)
    assert stats.paired_comparison(a, b)["verdict"] == "B better"


@pytest.mark.parametrize(
    ("mean", "low", "high", "higher_is_better", "words"),
    [
        (0.01, 0.002, 0.02, True, "A better"),
        (-0.01, -0.02, -0.002, True, "B better"),
        (0.01, 0.0, 0.02, True, "no difference"),  # 0 on the interval's edge is inside it
        (0.01, -0.001, 0.02, True, "no difference"),
        (-0.01, -0.02, -0.002, False, "A better"),  # lower is better
        (0.01, 0.002, 0.02, False, "B better"),
        (math.nan, math.nan, math.nan, True, "no difference"),
    ],
)
def test_verdict_rule(stats, mean, low, high, higher_is_better, words):
    assert stats.verdict(mean, low, high, higher_is_better=higher_is_better) == words


def test_bootstrap_is_deterministic_for_a_seed(stats):
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.8, 0.9, 12), rng.uniform(0.8, 0.9, 12)
    first = stats.paired_comparison(a, b, seed=7, resamples=2000)
    assert stats.paired_comparison(a, b, seed=7, resamples=2000) == first
    other = stats.paired_comparison(a, b, seed=8, resamples=2000)
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert other["wilcoxon_p"] == first["wilcoxon_p"]  # the test itself draws nothing
    assert first["ci_low"] <= first["mean_difference"] <= first["ci_high"]


def test_all_zero_differences_are_no_difference(stats, recwarn):
    out = stats.paired_comparison([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert out["wilcoxon_p"] == 1.0
    assert (out["ci_low"], out["ci_high"]) == (0.0, 0.0)
    assert out["verdict"] == "no difference"
    assert (out["ties"], out["a_better_cases"], out["b_better_cases"]) == (3, 0, 0)
    assert not recwarn.list  # no 0 / 0 warning from scipy


def test_cases_missing_in_either_arm_are_dropped(stats):
    # A case without ambiguous slices has no ambiguous-slice DSC (NaN) in every arm.
    out = stats.paired_comparison([0.9, math.nan, 0.7, 0.8], [0.8, math.nan, 0.6, 0.75])
    assert (out["n"], out["n_dropped"]) == (3, 1)
    assert out["mean_difference"] == pytest.approx((0.1 + 0.1 + 0.05) / 3)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([0.9, 0.8], [0.9], "one score per case in each arm; got 2 and 1"),
        ([0.9], [0.8], "at least 2 cases scored in both arms; got 1"),
        ([0.9, math.nan], [0.8, 0.7], "at least 2 cases scored in both arms; got 1"),
    ],
)
def test_refuses_what_it_cannot_compare(stats, a, b, message):
    with pytest.raises(ValueError, match=message):
        stats.paired_comparison(a, b)


# === provenance ===


def test_provenance_names_the_commit_config_and_command(common, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"abc")
    out = common.provenance(config, ["benchmarks/x.py", "run dir", "--json", "o.json"])
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out["git_commit"] == head
    assert isinstance(out["git_dirty"], bool)
    # sha256("abc"), FIPS 180-2's first example
    assert out["config_sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert out["command"] == "benchmarks/x.py 'run dir' --json o.json"
    package = pathlib.Path(out["package_path"])  # this tree (editable) or site-packages
    assert package.name == "pancseg_tf" and (package / "cli" / "__init__.py").is_file()
    assert out["libraries"]["numpy"] == np.__version__
    assert out["machine"]["cores"] >= 1 and out["date_utc"].endswith("+00:00")
    json.dumps(out)  # goes into a results JSON as it is


def test_provenance_sees_a_dirty_tree(tmp_path):
    """A copy of bench_common.py in a fresh git repository: clean after the commit, dirty
    (with the path named) once a file is added."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(BENCHMARKS / "bench_common.py", repo / "benchmarks" / "bench_common.py")

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args],
            capture_output=True,
            check=True,
        )

    git("init", "-q")
    git("add", "benchmarks/bench_common.py")
    git("commit", "-q", "-m", "one")
    module = load(repo / "benchmarks" / "bench_common.py", "bench_common_copy")
    clean = module.provenance(argv=["x"])
    assert clean["git_dirty"] is False and clean["git_dirty_paths"] == []
    assert len(clean["git_commit"]) == 40 and clean["config_sha256"] is None
    (repo / "benchmarks" / "new_script.py").write_text("print(1)\n")
    dirty = module.provenance(argv=["x"])
    assert dirty["git_dirty"] is True
    assert dirty["git_dirty_paths"] == ["benchmarks/new_script.py"]
    assert dirty["git_commit"] == clean["git_commit"]


def test_provenance_outside_git_and_missing_config(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(BENCHMARKS / "bench_common.py", tmp_path / "benchmarks" / "bench_common.py")
    module = load(tmp_path / "benchmarks" / "bench_common.py", "bench_common_nogit")
    out = module.provenance(argv=["x"])
    assert out["git_commit"] is None and out["git_dirty"] is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        module.provenance(tmp_path / "missing.yaml", argv=["x"])


def test_modules_import_without_tensorflow():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_common, paired_stats; "
        "bench_common.provenance(); paired_stats.paired_comparison([1, 2, 3], [0, 0, 1]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_sha256_reads_in_blocks(common, tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 8193  # more than one 1 MiB block
    path.write_bytes(data)
    assert common.file_sha256(path) == hashlib.sha256(data).hexdigest()


# === results files state what made them ===


def test_results_state_their_commit_config_hash_and_command_at_the_top(common):
    """Every results file under benchmarks/results/ (the archive aside) names its commit and
    command at the top level; one with a provenance block copies them, and its config hash,
    from that block (`with_provenance_summary`, which `emit_json` applies)."""
    import re

    files = sorted((BENCHMARKS / "results").glob("*.json"))
    assert files
    for path in files:
        result = json.loads(path.read_text())
        assert re.match(r"[0-9a-f]{40}", result.get("commit") or ""), path.name
        assert result.get("command"), path.name
        prov = result.get("provenance")
        if prov:
            assert result["commit"] == prov["git_commit"], path.name
            assert result["config_sha256"] == prov["config_sha256"], path.name
            # The harness's own line names the interpreter too ("python benchmarks/run.py ...").
            assert result["command"].endswith(prov["command"]), path.name
    stamped = common.with_provenance_summary(
        {"x": 1, "provenance": {"git_commit": "c", "config_sha256": "h", "command": "cmd"}}
    )
    assert list(stamped)[:3] == ["commit", "config_sha256", "command"]
    assert stamped["x"] == 1 and stamped["command"] == "cmd"
    assert common.with_provenance_summary({"commit": "kept", "provenance": {}})["commit"] == "kept"
    assert common.with_provenance_summary([1]) == [1]


def test_benchmarks_run_pancseg_through_one_helper(common, tmp_path, capsys):
    """`bench_common.pancseg` runs the command line in a child of this interpreter and returns
    the command as typed, for a results file; quiet, a failure raises with the error line."""
    assert common.pancseg("--version", quiet=True) == "pancseg --version"
    assert capsys.readouterr().out == ""
    missing = tmp_path / "no such scan.nii.gz"
    with pytest.raises(RuntimeError, match="pancseg info failed \\(2\\).*no such file"):
        common.pancseg("info", str(missing), quiet=True)
    with pytest.raises(subprocess.CalledProcessError):
        common.pancseg("info", str(missing))
    assert capsys.readouterr().out == f"$ pancseg info '{missing}'\n"
    for script in ("run.py", "warmup_choice.py", "real_ct_transfer.py", "stage_ablation.py"):
        assert "pancseg_tf.cli" not in (BENCHMARKS / script).read_text(), script


def test_stage2_lr_rule_changes_the_rate_only_on_a_clear_win_on_both_cohorts():
    """Amendment (d)'s rule, on made-up per-case scores: a lead inside the paired interval, or
    one cohort lost, keeps 0.0005; a clear win everywhere changes it."""
    choice = load(BENCHMARKS / "stage2_lr_choice.py", "stage2_lr_choice")
    cases = ["a", "b", "c"]

    def results(half_lead: list[float], double_lead: list[float]) -> dict:
        out = {}
        for k, modality in enumerate(("ct", "mri")):
            quick = [0.80, 0.85, 0.82]
            leads = {"half": half_lead[3 * k : 3 * k + 3], "double": double_lead[3 * k : 3 * k + 3]}
            per_case = {"quick": dict(zip(cases, quick))}
            per_case.update(
                {
                    arm: {c: q + d for c, q, d in zip(cases, quick, lead)}
                    for arm, lead in leads.items()
                }
            )
            means = {arm: float(np.mean(list(v.values()))) for arm, v in per_case.items()}
            out[modality] = {"validation_cases": cases, "per_case_dsc": per_case, "mean_dsc": means}
        return out

    noisy = [0.03, -0.02, 0.01, 0.02, -0.01, 0.0]
    assert "0.0005 stays" in choice.decide(results(noisy, noisy))["decision"]
    one_cohort = [0.02, 0.03, 0.02, -0.01, -0.02, -0.01]
    assert "0.0005 stays" in choice.decide(results(one_cohort, noisy))["decision"]
    clear = [0.02, 0.03, 0.025, 0.02, 0.03, 0.02]
    decided = choice.decide(results(noisy, clear))
    assert decided["decision"] == "train.stage2_learning_rate 0.001 (double): recipe v3"
    assert decided["comparisons"]["double - quick"]["ci_low"] > 0


def test_pancseg_takes_the_subcommand_not_the_program(common):
    with pytest.raises(ValueError, match="without 'pancseg'"):
        common.pancseg("pancseg", "info", "x.nii.gz")
