"""The evaluation report's figures: case montages, per-slice overlays and the DSC box plot.

Everything here turns arrays into PNG bytes; `pancseg_tf.evaluation.report` pairs the files,
scores the cases and writes them, with the HTML of `pancseg_tf.evaluation.pages` around them.

Orientation: every picture is an axial slice in the **radiological convention** that PACS
viewers use: seen from the patient's feet, anterior at the top and the patient's right on the
image's left. The masks and the image are first reordered to RAS voxel order from the volume's
own affine (`canonical_case`), so a DICOM-like (LPS) file and a RAS file look the same.
Pixels are square in millimetres: a slice is resampled to the display's width from its voxel
spacing, nearest neighbour for the image and the masks alike, so every voxel shows as a block
(as the metrics count it; it also keeps the PNGs small: a 640-pixel slice of CT is about 20 KB,
against 140 KB linearly interpolated), and the outlines are drawn at display resolution, two
pixels wide, along voxel edges.

Plain numpy / scipy / Pillow / matplotlib, nothing from TensorFlow. matplotlib draws on its own
Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``) inside the functions, so
importing this module, or calling it from a notebook, never changes the global backend.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np

from pancseg_tf.io.volume import Volume

__all__ = [
    "BOTH_COLOUR",
    "GT_COLOUR",
    "MONTAGE_MIN_WIDTH",
    "ORIENTATION_NOTE",
    "PRED_COLOUR",
    "CaseVolumes",
    "Montage",
    "MontageTile",
    "SliceCounts",
    "boxplot_png",
    "canonical_case",
    "crop_box",
    "display_window",
    "montage_png",
    "radiological_view",
    "render_slice",
    "scroller_slices",
    "slice_box",
    "slice_counts",
    "slice_png",
]

GT_COLOUR = (0.0, 0.85, 0.0)
PRED_COLOUR = (1.0, 0.1, 0.1)
BOTH_COLOUR = (1.0, 0.9, 0.0)
ORIENTATION_NOTE = "radiological view: anterior at the top, the patient's right on the image's left"

_CT_WINDOW_HU = (-100.0, 240.0)  # abdominal soft tissue, as used for the model's input
_MRI_PERCENTILES = (1.0, 99.0)
_MONTAGE_SLICES = 12
_MONTAGE_COLUMNS = 4
_TILE_WIDTH = 300  # display pixels per montage tile: 4 tiles and 3 gaps make 1218 px
_GAP = 6
_CAPTION = 18  # pixels above each tile for its slice number and why it was chosen
_HEADER = 52
MONTAGE_MIN_WIDTH = _MONTAGE_COLUMNS * _TILE_WIDTH + (_MONTAGE_COLUMNS - 1) * _GAP
_MONTAGE_MARGIN_MM = 15.0
_SLICE_MARGIN_MM = 30.0  # the per-slice images show more context than the montage
_SLICE_WIDTH = 640
_OUTLINE_PIXELS = 2
_MAX_SCROLLER_SLICES = 200
_SCROLLER_EXTRA = 2  # slices shown beyond both masks' extent at each end


# === Volumes in display order ===


@dataclasses.dataclass
class CaseVolumes:
    """A case's masks (and image) in RAS voxel order, for display only."""

    gt: np.ndarray  # bool (I, J, K), i to the Right, j Anterior, k Superior
    pred: np.ndarray
    image: np.ndarray | None
    spacing: tuple[float, float, float]
    stored_axis: int  # which stored voxel axis became k
    stored_flipped: bool  # whether k runs against the stored index

    def stored_index(self, k: int) -> int:
        """The slice's index along the stored file's axis (what a viewer shows, from 0)."""
        return self.gt.shape[2] - 1 - k if self.stored_flipped else k

    @property
    def axis_name(self) -> str:
        return "ijk"[self.stored_axis]


