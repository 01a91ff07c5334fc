"""The real test data: where the tests find it, and how to download it with checksums.

The tests read small public CT volumes (see ``testdata_manifest.tsv`` beside this module and
`SOURCES`) from the folder named by the ``PANCSEG_TEST_DATA`` environment variable, by default
``../shared/data`` beside the repository. Anyone can make such a folder::

    python -m pancseg_tf.testdata fetch DIR     # download (resumable), verify, rename
    python -m pancseg_tf.testdata verify DIR    # check sizes and SHA-256 of what is there
    PANCSEG_TEST_DATA=DIR python -m pytest -q

Each file is downloaded to ``DIR/<path>.part``, resumed with an HTTP Range request when a part
file is there (and the server honours ranges), checked against the manifest's size and SHA-256,
and only then renamed to its final name: a file under its final name is always complete and
verified. A file already there with the right checksum is not downloaded again. ``--base-url``
downloads ``<base-url>/<path>`` instead of the sources' own URLs (a mirror of a data folder).

Only the standard library is used, so this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import http.client
import os
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence

from pancseg_tf._version import __version__
from pancseg_tf.errors import PancsegError

ENV_VAR = "PANCSEG_TEST_DATA"
MANIFEST_PATH = pathlib.Path(__file__).with_name("testdata_manifest.tsv")
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
# Files of a data folder that are local notes, not downloaded data.
LOCAL_FILES = frozenset({"README.md"})


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a group of files comes from, under which licence, and what to cite."""

    name: str
    base_url: str
    licence: str
    citation: str


_TS = "https://raw.githubusercontent.com/wasserth/TotalSegmentator"
SOURCES: dict[str, Source] = {
    "totalsegmentator-dicom": Source(
        "TotalSegmentator test reference files: example_ct_dicom "
        "(github.com/wasserth/TotalSegmentator)",
        f"{_TS}/85844d5da3ad0b08a0febdd1ce226fcedc9e96c3/",
        "Apache-2.0 (repository); images from the TotalSegmentator CT dataset, CC BY 4.0",
        "Wasserthal et al., TotalSegmentator: robust segmentation of 104 anatomical structures "
        "in CT images, Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024",
    ),
    "totalsegmentator": Source(
        "TotalSegmentator test reference files: example_ct_sm, example_seg "
        "(github.com/wasserth/TotalSegmentator)",
        f"{_TS}/97e309edb1a3436acdeb32c664f882fb352c8030/",
        "Apache-2.0 (repository); images from the TotalSegmentator CT dataset, CC BY 4.0",
        "Wasserthal et al., TotalSegmentator: robust segmentation of 104 anatomical structures "
        "in CT images, Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024",
    ),
    "nih-pancreas-ct": Source(
        "NIH Pancreas-CT case 0002 and its label, the copy in "
        "github.com/giussepi/gutils_test_datasets",
        "https://raw.githubusercontent.com/giussepi/gutils_test_datasets/HEAD/",
        "CC BY 3.0 (TCIA collection); the copy's repository MIT",
        "Roth H.R. et al., Data From Pancreas-CT, The Cancer Imaging Archive, "
        "doi:10.7937/K9/TCIA.2016.tNB1kqBU; Clark K. et al., The Cancer Imaging Archive (TCIA), "
        "J Digit Imaging 2013, doi:10.1007/s10278-013-9622-7",
    ),
    "totalsegmentator-s0009": Source(
        "TotalSegmentator v2 dataset subject s0009, the copy in "
        "github.com/ZHANG-Haochen-insa/dataset",
        "https://raw.githubusercontent.com/ZHANG-Haochen-insa/dataset/"
        "eadce27c48353ccb34057d9f9963b92f56d59d92/",
        "CC BY 4.0 (TotalSegmentator dataset)",
        "Wasserthal et al., Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024",
    ),
}

