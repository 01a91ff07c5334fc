"""In-plane tiles: `Segmenter` runs a model of the preprocessing's size over a body wider than
that field in overlapping tiles, blended like chunks of slices, and the mask lands on the input's
own grid; a body that fits takes the one-tile path unchanged."""

import numpy as np
import pytest

from pancseg_tf.inference import blend_tiles, chunk_spans, tile_spans


def test_tiles_cover_the_field_with_the_chunk_rule():
    spans = tile_spans((258, 192), (128, 128), (32, 32))
    rows = sorted({row for row, _ in spans})
    cols = sorted({col for _, col in spans})
    assert rows == chunk_spans(258, 128, 32) == [(0, 128), (96, 224), (130, 258)]
    assert cols == [(0, 128), (64, 192)] and len(spans) == 6
    assert tile_spans((128, 128), (128, 128), (32, 32)) == [((0, 128), (0, 128))]


def test_the_tile_layout_shares_a_quarter_of_the_model_size():
    """`tile_layout`: what `run_in_tiles` (and the benchmark's tile count) lays over a plane."""
    from pancseg_tf.inference.chunks import tile_layout

    assert tile_layout((258, 192), (128, 128)) == (
        tile_spans((258, 192), (128, 128), (32, 32)),
        (32, 32),
    )
    assert tile_layout((240, 191), (128, 128))[0] == tile_spans((240, 191), (128, 128), (32, 32))
    assert len(tile_layout((240, 191), (128, 128))[0]) == 6


def test_blending_tiles_cut_from_one_map_gives_that_map_back():
    rng = np.random.default_rng(0)
    full = rng.random((75, 50, 4), dtype=np.float32)
    spans = tile_spans((75, 50), (32, 32), (8, 8))
    tiles = [full[r0:r1, c0:c1] for (r0, r1), (c0, c1) in spans]
    assert np.allclose(blend_tiles(tiles, spans, (75, 50), (8, 8)), full, atol=1e-6)
    # Weights ramp across the overlap (columns 18-31 of tiles (0, 32) and (18, 50)): tiles of 0
    # and of 1 blend to a gradient there, not a seam.
    assert sorted({col for _, col in spans}) == [(0, 32), (18, 50)]
    ones = [np.full((32, 32, 1), float(c0 > 0), np.float32) for _, (c0, _) in spans]
    blended = blend_tiles(ones, spans, (75, 50), (8, 8))[40, :, 0]
    assert (blended[:18] == 0).all() and (blended[32:] == 1).all()
    assert np.all(np.diff(blended) >= 0) and ((blended[18:32] > 0) & (blended[18:32] < 1)).all()


def test_a_smaller_field_than_the_tile_is_refused():
    from pancseg_tf.errors import PancsegError

    with pytest.raises(PancsegError, match="do not fit a field"):
        tile_spans((30, 64), (32, 32), (8, 8))


def blob_volume(width_mm: float, lateral_mm: float, depth_mm: float = 90.0):
    """An elliptical soft-tissue body (40 HU) in air, 2 mm voxels, with bright 150 HU discs at
    its centre and ``lateral_mm`` to each side of it."""
    from pancseg_tf.io.volume import Volume

    shape = (int(width_mm / 2) + 20, int(depth_mm / 2) + 20, 16)
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * 2.0
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * 2.0
    body = (x[:, None] / (width_mm / 2)) ** 2 + (y[None, :] / (depth_mm / 2)) ** 2 <= 1.0
    plane = np.where(body, 40.0, -1000.0)
    for cx in (0.0, -lateral_mm, lateral_mm):
        plane[(x[:, None] - cx) ** 2 + y[None, :] ** 2 <= 12.0**2] = 150.0
    array = np.repeat(plane[:, :, None], shape[2], axis=2).astype(np.int16)
    array[:, :, :3] = np.where(body, 40, -1000)[:, :, None]  # no disc on the lowest slices
    return Volume(array=array, affine=np.diag([-2.0, 2.0, 2.5, 1.0]), modality="ct")


