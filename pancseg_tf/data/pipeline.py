"""The tf.data pipeline: prepared shards -> batches of slice windows (or single slices) and masks.

Stage 2 (CNN + ConvLSTM) trains on windows of ``T = data.window`` consecutive slices; stage 1
(the CNN alone) on single slices, through the same code with ``T = 1`` and the T axis squeezed.

Per epoch, for each training case (its shard is read once, interleaved with other cases):

1. **Sampling.** A case with ``n`` window starts (``0, stride, 2 stride, ...``) gives ``n``
   windows per epoch, drawn with replacement: each is a window containing pancreas with
   probability ``data.positive_fraction`` (the pancreas is on about a third of the slices, so it
   is oversampled), else one without, uniformly among the case's windows of that kind (a case
   with only one kind gives that kind). An epoch is ``N = sum(n)`` windows, ``N // batch``
   batches (`steps_per_epoch`); the last partial batch is dropped.
2. **Crop** to ``data.crop_size`` (default: the model's size, ``preprocess.size``) at a random
   offset within the body's box (from the image at ``prepare``; never the label's box): the
   crop lies inside the box when the box is larger, and contains it when it is smaller. The
   prepared plane holds the whole body (at least ``preprocess.size``; wider for a body that
   exceeds it), so every part of the body, the whole pancreas included, is trained on.
3. **Shuffle** within consecutive blocks of ``data.shuffle_buffer`` windows (stored compactly
   as int16 / float16 + uint8), by a stateless draw: the order does not depend on TensorFlow's
   global seed.
4. **Intensity** normalisation to [0, 1] with `pancseg_tf.preprocessing.intensity` (CT: the HU
   window; MRI: the case's stored percentiles), the code prediction and the exported graph use.
5. **Augmentation** (``data.augment``): one random rotation (``+-rotation_deg``) and zoom
   (``scale_range``) about the plane's centre, the same for every slice of the window, applied
   with one ``ImageProjectiveTransformV3`` call to the image (bilinear) and the mask (nearest);
   an intensity jitter ``x (1 + a) + b``, ``|a|, |b| <= intensity_jitter``, clipped to [0, 1];
   then, where configured (all off by default), a contrast factor ``x c`` about the window's
   low end (``contrast_range``: an unenhanced scan's tissue against an enhanced one's), a gamma
   ``x ** g`` (``gamma_range``) and Gaussian noise (``noise_std``), clipped to [0, 1] again;
   a left-right flip only when ``flip_left_right`` (off: the anatomy is not symmetric).
6. **Batch** (drop remainder) and prefetch.

Determinism: every random choice (case order, window draws, crop offsets, the shuffle, the
augmentation) is a stateless function of ``(seed, epoch, ...)``, so epoch ``e`` has the same
windows whether the stream started at epoch 0 or training resumed at ``e``
(``initial_epoch=e``). With ``deterministic=True`` the order is fixed as well (tf.data's
parallel steps keep their order); without it the content of an epoch is still seeded but
parallel reads may reorder it.

Distribution: one shard file per case. Under ``strategy.experimental_distribute_dataset``
tf.data's auto-shard (FILE policy) shards a one-epoch dataset (``epoch=e``) by case files, and
the endless stream by epochs (worker ``w`` of ``W`` gets epochs ``w, w + W, ...``: no window
twice, none left out). With ``strategy.distribute_datasets_from_function`` pass the
``input_context``: each input pipeline then reads a disjoint share of every epoch's cases and
batches the per-replica batch size.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from pancseg_tf.config import Config
from pancseg_tf.data.prepare import load_index
from pancseg_tf.data.tfrecord import decode_case, read_tfrecord
from pancseg_tf.errors import PancsegError
from pancseg_tf.preprocessing.intensity import normalize_intensity
from pancseg_tf.preprocessing.quantize import stored_to_float

log = logging.getLogger("pancseg_tf.data")

# Salts that separate the random streams derived from (seed, epoch).
_SALT_ORDER, _SALT_WINDOWS, _SALT_SHUFFLE, _SALT_AUGMENT = 11, 23, 37, 41
# Salts of the optional intensity augmentations, folded into a window's key: the draws of the
# rotation, zoom, jitter and flip stay those of a config without them.
_SALT_CONTRAST, _SALT_GAMMA, _SALT_NOISE = 53, 59, 61
# Cases decoded at once per input pipeline: enough to mix cases and keep two cores busy, few
# enough that their volumes (about 10 MB each at 256 x 256 x 80 int16) stay small.
_CYCLE_LENGTH = 8

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.FixedLenFeature([3], tf.int64),
    "pancreas_voxels": tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
    "percentiles": tf.io.FixedLenFeature([2], tf.float32),
    "body_box": tf.io.FixedLenFeature([4], tf.int64),
}


# === Selection and counts ===


def _select_cases(index: dict[str, Any], cases: Sequence[str] | None) -> list[dict[str, Any]]:
    entries = {e["case_id"]: e for e in index["cases"]}
    if cases is None:
        selected = [entries[k] for k in sorted(entries)]
    else:
        if isinstance(cases, str):
            raise PancsegError(f"cases must be a list of case ids, got the string {cases!r}")
        unknown = [c for c in cases if c not in entries]
        if unknown:
            raise PancsegError(
                f"{len(unknown)} case(s) are not in the prepared data (first: {unknown[0]!r}); "
                f"it holds {len(entries)} cases"
            )
        selected = [entries[c] for c in sorted(set(cases))]
    if not selected:
        raise PancsegError("no cases selected: the prepared data or the case list is empty")
    return selected


def _window_geometry(config: Config, stage: int) -> tuple[int, int, int]:
    """``(T, stride, batch)`` of a stage."""
    if stage not in (1, 2):
        raise PancsegError(f"stage must be 1 (slices) or 2 (windows), got {stage!r}")
    d = config.data
    if stage == 1:
        return 1, 1, d.slice_batch_size
    return d.window, d.stride, d.batch_size


def _case_windows(num_slices: int, window: int, stride: int) -> int:
    return 0 if num_slices < window else (num_slices - window) // stride + 1


def num_windows(
    data_dir: str | os.PathLike,
    config: Config,
    *,
    stage: int,
    cases: Sequence[str] | None = None,
) -> int:
    """Windows (stage 2) or slices (stage 1) in one epoch of the selected cases.

    Raises:
        PancsegError: no prepared data, an unknown case, or a bad stage.
    """
    window, stride, _ = _window_geometry(config, stage)
    selected = _select_cases(load_index(data_dir), cases)
    return sum(_case_windows(e["num_slices"], window, stride) for e in selected)


def steps_per_epoch(
    data_dir: str | os.PathLike,
    config: Config,
    *,
    stage: int,
    cases: Sequence[str] | None = None,
) -> int:
    """Batches in one epoch (`num_windows` // the stage's batch size; at least 1).

    With several input pipelines (an ``input_context``) this is the number of global batches:
    each pipeline reads about ``1 / num_input_pipelines`` of the cases.
    """
    _, _, batch = _window_geometry(config, stage)
    return max(1, num_windows(data_dir, config, stage=stage, cases=cases) // batch)


# === Parsing and sampling (graph) ===


def _parse(serialized: tf.Tensor, dtype: tf.DType) -> dict[str, tf.Tensor]:
    raw = tf.io.parse_single_example(serialized, _FEATURES)
    shape = tf.cast(raw["shape"], tf.int32)
    return {
        "image": tf.reshape(tf.io.decode_raw(raw["image"], dtype, little_endian=True), shape),
        "label": tf.reshape(tf.io.decode_raw(raw["label"], tf.uint8), shape),
        "positive": raw["pancreas_voxels"] > 0,
        "percentiles": raw["percentiles"],
        "body_box": tf.cast(raw["body_box"], tf.int32),
    }


def _crop_offsets(
    lo: tf.Tensor, hi: tf.Tensor, size: tf.Tensor, crop: int, u: tf.Tensor
) -> tf.Tensor:
    """Random crop offsets on one axis: within the body box ``[lo, hi)`` (or around it)."""
    a = tf.minimum(lo, hi - crop)
    b = tf.maximum(lo, hi - crop)
    a = tf.clip_by_value(a, 0, size - crop)
    b = tf.clip_by_value(b, 0, size - crop)
    return a + tf.minimum(tf.cast(tf.floor(u * tf.cast(b - a + 1, tf.float32)), tf.int32), b - a)


@dataclasses.dataclass(frozen=True)
class _Spec:
    window: int
    stride: int
    crop: tuple[int, int]
    positive_fraction: float
    dtype: tf.DType


def _sample_case(
    case: dict[str, tf.Tensor], key: tf.Tensor, augment_key: tf.Tensor, spec: _Spec
) -> tf.data.Dataset:
    """The windows one case gives in one epoch.

    Elements: ``(image (T, h, w), label (T, h, w), percentiles (2,), key (2,))``; ``key`` seeds
    the window's augmentation: a function of the case and the draw, not of the order in which
    windows arrive, so parallel reading cannot change it.
    """
    window, stride = spec.window, spec.stride
    shape = tf.shape(case["image"])
    num_slices, height, width = shape[0], shape[1], shape[2]
    starts = tf.range(0, num_slices - window + 1, stride)
    n = tf.size(starts)
    cum = tf.concat([[0], tf.cumsum(tf.cast(case["positive"], tf.int32))], axis=0)
    has_pancreas = tf.gather(cum, starts + window) - tf.gather(cum, starts) > 0
    pos = tf.concat([tf.boolean_mask(starts, has_pancreas), [0]], axis=0)
    neg = tf.concat([tf.boolean_mask(starts, ~has_pancreas), [0]], axis=0)
    n_pos, n_neg = tf.size(pos) - 1, tf.size(neg) - 1
    draws = tf.random.stateless_uniform([4, n], seed=key)
    want_pos = ((draws[0] < spec.positive_fraction) & (n_pos > 0)) | (n_neg == 0)

    def pick(candidates: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        i = tf.cast(tf.floor(draws[1] * tf.cast(count, tf.float32)), tf.int32)
        return tf.gather(candidates, tf.clip_by_value(i, 0, tf.maximum(count - 1, 0)))

    chosen = tf.where(want_pos, pick(pos, n_pos), pick(neg, n_neg))
    box = case["body_box"]
    crop_h, crop_w = spec.crop
    off_h = _crop_offsets(box[0], box[1], height, crop_h, draws[2])
    off_w = _crop_offsets(box[2], box[3], width, crop_w, draws[3])
    image, label, pct = case["image"], case["label"], case["percentiles"]

    def cut(draw: tf.Tensor, start: tf.Tensor, oh: tf.Tensor, ow: tf.Tensor):
        begin = tf.stack([start, oh, ow])
        size = [window, crop_h, crop_w]
        window_key = tf.random.experimental.stateless_fold_in(augment_key, draw)
        return tf.slice(image, begin, size), tf.slice(label, begin, size), pct, window_key

    draws_index = tf.range(n)
    return tf.data.Dataset.from_tensor_slices((draws_index, chosen, off_h, off_w)).map(cut)


# === Normalisation and augmentation (graph) ===


def _affine_transform(key: tf.Tensor, height: int, width: int, data: Any) -> tf.Tensor:
    """The 8 projective parameters (output -> input) of a random rotation and zoom."""
    u = tf.random.stateless_uniform([2], seed=key)
    angle = (2.0 * u[0] - 1.0) * data.rotation_deg * (math.pi / 180.0)
    low, high = data.scale_range
    zoom = low + u[1] * (high - low)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # input = centre + R(angle) / zoom (output - centre), in (x = column, y = row) coordinates
    return tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    )


def _block_shuffle(ds: tf.data.Dataset, block: int, key: tf.Tensor) -> tf.data.Dataset:
    """Shuffles ``ds`` within consecutive blocks of ``block`` elements, statelessly from ``key``.

    ``Dataset.shuffle`` is not used: its order is drawn from TensorFlow's global seed as well as
    its own (``random_seed.get_seed``), so a stream would change with whatever global seed the
    caller set, and inside ``Dataset.counter().flat_map`` a global seed of 0 makes it compare a
    symbolic seed as a Python bool and fail. Here block ``i`` is permuted by a stateless draw
    keyed by ``(key, i)``; the last block of an epoch may be shorter. Memory: one block, as a
    shuffle buffer of the same size holds.
    """

    def permute(index: tf.Tensor, element: tuple) -> tuple:
        n = tf.shape(element[0])[0]
        draw = tf.random.stateless_uniform(
            [n], seed=tf.random.experimental.stateless_fold_in(key, index)
        )
        order = tf.argsort(draw)
        return tuple(tf.gather(t, order) for t in element)

    return ds.batch(block).enumerate().map(permute).unbatch()


def augment_window(
    image: tf.Tensor, mask: tf.Tensor, key: tf.Tensor, config: Config
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random rotation, zoom, intensity changes (and optional flip), one draw per window.

    Args:
        image: ``(T, H, W, 1)`` float32 in [0, 1].
        mask: ``(T, H, W, 1)`` float32 {0, 1}.
        key: stateless seed, shape ``(2,)``: equal keys give equal augmentations.
        config: ``config.data`` gives the ranges.

    Returns:
        ``(image, mask)`` of the same shapes: the same geometric transform on every slice and
        on the mask (bilinear for the image, nearest for the mask, 0 outside), so they stay
        aligned; the image stays in [0, 1] and the mask in {0, 1}. The intensity changes
        (jitter, then ``contrast_range``, ``gamma_range``, ``noise_std`` where set) are the
        same for every slice of the window, except the noise, drawn per voxel.
    """
    data = config.data
    shape = image.shape
    height, width = int(shape[1]), int(shape[2])
    num = tf.shape(image)[0]
    keys = tf.random.experimental.stateless_split(key, 3)
    transform = _affine_transform(keys[0], height, width, data)
    transforms = tf.tile(transform[None], [num, 1])
    out_shape = tf.constant([height, width], tf.int32)
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image,
        transforms=transforms,
        output_shape=out_shape,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    mask = tf.raw_ops.ImageProjectiveTransformV3(
        images=mask,
        transforms=transforms,
        output_shape=out_shape,
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    jitter = (2.0 * tf.random.stateless_uniform([3], seed=keys[1]) - 1.0) * data.intensity_jitter
    image = tf.clip_by_value(image * (1.0 + jitter[0]) + jitter[1], 0.0, 1.0)
    image = _intensity_augment(image, key, data)
    if data.flip_left_right:
        # H (axis 1 of a window) runs from the subject's left to right on the model grid.
        flip = tf.random.stateless_uniform([], seed=keys[2]) < 0.5
        image = tf.where(flip, tf.reverse(image, [1]), image)
        mask = tf.where(flip, tf.reverse(mask, [1]), mask)
    return image, mask


def _intensity_augment(image: tf.Tensor, key: tf.Tensor, data: Any) -> tf.Tensor:
    """Contrast factor, gamma and noise on normalised intensities (each only where set)."""
    fold = tf.random.experimental.stateless_fold_in
    if tuple(data.contrast_range) != (1.0, 1.0):
        low, high = (float(v) for v in data.contrast_range)
        u = tf.random.stateless_uniform([], seed=fold(key, _SALT_CONTRAST))
        image = image * (low + u * (high - low))
    if tuple(data.gamma_range) != (1.0, 1.0):
        low, high = (math.log(float(v)) for v in data.gamma_range)
        u = tf.random.stateless_uniform([], seed=fold(key, _SALT_GAMMA))
        image = tf.pow(image, tf.exp(low + u * (high - low)))
    if data.noise_std > 0:
        noise = tf.random.stateless_normal(tf.shape(image), seed=fold(key, _SALT_NOISE))
        image = image + float(data.noise_std) * noise
    return tf.clip_by_value(image, 0.0, 1.0)


# === The training dataset ===


def make_training_dataset(
    data_dir: str | os.PathLike,
    config: Config,
    *,
    stage: int,
    seed: int = 0,
    epoch: int | None = None,
    initial_epoch: int = 0,
    deterministic: bool = False,
    cases: Sequence[str] | None = None,
    augment: bool | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of training windows (stage 2) or slices (stage 1) from prepared shards.

    Args:
        data_dir: a folder written by ``pancseg prepare``.
        config: ``config.data`` sets windows, sampling, batch sizes and augmentation;
            ``config.preprocess`` must be the one the data was prepared with (its HU window
            normalises CT).
        stage: 1 (single slices, ``data.slice_batch_size``) or 2 (windows of ``data.window``
            slices every ``data.stride``, ``data.batch_size``).
        seed: seeds every random choice together with the epoch.
        epoch: only this epoch (a finite dataset of `steps_per_epoch` batches); ``None``: an
            endless stream of epochs ``initial_epoch, initial_epoch + 1, ...``, each exactly
            `steps_per_epoch` batches (so ``fit(steps_per_epoch=...)`` epochs line up with it).
        initial_epoch: the first epoch of the endless stream (resume training here).
        deterministic: fix the order of elements (slower: no reordering of parallel work).
        cases: case ids to train on (a split's training cases); default all.
        augment: override ``data.augment``.
        input_context: from ``strategy.distribute_datasets_from_function``: read this input
            pipeline's share of the cases and batch the per-replica batch size.

    Returns:
        A dataset of ``(image, mask)``, both float32: stage 2 ``(B, T, H, W, 1)``, stage 1
        ``(B, H, W, 1)`` with ``(H, W)`` = ``data.crop_size`` or ``preprocess.size``; image
        in [0, 1], mask in {0, 1}.

    Raises:
        PancsegError: no prepared data, an unknown case, a bad stage, a crop larger than the
            prepared plane, or data prepared with another preprocessing config.
    """
    config.validate()
    index = load_index(data_dir)
    if index["preprocess_hash"] != config.hash("preprocess"):
        raise PancsegError(
            f"{data_dir} was prepared with another preprocessing config (hash "
            f"{index['preprocess_hash']}, the config's is {config.hash('preprocess')}); use the "
            "config it was prepared with (index.json 'preprocess') or prepare again"
        )
    window, stride, batch = _window_geometry(config, stage)
    selected = _select_cases(index, cases)
    # Each case's plane holds its whole body (at least ``preprocess.size``); windows are cut
    # at the model's size (or ``data.crop_size``) from it.
    crop = tuple(config.data.crop_size or config.preprocess.size)
    narrow = [e for e in selected if crop[0] > e["size"][0] or crop[1] > e["size"][1]]
    if narrow:
        raise PancsegError(
            f"data.crop_size {list(crop)} is larger than the prepared plane {narrow[0]['size']} "
            f"of case {narrow[0]['case_id']}"
        )
    usable = [e for e in selected if e["num_slices"] >= window]
    if len(usable) < len(selected):
        log.warning(
            "%d case(s) have fewer than %d slices and give no window",
            len(selected) - len(usable),
            window,
        )
    if not usable:
        raise PancsegError(f"no selected case has {window} slices or more")
    total = sum(_case_windows(e["num_slices"], window, stride) for e in usable)
    if total < batch:
        # Every epoch would be empty after dropping the partial batch: an endless loop.
        raise PancsegError(
            f"the selected cases give {total} {'windows' if stage == 2 else 'slices'} per epoch, "
            f"fewer than one batch of {batch}; lower the batch size or add cases"
        )
    modality = index["modality"]
    spec = _Spec(
        window=window,
        stride=stride,
        crop=(int(crop[0]), int(crop[1])),
        positive_fraction=float(config.data.positive_fraction),
        dtype=tf.int16 if modality == "ct" else tf.float16,
    )
    do_augment = config.data.augment if augment is None else bool(augment)
    root = pathlib.Path(data_dir)
    files = tf.constant([str(root / e["shard"]) for e in usable])
    # Each case's random draws are keyed by its id, not its position: the same case gets the
    # same windows in an epoch whichever other cases a split puts beside it.
    ordinals = tf.constant([zlib.crc32(e["case_id"].encode()) >> 1 for e in usable], tf.int32)
    num_files = len(usable)
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
    base = tf.constant(int(seed), tf.int64)

    def one_epoch(epoch_t: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([base, tf.cast(epoch_t, tf.int64)])
        fold = tf.random.experimental.stateless_fold_in
        order = tf.argsort(tf.random.stateless_uniform([num_files], seed=fold(key, _SALT_ORDER)))
        if input_context is not None and input_context.num_input_pipelines > 1:
            order = order[input_context.input_pipeline_id :: input_context.num_input_pipelines]
        plan = tf.data.Dataset.from_tensor_slices(
            (tf.gather(files, order), tf.gather(ordinals, order))
        )
        windows_key = fold(key, _SALT_WINDOWS)
        augment_key = fold(key, _SALT_AUGMENT)

        def read(path: tf.Tensor, ordinal: tf.Tensor) -> tf.data.Dataset:
            case_key = fold(windows_key, ordinal)
            case_augment_key = fold(augment_key, ordinal)
            return (
                tf.data.TFRecordDataset(path)
                .map(lambda s: _parse(s, spec.dtype))
                .flat_map(lambda case: _sample_case(case, case_key, case_augment_key, spec))
            )

        ds = plan.interleave(
            read,
            cycle_length=min(_CYCLE_LENGTH, num_files),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
        ds = _block_shuffle(ds, max(1, config.data.shuffle_buffer), fold(key, _SALT_SHUFFLE))

        def finish(image, label, pct, window_key) -> tuple[tf.Tensor, tf.Tensor]:
            image = normalize_intensity(
                image, modality, window=config.preprocess.hu_window, percentiles=(pct[0], pct[1])
            )
            image = tf.ensure_shape(image, [window, *spec.crop])[..., None]
            mask = tf.ensure_shape(tf.cast(label, tf.float32), [window, *spec.crop])[..., None]
            if do_augment:
                image, mask = augment_window(image, mask, window_key, config)
            if stage == 1:
                image, mask = image[0], mask[0]
            return image, mask

        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        return ds.batch(batch, drop_remainder=True)

    if epoch is not None:
        ds = one_epoch(tf.constant(int(epoch), tf.int64))
    else:
        ds = tf.data.Dataset.counter(start=int(initial_epoch)).flat_map(one_epoch)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    # Each input op on one thread: parallelism comes from parallel maps and interleave, and the
    # training step's own ops keep the intra-op thread pool (tf-models' input readers do this).
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


# === Validation volumes ===


@dataclasses.dataclass
class ValidationVolume:
    """One whole prepared case, unaugmented, for validating through the prediction path.

    Attributes:
        case_id: the cohort's case name.
        modality: ``"ct"`` or ``"mri"``.
        image: ``(H, W, K)`` float32 on the model grid (the geometry's ``forward`` layout):
            Hounsfield units (CT) or the scanner's units (MRI), not normalised.
        label: ``(H, W, K)`` uint8 {0, 1}.
        percentiles: MRI: the volume's normalisation percentiles (original units); ``None``
            for CT.
        hu_window: the CT window of the preprocessing config.
        entry: the case's index entry (original shape, spacing and affine, the geometry plan
            dict, body box, slices with pancreas).
        original_label: ``(I, J, K)`` uint8 {0, 1} on the original volume's grid, or ``None``
            for data prepared before the records stored it.
    """

    case_id: str
    modality: str
    image: np.ndarray
    label: np.ndarray
    percentiles: tuple[float, float] | None
    hu_window: tuple[float, float]
    entry: dict[str, Any]
    original_label: np.ndarray | None = None

    @property
    def plan(self) -> Any:
        """The case's `GeometryPlan` (model grid <-> the original volume's own grid)."""
        from pancseg_tf.preprocessing.geometry import GeometryPlan

        return GeometryPlan.from_dict(self.entry["geometry"])

    def normalized_image(self) -> np.ndarray:
        """``(H, W, K)`` float32 in [0, 1] through the shared intensity normalisation."""
        out = normalize_intensity(
            self.image, self.modality, window=self.hu_window, percentiles=self.percentiles
        )
        return np.asarray(out, dtype=np.float32)


def load_validation_volumes(
    data_dir: str | os.PathLike, cases: Sequence[str] | None = None
) -> Iterator[ValidationVolume]:
    """Yields whole prepared cases (one at a time, in case-id order) for validation.

    Args:
        data_dir: a folder written by ``pancseg prepare``.
        cases: the case ids (a split's validation cases); default all.

    Yields:
        `ValidationVolume` per case.

    Raises:
        PancsegError: no prepared data, an unknown case, or a corrupt shard.
    """
    index = load_index(data_dir)
    selected = _select_cases(index, cases)
    root = pathlib.Path(data_dir)
    hu = index["preprocess"]["hu_window"]
    for entry in selected:
        records = list(read_tfrecord(root / entry["shard"]))
        if len(records) != 1:
            raise PancsegError(f"shard {entry['shard']} holds {len(records)} records, expected 1")
        case = decode_case(records[0])
        scale = float(case["intensity_scale"])
        image = np.moveaxis(stored_to_float(case["image"], scale), 0, 2)
        percentiles = None
        if case["modality"] == "mri":
            low, high = (float(v) / scale for v in case["percentiles"])
            percentiles = (low, high)
        yield ValidationVolume(
            case_id=entry["case_id"],
            modality=case["modality"],
            image=np.ascontiguousarray(image),
            label=np.ascontiguousarray(np.moveaxis(case["label"], 0, 2)),
            percentiles=percentiles,
            hu_window=(float(hu[0]), float(hu[1])),
            entry=entry,
            original_label=case["original_label"],
        )
