"""Files for the Beam pipeline: local paths and remote URLs (``gs://``) through Beam's FileSystems.

The readers (`pancseg_tf.io.read_volume`: nibabel, pydicom) and Keras need local files, so a
remote NIfTI file, DICOM series folder or model is first copied to a local temporary folder
(`staged_case`, `staged_model`) and read from there. Remote outputs are written locally by the
same writer as local ones (`pancseg_tf.predict_io.write_case`), then copied to a hidden
temporary object beside the destination and renamed to it (`upload`): a reader never sees a
partial file under the final name. Local outputs never leave the local writer (a temporary name
in the same folder, then a rename).

Every copy is byte for byte (``CompressionTypes.UNCOMPRESSED``): Beam would otherwise gunzip
a ``.nii.gz`` on read and gzip it again on write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pancseg_tf.errors import PancsegError
from pancseg_tf.predict_io import check_unique_names, predict_inputs, strip_nifti_suffix

#: Characters that make an input a glob pattern.
GLOB_CHARS = "*?["
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_COPY = CompressionTypes.UNCOMPRESSED


@dataclasses.dataclass(frozen=True)
class RemoteSource:
    """A case's image on a remote file system.

    Attributes:
        url: a NIfTI file, or the folder (prefix) of a DICOM series.
        series: True for a DICOM series folder.
    """

    url: str
    series: bool = False

    @property
    def name(self) -> str:
        """The last component of the URL (the file's or the series folder's name)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def is_dir(self) -> bool:
        """True for a DICOM series folder: `pathlib.Path.is_dir`'s answer for a local input, so
        that `pancseg_tf.predict_io.check_dicom_seg_inputs` checks both kinds alike."""
        return self.series


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL with a scheme other than ``file`` (``gs://``, ``s3://``, ...)."""
    scheme = FileSystems.get_scheme(str(path))
    return scheme is not None and scheme != "file"


def join(base: str, name: str) -> str:
    """``name`` inside the folder ``base`` (a local path or a URL)."""
    return FileSystems.join(base, name) if is_remote(base) else os.path.join(base, name)


def exists(path: str) -> bool:
    """Whether a file exists (local or remote)."""
    return FileSystems.exists(path) if is_remote(path) else os.path.isfile(path)


def _files_under(url: str) -> list[str]:
    """Every file below the remote folder ``url``, sorted."""
    pattern = url.rstrip("/") + "/**"
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _remote_items(url: str) -> list[tuple[str, RemoteSource]]:
    if any(c in url for c in GLOB_CHARS):
        found = sorted(m.path for m in FileSystems.match([url])[0].metadata_list)
        niftis = [p for p in found if p.endswith(NIFTI_SUFFIXES)]
        if not niftis:
            raise PancsegError(f"no NIfTI file (.nii, .nii.gz) matches {url}")
        return [(strip_nifti_suffix(RemoteSource(p).name), RemoteSource(p)) for p in niftis]
    if url.endswith(NIFTI_SUFFIXES):
        if not FileSystems.exists(url):
            raise PancsegError(f"input not found: {url}")
        return [(strip_nifti_suffix(RemoteSource(url).name), RemoteSource(url))]
    files = _files_under(url)
    if not files:
        raise PancsegError(
            f"input not found: {url} (a remote input is a NIfTI file, a glob of them, a folder "
            "of NIfTI files or a DICOM series folder; cohorts and manifests must be local)"
        )
    folder = url.rstrip("/") + "/"
    niftis = [p for p in files if p.endswith(NIFTI_SUFFIXES) and "/" not in p[len(folder) :]]
    if niftis:
        return [(strip_nifti_suffix(RemoteSource(p).name), RemoteSource(p)) for p in niftis]
    source = RemoteSource(url.rstrip("/"), series=True)
    return [(source.name, source)]


def expand_inputs(inputs: list[str]) -> list[tuple[str, object]]:
    """`pancseg_tf.predict_io.predict_inputs` for local inputs, plus globs and remote URLs.

    A local glob (quoted, so that the shell leaves it) is expanded here and each match is
    read as if typed. A remote input is a NIfTI file, a glob of NIfTI files, a folder of NIfTI
    files or a DICOM series folder (any other folder of files).

    Returns:
        ``(case name, source)`` pairs; ``source`` a local path, a cohort `Case` or a
        `RemoteSource`.

    Raises:
        PancsegError: an input that matches nothing, or two inputs giving one case name.
    """
    import glob

    items: list[tuple[str, object]] = []
    for raw in inputs:
        if is_remote(raw):
            items += _remote_items(raw)
        elif any(c in raw for c in GLOB_CHARS) and not os.path.exists(raw):
            matches = sorted(glob.glob(raw))
            if not matches:
                raise PancsegError(f"no file or folder matches {raw}")
            items += predict_inputs(matches)
        else:
            items += predict_inputs([raw])
    return check_unique_names(items)


def _copy_to_local(url: str, dest: pathlib.Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.open(url, compression_type=_COPY) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def staged_case(source: object) -> Iterator[object]:
    """Yields what `pancseg_tf.predict_io.load_case_volume` reads for ``source``: the source
    itself when it is local, else a local copy (removed afterwards) of the remote file or of
    every file of the remote DICOM series folder."""
    if not isinstance(source, RemoteSource):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="pancseg-beam-") as tmp:
        local = pathlib.Path(tmp) / source.name
        if source.series:
            folder = source.url.rstrip("/") + "/"
            for url in _files_under(source.url):
                _copy_to_local(url, local / url[len(folder) :])
        else:
            _copy_to_local(source.url, local)
        yield local


def remote_model_files(url: str) -> dict[str, str]:
    """The files `pancseg_tf.inference.Segmenter.from_path` needs of a remote model, by the
    local relative path each is copied to: the ``.keras`` file and its run's ``config.yaml``
    (beside it, or one folder up: a legacy run whose models carry no model card), following
    `resolve_model_path` and `pancseg_tf.model_card.describe_model`.

    Raises:
        PancsegError: no ``model.keras`` / ``stage1.keras`` in a run folder, or no such file.
    """
    url = url.rstrip("/")
    if url.endswith(".keras"):
        if not FileSystems.exists(url):
            raise PancsegError(f"model not found: {url}")
        keras_url = url
    else:
        candidates = [join(url, name) for name in ("model.keras", "stage1.keras")]
        keras_url = next((c for c in candidates if FileSystems.exists(c)), "")
        if not keras_url:
            raise PancsegError(f"no model.keras or stage1.keras in the run folder {url}")
    parent, name = keras_url.rsplit("/", 1)
    grandparent, parent_name = parent.rsplit("/", 1)
    files = {f"run/{parent_name}/{name}": keras_url}
    if FileSystems.exists(join(parent, "config.yaml")):
        files[f"run/{parent_name}/config.yaml"] = join(parent, "config.yaml")
    elif FileSystems.exists(join(grandparent, "config.yaml")):
        files["run/config.yaml"] = join(grandparent, "config.yaml")
    return files


@contextlib.contextmanager
def staged_model(model: str) -> Iterator[str]:
    """Yields a local path for ``model``: itself when local, else a local copy of the files
    `remote_model_files` names (removed afterwards: the loaded model lives in memory)."""
    if not is_remote(model):
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="pancseg-model-") as tmp:
        files = remote_model_files(model)
        for relative, url in files.items():
            _copy_to_local(url, pathlib.Path(tmp) / relative)
        keras_file = next(r for r in files if r.endswith(".keras"))
        yield str(pathlib.Path(tmp) / keras_file)


def upload(local: pathlib.Path, url: str) -> None:
    """Copies a local file to ``url`` under a hidden temporary name, then renames it.

    Raises:
        PancsegError: the copy or rename failed (the temporary object is removed).
    """
    folder, name = url.rsplit("/", 1)
    tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(local, "rb") as src, FileSystems.create(tmp, compression_type=_COPY) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        FileSystems.rename([tmp], [url])
    except Exception as err:
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise PancsegError(f"could not write {url}: {err}") from None


def write_text(path: str, text: str) -> None:
    """Writes UTF-8 ``text`` atomically to a local path or a URL."""
    from pancseg_tf import atomic

    if not is_remote(path):
        atomic.write_text(path, text)
        return
    with tempfile.TemporaryDirectory(prefix="pancseg-beam-") as tmp:
        local = pathlib.Path(tmp) / "text"
        local.write_text(text, encoding="utf-8")
        upload(local, path)


def read_text(path: str) -> str | None:
    """The UTF-8 text of a local or remote file, None when it does not exist."""
    if not exists(path):
        return None
    with FileSystems.open(path, compression_type=_COPY) as handle:
        return handle.read().decode("utf-8")
