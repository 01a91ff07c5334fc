"""`pancseg predict --runner DirectRunner`: the Beam pipeline against in-process prediction.

Real CT (TotalSegmentator's NIfTI and its DICOM series) and the tiny run of
tests/test_predict.py. The pipeline runs on Beam's DirectRunner with two workers in
``multi_processing`` mode: each worker is its own Python process that unpickles the handler and
loads TensorFlow and the model itself, as a Dataflow worker does (``multi_threading`` gives the
same bits in one process; see the README).
"""

import json

import pytest

from tests.test_predict import (
    pancseg,
    tiny_run,  # noqa: F401 - the module-scoped fixture
)

BEAM = (
    "--runner",
    "DirectRunner",
    "--pipeline-option",
    "direct_num_workers=2",
    "--pipeline-option",
    "direct_running_mode=multi_processing",
)


def snapshot(folder):
    """name -> (inode, mtime_ns, bytes) of every file in ``folder``."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.iterdir())
    }


@pytest.fixture(scope="module")
def beam_run(tiny_run, ts_ct_path, ts_dicom_dir, tmp_path_factory):  # noqa: F811
    """In-process masks, and the pipeline's over the same inputs plus a corrupt file."""
    tmp = tmp_path_factory.mktemp("beam")
    reference = tmp / "in_process"
    proc = pancseg("predict", tiny_run, ts_ct_path, ts_dicom_dir, "-o", reference)
    assert proc.returncode == 0, proc.stderr
    broken = tmp / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a NIfTI file")
    out = tmp / "beam"
    proc = pancseg("predict", tiny_run, ts_ct_path, ts_dicom_dir, broken, "-o", out, *BEAM)
    return reference, out, proc


@pytest.mark.large
def test_beam_masks_equal_in_process_and_a_bad_case_is_a_dead_letter(beam_run):
    reference, out, proc = beam_run
    assert proc.returncode == 1, proc.stderr
    for name in ("ct_3mm.nii.gz", "ct_dicom.nii.gz"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (out / "broken.nii.gz").exists()

    rows = (out / "failures.tsv").read_text().splitlines()
    assert rows[0] == "case\treason"
    assert len(rows) == 2 and rows[1].startswith("broken\t"), rows
    assert str(out.parent) not in rows[1]  # the input is shown by its name only
    assert "broken failed:" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    counts = [summary[key] for key in ("cases", "written", "skipped", "failed")]
    assert counts == [3, 2, 0, 1]
    assert summary["failed_cases"] == ["broken"]
    assert summary["written_cases"] == ["ct_3mm", "ct_dicom"]


@pytest.mark.large
def test_a_beam_rerun_writes_nothing_new(beam_run, tiny_run, ts_ct_path, ts_dicom_dir):  # noqa: F811
    _, out, _ = beam_run
    masks = ("ct_3mm.nii.gz", "ct_dicom.nii.gz")
    before = {k: v for k, v in snapshot(out).items() if k in masks}
    assert set(before) == set(masks)
    # The skip does not depend on the running mode; one process is quicker to start.
    rerun = [*BEAM[:-1], "direct_running_mode=multi_threading"]
    proc = pancseg("predict", tiny_run, ts_ct_path, ts_dicom_dir, "-o", out, *rerun)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(out)
    assert {k: after[k] for k in masks} == before  # same inodes, mtimes and bytes
    assert not [name for name in after if name.startswith(".")]  # no temporary left
    summary = json.loads((out / "summary.json").read_text())
    assert [summary[key] for key in ("written", "skipped", "failed")] == [0, 2, 0]
    assert "wrote 0 of 2 mask(s)" in proc.stdout and "2 already there" in proc.stdout


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("--pipeline-option", "no_such_option=1"), "unknown Beam pipeline option(s): no_such"),
        (("--pipeline-option", "=1"), "--pipeline-option expects KEY=VALUE"),
        (("--threshold", "1.5"), "--threshold must be in (0, 1)"),
    ],
)
def test_bad_beam_options_are_one_line_errors(ts_ct_path, tmp_path, extra, fragment):
    out = tmp_path / "out"  # refused before the model is looked at
    proc = pancseg("predict", tmp_path, ts_ct_path, "-o", out, "--runner", "DirectRunner", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: ") and fragment in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_pipeline_option_without_runner_is_refused(ts_ct_path, tmp_path):
    out = tmp_path / "o"
    proc = pancseg("predict", tmp_path, ts_ct_path, "-o", out, "--pipeline-option", "a=1")
    assert proc.returncode == 2
    assert "--pipeline-option needs --runner" in proc.stderr


def test_a_quoted_glob_is_expanded_and_matching_nothing_is_an_error(tmp_path):
    from pancseg_tf.beam.files import expand_inputs
    from pancseg_tf.errors import PancsegError

    for name in ("a.nii.gz", "b.nii", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = expand_inputs([str(tmp_path / "*.nii*")])
    assert [name for name, _ in items] == ["a", "b"]
    with pytest.raises(PancsegError, match="no file or folder matches"):
        expand_inputs([str(tmp_path / "*.dcm")])
    with pytest.raises(PancsegError, match="same case name: a"):
        expand_inputs([str(tmp_path / "a.nii.gz"), str(tmp_path / "a*")])
