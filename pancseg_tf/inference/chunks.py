"""Chunks of slices and in-plane tiles: how a volume is cut for the network and blended back.

The chunk rule (shared with the serving client and written into every export): chunks of
``chunk`` slices start every ``chunk - overlap`` slices, the last one is moved back to end on
the last slice; in each chunk a slice's weight rises linearly over the first ``overlap`` slices
and falls over the last ``overlap`` (weights ``(i + 1) / (overlap + 1)``), except at the
volume's two ends, where it is 1; the blended probability is the weighted mean of the chunks
that contain the slice. In-plane tiles, for a body wider than the model's field, follow the
same rule on each of the two axes.

Plain numpy: nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

from pancseg_tf.errors import PancsegError

#: Overlap of chunks and of tiles where none is given: a quarter of the chunk (tile) length.
DEFAULT_OVERLAP_FRACTION = 0.25


# === Chunks ===


def chunk_spans(num_slices: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """Start and stop of each chunk of ``chunk`` slices over ``num_slices`` slices.

    Args:
        num_slices: slices in the volume (on the model grid).
        chunk: slices per chunk; a volume no longer than that is one chunk.
        overlap: slices shared by consecutive chunks, ``0 <= overlap < chunk``.

    Returns:
        ``[(start, stop), ...]`` covering ``range(num_slices)``, each ``stop - start == chunk``
        except for a volume shorter than one chunk.

    Raises:
        PancsegError: on a chunk under 1 or an overlap outside ``[0, chunk)``.
    """
    if chunk < 1:
        raise PancsegError(f"chunk must be >= 1 slice, got {chunk}")
    if not 0 <= overlap < chunk:
        raise PancsegError(f"chunk overlap must be in [0, {chunk}), got {overlap}")
    if num_slices <= chunk:
        return [(0, num_slices)]
    step = chunk - overlap
    spans = []
    start = 0
    while True:
        stop = start + chunk
        if stop >= num_slices:
            spans.append((num_slices - chunk, num_slices))
            break
        spans.append((start, stop))
        start += step
    return spans


def chunk_weights(span: tuple[int, int], num_slices: int, overlap: int) -> np.ndarray:
    """Per-slice blending weights of one chunk (the chunk rule of this module), float32."""
    start, stop = span
    length = stop - start
    weights = np.ones(length, dtype=np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 1.0) / (overlap + 1.0)
    if overlap and start > 0:
        n = min(overlap, length)
        weights[:n] = np.minimum(weights[:n], ramp[:n])
    if overlap and stop < num_slices:
        n = min(overlap, length)
        weights[length - n :] = np.minimum(weights[length - n :], ramp[:n][::-1])
    return weights


def blend_chunks(
    chunks: list[np.ndarray], spans: list[tuple[int, int]], num_slices: int, overlap: int
) -> np.ndarray:
    """Weighted mean of per-chunk probabilities ``(H, W, length)`` into ``(H, W, num_slices)``."""
    height, width = chunks[0].shape[:2]
    total = np.zeros((height, width, num_slices), dtype=np.float32)
    norm = np.zeros(num_slices, dtype=np.float32)
    for probs, span in zip(chunks, spans):
        weights = chunk_weights(span, num_slices, overlap)
        total[:, :, span[0] : span[1]] += probs * weights
        norm[span[0] : span[1]] += weights
    return total / norm


def stack_chunks(
    image: np.ndarray, spans: list[tuple[int, int]], chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cuts ``(H, W, K)`` into the ``(B, chunk, H, W)`` rows of a request.

    A span shorter than ``chunk`` (a volume shorter than one chunk) is padded with zeros after
    its slices; ``slice_count`` says how many are real.

    Returns:
        ``(slices, slice_count)``: ``(B, chunk, H, W)`` in ``image``'s dtype and ``(B,)`` int32.
    """
    height, width = image.shape[:2]
    slices = np.zeros((len(spans), chunk, height, width), dtype=image.dtype)
    counts = np.zeros(len(spans), dtype=np.int32)
    for row, (start, stop) in enumerate(spans):
        slices[row, : stop - start] = np.moveaxis(image[:, :, start:stop], 2, 0)
        counts[row] = stop - start
    return slices, counts


