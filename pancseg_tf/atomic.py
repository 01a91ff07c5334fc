"""Atomic file writes: a temporary name in the same folder, then a rename.

Every output of the package is written this way, so a killed process or a full disk leaves
either the complete file under its final name or nothing there (the temporary file is removed
when the write fails; one left by a killed process is hidden, ``.<name>.tmp-<pid>``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator


def temporary_name(path: str | os.PathLike, *, keep_suffix: bool | str = False) -> pathlib.Path:
    """The hidden temporary name beside ``path`` for this process.

    ``keep_suffix`` keeps the final suffix last (``.x.tmp-12.keras``) for writers that
    choose the format by the file name; a string keeps that suffix (``".nii.gz"``:
    ``.x.tmp-12.nii.gz``).
    """
    path = pathlib.Path(path)
    if keep_suffix:
        suffix = keep_suffix if isinstance(keep_suffix, str) else path.suffix
        if not path.name.endswith(suffix):
            raise ValueError(f"{path.name} does not end in {suffix}")
        stem = path.name[: len(path.name) - len(suffix)]
        return path.with_name(f".{stem}.tmp-{os.getpid()}{suffix}")
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike, *, keep_suffix: bool | str = False
) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write; renames it to ``path`` when the block succeeds and
    removes it when the block fails.

    Example:
        >>> with replacing(out / "model.keras", keep_suffix=True) as tmp:
        ...     model.save(tmp)
    """
    path = pathlib.Path(path)
    tmp = temporary_name(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flushes a written file's data to disk (a full disk may only say so here)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Makes a rename into ``folder`` durable; a platform that cannot open a folder is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))