# How the data folder's layout maps onto the sources' files: (local path or folder prefix,
# source, path or folder prefix in the source). Used to build the manifest from a data folder.
LAYOUT: tuple[tuple[str, str, str], ...] = (
    ("totalsegmentator_example/ct_dicom/", "totalsegmentator-dicom",
     "tests/reference_files/example_ct_dicom/"),
    ("totalsegmentator_example/ct_3mm.nii.gz", "totalsegmentator",
     "tests/reference_files/example_ct_sm.nii.gz"),
    ("totalsegmentator_example/ct_3mm_labels.nii.gz", "totalsegmentator",
     "tests/reference_files/example_seg.nii.gz"),
    ("nih_pancreas_ct/Pancreas-CT/", "nih-pancreas-ct", "TINY-CT-82/images/"),
    ("nih_pancreas_ct/TCIA_pancreas_labels-02-05-2017/", "nih-pancreas-ct", "TINY-CT-82/labels/"),
    ("totalsegmentator_s0009/ct.nii.gz", "totalsegmentator-s0009", "s0009/ct.nii.gz"),
    ("totalsegmentator_s0009/pancreas.nii.gz", "totalsegmentator-s0009",
     "s0009/segmentations/pancreas.nii.gz"),
)  # fmt: skip

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of the test data: its path in the data folder, size, SHA-256 and origin."""

    path: str
    size: int
    sha256: str
    source: str
    url: str

    def url_from(self, base_url: str | None) -> str:
        """The URL to download: the source's own, or ``<base_url>/<path>`` for a mirror."""
        if base_url is None:
            return self.url
        return f"{base_url.rstrip('/')}/{urllib.parse.quote(self.path)}"


@dataclasses.dataclass
class FetchReport:
    """What a fetch did: files downloaded (with their bytes) and files already there."""

    downloaded: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    bytes_received: int = 0


def default_data_dir(repo: str | os.PathLike) -> pathlib.Path:
    """The test data folder: ``$PANCSEG_TEST_DATA``, else ``<repo>/../shared/data``."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return pathlib.Path(value).expanduser()
    return pathlib.Path(repo).resolve().parent / "shared" / "data"


def how_to_get(folder: str | os.PathLike, incomplete: str | None = None) -> str:
    """One line telling that the test data is not in ``folder`` (or is ``incomplete`` there,
    with what is missing) and how to download it and point the tests at it."""
    state = "not found" if incomplete is None else f"incomplete ({incomplete})"
    return (
        f"real test data {state} at {folder}: download it with "
        f"`python -m pancseg_tf.testdata fetch DIR` and set {ENV_VAR}=DIR"
    )


# === Manifest ===


def load_manifest(path: str | os.PathLike = MANIFEST_PATH) -> list[Entry]:
    """The manifest's entries (tab-separated: path, size, sha256, source, url; ``#`` comments)."""
    entries = []
    for number, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 5 or not fields[1].isdigit() or not _SHA256.fullmatch(fields[2]):
            raise PancsegError(
                f"{path}:{number}: expected path, size, sha256, source, url separated by tabs, "
                f"got {line[:80]!r}"
            )
        if fields[3] not in SOURCES:
            raise PancsegError(f"{path}:{number}: unknown source {fields[3]!r}")
        entries.append(Entry(fields[0], int(fields[1]), fields[2], fields[3], fields[4]))
    return entries


def build_manifest(folder: str | os.PathLike) -> list[Entry]:
    """Entries for every data file under ``folder`` (not `LOCAL_FILES`), sorted by path, with
    their sizes and SHA-256 computed and their URLs from `LAYOUT` and `SOURCES`.

    Raises:
        PancsegError: a file that no `LAYOUT` rule places in a source.
    """
    folder = pathlib.Path(folder)
    entries = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel in LOCAL_FILES:
            continue
        for local, source, upstream in LAYOUT:
            if rel == local or (local.endswith("/") and rel.startswith(local)):
                remote = upstream + rel[len(local) :] if local.endswith("/") else upstream
                url = SOURCES[source].base_url + urllib.parse.quote(remote)
                entries.append(Entry(rel, file.stat().st_size, sha256_of(file), source, url))
                break
        else:
            raise PancsegError(f"{rel}: no source for this file in LAYOUT")
    return entries