def unstack_chunks(probabilities: np.ndarray, spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """``(B, chunk, H, W)`` rows back to `blend_chunks`'s ``(H, W, length)`` parts."""
    return [
        np.moveaxis(np.asarray(row, dtype=np.float32)[: stop - start], 0, 2)
        for row, (start, stop) in zip(probabilities, spans)
    ]


# === In-plane tiles: a body wider than the model's field ===


def tile_spans(
    extent: tuple[int, int], size: tuple[int, int], overlap: tuple[int, int]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Overlapping in-plane tiles of the model's ``size`` over a field of ``extent`` pixels.

    Each axis is cut by the chunk rule (`chunk_spans`); the tiles are every pair.

    Args:
        extent: ``(H', W')`` of the field, each at least the model's size.
        size: ``(H, W)``, the model's slice size.
        overlap: pixels shared by neighbouring tiles on each axis.

    Returns:
        ``[((h0, h1), (w0, w1)), ...]``; one tile ``((0, H), (0, W))`` when ``extent == size``.

    Raises:
        PancsegError: a field smaller than the model's size, or an overlap outside ``[0, size)``.
    """
    if extent[0] < size[0] or extent[1] < size[1]:
        raise PancsegError(f"tiles of {tuple(size)} pixels do not fit a field of {tuple(extent)}")
    rows = chunk_spans(extent[0], size[0], overlap[0])
    cols = chunk_spans(extent[1], size[1], overlap[1])
    return [(row, col) for row in rows for col in cols]


def blend_tiles(
    tiles: list[np.ndarray],
    spans: list[tuple[tuple[int, int], tuple[int, int]]],
    extent: tuple[int, int],
    overlap: tuple[int, int],
) -> np.ndarray:
    """Weighted mean of per-tile probabilities ``(H, W, K)`` into ``(H', W', K)``.

    A tile's weight at a pixel is the product of `chunk_weights` along the two axes: it rises
    over the first ``overlap`` pixels and falls over the last, except at the field's edges.
    """
    num_slices = tiles[0].shape[2]
    total = np.zeros((extent[0], extent[1], num_slices), dtype=np.float32)
    norm = np.zeros(extent, dtype=np.float32)
    for probs, (row, col) in zip(tiles, spans):
        weights = np.outer(
            chunk_weights(row, extent[0], overlap[0]), chunk_weights(col, extent[1], overlap[1])
        )
        total[row[0] : row[1], col[0] : col[1]] += probs * weights[:, :, None]
        norm[row[0] : row[1], col[0] : col[1]] += weights
    return total / norm[:, :, None]


def tile_layout(extent: tuple[int, int], size: tuple[int, int]):
    """The tiles `run_in_tiles` runs over a plane of ``extent``: ``(spans, overlap)``, tiles of
    the model's ``size`` sharing a quarter of it (`tile_spans`)."""
    size = tuple(int(v) for v in size)
    overlap = tuple(int(v * DEFAULT_OVERLAP_FRACTION) for v in size)
    return tile_spans(tuple(int(v) for v in extent), size, overlap), overlap


def run_in_tiles(image: np.ndarray, size: tuple[int, int], run) -> np.ndarray:
    """``run`` on ``image`` ``(H', W', K)`` itself when it is the model's ``size``, else on
    overlapping tiles of that size (`tile_layout`), blended by `blend_tiles`.

    Shared by `Segmenter` and the serving client (`pancseg query`), so both tile alike.
    """
    size = tuple(int(v) for v in size)
    extent = tuple(int(v) for v in image.shape[:2])
    if extent == size:
        return run(image)
    spans, overlap = tile_layout(extent, size)
    tiles = [run(image[r0:r1, c0:c1]) for (r0, r1), (c0, c1) in spans]
    return blend_tiles(tiles, spans, extent, overlap)