@pytest.fixture(scope="module")
def bright_cnn():
    """A tiny SliceCNN trained (seconds) to mark the bright discs of `blob_volume` on 32 x 32
    slices of 4 mm pixels."""
    import keras

    from pancseg_tf.config import PreprocessConfig
    from pancseg_tf.inference import plan_volume
    from pancseg_tf.losses import JaccardLoss
    from pancseg_tf.models import SliceCNN
    from pancseg_tf.preprocessing.intensity import hu_window

    preprocess = PreprocessConfig(size=(32, 32), spacing_mm=4.0)
    xs, ys = [], []
    for lateral in (0.0, 30.0, 45.0):  # discs at several places of the 128 mm field
        volume = blob_volume(110.0, lateral)
        plan = plan_volume(volume, preprocess)
        xs.append(np.asarray(hu_window(plan.forward(volume.array))))
        ys.append(plan.forward((volume.array > 100).astype(np.uint8), is_label=True))
    x = np.moveaxis(np.concatenate(xs, axis=2), 2, 0)[..., None]
    y = np.moveaxis(np.concatenate(ys, axis=2), 2, 0)[..., None].astype(np.float32)
    keras.utils.set_random_seed(0)
    cnn = SliceCNN(base_filters=4, depth=2, input_size=(32, 32))
    for key in cnn.side_output_keys:
        cnn.get_layer(f"{key}_conv").trainable = False
    cnn.compile(optimizer=keras.optimizers.Adam(2e-2), loss={"prob": JaccardLoss()})
    cnn.fit(x, {"prob": y}, batch_size=8, epochs=30, verbose=0)
    return cnn, preprocess


@pytest.mark.large
def test_a_body_wider_than_the_field_gets_predictions_outside_it(bright_cnn):
    from pancseg_tf.inference import Segmenter, plan_volume

    cnn, preprocess = bright_cnn
    # A 300 mm body, discs at its centre and 110 mm to each side; the field is 128 mm.
    volume = blob_volume(300.0, 110.0)
    central = plan_volume(volume, preprocess)
    assert not central.covers_body
    result = Segmenter(cnn, preprocess, postprocess=False).segment(volume)
    assert result.mask.shape == volume.shape
    assert result.plan.covers_body and result.model_probabilities.shape[:2] == result.plan.size
    discs = volume.array > 100
    x0, x1, y0, y1 = central.field_box  # canonical; axis 0 is flipped in this volume
    outside = np.ones(volume.shape, bool)
    outside[volume.shape[0] - x1 : volume.shape[0] - x0, y0:y1] = False
    assert np.count_nonzero(discs & outside) > 0
    # Each of the three discs is found, the two outside the central field among them.
    found = result.mask.astype(bool)
    for cx in (-110.0, 0.0, 110.0):
        i = int(round((volume.shape[0] - 1) / 2 - cx / 2.0))
        disc = np.zeros(volume.shape, bool)
        disc[i - 5 : i + 6] = discs[i - 5 : i + 6]
        assert (found & disc).sum() >= 0.7 * disc.sum(), f"disc at {cx} mm"
    assert (found & ~discs).sum() <= 0.5 * discs.sum()  # the discs' rims at 4 mm pixels
    # The model-size plan alone would have cut the lateral discs off.
    narrow = central.inverse(np.ones(central.model_shape, np.float32)) >= 0.5
    assert not (narrow & discs & outside).any()


@pytest.mark.large
def test_a_body_that_fits_takes_the_one_tile_path_bit_for_bit(bright_cnn):
    from pancseg_tf.inference import (
        Segmenter,
        finish_segmentation,
        plan_volume,
        request_intensities,
    )

    cnn, preprocess = bright_cnn
    volume = blob_volume(100.0, 25.0)
    assert plan_volume(volume, preprocess).covers_body
    segmenter = Segmenter(cnn, preprocess)
    result = segmenter.segment(volume)
    plan = plan_volume(volume, preprocess)
    assert result.plan == plan
    wire, _ = request_intensities(volume, plan, preprocess)  # what segment runs on: int16 HU
    image = segmenter.normalize(wire.astype(np.float32), volume)
    direct = segmenter._predict_tile(image)  # the network on the model grid, no tiling code
    assert np.array_equal(result.model_probabilities, direct)
    expected = finish_segmentation(plan, direct, threshold=0.5, postprocess=True)
    assert np.array_equal(result.mask, expected.mask) and result.mask.sum() > 0
