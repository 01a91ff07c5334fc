"""Two-stage training from the command line: run folder, resume after a kill, mirrored, errors."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pancseg_tf.training.trainer import split_cases

TINY = {
    "preprocess": {"spacing_mm": 3.2, "slice_spacing_mm": 2.5, "size": [48, 48]},
    "data": {"window": 3, "batch_size": 2, "slice_batch_size": 8, "shuffle_buffer": 16},
    "model": {
        "preset": "quick",
        "base_filters": 4,
        "depth": 2,
        "lstm_filters": 4,
        "aggregation_filters": 4,
        "lstm_resolution": 2,
    },
    "train": {
        "stage1_epochs": 2,
        "stage2_epochs": 2,
        "steps_per_epoch": 3,
        "validation_fraction": 0.34,
        "validation_cases": 1,
    },
}


def pancseg(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 3-case synthetic CT cohort prepared with the tiny config, its bodies (0.8 mm voxels,
    about 70 mm wide) inside the config's 154 mm field: validation scores the prepared field,
    and `pancseg predict` runs the same one field only where the body fits it (a wider body is
    covered by in-plane tiles, whose blend moves boundary voxels: 0.0025 DSC in a CI run)."""
    from pancseg_tf.synthetic import make_cohort

    root = tmp_path_factory.mktemp("tiny")
    make_cohort(root / "cohort", cases=3, seed=5, shape=(96, 96, 24), spacing=(0.8, 0.8, 2.5))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    proc = pancseg("prepare", root / "cohort", root / "data", "--config", config)
    assert proc.returncode == 0, proc.stderr
    return root / "data", config


def read_log(run):
    with open(run / "log.csv", newline="") as f:
        return [(int(r["stage"]), int(r["epoch"])) for r in csv.DictReader(f)]


def test_split_is_by_case_seeded_and_complete():
    ids = [f"case_{i:02d}" for i in range(10)]
    a, b = split_cases(ids, 0.2, seed=1), split_cases(ids, 0.2, seed=1)
    assert a == b
    assert len(a["validation"]) == 2
    assert sorted(a["train"] + a["validation"]) == ids
    assert split_cases(ids, 0.2, seed=2) != a


def test_stage_losses_sharpen_stage_2_only():
    from pancseg_tf.config import Config, apply_overrides
    from pancseg_tf.losses import JaccardLoss, SharpenedLoss
    from pancseg_tf.training.trainer import stage_losses

    cfg = apply_overrides(Config(), ["train.stage2_loss_sharpness=3"])
    stage2 = stage_losses(cfg, ["prob"], stage=2)["prob"]
    assert isinstance(stage2, SharpenedLoss) and stage2.sharpness == 3.0
    assert isinstance(stage2.base_loss, JaccardLoss) and stage2.base_loss.batch_sum
    stage1 = stage_losses(cfg, ["prob", "side_1"], stage=1)
    assert all(type(loss) is JaccardLoss for loss in stage1.values())
    assert type(stage_losses(Config(), ["prob"], stage=2)["prob"]) is JaccardLoss


@pytest.mark.large
def test_two_stage_run_folder(tiny_data, tmp_path):
    import keras

    from pancseg_tf.inference import Segmenter, load_model
    from pancseg_tf.models import ContextualSegmenter, SliceCNN

    data, config = tiny_data
    run = tmp_path / "run"
    # Stage 2 with the sharpened loss of the quick config, through keras' fit.
    sharp = ("--set", "train.stage2_loss_sharpness=3")
    proc = pancseg("train", data, run, "--config", config, "--seed", 3, *sharp)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "splits.json", "log.csv", "stage1.keras", "stage2.keras"):
        assert (run / name).is_file(), name
    # model.keras is the better stage on validation, a byte copy of its file.
    state = json.loads((run / "state.json").read_text())
    shipped = state["shipped"]
    assert shipped == ("stage2" if state["stage2"] > state["stage1"] else "stage1")
    assert (run / "model.keras").read_bytes() == (run / f"{shipped}.keras").read_bytes()
    assert any((run / "tensorboard" / "stage1").iterdir())
    assert read_log(run) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # Streaming DSC and JI of the training batches, per epoch, both stages (pancseg_tf.metrics).
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        dsc, ji = float(row["dsc"]), float(row["ji"])
        assert 0.0 <= ji <= dsc <= 1.0 and ji == pytest.approx(dsc / (2 - dsc), abs=1e-4), row
    assert "dsc:" in proc.stdout + proc.stderr  # fit's progress line
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["stage2_loss_sharpness"] == 3
    assert cfg["provenance"]["package_version"]
    assert len(cfg["provenance"]["data_index_hash"]) == 16
    assert cfg["model"]["base_filters"] == 4
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["validation"]) == 1 and len(splits["train"]) == 2
    assert isinstance(load_model(run / "stage1.keras"), SliceCNN)
    model = load_model(run / "stage2.keras")
    assert isinstance(model, ContextualSegmenter)
    assert model.slice_cnn.base_filters == 4
    # The run folder drives prediction with its own preprocessing.
    seg = Segmenter.from_path(run)
    assert seg.preprocess.size == (48, 48)
    prob = seg.predict_model_grid(np.zeros((48, 48, 7), np.float32))
    assert prob.shape == (48, 48, 7) and np.all((prob >= 0) & (prob <= 1))
    keras.backend.clear_session()


