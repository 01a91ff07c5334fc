"""In-graph intensity normalisation: tables, and the same code in eager, tf.function and tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from pancseg_tf.errors import PancsegError
from pancseg_tf.preprocessing import (
    hu_window,
    mri_normalize,
    mri_percentiles,
    normalize_intensity,
)

# (5,) HU values -> [0, 1] in the default window [-100, 240] (width 340).
HU_TABLE = [
    (-1000.0, 0.0),  # air
    (-100.0, 0.0),  # lower edge
    (70.0, 0.5),  # centre of the window
    (240.0, 1.0),  # upper edge
    (3000.0, 1.0),  # metal
    (-15.0, 0.25),  # 85 / 340
]


@pytest.mark.parametrize("hu, expected", HU_TABLE)
def test_hu_window_table(hu, expected):
    out = ops.convert_to_numpy(hu_window(np.array([hu], dtype=np.float32)))
    np.testing.assert_allclose(out, [expected], atol=1e-6)


def test_hu_window_takes_int16_and_keeps_shape_as_float32():
    # (2, 2, 2) int16 volume, custom window [0, 100].
    x = np.array([[[-5, 0], [25, 50]], [[75, 100], [101, 32767]]], dtype=np.int16)
    out = hu_window(x, low=0.0, high=100.0)
    assert out.dtype == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(out), [[[0, 0], [0.25, 0.5]], [[0.75, 1], [1, 1]]], atol=1e-6
    )


def test_hu_window_rejects_an_empty_window():
    with pytest.raises(PancsegError, match=r"low < high, got \[240.0, -100.0\]"):
        hu_window(np.zeros(2), low=240.0, high=-100.0)


def test_hu_window_inside_tf_function_is_the_eager_result():
    values = np.array([h for h, _ in HU_TABLE], dtype=np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def graph(x):
        return hu_window(x)

    np.testing.assert_allclose(graph(tf.constant(values)).numpy(), [e for _, e in HU_TABLE])
    # Core TensorFlow ops only: no Python callback that TF Serving could not run.
    op_types = {op.type for op in graph.get_concrete_function().graph.get_operations()}
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_hu_window_in_a_tf_data_map():
    # Two (2, 2) int16 slices through a tf.data pipeline, as the training input does.
    slices = np.array([[[-1000, -100], [70, 240]], [[3000, -15], [70, 70]]], dtype=np.int16)
    dataset = tf.data.Dataset.from_tensor_slices(slices).map(lambda x: hu_window(x))
    out = np.stack([s.numpy() for s in dataset])
    np.testing.assert_allclose(out, [[[0, 0], [0.5, 1]], [[1, 0.25], [0.5, 0.5]]], atol=1e-6)


# (4,) intensities, percentiles (100, 300) -> (x - 100) / 200 clipped.
@pytest.mark.parametrize(
    "x, expected",
    [(0.0, 0.0), (100.0, 0.0), (150.0, 0.25), (300.0, 1.0), (1e5, 1.0)],
)
def test_mri_normalize_table(x, expected):
    out = ops.convert_to_numpy(mri_normalize(np.array([x]), 100.0, 300.0))
    np.testing.assert_allclose(out, [expected], atol=1e-6)


def test_mri_normalize_takes_percentiles_as_graph_inputs():
    # Percentiles arrive as tensors, as in the exported signature; one pair per batch item.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32),
            tf.TensorSpec([None, 1], tf.float32),
            tf.TensorSpec([None, 1], tf.float32),
        ]
    )
    def graph(x, p_low, p_high):
        return mri_normalize(x, p_low, p_high)

    x = tf.constant([[10.0, 20.0], [10.0, 20.0]])
    out = graph(x, tf.constant([[10.0], [0.0]]), tf.constant([[20.0], [40.0]])).numpy()
    np.testing.assert_allclose(out, [[0.0, 1.0], [0.25, 0.5]], atol=1e-6)


def test_mri_normalize_of_a_constant_volume_is_finite():
    out = ops.convert_to_numpy(mri_normalize(np.full((3,), 7.0), 7.0, 7.0))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])


def test_mri_percentiles_leave_zero_background_out():
    # 200 body voxels 1..200 and 800 zero background voxels, shape (10, 10, 10).
    array = np.zeros(1000, dtype=np.int16)
    array[:200] = np.arange(1, 201)
    array = array.reshape(10, 10, 10)

    p_low, p_high = mri_percentiles(array)

    # Linear percentiles over 1..200: 1 + 0.005 * 199 and 1 + 0.995 * 199.
    assert p_low == pytest.approx(1.995)
    assert p_high == pytest.approx(199.005)
    assert isinstance(p_low, float) and isinstance(p_high, float)


def test_mri_percentiles_with_a_mask_and_custom_levels():
    array = np.arange(10, dtype=np.float32)  # 0..9
    mask = array >= 5  # 5..9
    assert mri_percentiles(array, 0.0, 100.0, mask=mask) == (5.0, 9.0)
    assert mri_percentiles(array, 25.0, 75.0) == pytest.approx((3.0, 7.0))  # over 1..9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"array": np.zeros((2, 2))}, "all zero"),
        ({"array": np.ones(3), "low": 60.0, "high": 40.0}, "0 <= low < high <= 100"),
        ({"array": np.ones(3), "mask": np.ones(2, bool)}, "mask shape"),
    ],
)
def test_mri_percentiles_errors(kwargs, message):
    with pytest.raises(PancsegError, match=message):
        mri_percentiles(**kwargs)


def test_normalize_intensity_dispatches_by_modality():
    x = np.array([-100.0, 70.0, 240.0, 500.0])
    ct = ops.convert_to_numpy(normalize_intensity(x, "ct"))
    np.testing.assert_allclose(ct, [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    ct_wide = ops.convert_to_numpy(normalize_intensity(x, "ct", window=(-160.0, 340.0)))
    np.testing.assert_allclose(ct_wide, [0.12, 0.46, 0.8, 1.0], atol=1e-6)
    mri = ops.convert_to_numpy(normalize_intensity(x, "mri", percentiles=(70.0, 240.0)))
    np.testing.assert_allclose(mri, [0.0, 0.0, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    "modality, kwargs, message",
    [("mri", {}, "needs the volume's"), ("pet", {}, "modality must be 'ct' or 'mri'")],
)
def test_normalize_intensity_errors(modality, kwargs, message):
    with pytest.raises(PancsegError, match=message):
        normalize_intensity(np.zeros(2), modality, **kwargs)
