"""NIfTI reading and atomic writing with exact geometry.

A volume read here keeps its voxel order, its affine (nibabel's RAS+, sform before qform) and its
qform / sform codes, so that an output written on the same `Volume` lands on the input's grid
voxel for voxel. Writers never copy an input header: only geometry and the voxel data go out, so
nothing a scanner or PACS stored (patient fields included) can leak into an output file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import zlib
from collections.abc import Iterable

import numpy as np

from pancseg_tf.atomic import fsync_file, fsync_folder, replacing
from pancseg_tf.errors import PancsegError
from pancseg_tf.io.grid import grid_gap_mm
from pancseg_tf.io.volume import (
    MM_PER_UNIT,
    MODALITIES,
    Volume,
    check_affine,
    rescale_to_intensity,
)
from pancseg_tf.messages import exception_text

log = logging.getLogger("pancseg_tf.io")

PathLike = str | os.PathLike

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# A qform and an sform whose voxel centres lie closer than this (float32 rounding of the
# quaternion) are the same grid.
FORMS_AGREE_MM = 1e-2

# NIfTI-1 spatial unit codes (xyzt_units & 0x07) -> `Volume.spatial_unit`.
_SPATIAL_UNITS = {1: "meter", 2: "mm", 3: "micron"}


# === Reading ===


@contextlib.contextmanager
def _quiet_nibabel():
    """Routes nibabel's header-check messages to our debug log while a file is read.

    nibabel prints what it finds and fixes in a header ("pixdim[1,2,3] should be positive; setting
    to abs of pixdim values") straight to stderr through its own handler, and numpy warns about
    the NaN or Inf it computes from a broken header: both would add lines around the command's
    one-line error. The messages still show with ``--debug``; what they report is checked and
    refused by the reader itself.
    """
    from nibabel.imageglobals import logger as nib_logger

    class ToDebug(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug("nibabel: %s", record.getMessage())

    handlers, propagate = nib_logger.handlers[:], nib_logger.propagate
    nib_logger.handlers[:] = [ToDebug()]
    nib_logger.propagate = False
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        nib_logger.handlers[:] = handlers
        nib_logger.propagate = propagate


# === Reading ===


def _nifti_error(path: pathlib.Path, error: BaseException) -> PancsegError:
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    if isinstance(error, ImageFileError | HeaderDataError):
        why = f"not a valid NIfTI file ({exception_text(error)})"
    elif isinstance(error, EOFError):
        why = "the file is truncated (compressed stream ended early)"
    elif isinstance(error, zlib.error) or type(error).__name__ == "BadGzipFile":
        why = f"the file is not valid gzip data ({exception_text(error)})"
    else:
        why = exception_text(error)
    return PancsegError(f"could not read NIfTI file {path}: {why}")


def read_nifti(path: PathLike, *, modality: str = "ct") -> Volume:
    """Read a 3D ``.nii`` / ``.nii.gz`` image with its geometry.

    The stored dtype is kept (int16 HU stays int16) unless the header sets a scaling
    (``scl_slope`` / ``scl_inter``); then values are scaled, as int16 where that is exact and as
    float32 otherwise. A slope of 0, NaN or Inf means no scaling (the NIfTI standard's rule). A
    4D or 5D image whose trailing axes are all 1 is squeezed to 3D.

    Units: the affine is returned in mm. A file whose ``xyzt_units`` say metres or
    micrometres is scaled to mm, as ITK and 3D Slicer read it, and its unit is kept in the
    `Volume` (``spatial_unit``) so that `write_nifti` writes outputs back in it.

    Voxel sizes: where the affine is built from ``pixdim`` (from the qform, or from no
    orientation at all when both codes are 0), ``pixdim[1:4]`` must be finite and positive.
    Tools disagree on other values (nibabel takes the absolute value of a negative size and 1
    for a zero one; niftilib takes 1 for both), so such a file has no one grid and is refused.
    With both codes 0 the orientation is unknown: the file is read with nibabel's fallback
    (voxel sizes from ``pixdim``, first axis flipped) and a warning says so.

    Args:
        path: the file.
        modality: ``"ct"`` or ``"mri"`` (NIfTI does not say).

    Returns:
        `Volume` with array ``(I, J, K)`` in file order, nibabel's affine (sform if its code is
        positive, else qform) in mm, the header's qform / sform codes and its spatial unit.

    Raises:
        PancsegError: missing, unreadable, truncated or non-NIfTI file; an image that is not 3D
            or has an axis of size 0; complex or RGB voxels; NaN or Inf voxels; ``pixdim``
            voxel sizes that are zero, negative or not finite where the affine uses them; a
            non-finite, zero or singular affine; dimensions too large for the memory.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    path = pathlib.Path(path)
    if modality not in MODALITIES:
        raise PancsegError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not path.exists():
        raise PancsegError(f"no such file: {path}")
    if path.is_dir():
        raise PancsegError(f"{path} is a folder: expected a .nii or .nii.gz file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:  # nibabel says "Could not read file" or "Empty file" for these
        why = error.strerror or exception_text(error)
        raise PancsegError(f"could not read NIfTI file {path}: {why}") from None
    readable = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)
    with _quiet_nibabel():
        try:
            img = nib.load(str(path))
        except readable as error:
            raise _nifti_error(path, error) from None
        if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
            raise PancsegError(
                f"{path} is a {type(img).__name__}, not a NIfTI image: expected .nii or .nii.gz"
            )
        _check_header(path, img)
        try:
            proxy = img.dataobj
            scaled = float(proxy.slope) != 1.0 or float(proxy.inter) != 0.0
            raw = np.asanyarray(proxy) if not scaled else proxy.get_unscaled()
            array = (
                rescale_to_intensity(raw, float(proxy.slope), float(proxy.inter)) if scaled else raw
            )
            affine = np.array(img.affine, dtype=np.float64)
            # Bits 0-2 of xyzt_units; unknown (0) or an undefined code is read as mm, as
            # ITK and nifti1_io do (nibabel's get_xyzt_units raises on an undefined code).
            spatial_unit = _SPATIAL_UNITS.get(int(img.header["xyzt_units"]) & 0x07, "mm")
            # Metres or micrometres -> mm, as readers that apply the unit do.
            affine[:3] *= MM_PER_UNIT[spatial_unit]
            qform_code = int(img.header["qform_code"])
            sform_code = int(img.header["sform_code"])
            qform = None
            if qform_code > 0 and sform_code > 0:
                qform = _stored_qform(img)
                if qform is not None:
                    qform[:3] *= MM_PER_UNIT[spatial_unit]
        except MemoryError:
            size = np.prod(img.shape, dtype=np.float64) * img.get_data_dtype().itemsize
            raise PancsegError(
                f"could not read NIfTI file {path}: its header asks for "
                f"{' x '.join(map(str, img.shape))} voxels ({size / 2**30:.3g} GiB), more than "
                "the memory holds (a damaged header?)"
            ) from None
        except readable as error:
            raise _nifti_error(path, error) from None

    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = array.reshape(_squeezed_shape(img.shape))
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            nan = int(np.isnan(array).sum())
            raise PancsegError(
                f"{path}: {int(bad.sum())} of {array.size} voxels are not finite "
                f"({nan} NaN, {int(bad.sum()) - nan} Inf); expected finite intensities"
            )
    check_affine(affine, path)
    qform = _other_qform(path, qform, affine, array.shape)
    if qform_code == 0 and sform_code == 0:
        log.warning(
            "%s has neither a qform nor an sform (both codes 0): its orientation is unknown; "
            "reading it with voxel sizes from pixdim and the first axis flipped (%s)",
            path,
            "".join(nib.aff2axcodes(affine)),
        )
    return Volume(
        array=array,
        affine=affine,
        modality=modality,
        source=str(path),
        qform_code=qform_code,
        sform_code=sform_code,
        spatial_unit=spatial_unit,
        qform=qform,
    )


def _stored_qform(img) -> np.ndarray | None:
    """The header's qform as a float64 affine, or None when it is not a usable grid (an invalid
    quaternion, a zero or non-finite voxel size): the sform alone then places the voxels."""
    try:
        qform = np.array(img.get_qform(), dtype=np.float64)
    except (ValueError, ArithmeticError):  # nibabel: "w2 should be positive"
        return None
    if not np.all(np.isfinite(qform)):
        return None
    try:
        check_affine(qform, "qform")
    except PancsegError:
        return None
    return qform


def _other_qform(
    path: pathlib.Path, qform: np.ndarray | None, sform: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray | None:
    """The qform when it places the voxels elsewhere than the sform, else None.

    nibabel and FSL take the sform; ITK (so 3D Slicer) takes the qform when the sform code is
    not 1 (scanner) and the two differ. The volume uses the sform and says so; the qform is
    kept for `write_nifti` to write back, so each reader puts the output where it puts the
    input.
    """
    if qform is None:
        return None
    gap = grid_gap_mm(qform, sform, shape)
    if gap <= FORMS_AGREE_MM:
        return None
    log.warning(
        "%s: its qform and sform disagree (voxels up to %.3g mm apart); using the sform, as "
        "nibabel and FSL do (ITK-based tools such as 3D Slicer may use the qform); outputs "
        "keep both",
        path,
        gap,
    )
    return qform


def _squeezed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without trailing axes of size 1 beyond the third."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_header(path: pathlib.Path, img) -> None:
    """Refuses, before any voxel is read, what the header alone shows cannot be a CT or MRI.

    Raises:
        PancsegError: not 3D (after squeezing), an axis of size 0, voxels that are not real
            numbers, or unusable ``pixdim`` voxel sizes where the affine takes them.
    """
    from nibabel.openers import ImageOpener

    shape = _squeezed_shape(img.shape)
    if len(shape) != 3:
        raise PancsegError(
            f"{path}: image has shape {tuple(img.shape)} ({len(img.shape)}D); expected a 3D volume"
        )
    if min(shape) < 1:
        raise PancsegError(
            f"{path}: image has shape {shape}, an axis of size 0; expected at least one voxel "
            "along each axis"
        )
    dtype = img.get_data_dtype()
    if dtype.kind not in "iuf":
        kind = {"c": "complex numbers", "V": "colour (RGB) triples"}.get(dtype.kind, str(dtype))
        raise PancsegError(
            f"{path}: voxels are stored as {kind} ({dtype}); expected real intensities "
            "(an integer or float datatype)"
        )
    if int(img.header["sform_code"]) > 0:
        return  # the sform is the affine: pixdim plays no part
    # nibabel has already "fixed" the header it returns; the sizes as stored decide.
    with ImageOpener(str(path)) as f:
        stored = type(img.header).from_fileobj(f, check=False)
    sizes = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
    if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
        source = "qform" if int(img.header["qform_code"]) > 0 else "header (no qform or sform)"
        raise PancsegError(
            f"{path}: voxel sizes pixdim[1:4] = {sizes.tolist()}; expected three finite sizes "
            f"> 0 mm, from which the {source} builds the voxel-to-world affine"
        )


# === Writing ===


def _split_nifti_name(path: pathlib.Path) -> tuple[str, str]:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    raise PancsegError(f"output must end in .nii.gz or .nii, got {name!r}")


def _writable_array(array: np.ndarray, dtype: np.dtype | type | str | None) -> np.ndarray:
    array = np.asarray(array)
    if dtype is not None:
        return np.ascontiguousarray(array.astype(np.dtype(dtype), copy=False))
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        # Many NIfTI readers (and nibabel's own defaults) reject 64-bit integers; labels fit in
        # int32.
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > 2**31 - 1):
            raise PancsegError(
                f"cannot write {array.dtype} values in [{array.min()}, {array.max()}]: "
                "expected values that fit in int32, or pass dtype="
            )
        return array.astype(np.int32)
    return array


def _same_file(a: pathlib.Path, b: PathLike) -> bool:
    if not str(b):
        return False
    return a.resolve() == pathlib.Path(b).resolve()


def write_nifti(
    array: np.ndarray,
    reference: Volume,
    path: PathLike,
    *,
    dtype: np.dtype | type | str | None = None,
    protect: Iterable[PathLike] = (),
) -> pathlib.Path:
    """Write ``array`` as NIfTI on the grid of ``reference``, atomically.

    The file gets the reference's affine and qform / sform codes, in the reference's spatial
    unit (``spatial_unit``: mm, or the metres or micrometres of the file it was read from, the
    affine converted back to that unit). A sheared affine (gantry tilt)
    or a reference without a qform is written as sform alone, because a qform cannot hold shear.
    The header carries geometry, dtype and units only; ``descrip``, ``db_name`` and
    ``aux_file`` stay empty. Data go to a hidden temporary file in the destination folder,
    which is flushed to disk and then renamed over ``path``: a failed write never leaves a
    partial file under the final name.

    Args:
        array: voxels of shape ``reference.shape`` (e.g. a uint8 mask or float32
            probabilities). Bool becomes uint8, int64 becomes int32.
        reference: the volume whose grid the array lives on.
        path: the output, ending in ``.nii.gz`` (compressed) or ``.nii``. Parent folders are
            created.
        dtype: on-disk dtype; None keeps the array's.
        protect: more paths that must not be overwritten (inputs besides
            ``reference.source``).

    Returns:
        The written path.

    Raises:
        PancsegError: wrong array shape, a path that would overwrite an input, a bad suffix, or
            an operating-system error while writing (message ends with its reason, e.g.
            "No space left on device").
    """
    import nibabel as nib

    path = pathlib.Path(path)
    _, suffix = _split_nifti_name(path)  # also checks the name
    array = np.asarray(array)
    if tuple(array.shape) != reference.shape:
        raise PancsegError(
            f"cannot write {path}: array shape {tuple(array.shape)} differs from the reference "
            f"grid {reference.shape}"
        )
    for protected in (reference.source, *protect):
        if _same_file(path, protected):
            raise PancsegError(f"refusing to overwrite the input {protected} with an output")
    if path.is_dir():
        raise PancsegError(f"cannot write {path}: it is a folder")
    data = _writable_array(array, dtype)

    per_mm = 1.0 / MM_PER_UNIT[reference.spatial_unit]  # mm -> the input file's own unit
    affine = reference.affine.copy()
    affine[:3] *= per_mm
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units(reference.spatial_unit, "sec")
    if reference.qform is not None and reference.qform_code > 0:
        qform = reference.qform.copy()
        qform[:3] *= per_mm
        img.set_qform(qform, code=reference.qform_code)
        img.set_sform(affine, code=reference.sform_code)
    elif reference.is_sheared or reference.qform_code == 0:
        sform_code = reference.sform_code
        if reference.is_sheared and sform_code == 0:
            sform_code = 1
        img.set_qform(None, code=0)
        img.set_sform(affine, code=sform_code)
    else:
        img.set_qform(affine, code=reference.qform_code)
        img.set_sform(affine, code=reference.sform_code)
    for field in ("descrip", "db_name", "aux_file", "intent_name"):
        img.header[field] = b""

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, keep_suffix=suffix) as tmp:  # nibabel reads the format off it
            img.to_filename(str(tmp))
            fsync_file(tmp)
        fsync_folder(path.parent)
    except OSError as error:
        reason = error.strerror or exception_text(error)
        raise PancsegError(f"could not write {path}: {reason}") from None
    log.debug("wrote %s (%s, %s)", path, " x ".join(map(str, data.shape)), data.dtype)
    return path


def write_volume(volume: Volume, path: PathLike) -> pathlib.Path:
    """Write a `Volume` as NIfTI as it is: its array, dtype, affine and codes (``pancseg convert``).

    Args:
        volume: the volume.
        path: the output (``.nii.gz`` or ``.nii``); must not be ``volume.source``.

    Returns:
        The written path.

    Raises:
        PancsegError: as `write_nifti`.
    """
    return write_nifti(volume.array, volume, path)