@pytest.mark.large
def test_crop_size_trains_both_stages_and_predicts_on_the_input_grid(tiny_data, tmp_path):
    """``data.crop_size`` smaller than the prepared plane: both stages train on 32 x 32 crops,
    are validated at the 48 x 48 plane (the size-agnostic CNN traced per plane size, the
    ConvLSTM model rebuilt at the plane's size), stage2.keras is saved at the plane's size, and
    `pancseg predict` of the run lands on the input's grid."""
    import nibabel as nib

    from pancseg_tf.inference import load_model

    data, config = tiny_data
    run = tmp_path / "run"
    crop = ("--set", "data.crop_size=[32,32]")
    epochs = ("--set", "train.stage1_epochs=1", "--set", "train.stage2_epochs=1")
    proc = pancseg("train", data, run, "--config", config, *crop, *epochs)
    assert proc.returncode == 0, proc.stderr
    assert read_log(run) == [(1, 0), (2, 0)]
    state = json.loads((run / "state.json").read_text())
    # Both stages were scored on the whole validation volume.
    assert len(state["stage1_cases"]) == 1 and len(state["stage2_cases"]) == 1
    assert load_model(run / "stage1.keras").input_size is None
    assert load_model(run / "stage2.keras").input_size == (48, 48)
    image = data.parent / "cohort" / "imagesTr" / "synth_000.nii.gz"
    proc = pancseg("predict", run, image, "-o", tmp_path / "pred")
    assert proc.returncode == 0, proc.stderr
    mask, source = nib.load(tmp_path / "pred" / "synth_000.nii.gz"), nib.load(image)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-6)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.large
