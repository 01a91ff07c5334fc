"""Preprocessing: host geometry (numpy/scipy), label maps, and in-graph intensity (keras.ops).

Geometry and labels import no TensorFlow. The intensity functions are written in ``keras.ops``
and load Keras (and so TensorFlow) on first use: ``from pancseg_tf.preprocessing import
hu_window`` imports it, ``from pancseg_tf.preprocessing import plan_geometry`` does not, so the
serving client and ``pancseg info`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from pancseg_tf.io.label_values import LABEL_PRESETS, parse_label_values
from pancseg_tf.preprocessing.geometry import (
    CT_BODY_THRESHOLD_HU,
    CT_PAD_VALUE,
    MRI_BODY_FRACTION,
    GeometryPlan,
    Reorientation,
    body_crop_box,
    plan_geometry,
    reorientation_for,
    to_canonical,
)
from pancseg_tf.preprocessing.labels import map_labels

_INTENSITY = (
    "DEFAULT_HU_WINDOW",
    "DEFAULT_MRI_PERCENTILES",
    "hu_window",
    "mri_normalize",
    "mri_percentiles",
    "normalize_intensity",
)

__all__ = [
    "CT_BODY_THRESHOLD_HU",
    "CT_PAD_VALUE",
    "LABEL_PRESETS",
    "MRI_BODY_FRACTION",
    "GeometryPlan",
    "Reorientation",
    "body_crop_box",
    "map_labels",
    "parse_label_values",
    "plan_geometry",
    "reorientation_for",
    "to_canonical",
    *_INTENSITY,
]


def __getattr__(name: str) -> Any:
    # Lazy: the intensity module imports Keras, which imports TensorFlow.
    if name in _INTENSITY:
        return getattr(importlib.import_module("pancseg_tf.preprocessing.intensity"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
