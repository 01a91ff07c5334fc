"""`benchmarks/run.py`: the report's shape, its targets, and a tiny run of two cheap parts."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.benchmark_scripts import load_script

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
ISSUE_KEYS = (
    "roofline_fraction",
    "one_pass_speedup",
    "one_pass_dsc_delta",
    "batched_vs_timedistributed_speedup",
    "pipeline_overhead",
    "predict_peak_rss_gib",
    "serving_time_ratio",
    "serving_bytes_per_volume",
    "ct_512x512x200_seconds",
)
FIGURE_FIELDS = {"value", "unit", "target", "met", "status"}


@pytest.fixture(scope="module")
def harness():
    """benchmarks/run.py as a module."""
    yield load_script(RUN, "bench_run")
    sys.modules.pop("bench_run", None)


@pytest.mark.parametrize(
    ("target", "value", "met"),
    [
        (">= 0.5", 0.5, True),  # the bound itself meets ">="
        (">= 0.5", 0.4999, False),
        ("<= 0.15", 0.15, True),
        ("<= 0.15", 0.151, False),
        ("< 4", 3.99, True),
        ("< 4", 4.0, False),  # the bound itself misses "<"
        (">= 4 (T = 5)", 4.2, True),  # a target with a note after the bound
        (None, 1.0, None),  # no target: neither met nor missed
        (">= 0.5", None, None),  # no value: neither met nor missed
    ],
)
def test_targets_are_read_as_written(harness, target, value, met):
    assert harness._met(target, value) is met


def test_every_issue_key_is_a_figure_with_a_unit(harness):
    for key in ISSUE_KEYS:
        part, unit, _ = harness.FIGURES[key]
        assert part in harness.PARTS and unit
    for part, _, _ in harness.FIGURES.values():
        assert part in harness.PART_FUNCTIONS


def test_figure_shape(harness):
    out = harness._to_figure("pipeline_overhead", 0.2)
    assert out == {
        "value": 0.2,
        "unit": "fraction of training throughput lost",
        "target": "<= 0.15",
        "met": False,
        "status": "ok",
    }
    estimated = harness._to_figure("ct_512x512x200_seconds_paper", (81.25, "estimated"))
    assert estimated["status"] == "estimated" and estimated["met"] is None


def test_unknown_part_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(RUN), "--only", "roofline,warp_drive", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "warp_drive" in done.stderr


@pytest.mark.large
def test_tiny_run_of_two_parts_writes_the_report(tmp_path):
    report_path, table_path = tmp_path / "report.json", tmp_path / "table.md"
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--tiny",
            "--only",
            "roofline,gpu",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(report_path),
            "--md",
            str(table_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for key in ISSUE_KEYS:
        assert set(report[key]) >= FIGURE_FIELDS, key
    roofline = report["roofline_fraction"]
    assert roofline["status"] == "ok"
    assert roofline["unit"] == "fraction of peak (FLOPs per CPU second)"
    assert 0.0 < roofline["value"] < 2.0 and isinstance(roofline["met"], bool)
    shares = [report[k]["value"] for k in ("cnn_flop_share", "convlstm_flop_share")]
    assert 0.5 < shares[0] < 1.0 and 0.0 < shares[1] < 0.5  # the CNN holds most FLOPs
    # The roofline times the model as its recipe ships it: chunks of the training window,
    # every slice the network runs counted (16 slices in chunks of 3: 6 chunks, 18 passes).
    inference = report["parts"]["roofline"]["details"]["inference"]
    assert (inference["chunk"], inference["chunks"], inference["network_slices"]) == (3, 6, 18)
    assert report["roofline_useful_flop_fraction"]["value"] == round(16 / 18, 4)
    assert report["parts"]["roofline"]["details"]["parts_max_abs_difference_from_segmenter"] < 1e-5
    # Parts that did not run keep their place, with no value.
    assert report["serving_time_ratio"] == {
        "value": None,
        "unit": "x (gRPC time / in-process time)",
        "target": "<= 1.3",
        "met": None,
        "status": "not run",
    }
    assert set(report["parts"]) == {"roofline", "gpu"}
    assert report["parts"]["roofline"]["status"] == "ok"
    assert report["parts"]["gpu"]["status"] in ("skipped", "ok")
    machine = report["machine"]
    for key in ("cores", "memory_gib", "cpu_model", "tensorflow", "keras"):
        assert machine[key], key
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert report["model_config"]["config"]["model"]["preset"] == "tiny"
    assert [t["figure"] for t in report["targets"]][0] == "roofline_fraction"
    table = table_path.read_text()
    assert "| figure | value | unit | target | met |" in table
    assert "| roofline_fraction |" in table and "| serving_time_ratio | not run |" in table
    assert table.strip() in done.stdout
    # --render rewrites the same table from the report without measuring anything.
    rendered = subprocess.run(
        [sys.executable, str(RUN), "--render", str(report_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0 and rendered.stdout.strip() == table.strip()


def test_readme_benchmark_tables_are_generated_from_the_committed_report(harness):
    """No hand-copied performance figure: the README's block is `readme_block` of
    ``benchmarks/results/latest.json``, which names the commit (an ancestor of this tree),
    the model config's hash and the command that made it."""
    import re

    report = json.loads((REPO / "benchmarks" / "results" / "latest.json").read_text())
    readme = (REPO / "README.md").read_text()
    assert readme.count(harness.README_BEGIN) == 1 and readme.count(harness.README_END) == 1
    begin = readme.index(harness.README_BEGIN)
    block = readme[begin : readme.index(harness.README_END) + len(harness.README_END)]
    assert block == harness.readme_block(report)
    assert set(harness.FIGURES) <= set(report)
    assert re.fullmatch(r"[0-9a-f]{40}", report["commit"])
    assert re.fullmatch(r"[0-9a-f]{64}", report["config_sha256"])
    assert report["command"].startswith("python benchmarks/run.py")
    assert report["provenance"]["command"].startswith("benchmarks/run.py")
    git = subprocess.run(
        ["git", "-C", str(REPO), "merge-base", "--is-ancestor", report["commit"], "HEAD"],
        capture_output=True,
    )
    if git.returncode in (0, 1):  # 128 and up: no git checkout here (an installed copy)
        assert git.returncode == 0, "latest.json was made at a commit this tree does not hold"


