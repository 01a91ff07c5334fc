"""A full disk during `pancseg convert`, `prepare`, `train`, `predict` and `export`: nothing
half-written.

The disk fills in two ways, each at sizes chosen so that the failure hits different files:

- ``fsize``: the command runs under ``RLIMIT_FSIZE`` (``ulimit -f``) with ``SIGXFSZ`` ignored, so
  a write past the limit fails with ``EFBIG`` ("File too large"), in any file;
- ``tmpfs``: the output folder is a small tmpfs mount, a real full disk (``ENOSPC``, "No space
  left on device"); skipped where mounting is not allowed.

Each time: exit status 2 (1 for a predict that wrote some of its masks), a last line
``pancseg: error: ...`` that names the problem, no traceback, every file under the output
folder complete and readable (or absent), no temporary file left, inputs unchanged; an export
never leaves a numbered version folder (TF Serving loads any all-digit folder).
"""

import contextlib
import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_factory import write_series

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PAGE = 4096
#: What the system says for each way of filling the disk.
REASONS = {"fsize": "File too large", "tmpfs": "No space left on device"}
METHODS = tuple(REASONS)

# Runs the command in a Python whose file size limit is set before pancseg starts (rather than
# in a preexec_fn, which is unsafe when the test process has threads, e.g. TensorFlow's).
_LIMITED = (
    "import resource, runpy, signal, sys\n"
    "limit = int(sys.argv.pop(1))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "sys.argv[0] = 'pancseg'\n"
    "runpy.run_module('pancseg_tf.cli', run_name='__main__', alter_sys=True)\n"
)


def pancseg(*args, fsize: int | None = None) -> subprocess.CompletedProcess:
    """The command in a fresh process, with at most ``fsize`` bytes per file when given."""
    if fsize is None:
        command = [sys.executable, "-m", "pancseg_tf.cli"]
    else:
        command = [sys.executable, "-c", _LIMITED, str(int(fsize))]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quiet TensorFlow by itself
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


