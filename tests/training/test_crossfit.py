"""Cross-fitted stage 2: the folds, the training view that feeds each window through its fold's
CNN, and the config that turns it on. The run from the command line is in test_trainer.py."""

import keras
import numpy as np
import pytest

from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.errors import PancsegError
from pancseg_tf.models import ContextualSegmenter, SliceCNN
from pancseg_tf.training.crossfit import CrossFittedContext, cross_fit_folds

CNN = {"base_filters": 4, "depth": 2, "input_size": 32}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_folds_partition_the_training_cases_seeded_and_even():
    cases = [f"case_{i:02d}" for i in range(11)]
    folds = cross_fit_folds(list(reversed(cases)), 3, seed=4)
    assert folds == cross_fit_folds(cases, 3, seed=4)  # order of the input does not matter
    assert sorted(c for fold in folds for c in fold) == cases
    assert sorted(len(fold) for fold in folds) == [3, 4, 4]
    assert all(fold == sorted(fold) for fold in folds)
    assert cross_fit_folds(cases, 3, seed=5) != folds


def segmenter_and_fold_cnns():
    keras.utils.set_random_seed(0)
    model = ContextualSegmenter(
        slice_cnn=dict(CNN), context_channels=0, lstm_filters=4, lstm_resolution=2
    )
    conv = model.slice_fusion.get_layer("fusion_conv")
    conv.kernel.assign(np.random.default_rng(0).normal(0, 0.5, conv.kernel.shape))
    cnns = [SliceCNN(**CNN), SliceCNN(**CNN)]
    return model, cnns


def test_each_window_goes_through_its_folds_cnn():
    model, cnns = segmenter_and_fold_cnns()
    view = CrossFittedContext(model, cnns)
    assert view.deployed is model
    rng = np.random.default_rng(1)
    images = rng.random((2, 5, 32, 32, 1)).astype(np.float32)
    out = numpy(view({"slices": images, "fold": np.array([1, 0])})["prob"])
    assert out.shape == (2, 5, 32, 32, 1)
    for window, fold in ((0, 1), (1, 0)):
        ref = cnns[fold](images[window])
        expected = numpy(model.context_head(ref["logit"], ref["prob"], 1))[0]
        np.testing.assert_allclose(out[window], expected, rtol=1e-5, atol=1e-6)
    # The fold's CNN matters: the other fold's CNN gives another answer.
    other = cnns[0](images[0])
    assert (
        np.abs(numpy(model.context_head(other["logit"], other["prob"], 1))[0] - out[0]).max() > 1e-3
    )


def test_a_fit_step_trains_the_context_layers_only():
    model, cnns = segmenter_and_fold_cnns()
    model.freeze_cnn(True)
    view = CrossFittedContext(model, cnns)
    view.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"prob": "binary_crossentropy"})
    frozen = [numpy(w).copy() for m in (model.slice_cnn, *cnns) for w in m.weights]
    fusion = numpy(model.slice_fusion.get_layer("fusion_conv").kernel).copy()
    rng = np.random.default_rng(2)
    images = rng.random((4, 3, 32, 32, 1)).astype(np.float32)
    masks = (images > 0.5).astype(np.float32)
    view.fit(
        {"slices": images, "fold": np.array([0, 1, 1, 0])},
        {"prob": masks},
        batch_size=2,
        epochs=1,
        verbose=0,
    )
    after = [numpy(w) for m in (model.slice_cnn, *cnns) for w in m.weights]
    assert all(np.array_equal(a, b) for a, b in zip(frozen, after, strict=True))
    assert not np.array_equal(fusion, numpy(model.slice_fusion.get_layer("fusion_conv").kernel))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.cross_fit_folds=1"], "train.cross_fit_folds must be 0"),
        (["train.cross_fit_folds=2"], "model.overrides.context_channels: 0"),
        (
            [
                "train.cross_fit_folds=2",
                "model.overrides.context_channels=0",
                "train.cross_fit_epochs=0",
            ],
            "train.cross_fit_epochs must be >= 1",
        ),
        (
            ["train.cross_fit_folds=2", "model.overrides.context_channels=0"],
            "train.cross_fit_folds needs train.freeze_cnn_epochs >= 1",
        ),
    ],
)
def test_config_refuses_what_cannot_work(overrides, message):
    with pytest.raises(PancsegError, match=message):
        apply_overrides(Config(), overrides)


def test_model_overrides_take_any_network_keyword_from_the_command_line():
    cfg = apply_overrides(
        Config(),
        [
            "model.overrides.context_channels=0",
            "train.cross_fit_folds=2",
            "train.freeze_cnn_epochs=1",
        ],
    )
    assert cfg.model.overrides == {"context_channels": 0} and cfg.train.cross_fit_folds == 2
    with pytest.raises(PancsegError, match="unknown config key 'model.lstm_size'"):
        apply_overrides(Config(), ["model.lstm_size=3"])
    # A misspelt network keyword is refused, not silently ignored.
    with pytest.raises(PancsegError, match="unknown config key model.overrides.fusion_gat;"):
        apply_overrides(Config(), ["model.overrides.fusion_gat=range"])


def test_multiworker_refuses_cross_fitting(tmp_path):
    from pancseg_tf.training.distributed import run_multiworker

    class Trainer:  # what run_multiworker reads before anything else
        config = apply_overrides(
            Config(),
            [
                "model.overrides.context_channels=0",
                "train.cross_fit_folds=2",
                "train.freeze_cnn_epochs=1",
            ],
        )
        run_dir = tmp_path

    with pytest.raises(PancsegError, match="not supported with --strategy multiworker"):
        run_multiworker(Trainer(), None, "both", {})
