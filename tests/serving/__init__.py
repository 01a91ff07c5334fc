"""Tests of `pancseg_tf.serving`, and the tiny runs they export.

A run here is what ``pancseg train`` leaves behind, in small: ``model.keras`` (a 2-level CNN on
48 x 48 slices, a 4-filter ConvLSTM at 1/2 resolution) and a ``config.yaml`` with a provenance
block. The fusion conv gets random weights, as training would give it, so the ConvLSTM's
context changes the output and where chunks start and end matters.
"""

import importlib.util
import pathlib
import sys

import numpy as np

SIZE = (48, 48)
#: 3.2 mm pixels: the real 3 mm CT's body fits the 48 x 48 field (154 mm).
SETTINGS = ["preprocess.size=[48, 48]", "preprocess.spacing_mm=3.2"]
CHUNK = 8
PROVENANCE = {"package": "pancseg_tf", "package_version": "test", "seed": 0}
#: The TF Serving stand-in: a script of the repository, not a module of the package.
STANDIN_SERVER = pathlib.Path(__file__).resolve().parents[2] / "serving" / "standin_server.py"


def standin_server():
    """``serving/standin_server.py`` as a module (`LocalModelServer`, `LoadedVersion`), loaded
    once from its path: by name, ``serving`` could be ``benchmarks/serving.py``, which a test
    module puts on ``sys.path``."""
    name = "standin_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, STANDIN_SERVER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def tiny_model(seed: int = 0):
    """A built `ContextualSegmenter` with active recurrent layers (random weights)."""
    import keras

    from pancseg_tf.models import ContextualSegmenter, SliceCNN

    keras.utils.set_random_seed(seed)
    model = ContextualSegmenter(
        slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=SIZE),
        lstm_filters=4,
        lstm_resolution=2,
    )
    model(np.zeros((1, 3, *SIZE, 1), np.float32))
    activate_context(model, seed)
    return model


def activate_context(model, seed: int = 0, scale: float = 0.5) -> None:
    """Random noise added to the recurrent layers' and the head's weights, as training would
    move them from their start (`ContextualSegmenter.start_as_cnn`, which uses two units only)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in (
        model.sequence_context.get_layer("context_lstm"),
        model.slice_head.get_layer("head_conv"),
    ):
        for weight in layer.weights:
            noise = rng.normal(0, scale, weight.shape).astype(np.float32)
            weight.assign(keras.ops.convert_to_numpy(weight) + noise)


def write_run(folder: pathlib.Path, model, *, modality: str = "ct", extra=()) -> pathlib.Path:
    """``folder/model.keras`` + ``folder/config.yaml`` (with a provenance block)."""
    from pancseg_tf.config import Config, apply_overrides, save_config

    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    cfg = apply_overrides(Config(), [*SETTINGS, f"preprocess.modality={modality}", *extra])
    save_config(cfg, folder / "config.yaml", extra=PROVENANCE)
    return folder


def predict_segmenter(run: pathlib.Path, chunk: int | None = None):
    """The `Segmenter` ``pancseg predict RUN [--chunk N]`` builds (run's threshold and
    post-processing, default overlap)."""
    from pancseg_tf.inference import Segmenter

    return Segmenter.from_path(run, chunk=chunk)


_SHARED: dict = {}


def shared_export(tmp_path_factory):
    """``(model, run, export)``: one tiny run and its export (chunk 8), made once per session
    and shared by the test modules (an export takes seconds: Keras traces the model twice)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SHARED:
        from pancseg_tf.serving.export import export_model

        root = tmp_path_factory.mktemp("serving-shared")
        model = tiny_model(seed=0)
        run = write_run(root / "run", model)
        _SHARED[key] = (model, run, export_model(run, root / "exports", chunk=CHUNK))
    return _SHARED[key]
