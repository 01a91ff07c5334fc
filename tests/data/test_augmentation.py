"""The optional intensity augmentations for few real cases: contrast factor, gamma, noise."""

import numpy as np
import pytest
import tensorflow as tf

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data.pipeline import augment_window
from pancseg_tf.errors import PancsegError

# No geometric change and no jitter, so that each option's effect is seen alone.
PLAIN = ["data.rotation_deg=0", "data.scale_range=[1,1]", "data.intensity_jitter=0"]


def window() -> tuple[tf.Tensor, tf.Tensor]:
    """A (T=3, 24, 24, 1) window: a ramp 0..1 along the rows, and a square mask."""
    ramp = np.linspace(0.0, 1.0, 24, dtype=np.float32)[:, None] * np.ones((1, 24), np.float32)
    image = np.broadcast_to(ramp, (3, 24, 24))[..., None].copy()
    mask = np.zeros((3, 24, 24, 1), np.float32)
    mask[:, 8:16, 8:16] = 1.0
    return tf.constant(image), tf.constant(mask)


def augmented(*overrides: str, key=(3, 4)) -> tuple[np.ndarray, np.ndarray]:
    config = apply_overrides(Config(), [*PLAIN, *overrides])
    image, mask = window()
    out_image, out_mask = augment_window(image, mask, tf.constant(key, tf.int64), config)
    return out_image.numpy(), out_mask.numpy()


def test_defaults_leave_the_intensities_alone():
    image, mask = augmented()
    np.testing.assert_allclose(image, window()[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(mask, window()[1].numpy())


@pytest.mark.parametrize(
    "option, expected",
    [
        # ramp x (0..1) -> the option's fixed effect, clipped to [0, 1]
        ("data.contrast_range=[0.5,0.5]", lambda x: 0.5 * x),
        ("data.contrast_range=[1.5,1.5]", lambda x: np.minimum(1.5 * x, 1.0)),
        ("data.gamma_range=[2,2]", lambda x: x**2),
        ("data.gamma_range=[0.5,0.5]", np.sqrt),
    ],
)
def test_fixed_ranges_apply_exactly(option, expected):
    image, mask = augmented(option)
    ramp = window()[0].numpy()
    np.testing.assert_allclose(image, expected(ramp), atol=1e-5)
    np.testing.assert_array_equal(mask, window()[1].numpy())  # the mask never changes


def test_contrast_factor_is_drawn_in_its_range_once_per_window():
    factors = []
    for key in range(40):
        image, _ = augmented("data.contrast_range=[0.5,1.0]", key=(key, 0))
        ramp = window()[0].numpy()
        ratio = image[:, 1:] / ramp[:, 1:]  # row 0 is 0
        assert np.ptp(ratio) < 1e-5  # one factor for every voxel and slice
        factors.append(float(ratio.mean()))
    assert 0.5 <= min(factors) < 0.6 and 0.9 < max(factors) <= 1.0


def test_noise_has_the_configured_spread_and_keeps_the_range():
    image, mask = augmented("data.noise_std=0.05")
    middle = window()[0].numpy()[:, 6:18]  # away from the clipped ends of the ramp
    residual = image[:, 6:18] - middle
    assert 0.04 < residual.std() < 0.06 and abs(residual.mean()) < 0.01
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert not np.array_equal(image[0], image[1])  # drawn per voxel, not per window
    np.testing.assert_array_equal(mask, window()[1].numpy())


def test_other_draws_are_unchanged_by_the_new_options():
    # Same key: the rotation and zoom a window gets do not depend on the new options.
    spatial = ["data.rotation_deg=20", "data.scale_range=[0.8,1.2]"]
    _, mask_without = augmented(*spatial)
    _, mask_with = augmented(*spatial, "data.gamma_range=[0.7,1.5]", "data.noise_std=0.03")
    np.testing.assert_array_equal(mask_without, mask_with)
    assert not np.array_equal(mask_without, window()[1].numpy())


@pytest.mark.parametrize(
    "option, message",
    [
        ("data.contrast_range=[0,1]", "contrast_range"),
        ("data.gamma_range=[1.5,0.7]", "gamma_range"),
        ("data.noise_std=-0.1", "noise_std"),
    ],
)
def test_bad_ranges_are_named(option, message):
    with pytest.raises(PancsegError, match=message):
        apply_overrides(Config(), [option]).validate()
