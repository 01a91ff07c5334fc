"""The phantom's tissues and their intensities: Hounsfield units of a portal-venous-phase CT, or
arbitrary units of a T1-weighted-like MRI with a smooth multiplicative bias field and Rician noise.

`render_intensities` turns a painted tissue label map (`pancseg_tf.synthetic.anatomy`) into the
image. NumPy and SciPy only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["TISSUES", "TISSUE_INDEX", "render_intensities"]

# Tissue -> ((CT mean HU, CT texture amplitude HU), (MRI mean, MRI texture amplitude)); the
# order is the label map's, which paints them in this order of precedence where they meet.
# CT of the portal venous phase: the pancreas enhances to about 100-130 HU; collapsed duodenum and
# bowel loops enhance to within ~30 HU of it, as in real scans. T1-weighted-like MRI, arbitrary
# units: fat bright, pancreas relatively bright (T1-hyperintense acinar tissue) against bowel and
# liver, fluid dark, flowing blood and cortical bone dark. Means marked "per case" are replaced
# in `render_intensities`.
_INTENSITIES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "air": ((-1000.0, 0.0), (0.0, 0.0)),
    "subcutaneous_fat": ((-105.0, 8.0), (850.0, 30.0)),
    "muscle": ((50.0, 8.0), (300.0, 15.0)),
    "visceral_fat": ((-90.0, 10.0), (800.0, 35.0)),
    # CT: per case (65-130 HU: from a late-arterial liver, darker than the pancreas, to a
    # portal-venous one as bright as it or brighter; a fixed 65 HU taught that anything as bright
    # as the pancreas in the liver's place is pancreas)
    "liver": ((65.0, 6.0), (480.0, 15.0)),
    "spleen": ((95.0, 6.0), (330.0, 12.0)),  # CT: per case (95-130 HU)
    "kidney_cortex": ((150.0, 10.0), (420.0, 15.0)),
    "kidney_medulla": ((105.0, 8.0), (300.0, 12.0)),
    "renal_sinus_fat": ((-80.0, 10.0), (780.0, 30.0)),
    "cortical_bone": ((850.0, 80.0), (40.0, 10.0)),
    # CT: per case (180-280 HU, as NIH's lumbar spine)
    "cancellous_bone": ((230.0, 40.0), (560.0, 30.0)),
    "disc": ((90.0, 8.0), (280.0, 15.0)),
    "csf": ((10.0, 4.0), (120.0, 8.0)),
    "aorta": ((180.0, 6.0), (70.0, 10.0)),
    "ivc": ((140.0, 6.0), (90.0, 10.0)),
    "portal_vein": ((170.0, 6.0), (100.0, 10.0)),
    "stomach_wall": ((75.0, 8.0), (320.0, 15.0)),
    "fluid": ((12.0, 4.0), (110.0, 8.0)),
    "gas": ((-950.0, 20.0), (5.0, 2.0)),
    "duodenum": ((85.0, 10.0), (340.0, 20.0)),
    "bowel": ((70.0, 12.0), (330.0, 25.0)),
    "gallbladder": ((8.0, 3.0), (140.0, 8.0)),
    "lung": ((-850.0, 30.0), (20.0, 6.0)),
    "lung_vessel": ((150.0, 20.0), (60.0, 10.0)),
    # CT: per case (50-115 HU: enhanced myocardium reaches the pancreas' brightness, as in NIH
    # Pancreas-CT 0002, whose heart above the liver dome reads a median of 90 HU)
    "myocardium": ((50.0, 8.0), (310.0, 15.0)),
    # per case (CT 140-250 HU); MRI: gradient-echo inflow, bright, a T1 look-alike
    "blood_pool": ((200.0, 10.0), (480.0, 25.0)),
    "urine": ((10.0, 4.0), (100.0, 8.0)),
    # positive (CT) or T1-bright (MRI) oral contrast, per case
    "contrast_bowel": ((250.0, 25.0), (650.0, 30.0)),
    "pancreas": ((110.0, 14.0), (560.0, 25.0)),  # per case (CT 100-120 HU)
    "pancreas_ambiguous": ((110.0, 14.0), (560.0, 25.0)),  # set to the look-alike's mean
    "lookalike": ((105.0, 14.0), (550.0, 25.0)),  # per case, within a few HU of the pancreas
}

# The tissue classes of the phantom's label map, and each one's value in it.
TISSUES: tuple[str, ...] = tuple(_INTENSITIES)
TISSUE_INDEX: dict[str, int] = {name: index for index, name in enumerate(TISSUES)}

_CT_HU = {name: ct for name, (ct, _) in _INTENSITIES.items()}
_MRI_T1 = {name: mri for name, (_, mri) in _INTENSITIES.items()}


def render_intensities(
    rng: np.random.Generator,
    tissue: np.ndarray,
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    spacing: tuple[float, float, float],
    *,
    modality: str,
    bias_field: bool,
) -> np.ndarray:
    """The image of a tissue label map: per-case means, lobulated texture, partial-volume blur,
    then CT noise, or an MRI bias field and Rician noise.

    Args:
        rng: the random generator, drawn from in a fixed order whatever the modality.
        tissue: ``uint8`` label map ``(I, J, K)`` of `TISSUE_INDEX` values.
        axes_mm: the voxel centres in mm from the volume's centre along i, j and k.
        spacing: voxel size in mm along i, j, k.
        modality: ``"ct"`` or ``"mri"``.
        bias_field: MRI only: multiply by the smooth bias field (drawn either way).

    Returns:
        ``int16`` HU for CT, ``float32`` for MRI, of ``tissue``'s shape.
    """
    shape = tissue.shape
    x, y, z = axes_mm
    sx, sy, _ = spacing
    u = rng.uniform

    table = dict(_CT_HU if modality == "ct" else _MRI_T1)
    if modality == "ct":
        p_mean = u(100.0, 118.0)
        look_mean = p_mean - u(2.0, 8.0)
    else:
        p_mean = _MRI_T1["pancreas"][0] * u(0.95, 1.05)
        look_mean = p_mean * u(0.97, 1.0)
    table["pancreas"] = (p_mean, table["pancreas"][1])
    table["pancreas_ambiguous"] = (look_mean, table["pancreas"][1])
    table["lookalike"] = (look_mean, table["lookalike"][1])
    if modality == "ct":
        table["blood_pool"] = (u(140.0, 250.0), table["blood_pool"][1])
        table["contrast_bowel"] = (u(180.0, 320.0), table["contrast_bowel"][1])
        table["cancellous_bone"] = (u(180.0, 280.0), table["cancellous_bone"][1])
        table["myocardium"] = (u(50.0, 115.0), table["myocardium"][1])
        table["liver"] = (u(65.0, 130.0), table["liver"][1])
        table["spleen"] = (u(95.0, 130.0), table["spleen"][1])
    else:
        table["blood_pool"] = (table["blood_pool"][0] * u(0.9, 1.1), table["blood_pool"][1])
        table["contrast_bowel"] = (table["contrast_bowel"][0] * u(0.9, 1.1), 30.0)
    means = np.array([table[name][0] for name in TISSUES], dtype=np.float32)
    amps = np.array([table[name][1] for name in TISSUES], dtype=np.float32)
    texture = rng.standard_normal(shape, dtype=np.float32)
    # lobulated texture: correlated over ~1.5 mm in-plane, about a slice in z
    texture = ndimage.gaussian_filter(texture, (1.5 / sx, 1.5 / sy, 0.5))
    texture /= max(float(texture.std()), 1e-6)
    image = means[tissue] + amps[tissue] * texture
    del texture
    # partial-volume blur: a small point spread in-plane, the slice profile along z
    image = ndimage.gaussian_filter(image, (0.5 / sx, 0.5 / sy, 0.3))

    # bias coefficients are drawn for CT too, so that the random stream stays aligned
    bias_coef = rng.normal(0.0, 0.12, size=5)
    bias_coef[:2] = np.sign(bias_coef[:2] + 1e-9) * rng.uniform(0.18, 0.3, size=2)
    if modality == "ct":
        image += rng.normal(0.0, u(10.0, 18.0), size=shape).astype(np.float32)
        return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    if bias_field:
        fov_x, fov_y, fov_z = (n * s for n, s in zip(shape, spacing))
        xn = (x / (fov_x / 2.0))[:, None, None]
        yn = (y / (fov_y / 2.0))[None, :, None]
        znn = (z / (fov_z / 2.0))[None, None, :]  # z normalised to [-1, 1]
        log_bias = (
            bias_coef[0] * xn
            + bias_coef[1] * yn
            + bias_coef[2] * znn
            + bias_coef[3] * xn * yn
            + bias_coef[4] * (xn**2 + yn**2 - 0.6)
        )
        image *= np.exp(log_bias).astype(np.float32)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    sigma = u(12.0, 20.0)
    real = image + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    image = np.sqrt(real * real + imag * imag)
    return image.astype(np.float32)