def canonical_case(
    gt: np.ndarray, pred: np.ndarray, image: np.ndarray | None, reference: Volume
) -> CaseVolumes:
    """Reorders the masks (and image) of one grid to RAS voxel order.

    Args:
        gt: bool ``(I, J, K)`` ground truth on ``reference``'s grid.
        pred: bool ``(I, J, K)`` prediction on the same grid.
        image: the image on the same grid, or None.
        reference: a volume of that grid (its affine and spacing are used).

    Returns:
        The arrays with axes permuted and flipped (never resampled) so that i runs to the
        patient's right, j anterior and k superior, with the spacing in that order.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(reference.affine)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = reference.spacing[axis]
    stored_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return CaseVolumes(
        gt=apply_orientation(gt, ornt),
        pred=apply_orientation(pred, ornt),
        image=None if image is None else apply_orientation(image, ornt),
        spacing=(spacing[0], spacing[1], spacing[2]),
        stored_axis=stored_axis,
        stored_flipped=bool(ornt[stored_axis, 1] < 0),
    )


def radiological_view(plane: np.ndarray) -> np.ndarray:
    """An axial RAS slice ``(I, J)`` as seen in radiology: anterior up, patient right on the left.

    Rows run from anterior (top) to posterior and columns from the patient's right to left, so
    ``view[row, col] = plane[I - 1 - col, J - 1 - row]``.
    """
    return plane[::-1, ::-1].T


def display_window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """The grey levels (low, high) to show: a soft-tissue HU window for CT, percentiles for MRI."""
    if modality == "ct":
        return _CT_WINDOW_HU
    # A strided sample is plenty for two percentiles and keeps a 512^2 x 200 MRI cheap.
    sample = image[::4, ::4, ::2].astype(np.float32)
    low, high = np.percentile(sample, _MRI_PERCENTILES)
    if high <= low:  # a constant image: any window shows it
        high = low + 1.0
    return float(low), float(high)


# === Which slices ===


@dataclasses.dataclass(frozen=True)
class SliceCounts:
    """Voxels per axial slice k (RAS order), each an int array of length K."""

    gt: np.ndarray
    pred: np.ndarray
    false_positive: np.ndarray  # predicted, not in the ground truth
    false_negative: np.ndarray  # in the ground truth, not predicted


def slice_counts(volume: CaseVolumes) -> SliceCounts:
    """Counts the masks' voxels on every axial slice."""
    return SliceCounts(
        gt=volume.gt.sum(axis=(0, 1)),
        pred=volume.pred.sum(axis=(0, 1)),
        false_positive=(volume.pred & ~volume.gt).sum(axis=(0, 1)),
        false_negative=(volume.gt & ~volume.pred).sum(axis=(0, 1)),
    )


def _worst(errors: np.ndarray, alone: np.ndarray) -> list[int]:
    """Up to two slices for one kind of error: the most such voxels, and the most on a slice
    where the other mask is absent (a false-positive blob away from the pancreas) if not the same.
    """
    picks: list[int] = []
    if errors.max(initial=0) > 0:
        picks.append(int(np.argmax(errors)))
    isolated = np.where(alone, errors, 0)
    if isolated.max(initial=0) > 0 and int(np.argmax(isolated)) not in picks:
        picks.append(int(np.argmax(isolated)))
    return picks


