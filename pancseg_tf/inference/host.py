"""Host steps of a request, shared by `Segmenter` and the serving client (``pancseg query``):
the volume's geometry plan, its model-grid wire intensities, the modality check.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import numpy as np

from pancseg_tf.config import PreprocessConfig
from pancseg_tf.io.volume import Volume

log = logging.getLogger("pancseg_tf.inference")


def plan_volume(volume: Volume, preprocess: PreprocessConfig, *, cover_body: bool = False):
    """The volume's `GeometryPlan` for the run's preprocessing (predict and the serving client).

    Args:
        volume: the input volume.
        preprocess: the run's preprocessing.
        cover_body: widen the in-plane field, where the body's box exceeds the model's size,
            to hold the whole box (`GeometryPlan.covering_body`; the model then runs in
            tiles). The plan is the model-size one whenever the body fits.
    """
    from pancseg_tf.preprocessing.geometry import plan_geometry

    plan = plan_geometry(
        volume,
        spacing_mm=preprocess.spacing_mm,
        slice_spacing_mm=preprocess.slice_spacing_mm,
        size=tuple(preprocess.size),
    )
    return plan.covering_body() if cover_body else plan


def request_intensities(
    volume: Volume, plan: Any, preprocess: PreprocessConfig
) -> tuple[np.ndarray, tuple[np.float32, np.float32] | None]:
    """The host side of a request: model-grid ``(H, W, K)`` wire intensities, MRI percentiles.

    The intensities are prepared data's (`pancseg_tf.preprocessing.quantize`: CT int16 HU, MRI
    float32 at float16 precision), the one set of numbers prediction, validation and the
    served export read. The percentiles are computed on the volume's own grid, as prepare does.

    Raises:
        PancsegError: a CT volume with NaN or infinite intensities.
    """
    from pancseg_tf.preprocessing.intensity import mri_percentiles
    from pancseg_tf.preprocessing.quantize import model_grid_intensities

    image = model_grid_intensities(plan.forward(volume.array), preprocess.modality)
    if preprocess.modality != "mri":
        return image, None
    low, high = mri_percentiles(volume.array, *preprocess.mri_percentiles)
    return image, (np.float32(low), np.float32(high))


def check_modality(volume: Volume, modality: str) -> bool:
    """Warns when the volume does not look like what the model was trained on; True if it does.

    A NIfTI file carries no modality, so the intensity range decides: CT in Hounsfield units
    has air near -1000 HU, MRI has no negative values to speak of.
    """
    from pancseg_tf.io.nifti import NIFTI_SUFFIXES

    low = float(np.min(volume.array))
    looks_ct = low < -500.0
    # A NIfTI volume's modality is the reader's default or a cohort's word, not the file's.
    stated = not str(volume.source).lower().endswith(NIFTI_SUFFIXES)
    if (stated and volume.modality != modality) or (modality == "ct") != looks_ct:
        seen = "CT (HU)" if looks_ct else "not CT in HU (MRI?)"
        log.warning(
            "the model was trained on %s but %s looks %s (minimum %.0f): check the input",
            modality.upper(),
            pathlib.Path(volume.source).name or "the volume",
            seen,
            low,
        )
        return False
    return True
