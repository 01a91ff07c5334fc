"""A run ships its best model: `model.keras` is the contextual model only when it beats stage 1
on the run's validation cases, else the stage-1 CNN; `state.json` records the choice and
`pancseg predict RUN` (through `resolve_model_path`) uses what was shipped."""

import json
import logging

import keras
import numpy as np
import pytest

from pancseg_tf.config import PreprocessConfig
from pancseg_tf.errors import PancsegError
from pancseg_tf.inference import Segmenter, load_model, resolve_model_path
from pancseg_tf.models import ContextualSegmenter, SliceCNN, transfer_stage1_weights
from pancseg_tf.training.callbacks import ship_best_model

SIZE = (32, 32)
PREPROCESS = PreprocessConfig(size=SIZE)


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    cnn = SliceCNN(base_filters=4, depth=2, input_size=SIZE)
    contextual = ContextualSegmenter(slice_cnn=cnn.get_config(), lstm_filters=2)
    transfer_stage1_weights(cnn, contextual)
    return cnn, contextual


def make_run(tmp_path, models, state):
    cnn, contextual = models
    run = tmp_path / "run"
    run.mkdir()
    cnn.save(run / "stage1.keras")
    contextual.save(run / "stage2.keras")
    (run / "state.json").write_text(json.dumps(state))
    return run


@pytest.mark.parametrize(
    "scores, shipped, kind",
    [
        ({"stage1": 0.70, "stage2": 0.75}, "stage2", ContextualSegmenter),  # stage 2 better
        ({"stage1": 0.75, "stage2": 0.70}, "stage1", SliceCNN),  # stage 2 worse
        ({"stage1": 0.72, "stage2": 0.72}, "stage1", SliceCNN),  # a tie is not a win
    ],
)
def test_the_better_stage_on_validation_is_shipped(tmp_path, models, caplog, scores, shipped, kind):
    run = make_run(tmp_path, models, {**scores, "stage1_done": True, "stage2_done": True})
    with caplog.at_level(logging.INFO, logger="pancseg_tf.training"):
        assert ship_best_model(run) == shipped
    state = json.loads((run / "state.json").read_text())
    assert state["shipped"] == shipped and state["stage1"] == scores["stage1"]
    assert (run / "model.keras").read_bytes() == (run / f"{shipped}.keras").read_bytes()
    # predict RUN, export RUN and cv resolve the run folder to what was shipped.
    assert resolve_model_path(run) == run / "model.keras"
    assert isinstance(load_model(run), kind)
    seg = Segmenter(load_model(run), PREPROCESS)
    assert seg.contextual == (shipped == "stage2")
    lines = [r.getMessage() for r in caplog.records]
    if shipped == "stage1":
        assert any("did not beat stage 1" in line and "stage-1 CNN" in line for line in lines)
    # Shipping again (a resumed run) gives the same file.
    before = (run / "model.keras").read_bytes()
    ship_best_model(run)
    assert (run / "model.keras").read_bytes() == before


def test_no_stage_2_ships_stage_1(tmp_path, models):
    run = make_run(tmp_path, models, {"stage1": 0.5, "stage1_done": True})
    (run / "stage2.keras").unlink()
    assert ship_best_model(run) == "stage1"
    assert isinstance(load_model(run), SliceCNN)


def test_no_stage_1_is_refused(tmp_path):
    with pytest.raises(PancsegError, match="no stage-1 model"):
        ship_best_model(tmp_path)


def test_shipped_stage_1_predicts_like_stage1_keras(tmp_path, models):
    """The shipped CNN is stage1.keras itself: the same probabilities bit for bit."""
    run = make_run(tmp_path, models, {"stage1": 0.8, "stage2": 0.1})
    ship_best_model(run)
    image = np.random.default_rng(0).random((*SIZE, 5)).astype(np.float32)
    a = Segmenter(load_model(run), PREPROCESS).predict_model_grid(image)
    b = Segmenter(load_model(run / "stage1.keras"), PREPROCESS).predict_model_grid(image)
    np.testing.assert_array_equal(a, b)
