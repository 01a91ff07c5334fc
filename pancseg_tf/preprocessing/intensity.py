"""Intensity normalisation, written once in ``keras.ops`` for tf.data, prediction and export.

The same functions run inside the tf.data pipeline (graph mode), in eager prediction and in the
exported SavedModel, so training and serving cannot drift apart. They work on numpy arrays and
on tensors of any shape (a slice ``(H, W)``, a window ``(T, H, W, 1)``, a batch
``(B, T, H, W, 1)``); the output is float32 in [0, 1].

Only the MRI percentiles are computed outside the graph, once per volume on the host
(`mri_percentiles`), and passed in as scalars or tensors: a percentile over a whole volume
needs the whole volume, which a slice window in tf.data or a serving request does not have.

What these functions normalise is the same set of numbers on every path: see
`pancseg_tf.preprocessing.quantize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from keras import ops

from pancseg_tf.errors import PancsegError

# The NIH Pancreas-CT literature's abdominal window: fat (about -100 HU) to the brightest
# enhancing soft tissue and vessels (240 HU); air and bone carry no pancreas information.
DEFAULT_HU_WINDOW = (-100.0, 240.0)
DEFAULT_MRI_PERCENTILES = (0.5, 99.5)
# Smallest accepted percentile range: keeps a constant MRI volume from dividing by zero.
_MIN_RANGE = 1e-6


def hu_window(x: Any, low: float = -100.0, high: float = 240.0) -> Any:
    """Clips CT values to ``[low, high]`` HU and scales them to [0, 1].

    Args:
        x: Hounsfield units, any shape and numeric dtype.
        low: lower window edge in HU (maps to 0).
        high: upper window edge in HU (maps to 1).

    Returns:
        float32 tensor of the shape of ``x``: ``(clip(x, low, high) - low) / (high - low)``.

    Raises:
        PancsegError: if ``low >= high``.

    Example:
        >>> hu_window(np.array([-1000.0, 70.0, 3000.0]))  # [0.0, 0.5, 1.0]
    """
    low, high = float(low), float(high)
    if not low < high:
        raise PancsegError(f"HU window must be [low, high] with low < high, got [{low}, {high}]")
    x = ops.cast(x, "float32")
    return ops.clip((x - low) / (high - low), 0.0, 1.0)


def mri_normalize(x: Any, p_low: Any, p_high: Any) -> Any:
    """Scales MRI intensities by the volume's percentiles: ``(x - p_low) / (p_high - p_low)``.

    Args:
        x: MRI intensities, any shape and numeric dtype.
        p_low: the volume's low percentile (`mri_percentiles`); a float or a tensor that
            broadcasts against ``x`` (e.g. ``(B, 1, 1, 1, 1)`` for a batch of windows).
        p_high: the volume's high percentile, same form.

    Returns:
        float32 tensor of the shape of ``x``, clipped to [0, 1]. A range under 1e-6 (a constant
        volume) is taken as 1e-6 instead of dividing by zero.
    """
    x = ops.cast(x, "float32")
    p_low = ops.cast(p_low, "float32")
    p_high = ops.cast(p_high, "float32")
    scale = ops.maximum(p_high - p_low, _MIN_RANGE)
    return ops.clip((x - p_low) / scale, 0.0, 1.0)


def mri_percentiles(
    array: np.ndarray, low: float = 0.5, high: float = 99.5, *, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """The low and high intensity percentiles of one MRI volume, over its non-zero voxels.

    Computed once per volume on the host (numpy) and passed to `mri_normalize` as inputs. The
    zero voxels are left out because MRI background outside the body (and the padding some
    scanners and converters write) is exactly 0: counting it would drag the low percentile to 0
    whatever the tissue contrast, and a large field of view would shift both percentiles. Pass
    ``mask`` to use a body mask instead.

    Args:
        array: MRI volume, any shape and numeric dtype.
        low: low percentile in [0, 100] (default 0.5).
        high: high percentile in [0, 100] (default 99.5).
        mask: optional boolean array of ``array``'s shape: the voxels to use instead of the
            non-zero ones.

    Returns:
        ``(p_low, p_high)`` as Python floats.

    Raises:
        PancsegError: on percentiles outside [0, 100] or ``low >= high``, a mask of another
            shape, or when no voxel is selected (an all-zero volume).
    """
    if not 0.0 <= low < high <= 100.0:
        raise PancsegError(
            f"MRI percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high})"
        )
    array = np.asarray(array)
    if mask is None:
        values = array[(array != 0) & np.isfinite(array)]
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise PancsegError(f"mask shape {mask.shape} differs from the volume's {array.shape}")
        values = array[mask & np.isfinite(array)]
    if values.size == 0:
        raise PancsegError(
            "MRI volume has no voxel to normalise by: it is all zero (or the mask is empty)"
        )
    p_low, p_high = np.percentile(values, [low, high])
    return float(p_low), float(p_high)


def normalize_intensity(
    x: Any,
    modality: str,
    *,
    window: Sequence[float] = DEFAULT_HU_WINDOW,
    percentiles: Sequence[Any] | None = None,
) -> Any:
    """Normalises intensities to [0, 1] the way the modality needs.

    Args:
        x: intensities, any shape.
        modality: ``"ct"`` (HU window) or ``"mri"`` (percentile scaling).
        window: ``(low, high)`` HU window for CT.
        percentiles: ``(p_low, p_high)`` values of the volume for MRI, from `mri_percentiles`
            (floats or tensors); required for MRI.

    Returns:
        float32 tensor of the shape of ``x``, in [0, 1].

    Raises:
        PancsegError: on an unknown modality, or MRI without percentiles.
    """
    if modality == "ct":
        low, high = window
        return hu_window(x, low, high)
    if modality == "mri":
        if percentiles is None:
            raise PancsegError(
                "MRI normalisation needs the volume's (p_low, p_high) percentiles, got None; "
                "compute them with mri_percentiles(array)"
            )
        p_low, p_high = percentiles
        return mri_normalize(x, p_low, p_high)
    raise PancsegError(f"modality must be 'ct' or 'mri', got {modality!r}")
