"""The steps of ``pancseg predict`` around the network: inputs to cases, one case read and written.

Shared by the in-process loop (`pancseg_tf.cli`) and the Apache Beam pipeline
(`pancseg_tf.beam`), so that both find the same cases under the same names, build the same
`Segmenter` and write the same bytes:

- `predict_inputs`: what each input names (a NIfTI file, a DICOM series folder, a folder of
  NIfTI files, an MSD / NIH cohort or a CSV manifest) as ``(case name, source)`` pairs;
- `segmenter_options`: the command's flags as `Segmenter.from_path` keyword arguments;
- `load_case_volume` and `write_case`: one case read (``--series`` / ``--allow-uneven`` for a
  DICOM series, checked against the inputs by `check_series_inputs`), and its mask (and
  probabilities) written atomically on the input's own grid, whole or not at all;
- `check_dicom_seg_inputs` and `load_dicom_case`: the same for ``--output-format dicom-seg``,
  whose mask `write_case` writes as a DICOM Segmentation of the case's series;
- `hide_found_paths`: an error message without the folders a cohort was found in.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from pancseg_tf.errors import PancsegError


def strip_nifti_suffix(name: str) -> str:
    """``name`` without ``.nii.gz`` or ``.nii`` (the case name of a NIfTI file)."""
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_unique_names(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``items`` unchanged when no two share a case name.

    Raises:
        PancsegError: naming the case names given by more than one input.
    """
    names = [name for name, _ in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PancsegError(f"two inputs give the same case name: {', '.join(duplicates)}")
    return items


def predict_inputs(inputs: list[str]) -> list[tuple[str, object]]:
    """(case name, what to read) for each input: file, DICOM folder, NIfTI folder or cohort.

    Args:
        inputs: local paths as typed: a NIfTI file, a DICOM series folder, a folder of NIfTI
            files, an MSD / NIH cohort folder or a CSV manifest.

    Returns:
        ``(name, source)`` pairs: ``source`` a `pathlib.Path` (a file or series folder) or a
        cohort `pancseg_tf.io.Case`; names are not yet checked as file names.

    Raises:
        PancsegError: a missing input, one that is neither a file nor a folder (a named pipe, a
            socket, a device), or two inputs giving the same case name.
    """
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.io.read import file_kind

    items: list[tuple[str, object]] = []
    for raw in inputs:
        path = pathlib.Path(raw)
        if not path.exists():
            raise PancsegError(f"input not found: {path}")
        if not (path.is_file() or path.is_dir()):
            # Read as a file, a named pipe would wait for a writer forever.
            raise PancsegError(
                f"input {path} is neither a file nor a folder ({file_kind(path)}): expected a "
                "NIfTI file, a DICOM series folder, a folder of NIfTI files, a cohort folder or "
                "a CSV manifest"
            )
        if path.is_file() and path.suffix == ".csv":
            items += [(c.case_id, c) for c in discover_cohort(path, split="all")]
        elif path.is_file():
            items.append((strip_nifti_suffix(path.name), path))
        elif (
            (path / "dataset.json").is_file()
            or (path / "Pancreas-CT").is_dir()
            or (path.name == "Pancreas-CT")
        ):
            items += [(c.case_id, c) for c in discover_cohort(path, split="all")]
        else:
            niftis = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
            if niftis:
                items += [(strip_nifti_suffix(p.name), p) for p in niftis]
            else:
                items.append((path.name, path))  # a DICOM series folder
    return check_unique_names(items)


def segmenter_options(
    *,
    threshold: float | None = None,
    no_postprocess: bool = False,
    chunk: int | None = None,
    overlap: int | None = None,
    tta: bool = False,
    config: str | None = None,
) -> dict[str, Any]:
    """``pancseg predict``'s flags as keyword arguments of `Segmenter.from_path`.

    A threshold or post-processing left unset keeps the run's own (its model card's
    ``postprocess`` section); ``no_postprocess`` turns the largest-component step off;
    ``config`` (``--config``) is read here, before TensorFlow starts, as a `Config` for a model
    file made elsewhere (`pancseg_tf.model_card`).

    Raises:
        PancsegError: ``chunk`` below 2 slices, ``threshold`` outside (0, 1), or a config
            that cannot be read.
    """
    if chunk is not None and chunk < 2:
        raise PancsegError(f"--chunk must be >= 2 slices, got {chunk}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise PancsegError(f"--threshold must be in (0, 1), got {threshold}")
    options: dict[str, Any] = {"chunk": chunk, "overlap": overlap, "tta": tta}
    if config is not None:
        from pancseg_tf.config import load_config

        options["config"] = load_config(config)
    if threshold is not None:
        options["threshold"] = threshold
    if no_postprocess:
        options["postprocess"] = False
    return options


def segmenter_options_from_args(args: Any) -> dict[str, Any]:
    """`segmenter_options` from ``pancseg predict``'s parsed arguments (in-process and Beam)."""
    return segmenter_options(
        threshold=args.threshold,
        no_postprocess=args.no_postprocess,
        chunk=args.chunk,
        overlap=args.overlap,
        tta=args.tta,
        config=getattr(args, "config", None),
    )


def load_case_volume(source: object, *, series: int | None = None, allow_uneven: bool = False):
    """The `Volume` of one case: a cohort `Case`'s image, or a NIfTI file / DICOM series folder.

    Args:
        source: a `predict_inputs` source (or a local copy of a remote one).
        series: the SeriesNumber to read from a DICOM series folder (``--series``); a NIfTI file
            and a cohort `Case` (whose image is the series its cohort's layout names) ignore it.
        allow_uneven: read a DICOM series with a missing slice or uneven spacing at its mean
            spacing (``--allow-uneven``), a cohort's DICOM image included.

    Raises:
        PancsegError: what `pancseg_tf.io.read_volume` raises.
    """
    from pancseg_tf.io import read_volume

    if hasattr(source, "load_image"):
        return source.load_image(allow_uneven=allow_uneven)
    return read_volume(source, series=series, allow_uneven=allow_uneven)


def _is_series_folder(source: object) -> bool:
    """True for a DICOM series folder input, local or remote (not a cohort `Case`)."""
    if hasattr(source, "image"):
        return False
    if isinstance(source, (str, os.PathLike)):
        source = pathlib.Path(source)
    return bool(source.is_dir())


def check_series_inputs(items: list[tuple[str, object]], series: int | None) -> None:
    """Refuses ``--series`` before any model loads when no input is a DICOM series folder: it
    would pick nothing (a NIfTI file and a cohort's cases ignore it), which a user who typed it
    should hear. The in-process command and the Beam launcher call it alike.

    Args:
        items: `predict_inputs`'s ``(case name, source)`` pairs (a source may be a
            `pancseg_tf.beam.files.RemoteSource`).
        series: ``--series``, or None.

    Raises:
        PancsegError: naming the first input, when ``series`` is given and none is a series
            folder.
    """
    if series is None or not items or any(_is_series_folder(s) for _, s in items):
        return
    name, source = items[0]
    image = getattr(source, "image", None)
    shown = f"case {name}" if image is not None else pathlib.Path(str(source)).name
    raise PancsegError(
        f"--series {series} picks a series in a DICOM series folder input, and no input is one "
        f"(first: {shown}); NIfTI files and a cohort's cases are read as they are: drop --series"
    )


def check_dicom_seg_inputs(items: list[tuple[str, object]]) -> None:
    """Refuses ``--output-format dicom-seg`` before any model loads: for an input that is not a
    DICOM series folder (a SEG references the series it segments), and without highdicom.

    The in-process command and the Beam launcher call it alike, so both refuse with the same
    line.

    Args:
        items: `predict_inputs`'s ``(case name, source)`` pairs; a source may also be any
            object with a ``name`` and an ``is_dir()`` (a remote input,
            `pancseg_tf.beam.files.RemoteSource`).

    Raises:
        PancsegError: naming the first case whose image is a file, or saying how to install
            highdicom.
    """
    from pancseg_tf.io.dicom_seg import import_highdicom

    for name, source in items:
        image = getattr(source, "image", source)
        if isinstance(image, (str, os.PathLike)):
            image = pathlib.Path(image)
        if not image.is_dir():
            raise PancsegError(
                f"--output-format dicom-seg needs DICOM series input, got the file {image.name} "
                f"(case {name}); a DICOM SEG references the DICOM series it segments: use "
                "--output-format nifti for NIfTI input"
            )
    import_highdicom()


def load_dicom_case(
    source: object, *, series: int | None = None, allow_uneven: bool = False
) -> tuple[Any, list]:
    """A case's DICOM series as ``(volume, slice headers)``, for `write_case` to write its SEG.

    A cohort `Case` keeps its modality, as `Case.load_image` does. The headers hold patient and
    study fields: for the SEG only, never for a message or a log.

    Args:
        source: a DICOM series folder, or a cohort `Case` whose image is one.
        series, allow_uneven: as `load_case_volume` (a `Case` ignores ``series``). With
            ``allow_uneven`` the volume of a series with a missing slice holds the slices there
            are, at their mean spacing, and ``headers[k]`` is still the slice of
            ``array[:, :, k]``: the SEG places each frame on its own source slice.

    Raises:
        PancsegError: what `pancseg_tf.io.dicom.read_dicom_series_with_headers` raises.
    """
    import dataclasses

    from pancseg_tf.io.dicom import read_dicom_series_with_headers

    if hasattr(source, "image"):
        series = None  # the cohort's layout chose the case's series
    volume, headers = read_dicom_series_with_headers(
        getattr(source, "image", source), series=series, allow_uneven=allow_uneven
    )
    modality = getattr(source, "modality", None)
    if modality is not None and modality != volume.modality:
        volume = dataclasses.replace(volume, modality=modality)
    return volume, headers


def output_names(case: str, *, probabilities: bool = False, dicom_seg: bool = False) -> list[str]:
    """The files a case writes into the output folder, the mask first (``<case>.dcm`` for a
    DICOM SEG)."""
    names = [f"{case}.dcm" if dicom_seg else f"{case}.nii.gz"]
    if probabilities:
        names.append(f"{case}_prob.nii.gz")
    return names


def _input_paths(name: str, source: object) -> list[tuple[pathlib.Path, str]]:
    """A case's local input files or series folders, each with how a message may name it: a
    path as typed, but a cohort's found files by case only (their folders may name a patient
    or a date). Remote sources have none."""
    if isinstance(source, str | pathlib.Path):
        found = [(source, str(source))]
    elif hasattr(source, "image"):
        found = [
            (getattr(source, part), f"case {name}'s {part}")
            for part in ("image", "label")
            if getattr(source, part, None) is not None
        ]
    else:
        found = []
    return [(pathlib.Path(str(p)), shown) for p, shown in found if "://" not in str(p)]


def check_outputs_spare_inputs(
    items: list[tuple[str, object]],
    out: object,
    *,
    probabilities: bool = False,
    dicom_seg: bool = False,
) -> None:
    """Refuses, before any work, a run whose outputs would overwrite one of its inputs.

    `write_nifti` protects the case it writes; this also covers the other cases' inputs (with
    ``-o`` on an input's folder, case ``a``'s ``a_prob.nii.gz`` can be another input, read only
    after it was overwritten) and every cohort label, and refuses an output folder in a DICOM
    series folder (files added to an input series). Remote inputs and outputs (``gs://``) are
    not checked here.

    Raises:
        PancsegError: one line naming the output and the input it would replace.
    """
    if "://" in str(out):
        return
    out_dir = pathlib.Path(str(out)).resolve()
    files: dict[pathlib.Path, str] = {}
    for name, source in items:
        for path, shown in _input_paths(name, source):
            where = path.resolve()
            if path.is_dir() and (out_dir == where or where in out_dir.parents):
                raise PancsegError(
                    f"the output folder is inside the input DICOM series folder {shown}: "
                    "choose another output folder"
                )
            if path.is_file():
                files[where] = shown
    for name, _ in items:
        for output in output_names(name, probabilities=probabilities, dicom_seg=dicom_seg):
            shown = files.get((out_dir / output).resolve())
            if shown is not None:
                raise PancsegError(
                    f"the output {output} would overwrite the input {shown}: choose another "
                    "output folder"
                )


def written_summary(written: int, cases: int, out: object, *, dicom_seg: bool = False) -> str:
    """The line a predict run ends with, in-process or on Beam: how many of its cases were
    written, and as what (``mask(s)``, or ``DICOM SEG(s)`` with ``--output-format dicom-seg``)."""
    kind = "DICOM SEG(s)" if dicom_seg else "mask(s)"
    return f"wrote {written} of {cases} {kind} to {out}"


def write_case(
    result,
    volume,
    out: pathlib.Path,
    case: str,
    *,
    probabilities: bool = False,
    headers: list | None = None,
) -> list[pathlib.Path]:
    """Writes a case's uint8 mask (and float32 probabilities) on the volume's own grid.

    Each file is written atomically (`pancseg_tf.io.write_nifti`, or
    `pancseg_tf.io.dicom_seg.write_segmentation` for a SEG); the case is written whole or not at
    all: when the probabilities cannot be written, the mask written before them is removed.

    Args:
        result: the `Segmentation` of ``volume``.
        volume: the input volume (its grid, and its source, which is never overwritten).
        out: the output folder.
        case: the case name (checked by `pancseg_tf.io.check_case_id`).
        probabilities: also write ``<case>_prob.nii.gz``.
        headers: the series' slice headers from `load_dicom_case`: the mask is then written
            as a DICOM SEG, ``<case>.dcm`` (the probabilities stay NIfTI).

    Returns:
        The written paths, in the order of `output_names`.

    Raises:
        PancsegError: what the writers raise (after removing what this call wrote).
    """
    from pancseg_tf.io import write_nifti

    mask_name, *prob_name = output_names(
        case, probabilities=probabilities, dicom_seg=headers is not None
    )
    protect = [volume.source]
    if headers is not None:
        from pancseg_tf.io.dicom_seg import write_segmentation

        written = [write_segmentation(result.mask, volume, headers, out / mask_name)]
    else:
        written = [
            write_nifti(result.mask, volume, out / mask_name, dtype="uint8", protect=protect)
        ]
    try:
        for name in prob_name:
            written.append(
                write_nifti(
                    result.probabilities, volume, out / name, dtype="float32", protect=protect
                )
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def hide_found_paths(message: str, source: object) -> str:
    """``message`` with a cohort case's image path replaced by ``<image>``.

    A cohort's folders were found, not typed: TCIA's carry the study date. Paths the user typed
    are left to `pancseg_tf.messages.InputPathDisplay`.
    """
    if hasattr(source, "image"):
        for form in {str(source.image), str(pathlib.Path(source.image).resolve())}:
            message = message.replace(form, "<image>")
    return message
