"""Typed configuration: dataclasses, YAML on disk, ``key=value`` overrides.

One `Config` holds every setting of a run, in sections. The resolved config is written into every
run folder, prepared data index and export, so that what produced an artefact can always be read
back. Unknown keys and wrongly typed values are errors that name the key.

Example:
    >>> cfg = Config()
    >>> cfg = apply_overrides(cfg, ["preprocess.spacing_mm=0.9", "data.window=7"])
    >>> cfg.data.window
    7
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import types
import typing
from typing import Any

from pancseg_tf.errors import PancsegError


@dataclasses.dataclass
class PreprocessConfig:
    """Host geometry and in-graph intensity settings, shared by prepare, predict and export.

    Attributes:
        modality: ``"ct"`` or ``"mri"``; decides the intensity normalisation.
        spacing_mm: in-plane spacing every volume is resampled to, so that anatomy has the same
            size in pixels whatever the scanner's field of view.
        slice_spacing_mm: spacing along z the volume is resampled to; ``None`` keeps the native
            slice spacing. The ConvLSTM learns context between neighbouring slices: at one fixed
            spacing that context means the same thing on every scanner.
        size: in-plane size ``(H, W)`` of the model's input, centred on the body; a body wider
            than that is prepared whole and predicted in overlapping tiles of this size.
        hu_window: CT window in HU, scaled to [0, 1] (the NIH Pancreas-CT literature's default).
        mri_percentiles: percentiles of the MRI robust normalisation, computed once per volume.
        label_values: label values that mean pancreas (MSD Task07: 1 and 2; TotalSegmentator: 7).
    """

    modality: str = "ct"
    spacing_mm: float = 0.8
    slice_spacing_mm: float | None = 2.5
    size: tuple[int, int] = (256, 256)
    hu_window: tuple[float, float] = (-100.0, 240.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    label_values: tuple[int, ...] = (1, 2)

    def validate(self) -> None:
        if self.modality not in ("ct", "mri"):
            raise PancsegError(f"preprocess.modality must be 'ct' or 'mri', got {self.modality!r}")
        if not self.spacing_mm > 0:
            raise PancsegError(f"preprocess.spacing_mm must be > 0, got {self.spacing_mm}")
        if self.slice_spacing_mm is not None and not self.slice_spacing_mm > 0:
            raise PancsegError(
                f"preprocess.slice_spacing_mm must be > 0 or null, got {self.slice_spacing_mm}"
            )
        if len(self.size) != 2 or min(self.size) < 16:
            raise PancsegError(f"preprocess.size must be two sizes >= 16, got {list(self.size)}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise PancsegError(f"preprocess.hu_window must be [low, high], got {self.hu_window}")


@dataclasses.dataclass
class DataConfig:
    """The tf.data window pipeline (prepared shards -> training windows).

    Attributes:
        window: slices per training window ``T`` (stage 2); stage 1 uses single slices.
        stride: step between window starts along a volume.
        positive_fraction: share of sampled windows that contain pancreas (it is in about a third
            of the slices and under 1 % of the voxels, so it is oversampled).
        batch_size: windows per step in stage 2.
        slice_batch_size: slices per step in stage 1.
        shuffle_buffer: windows shuffled together: the pipeline permutes consecutive blocks
            of this many windows (a stateless draw from the run's seed and epoch).
        augment: random in-plane rotation, scale and intensity jitter, identical for every slice
            of a window and its mask.
        rotation_deg: largest rotation, degrees.
        scale_range: smallest and largest zoom.
        intensity_jitter: largest shift and relative scale of normalised intensities.
        contrast_range: smallest and largest factor on normalised intensities, about the
            window's low end (CT: fat stays where it is, enhanced tissue moves most): ``[0.5,
            1.2]`` spans an unenhanced scan's pancreas (about -6 HU, TotalSegmentator s0009)
            to a contrast-enhanced one's (about 100 HU, NIH); ``[1, 1]``: off.
        gamma_range: smallest and largest gamma of ``x ** gamma`` on normalised intensities
            (drawn log-uniformly); ``[1, 1]``: off.
        noise_std: standard deviation of Gaussian noise added to normalised intensities; 0: off.
        flip_left_right: off by default: anatomy is not left-right symmetric.
        crop_size: in-plane size ``(H, W)`` of training windows, cut at a random offset within
            the body's box of the prepared plane (which holds the whole body); ``None``: the
            model's size, ``preprocess.size``. Smaller crops make steps cheaper (the model is
            validated and saved at ``preprocess.size``).
    """

    window: int = 5
    stride: int = 1
    positive_fraction: float = 0.5
    batch_size: int = 2
    slice_batch_size: int = 16
    shuffle_buffer: int = 256
    augment: bool = True
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_jitter: float = 0.05
    contrast_range: tuple[float, float] = (1.0, 1.0)
    gamma_range: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0
    flip_left_right: bool = False
    crop_size: tuple[int, int] | None = None

    def validate(self) -> None:
        if not 1 <= self.window <= 64:
            raise PancsegError(f"data.window must be in 1..64, got {self.window}")
        if self.stride < 1:
            raise PancsegError(f"data.stride must be >= 1, got {self.stride}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise PancsegError(
                f"data.positive_fraction must be in [0, 1], got {self.positive_fraction}"
            )
        if self.batch_size < 1 or self.slice_batch_size < 1:
            raise PancsegError("data.batch_size and data.slice_batch_size must be >= 1")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise PancsegError(f"data.scale_range must be [low, high] > 0, got {self.scale_range}")
        for name in ("contrast_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise PancsegError(f"data.{name} must be [low, high] > 0, got {[low, high]}")
        if not 0.0 <= self.noise_std <= 1.0:
            raise PancsegError(f"data.noise_std must be in [0, 1], got {self.noise_std}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 16):
            raise PancsegError(
                f"data.crop_size must be two sizes >= 16 or null, got {list(self.crop_size)}"
            )


LOSSES = ("jaccard", "jaccard_per_sample", "dice", "bce", "weighted_bce", "jaccard_bce")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


#: Keys of the old untyped ``model.overrides`` that the typed model section took over; read
#: from run folders written before it (`config_from_dict`).
_TYPED_MODEL_KEYS = (
    "dropout",
    "aggregation_filters",
    "max_filters",
    "lstm_kernel_size",
    "lstm_resolution",
)
#: Options of the old contextual design that the paper's design replaced (no longer built).
_REMOVED_MODEL_KEYS = ("context_channels", "fusion_channels", "fusion_gate")
PRESETS = ("tiny", "quick", "paper")


@dataclasses.dataclass
class ModelConfig:
    """Which network and at what size. Every size left ``null`` takes the preset's.

    The contextual model is the paper's (`pancseg_tf.models.ContextualSegmenter`): the CNN's
    probability map, and nothing else, is read by a bidirectional ConvLSTM whose output is the
    segmentation.

    Attributes:
        preset: ``"quick"`` (2 CPU cores, minutes), ``"paper"`` (GPUs) or ``"tiny"`` (tests).
        base_filters: filters of the CNN's first level.
        depth: CNN encoder levels (2x2 poolings).
        deep_supervision: side outputs at several scales, trained against the resized mask.
        dropout: dropout rate in the CNN's deepest blocks, in [0, 1).
        aggregation_filters: channels each decoder level contributes to the CNN's multi-scale
            aggregation.
        max_filters: cap on the CNN's filters per level.
        lstm_filters: ConvLSTM filters per direction.
        lstm_kernel_size: kernel size of the ConvLSTM's convolutions.
        lstm_resolution: the ConvLSTM runs at 1 / this of the model grid (1: full resolution);
            must divide ``2**depth``.
    """

    preset: str = "quick"
    base_filters: int | None = None
    depth: int | None = None
    deep_supervision: bool = True
    dropout: float | None = None
    aggregation_filters: int | None = None
    max_filters: int | None = None
    lstm_filters: int | None = None
    lstm_kernel_size: int | None = None
    lstm_resolution: int | None = None

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise PancsegError(
                f"model.preset must be one of {', '.join(PRESETS)}, got {self.preset!r}"
            )
        for name in (
            "base_filters",
            "depth",
            "aggregation_filters",
            "max_filters",
            "lstm_filters",
            "lstm_kernel_size",
            "lstm_resolution",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PancsegError(
                    f"model.{name} must be >= 1 (or null: the preset's), got {value}"
                )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise PancsegError(f"model.dropout must be in [0, 1) (or null), got {self.dropout}")

    def slice_cnn_kwargs(self) -> dict[str, Any]:
        """The `SliceCNN` keywords this section sets (on top of the preset)."""
        names = ("base_filters", "depth", "dropout", "aggregation_filters", "max_filters")
        kwargs = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        kwargs["deep_supervision"] = self.deep_supervision
        return kwargs

    def contextual_kwargs(self) -> dict[str, Any]:
        """The `ContextualSegmenter` keywords this section sets (on top of the preset)."""
        names = ("lstm_filters", "lstm_kernel_size", "lstm_resolution")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def _upgrade_model_section(model: Any) -> Any:
    """A run folder's ``model:`` section written before the section was typed: the old
    ``overrides`` mapping's keys become typed keys; the old design's options are refused."""
    if not isinstance(model, dict) or "overrides" not in model:
        return model
    model = dict(model)
    overrides = model.pop("overrides") or {}
    if not isinstance(overrides, dict):
        raise PancsegError(f"config key 'model.overrides' must be a mapping, got {overrides!r}")
    for key, value in overrides.items():
        if key in _REMOVED_MODEL_KEYS:
            raise PancsegError(
                f"model.overrides.{key} belongs to the contextual design before the paper's "
                "(residual fusion, feature channels, neighbour gate), which this version no "
                "longer builds; remove it"
            )
        if key not in _TYPED_MODEL_KEYS:
            raise PancsegError(f"unknown config key model.overrides.{key}")
        model.setdefault(key, value)
    return model


@dataclasses.dataclass
class TrainConfig:
    """Two-stage training.

    Attributes:
        stage1_epochs: epochs of the `SliceCNN` alone on single slices.
        stage2_epochs: epochs of the whole `ContextualSegmenter`, end to end, on windows.
        steps_per_epoch: training steps per epoch (batches), both stages.
        learning_rate: AdamW peak learning rate, stage 1.
        stage2_learning_rate: AdamW peak learning rate, stage 2 (fine-tuning).
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: epochs of linear warm-up before the cosine decay.
        loss: one of ``LOSSES``; ``jaccard`` is the paper's loss with sums over the batch.
        side_output_weights: weights of the deep-supervision side outputs, finest first.
        freeze_cnn_epochs: stage-2 epochs with the CNN frozen (only the ConvLSTM learns).
        context_learning_rate: AdamW peak learning rate of those frozen-CNN epochs, where the
            new ConvLSTM and head learn from their start; default ``learning_rate``.
            ``stage2_learning_rate`` then fine-tunes everything.
        stage2_loss_sharpness: stage 2's loss sees ``sigmoid(k * logit(p))`` with this ``k``
            (`pancseg_tf.losses.SharpenedLoss`): the same 0.5 boundary, the stage-1 CNN's haze
            of low probabilities weighed out, so the new layers cannot lower the loss by
            shrinking every mask. 1 is the plain loss.
        early_stopping_patience: epochs without a better validation DSC before a stage stops;
            0 turns early stopping off.
        validation_fraction: share of the cases held out for validation (at least one case);
            0 holds none out: validation, and so each stage's checkpoint and the shipped model,
            is chosen on the training cases themselves (for a cohort of one to three cases,
            where holding one out leaves too little to learn from; `splits.json` says so).
        validation_cases: at most this many validation volumes are predicted per epoch.
        precision: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
        jit_compile: XLA-compile the train step.
    """

    stage1_epochs: int = 8
    stage2_epochs: int = 6
    steps_per_epoch: int = 50
    learning_rate: float = 2e-3
    stage2_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    loss: str = "jaccard"
    side_output_weights: tuple[float, ...] = (0.5, 0.25, 0.125)
    freeze_cnn_epochs: int = 0
    context_learning_rate: float | None = None
    stage2_loss_sharpness: float = 1.0
    early_stopping_patience: int = 0
    validation_fraction: float = 0.2
    validation_cases: int = 8
    precision: str = "float32"
    jit_compile: bool = False

    def validate(self) -> None:
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise PancsegError("train.stage1_epochs and train.stage2_epochs must be >= 0")
        if self.steps_per_epoch < 1:
            raise PancsegError(f"train.steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not self.learning_rate > 0 or not self.stage2_learning_rate > 0:
            raise PancsegError("train.learning_rate and train.stage2_learning_rate must be > 0")
        if self.context_learning_rate is not None and not self.context_learning_rate > 0:
            raise PancsegError("train.context_learning_rate must be > 0 (or null: learning_rate)")
        if isinstance(self.stage2_loss_sharpness, bool) or not (
            isinstance(self.stage2_loss_sharpness, (int, float))
            and self.stage2_loss_sharpness >= 1.0
        ):
            raise PancsegError(
                f"train.stage2_loss_sharpness must be a number >= 1, got "
                f"{self.stage2_loss_sharpness!r}"
            )
        if self.loss not in LOSSES:
            raise PancsegError(f"train.loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise PancsegError(
                f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise PancsegError(
                f"train.validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


@dataclasses.dataclass
class PostprocessConfig:
    """What happens to the thresholded probabilities.

    Attributes:
        threshold: probability at or above which a voxel is pancreas.
        largest_component: keep the largest 3D connected component (holes are filled either
            way). Cross-validation chooses it on validation predictions, as nnU-Net does.
    """

    threshold: float = 0.5
    largest_component: bool = True

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise PancsegError(f"postprocess.threshold must be in (0, 1), got {self.threshold}")


@dataclasses.dataclass
class Config:
    """Every setting of a run, in sections."""

    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            if hasattr(section, "validate"):
                section.validate()

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def hash(self, section: str | None = None) -> str:
        """A short stable hash of the whole config or of one section (for indexes and runs)."""
        data = self.to_dict() if section is None else self.to_dict()[section]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Converts a plain YAML value to the field's annotated type, or names the key."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | globals())  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise PancsegError(f"config key {key!r} must be a mapping, got {value!r}")
        return _from_dict(annotation, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PancsegError as err:
                errors.append(str(err))
        raise PancsegError(errors[0] if errors else f"config key {key!r}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise PancsegError(f"config key {key!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise PancsegError(f"config key {key!r} must have {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise PancsegError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise PancsegError(f"config key {key!r} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise PancsegError(f"config key {key!r} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 2e-5 (no dot) as a string; users write learning rates that way.
            try:
                return float(value)
            except ValueError:
                pass
        raise PancsegError(f"config key {key!r} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise PancsegError(f"config key {key!r} must be a string, got {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise PancsegError(
            f"unknown config key {where}{unknown[0]!r}; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Builds and validates a `Config` from plain data (as YAML gives it)."""
    data = dict(data or {})
    data.pop("provenance", None)  # written by save_config; not a setting
    if "model" in data:
        data["model"] = _upgrade_model_section(data["model"])
    cfg = _from_dict(Config, data)
    cfg.validate()
    return cfg


