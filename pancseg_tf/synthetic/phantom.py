"""`make_phantom`: one seeded synthetic CT- or MRI-like abdomen with its pancreas label, and the
checks of the arguments every synthetic volume takes.

The anatomy is painted by `pancseg_tf.synthetic.anatomy`, its intensities rendered by
`pancseg_tf.synthetic.tissues`, in that order from one random generator.

NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.synthetic.anatomy import paint_anatomy
from pancseg_tf.synthetic.tissues import render_intensities

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "check_modality",
    "check_shape",
    "check_spacing",
    "make_phantom",
]

DEFAULT_SHAPE = (192, 192, 64)
# 1.9 mm in-plane: the body's mean half-width is then the drawing's adult reference, 150 mm
# (synthetic.anatomy; PROTOCOL.md amendment 2026-12-06 (e)).
DEFAULT_SPACING = (1.9, 1.9, 2.5)


def make_phantom(
    rng: np.random.Generator,
    *,
    modality: str = "ct",
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    bias_field: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One synthetic abdominal CT- or MRI-like volume with its pancreas label.

    Storage order is RAS: i runs to the subject's right, j anterior, k superior (slice index).
    The body fills the field of view (its size follows the field: about 300 x 230 mm at the
    default size and spacing, an adult abdomen) and the pancreas is drawn thicker than in an
    adult, so that a demo learns it at low resolution: it spans about a third of the slices and
    0.4-1 % of the voxels. Only the slices' z extent is compressed: 160 mm hold a chest, the
    abdomen and a pelvis. A few slices inside its range (2-4 at the default size, single or in
    pairs, never at its ends) are ambiguous on their own: a look-alike with the pancreas'
    intensity fills the fat around it there, while the slices above and below stay clear.

    Args:
        rng: the random generator; the same generator state gives the same phantom.
        modality: ``"ct"`` (Hounsfield units, portal venous phase) or ``"mri"``
            (T1-weighted-like, arbitrary units 0 to ~1000, with a bias field and Rician noise).
        shape: volume shape ``(I, J, K)``; at least ``(32, 32, 12)``.
        spacing: voxel size in mm along i, j, k.
        bias_field: MRI only: multiply by a smooth bias field (``False`` gives the same phantom
            without it; the random draws are the same either way).

    Returns:
        ``(image, label, ambiguous_slices)``: image of shape ``(I, J, K)``, ``int16`` HU for CT or
        ``float32`` for MRI; label ``uint8`` {0, 1} of the same shape (1 = pancreas); the sorted
        slice indices k of the ambiguous slices.

    Raises:
        PancsegError: for an unknown modality, a too small shape or a non-positive spacing.
    """
    check_modality(modality)
    shape = check_shape(shape)
    spacing = check_spacing(spacing)
    canvas, label, ambiguous = paint_anatomy(rng, shape, spacing)
    axes = (canvas.x, canvas.y, canvas.z)
    image = render_intensities(
        rng, canvas.tissue, axes, spacing, modality=modality, bias_field=bias_field
    )
    return image, label, ambiguous


def check_modality(modality: str) -> None:
    """PancsegError unless ``modality`` is ``"ct"`` or ``"mri"``."""
    if modality not in ("ct", "mri"):
        raise PancsegError(f"modality must be 'ct' or 'mri', got {modality!r}")


def check_shape(shape) -> tuple[int, int, int]:
    """The shape as three integers, or PancsegError when it is not (I, J, K) >= (32, 32, 12)."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise PancsegError(f"shape must be three integers (I, J, K), got {shape!r}") from None
    if len(shape) != 3 or shape[0] < 32 or shape[1] < 32 or shape[2] < 12:
        raise PancsegError(f"shape must be (I, J, K) of at least (32, 32, 12), got {shape}")
    return shape


def check_spacing(spacing) -> tuple[float, float, float]:
    """The spacing as three floats, or PancsegError when they are not positive millimetres."""
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise PancsegError(f"spacing must be three numbers in mm, got {spacing!r}") from None
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise PancsegError(f"spacing must be three positive numbers in mm, got {spacing}")
    return spacing
