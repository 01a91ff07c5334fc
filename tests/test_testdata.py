"""`pancseg_tf.testdata`: the manifest matches the data, and `fetch` downloads, verifies,
resumes and refuses, against a loopback HTTP server that serves the real data folder; the
conftest's skip (or CI failure) when the data is missing."""

import contextlib
import http.server
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

from pancseg_tf import testdata

REPO = pathlib.Path(__file__).resolve().parents[1]
# A few files of each kind: NIH DICOM slices, a JPEG 2000 DICOM slice, NIfTI volumes.
SUBSET = (
    "nih_pancreas_ct/Pancreas-CT/PANCREAS_0002/*/*/1-100.dcm",
    "nih_pancreas_ct/TCIA_pancreas_labels-02-05-2017/label0002.nii.gz",
    "totalsegmentator_example/ct_dicom/CT.*16573",
    "totalsegmentator_example/ct_3mm_labels.nii.gz",
)
NIFTI = "totalsegmentator_example/ct_3mm_labels.nii.gz"


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``root`` folder; honours ``Range: bytes=N-`` unless the server's
    ``honour_ranges`` is off; records each request as (path, Range header)."""

    def do_GET(self):  # noqa: N802 - the name http.server dispatches to
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        asked = self.headers.get("Range")
        self.server.requests.append((rel, asked))
        file = self.server.root / rel
        if ".." in pathlib.PurePosixPath(rel).parts or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and self.server.honour_ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(root: pathlib.Path, *, honour_ranges: bool = True):
    """A loopback HTTP server on a free port serving ``root``; yields (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.root, server.requests, server.honour_ranges = root, [], honour_ranges
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    """A proxy set in the environment must not carry the loopback requests away."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def manifest():
    return testdata.load_manifest()


@pytest.fixture(scope="module")
def subset(manifest):
    chosen = testdata.select(manifest, SUBSET)
    assert len(chosen) == 4
    return chosen


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def test_manifest_lists_exactly_the_data_files_with_their_checksums(shared_data, manifest):
    # Built afresh from the folder (every file hashed): a changed, added or removed file of the
    # data, or a manifest edited by hand, shows here.
    assert testdata.build_manifest(shared_data) == manifest
    on_disk = {p.relative_to(shared_data).as_posix() for p in shared_data.rglob("*") if p.is_file()}
    assert {e.path for e in manifest} == on_disk - testdata.LOCAL_FILES
    assert len(manifest) == 220
    assert {e.source for e in manifest} == set(testdata.SOURCES)
    for entry in manifest:
        assert entry.url.startswith(testdata.SOURCES[entry.source].base_url)


def test_fetch_gives_the_source_bytes_and_a_second_fetch_downloads_nothing(
    shared_data, subset, tmp_path, capsys
):
    dest = tmp_path / "data"
    with serving(shared_data) as (server, url):
        args = ["fetch", str(dest), "--base-url", url]
        args += [a for pattern in SUBSET for a in ("--only", pattern)]
        assert testdata.main(args) == 0
        first = capsys.readouterr().out
        assert sorted(path for path, _ in server.requests) == sorted(e.path for e in subset)
        assert testdata.main(args) == 0
        second = capsys.readouterr().out
        assert len(server.requests) == len(subset)  # nothing asked the second time
    for entry in subset:
        assert (dest / entry.path).read_bytes() == (shared_data / entry.path).read_bytes()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == (
        sorted(e.path for e in subset)
    )  # no part file left
    assert "4 files downloaded" in first and "0 already there" in first
    assert "0 files downloaded" in second and "4 already there" in second
    assert "PANCSEG_TEST_DATA=" in first and "CC BY 3.0" in first  # how to use it, licences
    assert testdata.main(["verify", str(dest)] + args[4:]) == 0


@pytest.mark.parametrize("honour_ranges", [True, False], ids=["range", "server-ignores-range"])
def test_an_interrupted_download_resumes_and_ends_identical(
    shared_data, manifest, tmp_path, honour_ranges
):
    (entry,) = testdata.select(manifest, [NIFTI])
    source = (shared_data / NIFTI).read_bytes()
    half = len(source) // 2
    part = tmp_path / (NIFTI + testdata.PART_SUFFIX)
    part.parent.mkdir(parents=True)
    part.write_bytes(source[:half])
    with serving(shared_data, honour_ranges=honour_ranges) as (server, url):
        report = testdata.fetch(tmp_path, [entry], base_url=url)
    assert server.requests == [(NIFTI, f"bytes={half}-")]
    assert (tmp_path / NIFTI).read_bytes() == source
    assert not part.exists()
    assert report.downloaded == [NIFTI]
    # With ranges only the missing half travels; without, the whole file replaces the part.
    assert report.bytes_received == (len(source) - half if honour_ranges else len(source))


def test_a_part_file_longer_than_the_server_file_starts_again(shared_data, manifest, tmp_path):
    (entry,) = testdata.select(manifest, [NIFTI])
    source = (shared_data / NIFTI).read_bytes()
    part = tmp_path / (NIFTI + testdata.PART_SUFFIX)
    part.parent.mkdir(parents=True)
    part.write_bytes(source + b"junk")
    with serving(shared_data) as (server, url):
        testdata.fetch(tmp_path, [entry], base_url=url)
    assert server.requests == [(NIFTI, None)]
    assert (tmp_path / NIFTI).read_bytes() == source


def test_a_tampered_server_file_is_refused_in_one_line(shared_data, manifest, tmp_path):
    (entry,) = testdata.select(manifest, [NIFTI])
    mirror = tmp_path / "mirror"
    (mirror / NIFTI).parent.mkdir(parents=True)
    data = bytearray((shared_data / NIFTI).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (mirror / NIFTI).write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with serving(mirror) as (_, url):
        command = [sys.executable, "-m", "pancseg_tf.testdata", "fetch", str(dest)]
        command += ["--base-url", url, "--only", NIFTI]
        result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pancseg: error: {NIFTI}: downloaded file rejected: sha256 ")
    assert not (dest / NIFTI).exists()
    assert not (dest / (NIFTI + testdata.PART_SUFFIX)).exists()
    assert entry.sha256[:16] in lines[0]


def test_a_file_the_server_lacks_is_one_line_and_verify_names_what_is_wrong(
    shared_data, manifest, tmp_path, capsys
):
    empty = tmp_path / "empty"
    empty.mkdir()
    with serving(empty) as (_, url):
        status = testdata.main(["fetch", str(tmp_path / "d"), "--base-url", url, "--only", NIFTI])
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines() == [
        f"pancseg: error: {NIFTI}: download failed: HTTP 404 from {url}/{NIFTI}"
    ]
    # verify: a copy with one file damaged is named, exit 2.
    dest = tmp_path / "copy"
    for entry in testdata.select(manifest, SUBSET):
        (dest / entry.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / entry.path, dest / entry.path)
    only = [a for pattern in SUBSET for a in ("--only", pattern)]
    assert testdata.main(["verify", str(dest), *only]) == 0
    (dest / NIFTI).write_bytes(b"\0" + (dest / NIFTI).read_bytes()[1:])
    assert testdata.main(["verify", str(dest), *only]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"pancseg: error: {dest}: 1 of 4 files wrong: {NIFTI} (sha256 differs)"
    ]


TINY_MODULE = """
def test_reads_real_data(ts_ct_path):
    assert ts_ct_path.is_file()


def test_needs_no_data():
    assert 1 + 1 == 2
"""


@pytest.mark.parametrize(
    ("ci", "one_file"), [(None, False), ("true", False), (None, True)],
    ids=["developer", "ci", "developer-incomplete"],
)  # fmt: skip
def test_missing_data_skips_with_how_to_get_it_or_fails_in_ci(tmp_path, manifest, ci, one_file):
    module = tmp_path / "tiny" / "test_tiny.py"
    module.parent.mkdir()
    module.write_text(TINY_MODULE)
    data = tmp_path / "no-data"
    data.mkdir()
    state = "not found"
    if one_file:  # one file of the right size (sizes are what the conftest checks), 219 missing
        entry = manifest[0]
        (data / entry.path).parent.mkdir(parents=True)
        with open(data / entry.path, "wb") as handle:
            handle.truncate(entry.size)
        state = f"incomplete (219 of 220 files wrong, e.g. {manifest[1].path} (missing))"
    env = _env(PANCSEG_TEST_DATA=str(data), **({"CI": ci} if ci else {}))
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["-q", "--rootdir", str(module.parent), str(module)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    how = f"real test data {state} at {data}: download it with "
    how += "`python -m pancseg_tf.testdata fetch DIR` and set PANCSEG_TEST_DATA=DIR"
    if ci is None:
        assert result.returncode == 0, result.stdout
        assert re.search(r"^1 passed, 1 skipped", result.stdout, re.M), result.stdout
        # One line at the end of the run says why and how, without -rs.
        told = [line for line in result.stdout.splitlines() if how in line]
        assert told == [f"real-data tests skipped: {how}"], result.stdout
    else:
        assert result.returncode == 1, result.stdout
        assert re.search(r"^1 passed, 1 error", result.stdout, re.M), result.stdout
        assert how in result.stdout