#: Named configs shipped with the package (``--config quick`` or ``--config paper``).
NAMED_CONFIGS = pathlib.Path(__file__).parent / "configs"


def load_config(path: str | pathlib.Path | None) -> Config:
    """Reads a YAML config; ``None`` gives the defaults; a bare name (``quick``, ``paper``) a
    config shipped with the package.

    Raises:
        PancsegError: the file is missing, is not YAML, or has an unknown or mistyped key.
    """
    if path is None:
        return Config()
    import yaml

    path = pathlib.Path(path)
    named = NAMED_CONFIGS / f"{path}.yaml"
    if (
        not path.is_file()
        and path.suffix == ""
        and path.parent == pathlib.Path(".")
        and named.is_file()
    ):
        path = named
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in NAMED_CONFIGS.glob("*.yaml")))
        raise PancsegError(f"config file not found: {path} (named configs: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PancsegError(f"config file {path} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise PancsegError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return config_from_dict(data or {})


def save_config(cfg: Config, path: str | pathlib.Path, extra: dict[str, Any] | None = None) -> None:
    """Writes the resolved config as YAML (atomically); ``extra`` goes under ``provenance:``."""

    import yaml

    path = pathlib.Path(path)
    data = cfg.to_dict()
    if extra:
        data = {"provenance": dict(extra), **data}
    from pancseg_tf.atomic import write_text

    write_text(path, yaml.safe_dump(data, sort_keys=False))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``section.key=value`` overrides (values parsed as YAML) and validates.

    Raises:
        PancsegError: an override without ``=``, an unknown key, or a mistyped value.
    """
    import yaml

    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise PancsegError(f"override must be key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise PancsegError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        if parts[-1] not in node:
            raise PancsegError(f"unknown config key {key.strip()!r}")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return config_from_dict(data)