@contextlib.contextmanager
def disk(method: str, folder: pathlib.Path, size: int):
    """``(folder, fsize)``: ``folder`` on a disk that takes about ``size`` bytes.

    ``fsize``: a plain folder, and ``size`` is the file size limit to run under; ``tmpfs``: a
    tmpfs of ``size`` bytes (whole pages) mounted on ``folder``, unmounted afterwards.
    """
    folder.mkdir(parents=True)
    if method == "fsize":
        yield folder, size
        return
    pages = max(1, size // PAGE)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder, None
    finally:
        # Lazy: a file still open somewhere must not leave the mount behind.
        subprocess.run(["umount", "-l", str(folder)], check=True)


def pages(*sizes: int) -> int:
    """tmpfs pages that files of these sizes take (one page at least each)."""
    return sum(max(1, math.ceil(s / PAGE)) for s in sizes)


def tree_hash(*roots: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (or of the files themselves)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def relative_hashes(root: pathlib.Path, *, hidden: bool = True) -> dict[str, str]:
    """`tree_hash` by path relative to ``root``; ``hidden=False`` leaves out hidden files."""
    out = {str(pathlib.Path(k).relative_to(root)): v for k, v in tree_hash(root).items()}
    return {k: v for k, v in out.items() if hidden or not k.startswith(".") and "/." not in k}


def assert_full_disk_error(proc: subprocess.CompletedProcess, method: str, status: int = 2):
    """The exit status, a last line ``pancseg: error:`` naming the reason, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status, proc.stderr
    assert lines and lines[-1].startswith("pancseg: error: "), proc.stderr
    assert REASONS[method] in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    # Only the command's own lines: progress, the per-case report, the error.
    assert all(line.startswith("pancseg: ") for line in lines), proc.stderr


def read_whole(path: pathlib.Path) -> None:
    """Reads every byte of an output file the way its consumer does (CRCs, gzip trailer)."""
    from pancseg_tf.data.tfrecord import decode_case, read_tfrecord

    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        img = nib.load(str(path))
        assert np.asarray(img.dataobj).shape == img.shape
    elif name.endswith(".tfrecord"):
        records = list(read_tfrecord(path))
        assert records, path
        for record in records:
            decode_case(record)
    elif name.endswith(".json"):
        json.loads(path.read_text())
    else:
        raise AssertionError(f"unexpected output file {path}")


def assert_complete_or_absent(folder: pathlib.Path, *, temporaries: bool = False) -> list[str]:
    """Every file under ``folder`` is complete and readable; returns their relative paths.

    Temporary files (hidden names, ``.<name>.tmp-<pid>``) fail the check unless
    ``temporaries``; they are never read as outputs.
    """
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            assert temporaries, f"temporary file left behind: {relative}"
            continue
        read_whole(path)
        found.append(relative.as_posix())
    return found


def temporaries(folder: pathlib.Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# === convert ===


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> pathlib.Path:
    """A 64 x 48 x 12 CT series: a body of soft tissue with noise (so gzip cannot squash it)."""
    rng = np.random.default_rng(0)
    hu = np.full((64, 48, 12), -1000, np.int16)
    hu[8:56, 6:42] = rng.integers(-100, 200, size=(48, 36, 12))
    folder = tmp_path_factory.mktemp("input") / "series"
    write_series(folder, hu, pixel_spacing=(3.0, 3.0), spacing=3.0)
    return folder


@pytest.fixture(scope="module")
def converted_size(series, tmp_path_factory) -> int:
    out = tmp_path_factory.mktemp("reference") / "ct.nii.gz"
    proc = pancseg("convert", series, out)
    assert proc.returncode == 0, proc.stderr
    return out.stat().st_size


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("where", ["early", "at the end"])
def test_convert_on_a_full_disk(tmp_path, series, converted_size, method, where):
    if method == "fsize":
        # The first byte, or the gzip trailer (its last 8 bytes: CRC and length).
        size = 1 if where == "early" else converted_size - 8
    else:
        # One page, or all pages but the last.
        size = PAGE if where == "early" else (pages(converted_size) - 1) * PAGE
        assert pages(converted_size) > 2, "the output is too small to fill a disk with"
    before = tree_hash(series)
    with disk(method, tmp_path / "out", size) as (out, fsize):
        proc = pancseg("convert", series, out / "ct.nii.gz", fsize=fsize)
        assert_full_disk_error(proc, method)
        assert "ct.nii.gz" in proc.stderr
        assert assert_complete_or_absent(out) == []
    assert tree_hash(series) == before


# === prepare ===

PREPARE_SETTINGS = ("--set", "preprocess.size=[32, 32]", "--set", "preprocess.spacing_mm=4.0")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> pathlib.Path:
    from pancseg_tf.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort") / "msd", cases=3, shape=(48, 48, 12))


@pytest.fixture(scope="module")
def prepared(cohort, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted prepare of the cohort: the sizes and bytes to compare with."""
    out = tmp_path_factory.mktemp("reference") / "prepared"
    proc = pancseg("prepare", cohort, out, *PREPARE_SETTINGS)
    assert proc.returncode == 0, proc.stderr
    return out


def _prepare_limits(prepared: pathlib.Path, method: str, failing: str) -> int:
    """The limit at which an uninterrupted run would fail on ``failing``.

    Cases are written in case-id order, each shard then its entry; ``index.json`` last.
    """
    sizes = {
        p.relative_to(prepared).as_posix(): p.stat().st_size
        for p in prepared.rglob("*")
        if p.is_file()
    }
    shards = sorted(k for k in sizes if k.startswith("shards/"))
    entries = sorted(k for k in sizes if k.startswith("cases/"))
    if method == "fsize":
        # Per file: the first file larger than the limit fails.
        if failing == "first shard":
            return sizes[shards[0]] // 2
        # The index is smaller than a shard: only a rerun, which writes nothing else, fails on it.
        assert failing == "index"
        return sizes["index.json"] // 2
    written = []
    for shard, entry in zip(shards, entries):
        written += [sizes[shard], sizes[entry]]
    if failing == "second shard":
        return (pages(*written[:2]) + pages(sizes[shards[1]]) // 2) * PAGE
    assert failing == "index"
    if pages(sizes["index.json"]) < 2:
        pytest.skip("index.json fits in one page")
    return (pages(*written) + pages(sizes["index.json"]) - 1) * PAGE


@pytest.mark.parametrize(
    "method, failing",
    [("fsize", "first shard"), ("tmpfs", "second shard"), ("tmpfs", "index")],
)
def test_prepare_on_a_full_disk_then_resume(tmp_path, cohort, prepared, method, failing):
    """The failed run keeps what it finished; after space is freed, a rerun (here: into a
    copy on a normal disk) ends with the bytes of an uninterrupted run."""
    import shutil

    before = tree_hash(cohort)
    size = _prepare_limits(prepared, method, failing)
    with disk(method, tmp_path / "out", size) as (out, fsize):
        proc = pancseg("prepare", cohort, out / "prepared", *PREPARE_SETTINGS, fsize=fsize)
        assert_full_disk_error(proc, method)
        done = assert_complete_or_absent(out / "prepared", temporaries=True)
        # An entry only with its shard; the index only once every case is in.
        for entry in (d for d in done if d.startswith("cases/")):
            assert f"shards/{pathlib.PurePath(entry).stem}.tfrecord" in done
        assert "index.json" not in done
        if failing == "index":
            assert len([d for d in done if d.startswith("shards/")]) == 3
        resumed = tmp_path / "resumed"
        shutil.copytree(out / "prepared", resumed)
    proc = pancseg("prepare", cohort, resumed, *PREPARE_SETTINGS)
    assert proc.returncode == 0, proc.stderr
    # (Temporary files: see the test below.)
    assert relative_hashes(resumed, hidden=False) == relative_hashes(prepared)
    assert tree_hash(cohort) == before


def test_prepare_rerun_on_a_full_disk_keeps_the_previous_index(tmp_path, cohort, prepared):
    """A rerun that can only rewrite index.json, and cannot: the old one stays, whole."""
    import shutil

    out = tmp_path / "prepared"
    shutil.copytree(prepared, out)
    before = tree_hash(out)
    size = _prepare_limits(prepared, "fsize", "index")
    proc = pancseg("prepare", cohort, out, *PREPARE_SETTINGS, fsize=size)
    assert_full_disk_error(proc, "fsize")
    assert_complete_or_absent(out, temporaries=True)
    assert {k: v for k, v in tree_hash(out).items() if "/." not in k} == before


@pytest.mark.parametrize("method, failing", [("fsize", "first shard"), ("tmpfs", "index")])
def test_prepare_on_a_full_disk_leaves_no_temporary_file(
    tmp_path, cohort, prepared, method, failing
):
    size = _prepare_limits(prepared, method, failing)
    with disk(method, tmp_path / "out", size) as (out, fsize):
        proc = pancseg("prepare", cohort, out / "prepared", *PREPARE_SETTINGS, fsize=fsize)
        assert_full_disk_error(proc, method)
        assert temporaries(out / "prepared") == []


# === predict and export (TensorFlow: seconds per command) ===


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> pathlib.Path:
    """A tiny contextual model and its run config (48 x 48 slices at 3.2 mm)."""
    from tests.serving import tiny_model, write_run

    return write_run(tmp_path_factory.mktemp("run") / "run", tiny_model(seed=0))


@pytest.mark.large
def test_predict_on_a_full_disk(tmp_path, run_folder, ts_ct_path, series):
    inputs = (ts_ct_path, series)
    before = tree_hash(run_folder, *inputs)
    reference = tmp_path / "reference"
    proc = pancseg("predict", run_folder, *inputs, "-o", reference, "--probabilities")
    assert proc.returncode == 0, proc.stderr
    sizes = {p.name: p.stat().st_size for p in reference.iterdir()}
    assert sorted(sizes) == [
        "ct_3mm.nii.gz",
        "ct_3mm_prob.nii.gz",
        "series.nii.gz",
        "series_prob.nii.gz",
    ]

    # The mask fits under the limit, the probabilities do not: the case is not written at all.
    limit = (sizes["ct_3mm.nii.gz"] + sizes["ct_3mm_prob.nii.gz"]) // 2
    assert sizes["ct_3mm.nii.gz"] < limit < sizes["ct_3mm_prob.nii.gz"]
    with disk("fsize", tmp_path / "fsize", limit) as (out, fsize):
        proc = pancseg("predict", run_folder, ts_ct_path, "-o", out, "--probabilities", fsize=fsize)
        assert_full_disk_error(proc, "fsize")
        assert "no mask written" in proc.stderr
        assert assert_complete_or_absent(out) == []

    # Room for the first case's files only: it is written, the run stops at the second.
    size = pages(sizes["ct_3mm.nii.gz"], sizes["ct_3mm_prob.nii.gz"]) * PAGE
    with disk("tmpfs", tmp_path / "tmpfs", size) as (out, _):
        proc = pancseg("predict", run_folder, *inputs, "-o", out, "--probabilities")
        assert_full_disk_error(proc, "tmpfs", status=1)
        assert "series failed" in proc.stderr and "wrote 1 of 2 mask(s)" in proc.stdout
        assert assert_complete_or_absent(out) == ["ct_3mm.nii.gz", "ct_3mm_prob.nii.gz"]
        for name in ("ct_3mm.nii.gz", "ct_3mm_prob.nii.gz"):
            assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert tree_hash(run_folder, *inputs) == before


@pytest.mark.large
def test_export_on_a_full_disk_publishes_no_version(tmp_path, run_folder):
    from pancseg_tf.serving.export import read_export_metadata

    before = tree_hash(run_folder)
    reference = tmp_path / "reference"
    proc = pancseg("export", run_folder, reference, "--chunk", "4")
    assert proc.returncode == 0, proc.stderr
    version = reference / "pancseg" / "1"
    assert read_export_metadata(version)["model_name"] == "pancseg"
    sizes = {p.relative_to(version).as_posix(): p.stat().st_size for p in version.rglob("*")}
    sizes = {k: v for k, v in sizes.items() if (version / k).is_file()}
    variables = sizes["variables/variables.data-00000-of-00001"]
    # The SavedModel's variables (fsize), then the warm-up requests written after the graph
    # (tmpfs: room for everything before them).
    before_warmup = [v for k, v in sizes.items() if not k.startswith("assets.extra/")]
    cases = [
        ("fsize", variables // 2),
        ("tmpfs", (pages(*before_warmup) + 1) * PAGE),
    ]
    for method, size in cases:
        with disk(method, tmp_path / method, size) as (base, fsize):
            proc = pancseg("export", run_folder, base, "--chunk", "4", fsize=fsize)
            assert_full_disk_error(proc, method)
            assert "nothing was published" in proc.stderr
            # No version folder TF Serving could load, and no temporary one either.
            assert [p.name for p in (base / "pancseg").iterdir()] == []
    assert tree_hash(run_folder) == before


# === train ===

#: A file size limit between the tiny run's stage-1 files (stage1.keras and its backup weights,
#: about 263 kB) and its stage-2 ones (about 311-313 kB, the ConvLSTM's weights on top): stage 1
#: finishes, stage 2's first checkpoint write fails. If the tiny model's size changes, pick a
#: new one between the two (the test below says which side it fell on).
TRAIN_FSIZE = 290_000


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The trainer tests' tiny config and a 3-case synthetic cohort prepared with it."""
    import yaml

    from pancseg_tf.synthetic import make_cohort
    from tests.training.test_trainer import TINY

    root = tmp_path_factory.mktemp("tiny")
    make_cohort(root / "cohort", cases=3, seed=5, shape=(96, 96, 24))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    proc = pancseg("prepare", root / "cohort", root / "data", "--config", config)
    assert proc.returncode == 0, proc.stderr
    return root / "data", config


def read_run_file(path: pathlib.Path) -> None:
    """Reads a run folder's file whole, the way its consumer does."""
    import csv

    import h5py
    import yaml

    from pancseg_tf.data.tfrecord import read_tfrecord
    from pancseg_tf.inference import load_model

    if path.suffix == ".keras":
        load_model(path)
    elif path.suffix == ".h5":
        with h5py.File(path, "r") as h5:
            h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif path.suffix == ".csv":
        assert list(csv.DictReader(path.open(newline=""))), path
    elif ".tfevents." in path.name:
        assert list(read_tfrecord(path)), path  # TensorBoard's events: TFRecords with CRCs
    else:
        raise AssertionError(f"unexpected file in the run folder: {path}")


@pytest.mark.large
def test_train_on_a_full_disk_then_resume(tmp_path, tiny_prepared):
    """A checkpoint write that fails mid-run stops training with one line; the run folder
    holds only complete files, and a rerun with room resumes it to the end."""
    import csv

    data, config = tiny_prepared
    before = tree_hash(data)
    run = tmp_path / "run"
    proc = pancseg("train", data, run, "--config", config, fsize=TRAIN_FSIZE)
    assert_full_disk_error(proc, "fsize")
    assert "stage 2" in proc.stderr, proc.stderr
    # Stage 1 finished (its best model complete); stage 2's first checkpoint was the write
    # that failed, and nothing of it is left half-written.
    assert (run / "stage1.keras").is_file(), "TRAIN_FSIZE is below the stage-1 model's size"
    assert not (run / "stage2.keras").exists(), "TRAIN_FSIZE is above the stage-2 model's size"
    assert not (run / "model.keras").exists()
    assert temporaries(run) == []
    for path in (p for p in run.rglob("*") if p.is_file()):
        read_run_file(path)
    state = json.loads((run / "state.json").read_text())
    assert state.get("stage1_done") is True and "stage2" not in state

    proc = pancseg("train", data, run, "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "stage 1 (stage1)" not in proc.stderr, "the rerun trained stage 1 again"
    for name in ("stage1.keras", "stage2.keras", "model.keras"):
        assert (run / name).is_file(), name
    assert temporaries(run) == []
    files = [p for p in run.rglob("*") if p.is_file()]
    for path in files:
        read_run_file(path)
    state = json.loads((run / "state.json").read_text())
    assert state["shipped"] in ("stage1", "stage2") and "stage2" in state
    # Each epoch of both stages once in the log.
    with open(run / "log.csv", newline="") as f:
        rows = [(r["stage"], r["epoch"]) for r in csv.DictReader(f)]
    assert rows == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert tree_hash(data) == before
