"""The model grid's intensities as every path reads them (numpy only, no TensorFlow).

Prepared data keeps model-grid intensities in a compact form (`store_model_grid`: CT int16 HU,
MRI float16), which training and validation read back; prediction and the serving wire get those
very values (`model_grid_intensities`), so `pancseg predict` on a validation case normalises
what validation normalised, not a rounding apart.
"""

from __future__ import annotations

import numpy as np

from pancseg_tf.errors import PancsegError

# float16 holds values up to 65504; MRI volumes with larger values are scaled to fit.
FLOAT16_LIMIT = 60000.0


# === The model grid's stored intensities: one set of numbers for every path ===


def store_model_grid(model: np.ndarray, modality: str) -> tuple[np.ndarray, float]:
    """Model-grid intensities in prepared data's compact form, and the scale applied.

    CT: Hounsfield units rounded to the nearest integer (ties to even), clipped to int16, scale
    1. MRI: float16 of ``model * scale``, where ``scale`` is 1 unless the volume's peak exceeds
    `FLOAT16_LIMIT` (then it maps the peak there); MRI percentiles scale by the same factor.

    Raises:
        PancsegError: a CT volume with NaN or infinite intensities (no int16 value), or an
            unknown modality.
    """
    model = np.asarray(model)
    if modality == "ct":
        if not np.isfinite(model).all():
            raise PancsegError("the CT volume has NaN or infinite intensities; expected finite HU")
        return np.clip(np.rint(model), -32768, 32767).astype(np.int16), 1.0
    if modality == "mri":
        peak = float(np.max(np.abs(model))) if model.size else 0.0
        scale = FLOAT16_LIMIT / peak if peak > FLOAT16_LIMIT else 1.0
        return (model * np.float32(scale)).astype(np.float16), scale
    raise PancsegError(f"modality must be 'ct' or 'mri', got {modality!r}")


def stored_to_float(stored: np.ndarray, scale: float) -> np.ndarray:
    """`store_model_grid`'s output back in the volume's units, float32."""
    return np.asarray(stored, dtype=np.float32) / np.float32(scale)


def model_grid_intensities(model: np.ndarray, modality: str) -> np.ndarray:
    """The model-grid intensities prediction reads: prepared data's values (`store_model_grid`).

    CT: int16 HU (the serving wire's dtype); MRI: float32 in the volume's units at the stored
    precision. Idempotent: intensities already in this form come back unchanged.
    """
    stored, scale = store_model_grid(model, modality)
    return stored if modality == "ct" else stored_to_float(stored, scale)