def test_evaluate_reproduces_the_runs_validation_scores(tiny_data, tmp_path):
    """`pancseg predict` + `pancseg evaluate` on the validation case give the per-case DSC the
    run recorded for its best checkpoints, stage 1 and stage 2, to 1e-3, on a barely trained
    model: validation scores on the scan's own grid through the same prediction code, from the
    same model-grid intensities (`pancseg_tf.preprocessing.quantize`: validation reads prepared
    data's int16 HU, predict rounds its resampled HU the same way), so no boundary voxel flips.

    Before one intensity path (validation on the rounded HU, predict on float HU) a barely
    trained model, with hundreds of voxels within 0.01 of the threshold, gave figures 0.026
    apart once in CI, and this test had to train 8 x 64 steps for a confident mask."""
    data, config = tiny_data
    cohort = data.parent / "cohort"
    run = tmp_path / "run"
    proc = pancseg(
        "train", data, run, "--config", config, "--seed", 4,
        "--set", "train.steps_per_epoch=24", "--set", "train.stage1_epochs=3",
        "--set", "train.stage2_epochs=1", "--set", "train.learning_rate=0.01",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    state = json.loads((run / "state.json").read_text())
    (case,) = json.loads((run / "splits.json").read_text())["validation"]
    image = cohort / "imagesTr" / f"{case}.nii.gz"
    for model, key in ((run / "stage1.keras", "stage1"), (run / "stage2.keras", "stage2")):
        recorded = state[f"{key}_cases"]
        assert list(recorded) == [case]
        # Not the easy agreement of two empty masks.
        assert recorded[case] > 0.05, recorded
        pred, report = tmp_path / f"pred_{key}", tmp_path / f"report_{key}"
        proc = pancseg("predict", model, image, "-o", pred)
        assert proc.returncode == 0, proc.stderr
        proc = pancseg("evaluate", pred, cohort, "-o", report)
        assert proc.returncode == 0, proc.stderr
        with open(report / "metrics.csv", newline="") as f:
            rows = {r["case"]: r for r in csv.DictReader(f)}
        assert abs(float(rows[case]["dsc"]) - recorded[case]) < 1e-3, (rows[case], recorded)


@pytest.mark.large
def test_resume_after_kill_keeps_the_log_intact(tiny_data, tmp_path):
    data, config = tiny_data
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "pancseg_tf.cli",
        "train",
        str(data),
        str(run),
        "--config",
        str(config),
        "--set",
        "train.stage1_epochs=3",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        # Kill once the first stage-1 epoch is logged and backed up, in the middle of the next.
        while time.monotonic() < deadline:
            if (
                (run / "log.csv").is_file()
                and len(read_log(run)) >= 1
                and (run / "backup" / "stage1" / "training_metadata.json").is_file()
            ):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    logged_before = read_log(run)
    assert 1 <= len(logged_before) < 5
    proc = pancseg("train", data, run, "--config", config, "--set", "train.stage1_epochs=3")
    assert proc.returncode == 0, proc.stderr
    assert read_log(run) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert (run / "model.keras").is_file()


@pytest.mark.large
def test_mirrored_on_two_logical_cpus(tiny_data, tmp_path):
    data, config = tiny_data
    run = tmp_path / "run"
    proc = pancseg(
        "train",
        data,
        run,
        "--config",
        config,
        "--strategy",
        "mirrored",
        "--stage",
        "1",
        "--set",
        "train.stage1_epochs=1",
        env={"PANCSEG_CPU_DEVICES": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    assert read_log(run) == [(1, 0)]
    with open(run / "log.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert 0.0 <= float(row["ji"]) <= float(row["dsc"]) <= 1.0  # pooled over both replicas
    assert (run / "stage1.keras").is_file()
    assert not (run / "model.keras").exists()


#: Two replicas on two logical CPUs, one fit epoch at learning rate 0 of a fixed thresholding
#: model over one global batch of 4 slices: replica 0's targets are what the model marks (its own
#: DSC 1), replica 1's are empty (its own DSC 0). The pooled score of the batch is
#: 2 TP / (2 TP + FP): not the replicas' mean, 0.5.
MIRRORED_SCORES = """
import json
import keras
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pancseg_tf.metrics import DiceScore
from pancseg_tf.training.trainer import _report_training_scores

images = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
marked = (images > 0.5).astype("float32")
targets = np.concatenate([marked[:2], np.zeros_like(marked[2:])])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid", name="conv")
    model = keras.Model(inputs, {"prob": conv(inputs)})
    conv.set_weights([np.full((1, 1, 1, 1), 40.0, "float32"), np.full((1,), -20.0, "float32")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"prob": "binary_crossentropy"})
    _report_training_scores(model)
history = model.fit(images, {"prob": targets}, batch_size=4, epochs=1, verbose=0, shuffle=False)
pooled = DiceScore()
pooled.update_state(targets, model.predict(images, verbose=0)["prob"])
print(json.dumps({"logged": history.history["dsc"][0], "pooled": float(pooled.result())}))
"""


def test_mirrored_training_scores_pool_the_replicas():
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCORES], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert scores["pooled"] == pytest.approx(2 / 3, abs=0.1)  # about as many marked as not
    assert scores["logged"] == pytest.approx(scores["pooled"], abs=1e-6), scores


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.loss=focal", "train.loss"),
        ("train.stage1_epochs=-1", "train.stage1_epochs"),
        ("model.preset=huge", "model.preset"),
        ("train.lerning_rate=0.1", "train.lerning_rate"),
        ("preprocess.spacing_mm=1.0", "preprocess.spacing_mm"),
    ],
)
def test_config_errors_name_the_key(tiny_data, tmp_path, override, key):
    data, config = tiny_data
    proc = pancseg("train", data, tmp_path / "run", "--config", config, "--set", override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: ")
    assert key in lines[0]


@pytest.mark.large
def test_rerun_with_another_config_is_refused(tiny_data, tmp_path):
    data, config = tiny_data
    run = tmp_path / "run"
    assert (
        pancseg(
            "train", data, run, "--config", config, "--stage", "1", "--set", "train.stage1_epochs=1"
        ).returncode
        == 0
    )
    proc = pancseg("train", data, run, "--config", config, "--set", "train.stage1_epochs=4")
    assert proc.returncode == 2
    assert "train.stage1_epochs" in proc.stderr


def epoch_end_learning_rate(cfg, stage: int, epoch: int) -> float:
    """The learning rate ``log.csv`` records for an epoch: its phase's schedule
    (`recipe.make_optimizer`) after the phase's steps up to the epoch's end."""
    from pancseg_tf.training.recipe import (
        current_learning_rate,
        make_optimizer,
        stage2_learning_rate,
    )

    if stage == 1:
        rate, first, last = cfg.train.learning_rate, 0, cfg.train.stage1_epochs
    else:
        freeze = min(cfg.train.freeze_cnn_epochs, cfg.train.stage2_epochs)
        phase, first, last = (
            ("stage2_frozen", 0, freeze)
            if epoch < freeze
            else ("stage2", freeze, cfg.train.stage2_epochs)
        )
        rate = stage2_learning_rate(cfg, phase)
    optimizer = make_optimizer(rate, cfg, last - first, cfg.train.warmup_epochs)
    optimizer.iterations.assign((epoch - first + 1) * cfg.train.steps_per_epoch)
    return current_learning_rate(optimizer)


def test_multiworker_stage_2_on_crops_is_one_line(tiny_data, tmp_path):
    """The multi-worker step has no plane-size copy of a model trained on crops: refused before
    TensorFlow starts a cluster, in one line, exit 2."""
    data, config = tiny_data
    proc = pancseg(
        "train", data, tmp_path / "run", "--config", config, "--strategy", "multiworker",
        "--set", "data.crop_size=[32, 32]",
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pancseg: error:")]
    assert len(errors) == 1 and "data.crop_size" in errors[0] and "multiworker" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.large
def test_multiworker_from_the_command_line(tiny_data, tmp_path):
    """Two `pancseg train --strategy multiworker` processes on localhost train one run."""
    from tests.training.test_multiworker_resume import start_cluster, wait_cluster

    data, config = tiny_data
    run = tmp_path / "run"
    settings = [
        "train.stage2_epochs=1",
        # The paper's precision: the policy must reach the multi-worker step too.
        "train.precision=mixed_bfloat16",
    ]
    args = ["--config", str(config), *(a for item in settings for a in ("--set", item))]
    codes, report = wait_cluster(*start_cluster(data, run, tmp_path / "cluster", args=args))
    assert codes == [0, 0], report
    assert read_log(run) == [(1, 0), (1, 1), (2, 0)]
    assert (run / "stage1.keras").is_file() and (run / "model.keras").is_file()
    # Every column filled, as in one process: the training DSC and JI of "prob" (summed over
    # both workers' batches) and the learning rate of the phase's schedule at the epoch's end.
    from pancseg_tf.config import load_config

    cfg = load_config(run / "config.yaml")
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert all(row[column] != "" for column in ("loss", "dsc", "ji", "learning_rate")), row
        dsc, ji = float(row["dsc"]), float(row["ji"])
        assert 0.0 <= ji <= dsc <= 1.0 and ji == pytest.approx(dsc / (2 - dsc), abs=1e-4), row
        expected = epoch_end_learning_rate(cfg, int(row["stage"]), int(row["epoch"]))
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-5), row
    leftovers = [p for p in run.rglob("*") if ".worker-" in p.name or "tmp-" in p.name]
    assert leftovers == []
    assert trained_precisions(run) == {"stage1": "mixed_bfloat16", "stage2": "mixed_bfloat16"}


def trained_precisions(run) -> dict[str, str]:
    """The dtype policy the convolutions of each stage's saved model were built and trained
    under (weights float32, computation in the policy's dtype); the heads that are float32 by
    design (`dtype="float32"` in the models) are left out."""
    import keras

    from pancseg_tf.inference import load_model

    found = {}
    for stage in ("stage1", "stage2"):
        if (run / f"{stage}.keras").is_file():
            model = load_model(run / f"{stage}.keras")
            layers = model._flatten_layers(include_self=False)
            convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
            policies = {layer.dtype_policy.name for layer in convs} - {"float32"}
            found[stage] = policies.pop() if len(policies) == 1 else sorted(policies)
    return found


@pytest.mark.large
def test_train_precision_is_the_policy_of_one_machine_training(tiny_data, tmp_path):
    data, config = tiny_data
    run = tmp_path / "run"
    settings = ["train.precision=mixed_bfloat16", "train.stage1_epochs=1", "train.stage2_epochs=1"]
    proc = pancseg(
        "train", data, run, "--config", config, *[a for s in settings for a in ("--set", s)]
    )
    assert proc.returncode == 0, proc.stderr
    assert trained_precisions(run) == {"stage1": "mixed_bfloat16", "stage2": "mixed_bfloat16"}
    with open(run / "log.csv", newline="") as f:
        assert all(math.isfinite(float(row["loss"])) for row in csv.DictReader(f))
