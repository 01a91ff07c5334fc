"""`read_volume`: any input path (a NIfTI file or a DICOM series folder) as a `Volume`."""

from __future__ import annotations

import dataclasses
import os
import pathlib

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.dicom import read_dicom_series
from pancseg_tf.io.nifti import NIFTI_SUFFIXES, read_nifti
from pancseg_tf.io.volume import MODALITIES, Volume

PathLike = str | os.PathLike


def _is_dicom_file(path: pathlib.Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def file_kind(path: pathlib.Path) -> str:
    """What a path that exists but is neither a regular file nor a folder is, in words."""
    import stat

    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return f"file type {stat.filemode(mode)[0]!r}"


def read_volume(
    path: PathLike,
    *,
    modality: str | None = None,
    series: int | None = None,
    allow_uneven: bool = False,
) -> Volume:
    """Read a NIfTI file or a DICOM series folder.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, or a folder holding DICOM files (searched
            recursively).
        modality: ``"ct"`` or ``"mri"``; None means ``"ct"`` for NIfTI and the DICOM Modality
            tag for a series. A value given here overrides the tag.
        series: for a folder with several series, the SeriesNumber to read (default: the
            series with the most slices).
        allow_uneven: read a DICOM series with uneven slice spacing or a missing slice using
            the mean spacing, with a logged warning, instead of refusing it.

    Returns:
        The `Volume`.

    Raises:
        PancsegError: nonexistent path, a path that is neither a file nor a folder (a named
            pipe, a socket, a device), a file that is not NIfTI, an empty folder, a folder
            without DICOM, or any problem `read_nifti` / `read_dicom_series` reports.
    """
    path = pathlib.Path(path)
    if modality is not None and modality not in MODALITIES:
        raise PancsegError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not path.exists():
        raise PancsegError(f"no such file or folder: {path}")
    if not (path.is_file() or path.is_dir()):
        # Opened as a file, a named pipe would wait for a writer forever.
        raise PancsegError(
            f"{path} is neither a file nor a folder ({file_kind(path)}): expected a .nii or "
            ".nii.gz file or a folder of DICOM files"
        )
    if path.is_dir():
        volume = read_dicom_series(path, series=series, allow_uneven=allow_uneven)
        if modality is not None and modality != volume.modality:
            volume = dataclasses.replace(volume, modality=modality)
        return volume
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        if _is_dicom_file(path):
            raise PancsegError(
                f"{path} is a single DICOM file: pass the folder that holds the whole series"
            )
        raise PancsegError(
            f"cannot read {path}: expected a .nii or .nii.gz file or a folder of DICOM files"
        )
    return read_nifti(path, modality=modality or "ct")