def _montage_slices(counts: SliceCounts, limit: int = _MONTAGE_SLICES) -> list[tuple[int, str]]:
    """The montage's slices k and why each is shown, superior first.

    The false-positive slices come first (up to two: the most predicted voxels outside the
    truth, and the most on a slice without any truth), then the false-negative ones, then slices
    through the ground truth spread evenly over its extent; the middle slice when both masks are
    empty.
    """
    chosen: dict[int, str] = {}
    for k in _worst(counts.false_positive, counts.gt == 0):
        chosen[k] = f"false positive ({counts.false_positive[k]} vox)"
    for k in _worst(counts.false_negative, counts.pred == 0):
        chosen.setdefault(k, f"false negative ({counts.false_negative[k]} vox)")
    present = [int(k) for k in np.flatnonzero(counts.gt > 0) if int(k) not in chosen]
    room = limit - len(chosen)
    if present and room > 0:
        for p in np.linspace(0, len(present) - 1, min(len(present), room)):
            chosen[present[int(round(p))]] = "pancreas"
    if not chosen:
        chosen[counts.gt.size // 2] = "no mask"
    return sorted(chosen.items(), reverse=True)


def scroller_slices(volume: CaseVolumes, required: Sequence[int] = ()) -> list[int]:
    """The slices k of the per-slice pages, superior first.

    Every slice where either mask has voxels, two more at each end; when that is more than
    `_MAX_SCROLLER_SLICES`, every n-th, plus the slices in ``required`` (the montage's).
    """
    union = (volume.gt | volume.pred).any(axis=(0, 1))
    present = np.flatnonzero(union)
    size = union.size
    if present.size == 0:
        return [size // 2]
    first = max(0, int(present[0]) - _SCROLLER_EXTRA)
    last = min(size - 1, int(present[-1]) + _SCROLLER_EXTRA)
    stride = max(1, math.ceil((last + 1 - first) / _MAX_SCROLLER_SLICES))
    slices = set(range(first, last + 1, stride)) | {int(k) for k in required}
    return sorted(slices, reverse=True)


def crop_box(volume: CaseVolumes, margin_mm: float) -> tuple[slice, slice]:
    """The in-plane box (i, j) around both masks over all slices.

    Grown by ``margin_mm`` or a quarter of the extent, whichever is larger, so the organ fills
    the picture but keeps some context; the whole slice when both masks are empty.
    """
    footprint = (volume.gt | volume.pred).any(axis=2)  # (I, J)
    box = []
    for axis in (0, 1):
        size = footprint.shape[axis]
        occupied = np.flatnonzero(footprint.any(axis=1 - axis))
        if occupied.size == 0:
            box.append(slice(0, size))
            continue
        extent = occupied[-1] + 1 - occupied[0]
        margin = max(int(math.ceil(margin_mm / volume.spacing[axis])), extent // 4)
        box.append(slice(max(0, occupied[0] - margin), min(size, occupied[-1] + 1 + margin)))
    return box[0], box[1]


# === Drawing ===


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(mask, iterations=_OUTLINE_PIXELS, border_value=0)
    return mask & ~inner


def render_slice(
    volume: CaseVolumes,
    k: int,
    box: tuple[slice, slice],
    window: tuple[float, float] | None,
    width: int,
) -> np.ndarray:
    """Slice k inside ``box``, in the radiological view, ``width`` pixels wide, with outlines.

    Args:
        volume: the case in RAS order.
        k: the axial slice (RAS order).
        box: the in-plane crop (i, j), e.g. from `crop_box`; it fills the output.
        window: the image's grey levels (low, high), or None to draw the masks as the background
            (no image).
        width: the output's width in pixels; the height follows from the box's size in mm.

    Returns:
        uint8 RGB ``(height, width, 3)``: ground truth outlined green, prediction red, yellow
        where the two outlines coincide.
    """
    i0, i1, j0, j1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    width_mm = (i1 - i0) * volume.spacing[0]
    height_mm = (j1 - j0) * volume.spacing[1]
    height = max(1, round(width * height_mm / width_mm))
    # Pixel centres in voxel coordinates: column 0 is the patient's right (high i), row 0 the
    # anterior edge (high j), as `radiological_view` orders them.
    x = i0 - 0.5 + (i1 - i0) * (1.0 - (np.arange(width) + 0.5) / width)
    y = j0 - 0.5 + (j1 - j0) * (1.0 - (np.arange(height) + 0.5) / height)
    xi = np.clip(np.floor(x + 0.5).astype(np.intp), i0, i1 - 1)
    yj = np.clip(np.floor(y + 0.5).astype(np.intp), j0, j1 - 1)
    pixels = (xi[None, :], yj[:, None])  # (height, width) indices into an (I, J) plane
    gt = volume.gt[:, :, k][pixels]
    pred = volume.pred[:, :, k][pixels]
    if volume.image is not None and window is not None:
        low, high = window
        grey = (volume.image[:, :, k][pixels].astype(np.float32) - low) / (high - low)
        grey = np.clip(grey, 0.0, 1.0)
    else:
        # No image: the masks themselves are the background, so the regions stay visible.
        grey = 0.2 * gt + 0.2 * pred
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    gt_line, pred_line = _outline(gt), _outline(pred)
    rgb[gt_line & ~pred_line] = GT_COLOUR
    rgb[pred_line & ~gt_line] = PRED_COLOUR
    rgb[gt_line & pred_line] = BOTH_COLOUR
    return np.round(rgb * 255).astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def slice_png(
    volume: CaseVolumes, k: int, box: tuple[slice, slice], window: tuple[float, float] | None
) -> bytes:
    """One slice of the per-slice pages as PNG bytes, `_SLICE_WIDTH` pixels wide."""
    return _png(render_slice(volume, k, box, window, _SLICE_WIDTH))


def slice_box(volume: CaseVolumes) -> tuple[slice, slice]:
    """The crop of the per-slice images: the montage's, with more context around it."""
    return crop_box(volume, _SLICE_MARGIN_MM)


# === Montage ===


@dataclasses.dataclass(frozen=True)
class MontageTile:
    """Where one slice sits in the montage PNG, in its pixels."""

    k: int  # RAS order
    stored: int  # index along the stored file's axis
    reason: str  # "pancreas", "false positive (12 vox)", ...
    left: int
    top: int
    right: int
    bottom: int


@dataclasses.dataclass(frozen=True)
class Montage:
    """A case's montage: the PNG bytes and where each slice's tile is."""

    png: bytes
    width: int
    height: int
    tiles: tuple[MontageTile, ...]


def montage_png(
    case: str,
    volume: CaseVolumes,
    window: tuple[float, float] | None,
    dsc: float,
    counts: SliceCounts | None = None,
) -> Montage:
    """The case's axial montage, at least `MONTAGE_MIN_WIDTH` pixels wide.

    Up to 12 slices in rows of 4, superior first, each captioned with its stored index and why
    it is shown: the worst false-positive slices (always one when the prediction has a voxel the
    truth does not), the worst false-negative ones, and slices spread through the ground truth.
    All tiles share one crop around both masks (`crop_box`), so positions compare across tiles.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import IdentityTransform

    counts = slice_counts(volume) if counts is None else counts
    chosen = _montage_slices(counts)
    box = crop_box(volume, _MONTAGE_MARGIN_MM)
    images = [render_slice(volume, k, box, window, _TILE_WIDTH) for k, _ in chosen]
    tile_height = images[0].shape[0]
    columns = _MONTAGE_COLUMNS
    rows = math.ceil(len(images) / columns)
    width = MONTAGE_MIN_WIDTH
    row_height = _CAPTION + tile_height + _GAP
    height = _HEADER + rows * row_height
    sheet = np.full((height, width, 3), 255, np.uint8)
    tiles = []
    for n, ((k, reason), image) in enumerate(zip(chosen, images, strict=True)):
        left = (n % columns) * (_TILE_WIDTH + _GAP)
        top = _HEADER + (n // columns) * row_height + _CAPTION
        sheet[top : top + tile_height, left : left + _TILE_WIDTH] = image
        tiles.append(
            MontageTile(
                k, volume.stored_index(k), reason, left, top, left + _TILE_WIDTH, top + tile_height
            )
        )

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.figimage(sheet, xo=0, yo=0, origin="upper")

    def text(x: float, y_from_top: float, s: str, **kwargs) -> None:
        # Pixel coordinates from the top left, as the sheet's.
        fig.text(x, height - y_from_top, s, transform=IdentityTransform(), va="top", **kwargs)

    background = "image" if volume.image is not None else "masks (no image)"
    text(6, 4, f"{case}   DSC {100 * dsc:.1f} %", fontsize=12, weight="bold")
    text(
        6,
        24,
        "green: ground truth, red: prediction, yellow: both; over the "
        f"{background}; {ORIENTATION_NOTE}; superior slices first",
        fontsize=8.5,
    )
    for tile in tiles:
        error = not tile.reason.startswith(("pancreas", "no mask"))
        text(
            tile.left + 2,
            tile.top - _CAPTION + 2,
            f"{volume.axis_name}={tile.stored}  {tile.reason}",
            fontsize=8.5,
            color="white" if error else "black",
            weight="bold" if error else "normal",
            bbox={
                "facecolor": "#b00000" if error else "#e8e8e8",
                "pad": 1.5,
                "linewidth": 0,
            },
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return Montage(buffer.getvalue(), width, height, tuple(tiles))


# === Box plot ===


def boxplot_png(dsc_values: Sequence[float]) -> bytes:
    """Per-case DSC (fractions) as a box plot in %, every case a point on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = 100.0 * np.asarray(dsc_values, dtype=np.float64)
    fig = Figure(figsize=(3.6, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.boxplot(values, widths=0.5, showmeans=True)
    # Every case as a point, spread evenly across the box (deterministic, unlike a random jitter).
    offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
    ax.scatter(1 + offsets, values, s=10, color="tab:blue", alpha=0.6, zorder=3)
    ax.set_xticks([1], [f"{values.size} case{'s' if values.size != 1 else ''}"])
    ax.set_ylabel("DSC (%)")
    ax.set_ylim(-2, 102)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    ax.set_title(f"DSC {values.mean():.1f} ± {std:.1f} %", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(left=0.22, right=0.95, top=0.9, bottom=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return buffer.getvalue()