def format_manifest(entries: Iterable[Entry]) -> str:
    """The manifest's text for ``entries``."""
    lines = [
        "# pancseg_tf test data: path in the data folder, size (bytes), sha256, source, url.",
        "# Written by `python -m pancseg_tf.testdata manifest DIR`; sources and licences are",
        "# pancseg_tf.testdata.SOURCES.",
    ]
    lines += [f"{e.path}\t{e.size}\t{e.sha256}\t{e.source}\t{e.url}" for e in entries]
    return "\n".join(lines) + "\n"


def select(entries: Sequence[Entry], patterns: Sequence[str] | None) -> list[Entry]:
    """The entries whose path matches one of the glob ``patterns`` (all when None)."""
    if not patterns:
        return list(entries)
    chosen = [e for e in entries if any(fnmatch.fnmatchcase(e.path, p) for p in patterns)]
    if not chosen:
        raise PancsegError(f"--only {' '.join(patterns)} matches no file of the manifest")
    return chosen


# === Checks ===


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def is_intact(path: pathlib.Path, entry: Entry) -> bool:
    """Whether ``path`` holds exactly the manifest's bytes for ``entry``."""
    return path.is_file() and path.stat().st_size == entry.size and sha256_of(path) == entry.sha256


def problems(
    folder: str | os.PathLike, entries: Sequence[Entry], *, hashes: bool = True
) -> list[str]:
    """The entries missing from ``folder`` or different there, each as ``path (why)``.

    ``hashes=False`` compares sizes only (a quick check that skips reading the files).
    """
    folder = pathlib.Path(folder)
    found = []
    for entry in entries:
        path = folder / entry.path
        if not path.is_file():
            found.append(f"{entry.path} (missing)")
        elif path.stat().st_size != entry.size:
            found.append(f"{entry.path} ({path.stat().st_size} bytes, expected {entry.size})")
        elif hashes and sha256_of(path) != entry.sha256:
            found.append(f"{entry.path} (sha256 differs)")
    return found


# === Download ===


def fetch(
    folder: str | os.PathLike,
    entries: Sequence[Entry],
    *,
    base_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> FetchReport:
    """Downloads the ``entries`` missing or damaged under ``folder``.

    Args:
        folder: the data folder (made if needed).
        entries: the files to have there, usually `load_manifest()`.
        base_url: download ``<base_url>/<path>`` instead of each entry's own URL.
        progress: called with one line per file downloaded.

    Returns:
        What was downloaded and what was already there.

    Raises:
        PancsegError: a download failed (its part file kept for a resume), or a file's size or
            SHA-256 differs from the manifest (its part file removed, nothing renamed).
    """
    folder = pathlib.Path(folder)
    report = FetchReport()
    for entry in entries:
        final = folder / entry.path
        if is_intact(final, entry):
            report.present.append(entry.path)
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + PART_SUFFIX)
        url = entry.url_from(base_url)
        report.bytes_received += _download(url, part, entry)
        _check_part(part, entry, url)
        os.replace(part, final)
        report.downloaded.append(entry.path)
        if progress is not None:
            progress(f"fetched {entry.path} ({entry.size} bytes)")
    return report


