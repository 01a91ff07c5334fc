"""Typed config: YAML round trip, overrides, and errors that name the key."""

import pytest
import yaml

from pancseg_tf.config import Config, apply_overrides, load_config, save_config
from pancseg_tf.errors import PancsegError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = Config()
    cfg.validate()
    path = tmp_path / "config.yaml"
    save_config(cfg, path, extra={"package_version": "x"})
    assert yaml.safe_load(path.read_text())["provenance"] == {"package_version": "x"}
    assert load_config(path) == cfg


def test_overrides_parse_values_as_yaml():
    cfg = apply_overrides(
        Config(),
        [
            "preprocess.spacing_mm=0.9",
            "preprocess.size=[128, 160]",
            "data.window=7",
            "preprocess.slice_spacing_mm=null",
            "data.augment=false",
            "train.stage2_learning_rate=2e-5",  # YAML 1.1 reads this as a string
        ],
    )
    assert cfg.train.stage2_learning_rate == 2e-5
    assert cfg.preprocess.spacing_mm == 0.9
    assert cfg.preprocess.size == (128, 160)
    assert cfg.preprocess.slice_spacing_mm is None
    assert cfg.data.window == 7
    assert cfg.data.augment is False


def test_hash_changes_with_a_setting():
    a = Config()
    b = apply_overrides(Config(), ["preprocess.spacing_mm=0.7"])
    assert a.hash("preprocess") != b.hash("preprocess")
    assert a.hash("data") == b.hash("data")


@pytest.mark.parametrize(
    "override, named",
    [
        ("preprocess.spacingmm=1", "preprocess.spacingmm"),
        ("nosection.x=1", "nosection"),
        ("preprocess.spacing_mm=abc", "preprocess.spacing_mm"),
        ("preprocess.spacing_mm=-1", "preprocess.spacing_mm"),
        ("preprocess.size=[64]", "preprocess.size"),
        ("preprocess.modality=pet", "preprocess.modality"),
        ("data.window=0", "data.window"),
        ("data.augment=3", "data.augment"),
        ("data.positive_fraction=1.5", "data.positive_fraction"),
        ("train.stage2_loss_sharpness=0.5", "train.stage2_loss_sharpness"),
        ("train.stage2_loss_sharpness=yes", "train.stage2_loss_sharpness"),
        ("train.learning_rate=2e-x", "train.learning_rate"),
    ],
)
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(PancsegError, match=named.replace(".", r"\.")):
        apply_overrides(Config(), [override])


def test_bad_files_are_clear(tmp_path):
    with pytest.raises(PancsegError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess: [1, 2\n")
    with pytest.raises(PancsegError, match="not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("preprocess:\n  spacing: 1.0\n")
    with pytest.raises(PancsegError, match="preprocess.*spacing"):
        load_config(unknown)


def test_model_section_is_typed():
    cfg = apply_overrides(
        Config(), ["model.lstm_resolution=2", "model.aggregation_filters=4", "model.dropout=0"]
    )
    assert cfg.model.contextual_kwargs() == {"lstm_resolution": 2}
    assert cfg.model.slice_cnn_kwargs() == {
        "dropout": 0.0,
        "aggregation_filters": 4,
        "deep_supervision": True,
    }
    for bad, named in (
        ("model.lstm_resolution=0", "model.lstm_resolution"),
        ("model.lstm_filters=two", "model.lstm_filters"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.preset=huge", "model.preset"),
        ("model.overrides={lstm_resolution: 2}", "model.overrides"),
    ):
        with pytest.raises(PancsegError, match=named):
            apply_overrides(Config(), [bad])


def test_a_run_config_from_before_the_typed_model_section_loads():
    """Run folders written with the untyped `model.overrides` mapping still load: its keys
    become typed keys; the old design's options are refused with one line that says why."""
    from pancseg_tf.config import config_from_dict

    old = Config().to_dict()
    old["model"] = {"preset": "quick", "overrides": {"aggregation_filters": 4}}
    assert config_from_dict(old).model.aggregation_filters == 4
    old["model"]["overrides"] = {}
    assert config_from_dict(old).model == Config().model
    old["model"]["overrides"] = {"context_channels": 0, "fusion_gate": "range"}
    with pytest.raises(PancsegError, match="context_channels belongs to the contextual design"):
        config_from_dict(old)


def test_validation_fraction_zero_validates_on_the_training_cases():
    from pancseg_tf.training.trainer import split_cases

    cfg = apply_overrides(Config(), ["train.validation_fraction=0"])
    assert cfg.train.validation_fraction == 0.0
    one = split_cases(["case_a"], 0.0, seed=1)
    assert one["train"] == one["validation"] == ["case_a"] and one["validation_on_training"]
    with pytest.raises(PancsegError, match="validation_fraction=0"):
        split_cases(["case_a"], 0.2, seed=1)
    with pytest.raises(PancsegError, match="train.validation_fraction"):
        apply_overrides(Config(), ["train.validation_fraction=1"])
