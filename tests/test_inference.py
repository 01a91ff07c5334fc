"""Segmenter pieces that need no trained model: chunk rule, blending, post-processing, TTA."""

import numpy as np
import pytest

from pancseg_tf.inference import (
    TTA_TRANSFORMS,
    blend_chunks,
    chunk_spans,
    chunk_weights,
    postprocess_mask,
)
from pancseg_tf.inference.tta import inplane_transform


@pytest.mark.parametrize(
    "num_slices, chunk, overlap, spans",
    [
        (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
        (9, 4, 1, [(0, 4), (3, 7), (5, 9)]),  # the last chunk moves back to end on the last slice
        (3, 4, 1, [(0, 3)]),  # shorter than a chunk: one chunk
        (8, 4, 0, [(0, 4), (4, 8)]),
    ],
)
def test_chunk_spans(num_slices, chunk, overlap, spans):
    assert chunk_spans(num_slices, chunk, overlap) == spans


def test_blending_a_constant_gives_the_constant_and_ramps_are_symmetric():
    spans = chunk_spans(10, 4, 2)
    parts = [np.full((2, 2, b - a), 0.7, np.float32) for a, b in spans]
    np.testing.assert_allclose(blend_chunks(parts, spans, 10, 2), 0.7, rtol=1e-6)
    np.testing.assert_allclose(chunk_weights((2, 6), 10, 2), [1 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert chunk_weights((0, 4), 10, 2)[0] == 1.0  # the volume's first slice: full weight


def test_postprocess_keeps_the_largest_component_and_fills_holes():
    mask = np.zeros((12, 12, 6), np.uint8)
    mask[2:8, 2:8, 1:5] = 1
    mask[4, 4, 2] = 0  # a hole
    mask[10, 10, 3] = 1  # a speck
    out = postprocess_mask(mask)
    assert out[4, 4, 2] == 1 and out[10, 10, 3] == 0
    assert postprocess_mask(mask, largest_component=False)[10, 10, 3] == 1
    assert postprocess_mask(np.zeros((4, 4, 4))).sum() == 0


@pytest.mark.parametrize("zoom, shift", TTA_TRANSFORMS)
def test_tta_transforms_invert(zoom, shift):
    volume = np.zeros((64, 64, 3), np.float32)
    volume[20:40, 25:45] = 1.0
    back = inplane_transform(inplane_transform(volume, zoom, shift), zoom, shift, inverse=True)
    assert np.array_equal(back[8:56, 8:56] >= 0.5, volume[8:56, 8:56] >= 0.5)


def test_compiled_call_traces_a_size_agnostic_cnn_once_per_plane_size():
    """A CNN trained on crops (input_size None) runs compiled at any plane size, as eagerly;
    its bilinear upsampling cannot be traced with an open height and width."""
    import keras

    from pancseg_tf.inference import compiled_call
    from pancseg_tf.models import SliceCNN

    keras.utils.set_random_seed(0)
    cnn = SliceCNN.from_preset("quick", input_size=None, base_filters=4, depth=2)
    run = compiled_call(cnn, "model")
    rng = np.random.default_rng(0)
    for shape in ((3, 32, 32, 1), (2, 48, 64, 1), (5, 32, 32, 1)):
        x = rng.normal(size=shape).astype(np.float32)
        out = np.asarray(run(x)["prob"])
        assert out.shape == shape
        np.testing.assert_allclose(out, np.asarray(cnn(x, training=False)["prob"]), atol=1e-5)
    assert compiled_call(cnn, "model") is run