def _download(url: str, part: pathlib.Path, entry: Entry) -> int:
    """Completes ``part`` from ``url``, resuming after the bytes it already holds; returns the
    bytes received."""
    have = part.stat().st_size if part.is_file() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    if have == entry.size:
        return 0
    request = urllib.request.Request(url, headers={"User-Agent": f"pancseg-tf/{__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            mode = "ab" if have and _resumes_at(response, have) else "wb"
            received = 0
            with open(part, mode) as handle:
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(block)
                    received += len(block)
                handle.flush()
                os.fsync(handle.fileno())
            return received
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            # The part file does not fit the file on the server: start again from zero.
            part.unlink()
            return _download(url, part, entry)
        raise PancsegError(f"{entry.path}: download failed: HTTP {err.code} from {url}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        # Network trouble only: a local write error (full disk, permissions) is the caller's.
        reason = getattr(err, "reason", None) or err
        raise PancsegError(
            f"{entry.path}: download failed: {reason} ({url}); rerun to resume"
        ) from None


def _resumes_at(response, offset: int) -> bool:
    """Whether ``response`` continues a file at byte ``offset`` (206 with a matching range);
    a 200 means the server sent the whole file instead."""
    if response.status != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        raise PancsegError(
            f"server answered the range request for byte {offset} with "
            f"Content-Range {response.headers.get('Content-Range')!r}"
        )
    return True


def _check_part(part: pathlib.Path, entry: Entry, url: str) -> None:
    """Removes ``part`` and raises when it is not exactly the manifest's file."""
    size = part.stat().st_size
    if size == entry.size:
        digest = sha256_of(part)
        if digest == entry.sha256:
            return
        why = f"sha256 {digest[:16]}... differs from the manifest's {entry.sha256[:16]}..."
    else:
        why = f"{size} bytes, the manifest says {entry.size}"
    part.unlink()
    raise PancsegError(f"{entry.path}: downloaded file rejected: {why} (from {url})")


# === Command line ===


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pancseg_tf.testdata",
        description=f"Download or check the real test data ({ENV_VAR} points the tests at it).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download the test data into DIR (resumable)")
    fetch_cmd.add_argument("dir", metavar="DIR", type=pathlib.Path, help="the data folder")
    fetch_cmd.add_argument(
        "--base-url",
        metavar="URL",
        help="download URL/<path> instead of the sources' URLs (a mirror of a data folder)",
    )
    for command in (fetch_cmd, sub.add_parser("verify", help="check sizes and SHA-256 in DIR")):
        if command is not fetch_cmd:
            command.add_argument("dir", metavar="DIR", type=pathlib.Path, help="the data folder")
        command.add_argument(
            "--only",
            metavar="GLOB",
            action="append",
            help="only the files whose path matches GLOB (repeatable), e.g. 'nih_pancreas_ct/*'",
        )
    manifest_cmd = sub.add_parser(
        "manifest", help="write the manifest for the files of a data folder (maintainers)"
    )
    manifest_cmd.add_argument("dir", metavar="DIR", type=pathlib.Path, help="the data folder")
    manifest_cmd.add_argument(
        "-o", "--output", type=pathlib.Path, default=MANIFEST_PATH, help="where to write it"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "manifest":
        if not args.dir.is_dir():
            raise PancsegError(f"data folder not found: {args.dir}")
        entries = build_manifest(args.dir)
        from pancseg_tf.atomic import write_text

        write_text(args.output, format_manifest(entries))
        print(f"wrote {args.output}: {len(entries)} files")
        return 0
    entries = select(load_manifest(), args.only)
    if args.command == "verify":
        if not args.dir.is_dir():
            raise PancsegError(f"data folder not found: {args.dir}")
        bad = problems(args.dir, entries)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise PancsegError(f"{args.dir}: {len(bad)} of {len(entries)} files wrong: {shown}")
        print(f"{args.dir}: all {len(entries)} files present with the right SHA-256")
        return 0
    report = fetch(args.dir, entries, base_url=args.base_url, progress=print)
    print(
        f"{args.dir}: {len(report.downloaded)} files downloaded "
        f"({report.bytes_received / 1e6:.1f} MB), {len(report.present)} already there"
    )
    for key in sorted({e.source for e in entries}):
        source = SOURCES[key]
        print(f"  {source.name}; licence: {source.licence}; cite: {source.citation}")
    print(f"run the tests on it with {ENV_VAR}={args.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs ``python -m pancseg_tf.testdata``; returns its exit status (2 for an error)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except PancsegError as err:
        print(f"pancseg: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        # A folder that cannot be written, a full disk: the path and the system's reason.
        where = f"{err.filename}: " if err.filename else ""
        print(f"pancseg: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pancseg: interrupted (rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
