"""Post-processing and the last steps of a segmentation: back to the volume's own grid,
threshold, largest connected component with holes filled (`finish_segmentation`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage


def postprocess_mask(mask: np.ndarray, *, largest_component: bool = True) -> np.ndarray:
    """Keeps the largest 3D connected component (26-connected) and fills its holes.

    Works on the mask's bounding box only, so a 512 x 512 x 600 mask costs little memory.
    Components tied for the largest size are all kept: picking one would depend on the order
    in which the voxel axes are scanned, so the same anatomy stored in another orientation
    could keep another one.

    Args:
        mask: binary array of any shape (3D).
        largest_component: keep only the largest component; holes are filled either way.

    Returns:
        ``uint8`` {0, 1} array of the same shape.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return out
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    if largest_component:
        labels, count = ndimage.label(sub, structure=np.ones((3, 3, 3), bool))
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            sub = sizes[labels] == sizes.max()
    sub = ndimage.binary_fill_holes(sub)
    out[box] = sub
    return out


@dataclasses.dataclass
class Segmentation:
    """What `Segmenter.segment` returns.

    Attributes:
        mask: ``uint8`` {0, 1} on the input volume's own grid.
        probabilities: float32 probabilities on the input's own grid.
        model_probabilities: float32 ``(H, W, K')`` on the model grid.
        plan: the `GeometryPlan` that maps the two grids.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    plan: Any


def finish_segmentation(
    plan: Any, model_probabilities: np.ndarray, *, threshold: float, postprocess: bool
) -> Segmentation:
    """Model-grid probabilities -> the volume's own grid, threshold, post-processing.

    The last steps of `Segmenter.segment`, shared with the serving client.
    """
    probs = plan.inverse(model_probabilities)
    mask = (probs >= threshold).astype(np.uint8)
    if postprocess:
        mask = postprocess_mask(mask)
    return Segmentation(mask, probs, model_probabilities, plan)
