"""The tf.data window pipeline: shapes, sampling, augmentation, determinism, validation volumes."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.data import (
    load_validation_volumes,
    make_training_dataset,
    merge_indexes,
    num_windows,
    prepare_cohort,
    steps_per_epoch,
)
from pancseg_tf.data.tfrecord import decode_case, encode_case, read_tfrecord, write_tfrecord_atomic
from pancseg_tf.errors import PancsegError
from pancseg_tf.synthetic import make_cohort

SMALL = ["preprocess.size=[48,48]", "preprocess.spacing_mm=2.0"]
# Hand-made prepared data: 32 x 32 planes.
TINY = ["preprocess.size=[32,32]", "preprocess.spacing_mm=2.0"]


def config_with(base: list[str], *overrides: str) -> Config:
    return apply_overrides(Config(), [*base, *overrides])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> pathlib.Path:
    """Three synthetic CT cases prepared to 48 x 48 x 20 (2 x 2 x 2.5 mm)."""
    root = tmp_path_factory.mktemp("pipeline")
    cohort = make_cohort(root / "ct", cases=3, shape=(64, 64, 20), spacing=(2, 2, 2.5), seed=5)
    prepare_cohort(cohort, root / "out", config=config_with(SMALL), progress=False)
    return root / "out"


def write_prepared(
    out: pathlib.Path, config: Config, cases: dict, body_box: list[int] | None = None
) -> pathlib.Path:
    """A prepared folder from hand-made ``(K, H, W)`` int16 HU images and uint8 labels."""
    for folder in ("shards", "cases", "skipped"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for case_id, (image, label) in cases.items():
        k, h, w = image.shape
        record = encode_case(
            case_id=case_id,
            modality="ct",
            image=image.astype(np.int16),
            label=label.astype(np.uint8),
            percentiles=config.preprocess.hu_window,
            intensity_scale=1.0,
            body_box=body_box or [0, h, 0, w],
            spacing=[2.5, 2.0, 2.0],
        )
        shard = write_tfrecord_atomic(out / "shards" / f"{case_id}.tfrecord", [record])
        entry = {
            "case_id": case_id,
            "shard": f"shards/{case_id}.tfrecord",
            "shard_bytes": shard.stat().st_size,
            "num_slices": k,
            "size": [h, w],
            "positive_slices": np.flatnonzero(label.reshape(k, -1).sum(1)).tolist(),
            "preprocess_hash": config.hash("preprocess"),
        }
        (out / "cases" / f"{case_id}.json").write_text(json.dumps(entry))
    merge_indexes(out, config=config, cohort_case_ids=list(cases))
    return out


def batches(ds: tf.data.Dataset, count: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    if count is not None:
        ds = ds.take(count)
    return list(ds.as_numpy_iterator())


# === Shapes, dtypes, ranges, counts ===


@pytest.mark.parametrize(
    "stage, crop, image_shape",
    [
        (2, None, (2, 3, 48, 48, 1)),  # (B, T, H, W, 1)
        (2, [32, 40], (2, 3, 32, 40, 1)),
        (1, None, (4, 48, 48, 1)),  # (B, H, W, 1)
        (1, [32, 32], (4, 32, 32, 1)),
    ],
)
def test_batches_have_the_model_shapes(prepared, stage, crop, image_shape):
    overrides = ["data.window=3", "data.batch_size=2", "data.slice_batch_size=4"]
    if crop is not None:
        overrides.append(f"data.crop_size={crop}")
    config = config_with(SMALL, *overrides)
    ds = make_training_dataset(prepared, config, stage=stage, seed=0, epoch=0)
    assert ds.element_spec[0].shape == image_shape
    assert ds.element_spec[1].shape == image_shape
    out = batches(ds)
    assert len(out) == steps_per_epoch(prepared, config, stage=stage)
    for image, mask in out:
        assert image.dtype == np.float32 and mask.dtype == np.float32
        assert image.shape == mask.shape == image_shape
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(mask)) <= {0.0, 1.0}
    assert any(mask.max() == 1.0 for _, mask in out)


@pytest.mark.parametrize(
    "stage, window, stride, windows",
    [
        (2, 5, 1, 3 * 16),  # 20 slices: starts 0..15
        (2, 5, 2, 3 * 8),  # starts 0, 2, ..., 14
        (2, 3, 4, 3 * 5),  # starts 0, 4, 8, 12, 16
        (2, 20, 1, 3 * 1),
        (2, 21, 1, 0),  # longer than every case
        (1, 5, 2, 3 * 20),  # stage 1: every slice, whatever the window
    ],
)
def test_windows_per_epoch(prepared, stage, window, stride, windows):
    config = config_with(SMALL, f"data.window={window}", f"data.stride={stride}")
    assert num_windows(prepared, config, stage=stage) == windows
    assert num_windows(prepared, config, stage=stage, cases=["synth_001"]) == windows // 3


# === Sampling ===


@pytest.fixture(scope="module")
def sparse_pancreas(tmp_path_factory) -> pathlib.Path:
    """Four 40-slice cases with pancreas on slices 18-21 only (10 % of slices)."""
    config = config_with(TINY)
    cases = {}
    for n in range(4):
        image = np.full((40, 32, 32), 40, np.int16)
        label = np.zeros((40, 32, 32), np.uint8)
        label[18:22, 10:20, 12:22] = 1
        cases[f"case_{n}"] = (image, label)
    return write_prepared(tmp_path_factory.mktemp("sparse") / "out", config, cases)


@pytest.mark.parametrize(
    "stage, fraction",
    [
        (1, 0.25),  # natural share of positive slices: 4 / 40
        (1, 0.75),
        (2, 0.75),  # natural share of positive 5-slice windows: 8 / 36
        (2, 0.0),
    ],
)
def test_positive_windows_are_oversampled_at_the_configured_rate(sparse_pancreas, stage, fraction):
    config = config_with(
        TINY,
        f"data.positive_fraction={fraction}",
        "data.augment=false",
        "data.batch_size=4",
        "data.slice_batch_size=8",
    )
    steps = steps_per_epoch(sparse_pancreas, config, stage=stage)
    ds = make_training_dataset(sparse_pancreas, config, stage=stage, seed=3)
    masks = np.concatenate([m for _, m in batches(ds, 3 * steps)])
    positive = masks.reshape(len(masks), -1).max(axis=1)
    # 3 epochs: 480 slices or 432 windows; 3.5 standard deviations of a binomial share.
    tolerance = 3.5 * np.sqrt(max(fraction * (1 - fraction), 0.01) / len(positive))
    assert positive.mean() == pytest.approx(fraction, abs=tolerance)


def test_crops_stay_within_the_body_box(tmp_path):
    # The body (bright) fills rows 4-27, columns 8-23 of the 32 x 32 plane; 16 x 16 crops must
    # lie inside it, wherever the pancreas is (here: none at all).
    config = config_with(
        TINY, "data.crop_size=[16,16]", "data.augment=false", "data.slice_batch_size=2"
    )
    image = np.full((6, 32, 32), -1000, np.int16)
    image[:, 4:28, 8:24] = 240
    cases = {"a": (image, np.zeros_like(image, dtype=np.uint8))}
    out = write_prepared(tmp_path / "out", config, cases, body_box=[4, 28, 8, 24])
    ds = make_training_dataset(out, config, stage=1, seed=0)
    for image_batch, _ in batches(ds, 20):
        assert image_batch.min() == 1.0  # every pixel of every crop is body


# === Augmentation ===


def test_augmentation_moves_image_and_mask_together(tmp_path):
    # A bright square (240 HU -> 1.0) on air (-> 0.0) whose label is exactly the square, on
    # every slice: after a rotation up to 30 degrees and a zoom of 0.7-1.3, the thresholded
    # image and the mask still coincide up to the one-pixel rim that interpolation blurs.
    config = config_with(
        TINY,
        "data.window=4",
        "data.batch_size=4",
        "data.rotation_deg=30",
        "data.scale_range=[0.7,1.3]",
        "data.intensity_jitter=0.0",
    )
    image = np.full((8, 32, 32), -1000, np.int16)
    label = np.zeros((8, 32, 32), np.uint8)
    image[:, 10:22, 8:24] = 240
    label[:, 10:22, 8:24] = 1
    out = write_prepared(tmp_path / "out", config, {"square": (image, label)})
    moved = 0
    for images, masks in batches(make_training_dataset(out, config, stage=2, seed=1), 3):
        for window, mask in zip(images[..., 0], masks[..., 0]):
            # One transform for the whole window: every slice identical, image and mask.
            np.testing.assert_array_equal(window, np.broadcast_to(window[0], window.shape))
            np.testing.assert_array_equal(mask, np.broadcast_to(mask[0], mask.shape))
            bright, inside = window[0] > 0.5, mask[0] > 0.5
            rim = ndimage.binary_dilation(inside) & ~ndimage.binary_erosion(inside)
            assert not np.any((bright ^ inside) & ~rim)
            assert (bright & inside).sum() / (bright | inside).sum() > 0.85
            moved += not np.array_equal(inside, label[0] > 0)
    assert moved >= 10  # the transform really moved nearly all 12 windows


def test_no_augmentation_keeps_the_prepared_values(tmp_path):
    config = config_with(TINY, "data.window=2", "data.batch_size=1", "data.augment=false")
    image = np.full((2, 32, 32), 70, np.int16)  # 70 HU is the middle of [-100, 240]
    label = np.zeros((2, 32, 32), np.uint8)
    label[:, 3:5, 6:9] = 1
    out = write_prepared(tmp_path / "out", config, {"flat": (image, label)})
    ((images, masks),) = batches(make_training_dataset(out, config, stage=2, seed=0, epoch=0))
    np.testing.assert_allclose(images, 0.5)
    np.testing.assert_array_equal(masks[0, ..., 0], label)


# === Determinism ===


def test_deterministic_mode_repeats_per_seed_and_epoch(prepared):
    config = config_with(SMALL, "data.window=3", "data.batch_size=2")

    def epoch_data(seed, epoch):
        ds = make_training_dataset(
            prepared, config, stage=2, seed=seed, epoch=epoch, deterministic=True
        )
        return np.concatenate([x for x, _ in batches(ds)])

    first = epoch_data(0, 0)
    np.testing.assert_array_equal(first, epoch_data(0, 0))
    assert not np.array_equal(first, epoch_data(0, 1))
    assert not np.array_equal(first, epoch_data(1, 0))


def test_resumed_stream_sees_the_same_epochs(prepared):
    config = config_with(SMALL, "data.window=3", "data.batch_size=2")
    steps = steps_per_epoch(prepared, config, stage=2)

    def make(**kwargs):
        return make_training_dataset(
            prepared, config, stage=2, seed=4, deterministic=True, **kwargs
        )

    stream = batches(make(), 2 * steps)  # epochs 0 and 1 of an endless stream
    epoch1 = batches(make(epoch=1))
    resumed = batches(make(initial_epoch=1), steps)
    assert len(epoch1) == steps
    for (a, am), (b, bm), (c, cm) in zip(stream[steps:], epoch1, resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
        np.testing.assert_array_equal(am, bm)
        np.testing.assert_array_equal(bm, cm)


@pytest.mark.parametrize("global_seed", [None, 0, 123])
def test_the_stream_ignores_tensorflows_global_seed(prepared, global_seed):
    # Every draw comes from (seed, epoch): an endless stream, made under any global seed (0
    # included, which broke Dataset.shuffle inside flat_map), gives the same windows in the
    # same order.
    config = config_with(SMALL, "data.window=3", "data.batch_size=2", "data.shuffle_buffer=8")
    steps = steps_per_epoch(prepared, config, stage=2)

    def stream():
        ds = make_training_dataset(prepared, config, stage=2, seed=3, deterministic=True)
        return np.concatenate([x for x, _ in batches(ds, 2 * steps)])

    tf.random.set_seed(987)
    reference = stream()
    try:
        if global_seed is None:
            tf.compat.v1.reset_default_graph()
            tf.random.set_seed(None)
        else:
            tf.random.set_seed(global_seed)
        np.testing.assert_array_equal(stream(), reference)
    finally:
        tf.random.set_seed(None)


def test_the_shuffle_mixes_cases_within_its_block(four_levels):
    # Interleaved reading gives the cases in turn; the block shuffle must break that turn, and
    # a block of one window must keep it.
    def case_sequence(block):
        config = config_with(
            TINY, "data.augment=false", "data.slice_batch_size=1", f"data.shuffle_buffer={block}"
        )
        ds = make_training_dataset(
            four_levels, config, stage=1, seed=1, epoch=0, deterministic=True
        )
        return [round(float(x.flat[0]), 3) for x, _ in batches(ds)]

    def turns(sequence):
        return sum(a != b for a, b in zip(sequence, sequence[1:]))

    unshuffled, shuffled = case_sequence(1), case_sequence(24)
    assert sorted(unshuffled) == sorted(shuffled) and len(shuffled) == 24
    assert turns(unshuffled) == len(unshuffled) - 1  # a, b, c, d, a, ...: every step changes case
    assert shuffled != unshuffled and turns(shuffled) < len(shuffled) - 1


# === Case selection and input pipelines ===


@pytest.fixture(scope="module")
def four_levels(tmp_path_factory) -> pathlib.Path:
    """Cases a-d of constant intensity -100, 0, 100, 200 HU (0, 0.294, 0.588, 0.882)."""
    config = config_with(TINY)
    cases = {
        name: (np.full((6, 32, 32), hu, np.int16), np.zeros((6, 32, 32), np.uint8))
        for name, hu in zip("abcd", (-100, 0, 100, 200))
    }
    return write_prepared(tmp_path_factory.mktemp("levels") / "out", config, cases)


def levels_seen(ds: tf.data.Dataset) -> set[float]:
    return {round(float(v), 3) for x, _ in batches(ds) for v in np.unique(x)}


def test_cases_selects_the_training_cases(four_levels):
    config = config_with(TINY, "data.augment=false", "data.slice_batch_size=3")
    ds = make_training_dataset(four_levels, config, stage=1, epoch=0, cases=["d", "b"])
    assert levels_seen(ds) == {0.294, 0.882}
    with pytest.raises(PancsegError, match="'e'"):
        make_training_dataset(four_levels, config, stage=1, cases=["a", "e"])


def test_input_pipelines_read_disjoint_cases(four_levels):
    config = config_with(TINY, "data.augment=false", "data.slice_batch_size=4")
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        ds = make_training_dataset(four_levels, config, stage=1, epoch=0, input_context=context)
        assert ds.element_spec[0].shape[0] == 2  # the per-replica batch
        seen.append(levels_seen(ds))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {0.0, 0.294, 0.588, 0.882}


@pytest.mark.parametrize(
    "kwargs, overrides, message",
    [
        ({"stage": 3}, [], "stage must be 1"),
        ({"stage": 2}, ["data.crop_size=[64,64]"], "larger than the prepared"),
        ({"stage": 2}, ["preprocess.hu_window=[-50,200]"], "another preprocessing config"),
        ({"stage": 2, "cases": []}, [], "no cases selected"),
        ({"stage": 2, "cases": "a"}, [], "list of case ids"),
        ({"stage": 2}, ["data.window=7"], "no selected case has 7 slices"),
        ({"stage": 2}, ["data.batch_size=25"], "fewer than one batch of 25"),
    ],
)
def test_bad_requests_are_named(four_levels, kwargs, overrides, message):
    with pytest.raises(PancsegError, match=message):
        make_training_dataset(four_levels, config_with(TINY, *overrides), **kwargs)


def test_unprepared_folder_is_named(tmp_path):
    with pytest.raises(PancsegError, match="no index.json"):
        make_training_dataset(tmp_path, config_with(TINY), stage=1)


# === Validation volumes ===


def test_validation_volumes_are_whole_prepared_cases(prepared):
    volumes = list(load_validation_volumes(prepared, ["synth_002", "synth_000"]))
    assert [v.case_id for v in volumes] == ["synth_000", "synth_002"]
    index = json.loads((prepared / "index.json").read_text())
    for volume in volumes:
        entry = next(e for e in index["cases"] if e["case_id"] == volume.case_id)
        case = decode_case(next(read_tfrecord(prepared / entry["shard"])))
        # (H, W, K): the case's whole-body plane, at least the model's 48 x 48.
        assert volume.image.shape == volume.label.shape == (*entry["size"], 20)
        assert min(entry["size"]) >= 48
        np.testing.assert_array_equal(volume.label, np.moveaxis(case["label"], 0, 2))
        np.testing.assert_array_equal(volume.image, np.moveaxis(case["image"], 0, 2))
        expected = np.clip((volume.image + 100.0) / 340.0, 0.0, 1.0)
        np.testing.assert_allclose(volume.normalized_image(), expected, atol=1e-6)
        assert volume.plan.model_shape == (*entry["size"], 20)
        assert volume.percentiles is None and volume.modality == "ct"
        assert volume.entry["positive_slices"]


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_training_slices_equal_the_validation_normalisation(tmp_path, modality):
    # The training pipeline and the validation / prediction path normalise the same way.
    cohort = make_cohort(
        tmp_path / "c", cases=1, modality=modality, shape=(64, 64, 20), spacing=(2, 2, 2.5)
    )
    config = config_with(
        SMALL, f"preprocess.modality={modality}", "data.augment=false", "data.slice_batch_size=5"
    )
    prepare_cohort(cohort, tmp_path / "out", config=config, progress=False)
    (volume,) = load_validation_volumes(tmp_path / "out")
    reference = np.moveaxis(volume.normalized_image(), 2, 0)  # (K, H, W), the whole body
    # Every 48 x 48 crop of every slice: a training slice is one of them.
    crops = np.lib.stride_tricks.sliding_window_view(reference, (48, 48), axis=(1, 2))
    images = batches(make_training_dataset(tmp_path / "out", config, stage=1, epoch=0))
    for image in np.concatenate([x for x, _ in images])[..., 0]:
        assert np.abs(crops - image).max(axis=(-2, -1)).min() < 1e-6


def test_a_case_gives_the_same_windows_whatever_cases_it_is_selected_with(prepared):
    # Draws and augmentation are keyed by case id: a split's other cases change nothing.
    config = config_with(SMALL, "data.slice_batch_size=1")

    def slices(cases):
        ds = make_training_dataset(prepared, config, stage=1, seed=2, epoch=0, cases=cases)
        return np.concatenate([x for x, _ in batches(ds)])

    alone, together = slices(["synth_000"]), slices(["synth_000", "synth_002"])
    assert len(alone) == 20 and len(together) == 40
    flat = together.reshape(len(together), -1)
    for image in alone:
        assert np.any(np.all(flat == image.reshape(1, -1), axis=1))
