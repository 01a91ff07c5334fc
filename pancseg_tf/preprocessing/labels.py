"""Label maps -> binary pancreas masks (uint8 {0, 1}), with presets for the public cohorts.

Cohorts code the pancreas differently: MSD Task07 uses 1 (pancreas) and 2 (tumour), both part
of the organ we segment; NIH Pancreas-CT uses 1; TotalSegmentator's multi-organ maps use 7.
Mapping happens on the label's own grid, before `GeometryPlan.forward(..., is_label=True)`.

Example:
    >>> map_labels(np.array([0, 1, 2, 3]), "msd")
    array([0, 1, 1, 0], dtype=uint8)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.label_values import checked_values, parse_label_values

LabelValues = str | Iterable[int] | None


def map_labels(
    label_array: np.ndarray,
    values: LabelValues,
    *,
    strict: bool = False,
    require_present: bool = False,
) -> np.ndarray:
    """A binary pancreas mask from a label map.

    Args:
        label_array: label map, any shape; integer dtype, or a float dtype holding whole numbers
            (as NIfTI labels saved with a scaling often are).
        values: the label values that mean pancreas: a tuple of ints, a preset name of
            `pancseg_tf.io.label_values.LABEL_PRESETS`, or ``None`` / ``"nonzero"`` for every
            non-zero value.
        strict: also require that the map holds no value other than 0 and ``values`` (catches
            a wrong preset, e.g. a multi-organ map read with the MSD values).
        require_present: when the map has non-zero values but none of ``values``, raise
            instead of returning an empty mask (a label map of another dataset, or the wrong
            ``label_values``: training on it would teach "no pancreas").

    Returns:
        uint8 array of ``label_array``'s shape: 1 where the label is one of ``values``, else 0.

    Raises:
        PancsegError: on float labels that are not whole numbers (an interpolated label map),
            on negative values, on an unknown preset, when ``strict`` on unexpected values, and
            when ``require_present`` on a map without any of ``values`` (each names the values).
    """
    label_array = np.asarray(label_array)
    if isinstance(values, str):
        values = parse_label_values(values)
    elif values is not None:
        values = checked_values(list(values), values)
    if label_array.dtype.kind == "f":
        whole = np.isfinite(label_array) & (label_array == np.round(label_array))
        if not whole.all():
            bad = np.unique(label_array[~whole])
            raise PancsegError(
                f"label map holds non-integer values {_some(bad)}: expected whole-number labels "
                "(was it resampled with interpolation? resample labels with is_label=True)"
            )
    elif label_array.dtype.kind not in "iub":
        raise PancsegError(f"label map must be numeric, got dtype {label_array.dtype}")
    if label_array.size and np.min(label_array) < 0:
        raise PancsegError(
            f"label map holds negative values {_some(np.unique(label_array[label_array < 0]))}: "
            "expected non-negative labels"
        )
    if require_present and values is not None:
        wanted = np.isin(label_array, np.array(values))
        if not wanted.any() and np.any(label_array != 0):
            raise PancsegError(
                f"label map holds values {_some(np.unique(label_array))} but none of the "
                f"pancreas values {sorted(int(v) for v in values)}; set preprocess.label_values "
                "(or --gt-labels) to the values that mean pancreas"
            )
    if strict and values is not None:
        # "nonzero" accepts every value, so strict checks only explicit values.
        allowed = np.array([0, *values])
        found = np.unique(label_array)
        unexpected = found[~np.isin(found, allowed)]
        if unexpected.size:
            raise PancsegError(
                f"label map holds values {_some(unexpected)} besides the expected "
                f"{sorted(int(v) for v in allowed)} (label values found: {_some(found)}); "
                "choose other label values or turn strict off"
            )
    if values is None:
        return (label_array != 0).astype(np.uint8)
    return np.isin(label_array, np.asarray(values)).astype(np.uint8)


def _some(values: np.ndarray, limit: int = 10) -> str:
    """Up to ``limit`` values for a message, as plain numbers."""
    shown = [v.item() for v in values[:limit]]
    text = ", ".join(str(int(v)) if float(v).is_integer() else repr(v) for v in shown)
    return f"[{text}{', ...' if values.size > limit else ''}]"
