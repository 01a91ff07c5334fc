"""Kill and resume to the same weights: a deterministic run SIGKILLed at several points and rerun
with the same command ends exactly where an uninterrupted run ends.

Cost: a 3-case synthetic CT cohort at 32 x 32 x 24, the ``tiny`` model, 3 steps per epoch,
3 stage-1 epochs and 4 stage-2 epochs (2 with the CNN frozen); 7 ``pancseg train`` processes.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

PREPROCESS = [
    "preprocess.size=[32,32]",
    "preprocess.spacing_mm=4.8",
    "preprocess.slice_spacing_mm=5.0",
]
STEPS = 3
TRAIN = [
    *PREPROCESS,
    "model.preset=tiny",
    # Dropout on, so that its random masks are part of what has to resume exactly.
    "model.dropout=0.1",
    "data.window=3",
    "data.batch_size=2",
    "data.slice_batch_size=4",
    "data.shuffle_buffer=16",
    "train.stage1_epochs=3",
    "train.stage2_epochs=4",
    "train.freeze_cnn_epochs=2",
    f"train.steps_per_epoch={STEPS}",
    "train.validation_fraction=0.34",
    "train.validation_cases=1",
]
SEED = 3

# Run B: each process runs this many training batches, then SIGKILLs itself when about to run
# the next one (PANCSEG_TEST_KILL_AFTER_BATCHES); the next process resumes. The epochs logged
# after each kill show that it landed where its comment says.
# Batches: stage 1 epochs 0-2, then stage 2 frozen epochs 0-1 and unfrozen epochs 2-3, 3 each.
KILLS = [
    # stage 1, epoch 1, after its first batch (epoch 0 is backed up)
    (STEPS + 1, [(1, 0)]),
    # the stage-1/stage-2 boundary: stage 1 finished, the stage-2 model built, no stage-2 batch
    (2 * STEPS, [(1, 0), (1, 1), (1, 2)]),
    # the frozen stage-2 phase, epoch 1, after its first batch
    (STEPS + 1, [(1, 0), (1, 1), (1, 2), (2, 0)]),
    # the unfrozen phase's first epoch (2): no backup of this phase yet, only the frozen one's
    (STEPS + 1, [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]),
    # the unfrozen phase, epoch 3, after its first batch (epoch 2 is backed up)
    (STEPS + 1, [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]),
]
ALL_EPOCHS = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]

# On one machine the resumed run replays the same float32 operations in the same order, so it
# is expected to be bit-identical; the tolerance only leaves room for a kernel that sums in
# another order. It is far below what one training step changes (AdamW moves a weight by up to
# about the learning rate, 1e-3 here), so a replayed or skipped step, a different data order or
# different dropout masks all fail it.
RTOL, ATOL = 1e-5, 1e-6
# log.csv holds 6 significant digits.
LOG_RTOL = 1e-5


def pancseg_args(*args):
    return [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)]


def train_args(data, run):
    sets = [a for item in TRAIN for a in ("--set", item)]
    return pancseg_args("train", data, run, *sets, "--deterministic", "--seed", SEED)


def env_with(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PANCSEG_TEST_KILL_AFTER_BATCHES"}
    return {**env, **extra}


def read_log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def epochs_of(rows):
    return [(int(r["stage"]), int(r["epoch"])) for r in rows]


def weights_of(path):
    import keras

    from pancseg_tf.inference import load_model

    model = load_model(path)
    out = [np.array(w) for w in model.get_weights()]
    keras.backend.clear_session()
    return out


def assert_json_close(a, b, where="state.json"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            assert_json_close(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=RTOL, abs=ATOL), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """3 synthetic CT cases (``pancseg synth``) prepared at 32 x 32 (``pancseg prepare``)."""
    root = tmp_path_factory.mktemp("resume")
    synth = subprocess.run(
        pancseg_args("synth", root / "cohort", "--cases", 3, "--seed", 1),
        capture_output=True,
        text=True,
    )
    assert synth.returncode == 0, synth.stderr
    sets = [a for item in PREPROCESS for a in ("--set", item)]
    prep = subprocess.run(
        pancseg_args("prepare", root / "cohort", root / "data", *sets),
        capture_output=True,
        text=True,
    )
    assert prep.returncode == 0, prep.stderr
    return root / "data"


@pytest.mark.large
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tiny_data, tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # A (uninterrupted) runs beside B's chain of killed processes: they share nothing.
    proc_a = subprocess.Popen(
        train_args(tiny_data, run_a),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(),
    )
    try:
        for batches, logged in KILLS:
            proc = subprocess.run(
                train_args(tiny_data, run_b),
                capture_output=True,
                text=True,
                env=env_with(PANCSEG_TEST_KILL_AFTER_BATCHES=str(batches)),
                timeout=900,
            )
            assert proc.returncode == -signal.SIGKILL, proc.stderr
            assert epochs_of(read_log(run_b)) == logged
        proc = subprocess.run(
            train_args(tiny_data, run_b), capture_output=True, text=True, env=env_with()
        )
        assert proc.returncode == 0, proc.stderr
        _, err_a = proc_a.communicate(timeout=900)
    finally:
        proc_a.kill()
    assert proc_a.returncode == 0, err_a

    for name in ("stage1.keras", "stage2.keras", "model.keras"):
        wa, wb = weights_of(run_a / name), weights_of(run_b / name)
        assert [w.shape for w in wa] == [w.shape for w in wb], name
        for i, (a, b) in enumerate(zip(wa, wb)):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"{name} weight {i}")

    log_a, log_b = read_log(run_a), read_log(run_b)
    assert epochs_of(log_a) == ALL_EPOCHS
    assert epochs_of(log_b) == ALL_EPOCHS
    for ra, rb in zip(log_a, log_b):
        for column in ("loss", "val_dsc", "learning_rate"):
            assert float(rb[column]) == pytest.approx(float(ra[column]), rel=LOG_RTOL), (
                ra["stage"],
                ra["epoch"],
                column,
            )

    state_a = json.loads((run_a / "state.json").read_text())
    state_b = json.loads((run_b / "state.json").read_text())
    assert state_a.get("stage1_done") is True and state_a.get("stage2_done") is True
    assert_json_close(state_a, state_b)


# Early stopping (patience 2) over these val_dsc values stops after epoch 3 (0.4 and 0.45 do
# not beat 0.5); a callback that forgot epochs 0-2 on resume would run to epoch 5.
VAL_DSC = [0.2, 0.5, 0.4, 0.45, 0.6, 0.3]


def fit_with_early_stopping(path, initial_epoch, epochs):
    """Epochs a tiny model runs with `resumable_early_stopping` fed ``VAL_DSC``."""
    import keras

    from pancseg_tf.training.callbacks import resumable_early_stopping

    ran = []

    def validate(epoch, logs):
        ran.append(epoch)
        logs["val_dsc"] = VAL_DSC[epoch]

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        np.zeros((4, 1), np.float32),
        np.zeros((4, 1), np.float32),
        batch_size=2,
        epochs=epochs,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=[
            keras.callbacks.LambdaCallback(on_epoch_end=validate),
            resumable_early_stopping(2, path, initial_epoch),
        ],
    )
    return ran


@pytest.mark.parametrize(
    "first_epochs, resume_at, expected_run",
    [
        (0, 0, [0, 1, 2, 3]),  # uninterrupted
        (3, 3, [3]),  # killed in epoch 3: epochs 0-2 replayed, stops after 3
        (6, 2, [2, 3]),  # stopped at 3, killed before epoch 2's backup: 2 and 3 again
        (6, 4, None),  # stopped at 3 and backed up: the phase is finished
    ],
)
def test_early_stopping_resumes_where_it_was(tmp_path, first_epochs, resume_at, expected_run):
    from pancseg_tf.training.callbacks import early_stopped

    path = tmp_path / "backup" / "stage1" / "early_stopping.json"
    if first_epochs:
        fit_with_early_stopping(path, 0, first_epochs)
    assert early_stopped(path, resume_at) == (expected_run is None)
    if expected_run is not None:
        assert fit_with_early_stopping(path, resume_at, len(VAL_DSC)) == expected_run