def test_readme_block_is_replaced_whole_and_refused_without_markers(harness, tmp_path):
    report = json.loads((REPO / "benchmarks" / "results" / "latest.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n\nbefore\n{harness.README_BEGIN}\nold table\n{harness.README_END}\nafter\n"
    )
    harness.write_readme_block(readme, report)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n")
    assert "old table" not in text and harness.readme_block(report) in text
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no single benchmarks block"):
        harness.write_readme_block(readme, report)
    assert readme.read_text() == "# no markers\n"


def test_the_harness_measures_the_quick_model_on_the_shipped_grid(harness):
    from pancseg_tf.config import load_config

    assert list(load_config("quick").preprocess.size) == [harness.QUICK_GRID] * 2
    assert harness.SIZES["quick"].preset_size == harness.SIZES["full"].preset_size == 128


def test_bf16_twin_holds_the_same_weights_and_computes_in_bfloat16():
    """`bf16_inference.bf16_twin`, which the harness's bf16 decision rests on: same weights,
    bfloat16 convolutions in the CNN, the recurrent head pinned to float32, outputs close."""
    import keras
    import numpy as np

    from pancseg_tf.models import ContextualSegmenter

    module = load_script(REPO / "benchmarks" / "bf16_inference.py", "bench_bf16_inference")
    sys.modules.pop("bench_bf16_inference", None)
    keras.utils.set_random_seed(0)
    model = ContextualSegmenter.from_preset("tiny")
    height, width = model.input_size
    x = np.random.default_rng(0).random((1, 4, height, width, 1), dtype=np.float32)
    reference = np.asarray(model(x, training=False)["prob"])
    twin = module.bf16_twin(model)
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    convs = [
        layer
        for layer in twin.slice_cnn._flatten_layers()
        if "conv" in type(layer).__name__.lower()
    ]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    out = np.asarray(keras.ops.convert_to_numpy(twin(x, training=False)["prob"]), dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.abs(out - reference).max() < 0.05
    assert not np.array_equal(out, reference)  # it did run in another precision
