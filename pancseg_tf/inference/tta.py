"""Test-time augmentation: the mean of the probabilities over small in-plane shifts and
zooms (`TTA_TRANSFORMS`), each mapped back before averaging.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: (zoom, (shift_h, shift_w) in pixels) of test-time augmentation: identity, two diagonal
#: shifts and a 0.93 / 1.07 zoom, inside training's augmentation range (zoom 0.9-1.1, crops).
TTA_TRANSFORMS = (
    (1.0, (0.0, 0.0)),
    (1.0, (6.0, 6.0)),
    (1.0, (-6.0, -6.0)),
    (0.93, (0.0, 0.0)),
    (1.07, (0.0, 0.0)),
)


def inplane_transform(
    volume: np.ndarray, zoom: float, shift: tuple[float, float], *, inverse: bool = False
) -> np.ndarray:
    """Zooms about the plane's centre and shifts every slice of ``(H, W, K)`` alike (linear)."""
    if zoom == 1.0 and shift == (0.0, 0.0):
        return volume
    height, width = volume.shape[:2]
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    shift_arr = np.asarray(shift, dtype=np.float64)
    # Output pixel u samples input x = (u - c - t) / zoom + c (forward) or x = zoom (u - c) + c + t.
    if inverse:
        matrix, offset = zoom, centre - zoom * centre + shift_arr
    else:
        matrix, offset = 1.0 / zoom, centre - (centre + shift_arr) / zoom
    out = np.empty_like(volume, dtype=np.float32)
    for k in range(volume.shape[2]):
        out[:, :, k] = ndimage.affine_transform(
            volume[:, :, k], np.array([matrix, matrix]), offset=offset, order=1, mode="nearest"
        )
    return out


def tta_mean(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The mean over `TTA_TRANSFORMS` of ``predict`` on the transformed ``(H, W, K)`` image,
    each result mapped back by the inverse transform; float32, ``image``'s shape."""
    total = np.zeros(image.shape, dtype=np.float32)
    for zoom, shift in TTA_TRANSFORMS:
        moved = inplane_transform(image, zoom, shift)
        total += inplane_transform(predict(moved), zoom, shift, inverse=True)
    return total / np.float32(len(TTA_TRANSFORMS))
