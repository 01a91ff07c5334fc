"""Self-describing model files: a `.keras` the package writes carries its run's config (the model
card), so a file copied away from its run segments exactly like the run; a file made elsewhere
is refused in one line unless its config is given."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import yaml

from pancseg_tf.errors import PancsegError
from pancseg_tf.model_card import (
    CARD_MEMBER,
    card_from_run_config,
    describe_model,
    read_card,
    write_card,
)
from tests.training.test_trainer import TINY as TRAINER_TINY

# The trainer tests' tiny run, with one stage-2 epoch.
TINY = {
    **TRAINER_TINY,
    "train": {**TRAINER_TINY["train"], "stage2_epochs": 1},
    # Not the defaults: a copy that fell back to defaults would segment differently.
    "postprocess": {"threshold": 0.35, "largest_component": False},
}


def pancseg(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )


def one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pancseg: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 1000, proc.stderr
    return errors[0]


def tiny_keras_file(path, size=48):
    """A .keras file as Keras alone writes it (no card): a model made elsewhere."""
    import keras

    from pancseg_tf.models import SliceCNN

    keras.utils.set_random_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    SliceCNN(base_filters=4, depth=2, input_size=(size, size)).save(path)
    return path


# --- the card itself ---


def test_a_card_replaces_the_old_one_and_keras_still_loads_the_file(tmp_path):
    import keras

    path = tiny_keras_file(tmp_path / "m.keras")
    members = set(zipfile.ZipFile(path).namelist())
    assert read_card(path) is None
    first = card_from_run_config({"postprocess": {"threshold": 0.4}})
    write_card(path, first)
    assert read_card(path) == first
    second = card_from_run_config({"postprocess": {"threshold": 0.6}})
    write_card(path, second)
    assert read_card(path) == second
    names = zipfile.ZipFile(path).namelist()
    assert names.count(CARD_MEMBER) == 1 and set(names) == members | {CARD_MEMBER}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.count_params() > 0


def test_a_card_of_another_format_is_refused_in_one_line(tmp_path):
    path = tiny_keras_file(tmp_path / "m.keras")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(CARD_MEMBER, json.dumps({"format": "pancseg-model-card/9", "config": {}}))
    with pytest.raises(PancsegError, match="pancseg-model-card/9"):
        read_card(path)


def test_the_models_a_run_saves_carry_its_config(tmp_path):
    from pancseg_tf.config import Config, apply_overrides, save_config
    from pancseg_tf.models import SliceCNN
    from pancseg_tf.training.callbacks import save_model_atomic

    cfg = apply_overrides(Config(), ["preprocess.modality=mri", "postprocess.threshold=0.3"])
    save_config(cfg, tmp_path / "config.yaml", extra={"seed": 7})
    save_model_atomic(SliceCNN(base_filters=4, depth=2, input_size=(48, 48)), tmp_path / "s.keras")
    description = describe_model(tmp_path / "s.keras")
    assert description.source == "card"
    assert description.config == cfg and description.provenance == {"seed": 7}
    card = read_card(tmp_path / "s.keras")
    assert card["pancseg_version"] and card["config"]["preprocess"]["modality"] == "mri"


def test_cv_writes_its_post_processing_choice_into_every_model_card(tmp_path):
    from pancseg_tf.config import Config, save_config
    from pancseg_tf.models import SliceCNN
    from pancseg_tf.training.callbacks import save_model_atomic
    from pancseg_tf.training.cv import record_postprocessing

    save_config(Config(), tmp_path / "config.yaml")
    for name in ("stage1.keras", "model.keras"):
        save_model_atomic(SliceCNN(base_filters=4, depth=2, input_size=(48, 48)), tmp_path / name)
    assert describe_model(tmp_path / "model.keras").config.postprocess.largest_component
    choice = {"stage1": {"largest_component": False, "on": 0.5, "off": 0.6, "cases": 2}}
    record_postprocessing(tmp_path, choice, "stage1")
    for name in ("stage1.keras", "model.keras"):
        description = describe_model(tmp_path / name)
        assert description.config.postprocess.largest_component is False
        assert description.provenance["postprocessing_on_validation"] == choice


def test_a_given_config_wins_and_none_at_all_is_refused(tmp_path):
    from pancseg_tf.config import Config

    path = tiny_keras_file(tmp_path / "m.keras")
    with pytest.raises(PancsegError, match=r"m\.keras carries no pancseg model card.*--config"):
        describe_model(path)
    assert describe_model(path, Config()).source == "given"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"postprocess": {"threshold": 0.3}}))
    legacy = describe_model(path)  # a run folder written before cards
    assert legacy.source == "config.yaml" and legacy.config.postprocess.threshold == 0.3


# --- the command line on files made elsewhere ---


def test_predict_refuses_a_keras_file_without_card_then_takes_its_config(tmp_path, ts_ct_path):
    made_elsewhere = tiny_keras_file(tmp_path / "elsewhere" / "m.keras")
    proc = pancseg("predict", made_elsewhere, ts_ct_path, "-o", tmp_path / "out")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "m.keras carries no pancseg model card" in line and "--config" in line
    assert not list((tmp_path / "out").glob("*.nii.gz"))

    # The wrong config: the sizes differ, one line naming both.
    proc = pancseg(
        "predict", made_elsewhere, ts_ct_path, "-o", tmp_path / "out", "--config", "quick"
    )
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "(48, 48)" in line and "(128, 128)" in line

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"preprocess": TINY["preprocess"]}))
    proc = pancseg(
        "predict", made_elsewhere, ts_ct_path, "-o", tmp_path / "out", "--config", config
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1


# --- a trained run's files copied away ---


@pytest.fixture(scope="module", params=["ct", "mri"])
def trained_run(request, tmp_path_factory):
    """A CT or an MRI run trained through the command line (both stages), and one input."""
    from pancseg_tf.synthetic import make_cohort

    modality = request.param
    root = tmp_path_factory.mktemp(f"card_{modality}")
    cohort = make_cohort(root / "cohort", cases=3, seed=5, shape=(96, 96, 24), modality=modality)
    settings = json.loads(json.dumps(TINY))
    settings["preprocess"]["modality"] = modality
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings))
    proc = pancseg("prepare", cohort, root / "data", "--config", config)
    assert proc.returncode == 0, proc.stderr
    proc = pancseg("train", root / "data", root / "run", "--config", config)
    assert proc.returncode == 0, proc.stderr
    image = sorted((cohort / "imagesTr").glob("*.nii.gz"))[0]
    return root / "run", image, modality


@pytest.mark.large
def test_a_bare_model_segments_bit_identically_to_its_run(trained_run, tmp_path):
    run, image, modality = trained_run
    bare = tmp_path / "copied"
    bare.mkdir()
    shutil.copyfile(run / "model.keras", bare / "shipped.keras")
    shutil.copyfile(run / "stage1.keras", bare / "cnn.keras")
    assert not (bare / "config.yaml").exists()
    pairs = [(run, bare / "shipped.keras"), (run / "stage1.keras", bare / "cnn.keras")]
    for i, (in_run, copied) in enumerate(pairs):
        outputs = []
        for j, model in enumerate((in_run, copied)):
            out = tmp_path / f"out_{i}_{j}"
            proc = pancseg("predict", model, image, "-o", out, "--probabilities")
            assert proc.returncode == 0, proc.stderr
            assert "carries no model card" not in proc.stderr
            outputs.append(out)
        for name in (f"{image.name[:-7]}.nii.gz", f"{image.name[:-7]}_prob.nii.gz"):
            a, b = (nib.load(str(o / name)) for o in outputs)
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, b.affine)
    # The run's own (non-default) post-processing travelled with the file.
    description = describe_model(bare / "shipped.keras")
    assert description.source == "card"
    assert description.config.postprocess.threshold == 0.35
    assert description.config.preprocess.modality == modality
    assert description.provenance["seed"] is not None


@pytest.mark.large
def test_a_bare_model_exports_like_its_run(trained_run, tmp_path):
    pytest.importorskip("tensorflow_serving")
    run, _, _ = trained_run
    if run.parent.name.startswith("card_mri"):
        pytest.skip("one modality is enough for the export's metadata")
    bare = tmp_path / "copied" / "m.keras"
    bare.parent.mkdir()
    shutil.copyfile(run / "model.keras", bare)
    metadata = []
    for model, base in ((run, tmp_path / "a"), (bare, tmp_path / "b")):
        proc = pancseg("export", model, base)
        assert proc.returncode == 0, proc.stderr
        path = next(base.glob("pancseg/*/assets.extra/pancseg.json"))
        metadata.append(json.loads(path.read_text()))
    for key in ("client_config", "run_config", "training_provenance"):
        assert metadata[0][key] == metadata[1][key], key
    assert metadata[1]["training_provenance"]["package_version"]
    assert metadata[0]["source_model"]["sha256"] == metadata[1]["source_model"]["sha256"]
    # And the two SavedModels compute the same: one chunk of CT intensities through each.
    import tensorflow as tf

    results = []
    for base in (tmp_path / "a", tmp_path / "b"):
        served = tf.saved_model.load(str(next(base.glob("pancseg/[0-9]*"))))
        signature = served.signatures["serving_default"]
        spec = signature.structured_input_signature[1]["slices"]
        chunk = np.random.default_rng(0).integers(-200, 300, size=(1, *spec.shape[1:]))
        results.append(
            signature(
                slices=tf.constant(chunk.astype(spec.dtype.as_numpy_dtype)),
                slice_count=tf.constant([spec.shape[1]], tf.int32),
            )
        )
    for key in ("probabilities", "mask"):
        np.testing.assert_array_equal(results[0][key].numpy(), results[1][key].numpy())
    assert 0.0 < float(results[0]["probabilities"].numpy().std())
