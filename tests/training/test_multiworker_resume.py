"""Resuming `fit_distributed` and a two-worker `pancseg train --strategy multiworker` run exactly.

In one process: a stopped and resumed `fit_distributed` with dropout ends with the uninterrupted
weights; ``on_epoch_end`` runs before the epoch's backup.

On two workers, the multi-worker counterpart of test_resume_determinism.py: two workers on localhost
(`MultiWorkerMirroredStrategy`, CPU) train the tiny model with dropout on, once uninterrupted
(A) and once as a chain of clusters that SIGKILL themselves at set points (B,
``PANCSEG_TEST_KILL_AFTER_EPOCHS``: every worker kills itself when about to start that many
plus one epochs of its process); B's last cluster finishes the run. The kills land in stage 1
and between the frozen-CNN and end-to-end phases of stage 2.

Cost: the 3-case cohort of test_resume_determinism.py, 2 steps per epoch, 2 stage-1 epochs and
2 stage-2 epochs (1 with the CNN frozen); 4 clusters of 2 ``pancseg train`` processes, A beside
B's chain.

Early stopping on two workers: a run whose frozen stage-2 phase stops early (its validation
DSC repeats: patience 1) is killed as its end-to-end phase starts; rerun, it must not train
the stopped phase on, and it ends as the uninterrupted run does. 3 more clusters, one after
the other.
"""

import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from pancseg_tf.training.multiworker import BACKUP_DIR
from tests.training import multiworker_worker as worker
from tests.training import test_resume_determinism as single
from tests.training.test_multiworker import NUM_WORKERS, WORKER_TIMEOUT_S, _free_ports

# --- one process -----------------------------------------------------------------------------


def test_resumed_run_draws_the_uninterrupted_dropout_masks(tmp_path):
    """The worker script's `SliceCNN` has spatial dropout (rate 0.1), whose random stream's
    counter is not in the checkpoint: it restarts at each epoch, so epoch 2 draws the same
    masks after a resume as after epochs 0 and 1 in the same call."""
    strategy = tf.distribute.get_strategy()
    model, _ = worker.train_slice_cnn(strategy, tmp_path / "a", 3, worker.PER_REPLICA_BATCH)
    assert [v for v in model.variables if v.name == "seed_generator_state"]
    worker.train_slice_cnn(strategy, tmp_path / "b", 2, worker.PER_REPLICA_BATCH)
    resumed, history = worker.train_slice_cnn(strategy, tmp_path / "b", 3, worker.PER_REPLICA_BATCH)
    assert [h["epoch"] for h in history] == [2]
    for i, (a, b) in enumerate(zip(model.get_weights(), resumed.get_weights())):
        assert np.array_equal(a, b), f"weight {i} differs by {np.max(np.abs(a - b)):.3g}"


def test_on_epoch_end_runs_before_the_epochs_backup(tmp_path):
    """A kill inside ``on_epoch_end`` (the chief's validation, log and best model) leaves the
    previous epoch's backup: the epoch runs again instead of its callback being lost."""
    seen = []

    def on_epoch_end(epoch, logs, model):
        latest = tf.train.latest_checkpoint(str(tmp_path / BACKUP_DIR))
        seen.append((epoch, latest and int(latest.rsplit("-", 1)[1])))

    images, targets = worker.phantom(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).repeat().batch(4)
    worker.fit_distributed(
        tf.distribute.get_strategy(),
        worker.build_plain,
        worker.keras.losses.BinaryCrossentropy,
        lambda: worker.keras.optimizers.SGD(0.1),
        lambda context, epoch: dataset,
        epochs=2,
        steps_per_epoch=1,
        work_dir=tmp_path,
        on_epoch_end=on_epoch_end,
    )
    assert seen == [(0, None), (1, 1)]
    assert int(tf.train.latest_checkpoint(str(tmp_path / BACKUP_DIR)).rsplit("-", 1)[1]) == 2


# --- two workers, from the command line ------------------------------------------------------

# The same prepared cohort as the one-process test.
tiny_data = single.tiny_data

COUNTS = (
    "train.stage1_epochs=2",
    "train.stage2_epochs=2",
    "train.freeze_cnn_epochs=1",
    "train.steps_per_epoch=2",
    # Too few epochs per phase to stop before the last: its record must resume exactly.
    "train.early_stopping_patience=1",
)
# The one-process test's settings (dropout on, --deterministic) with fewer epochs and steps.


def train_args(counts) -> list[str]:
    """``pancseg train``'s options: the one-process test's settings with ``counts`` replaced."""
    replaced = {item.split("=")[0] for item in counts}
    train = [*(item for item in single.TRAIN if item.split("=")[0] not in replaced), *counts]
    return [
        *(a for item in train for a in ("--set", item)),
        "--deterministic",
        "--seed",
        single.SEED,
    ]


ARGS = train_args(COUNTS)

# (epochs each cluster of run B starts before it kills itself, the log's epochs after the kill)
KILLS = [
    # stage 1, after epoch 0's backup
    (1, [(1, 0)]),
    # between stage 2's phases: the frozen epoch 0 backed up, the end-to-end model built
    (2, [(1, 0), (1, 1), (2, 0)]),
]
ALL_EPOCHS = [(1, 0), (1, 1), (2, 0), (2, 1)]


def start_cluster(data, run, out_dir, kill_after=None, args=ARGS):
    """Starts ``pancseg train --strategy multiworker`` as two workers on localhost.

    Returns:
        ``(processes, stderr files)``, for `wait_cluster`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = [f"localhost:{port}" for port in _free_ports(NUM_WORKERS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANCSEG_TEST_KILL")}
    if kill_after is not None:
        env["PANCSEG_TEST_KILL_AFTER_EPOCHS"] = str(kill_after)
    processes, errs = [], []
    for index in range(NUM_WORKERS):
        task = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        # A file, not a pipe: a full pipe would stall one worker and then the other.
        errs.append(open(out_dir / f"worker-{index}.err", "w+"))
        processes.append(
            subprocess.Popen(
                single.pancseg_args("train", data, run, *args, "--strategy", "multiworker"),
                env={
                    **env,
                    "TF_CONFIG": json.dumps(task),
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                    "CUDA_VISIBLE_DEVICES": "",
                },
                stdout=subprocess.DEVNULL,
                stderr=errs[-1],
            )
        )
    return processes, errs


def wait_cluster(processes, errs):
    """Waits for the workers (killing them on timeout).

    Returns:
        ``(returncodes, report)``: the workers' exit codes (``-SIGKILL`` for a kill) and the
        ends of their stderr, for failure messages.
    """
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    report = []
    for index, err in enumerate(errs):
        err.seek(0)
        report.append(f"--- worker {index} stderr ---\n{err.read()[-4000:]}")
        err.close()
    return [p.returncode for p in processes], "\n".join(report)


def assert_same_models(run_a, run_b):
    """Both runs' models are bit-identical: they replay the same float32 operations in the same
    order on the same cluster shape (the ring all-reduce sums in a fixed order)."""
    for name in ("stage1.keras", "stage2.keras", "model.keras"):
        wa, wb = single.weights_of(run_a / name), single.weights_of(run_b / name)
        assert [w.shape for w in wa] == [w.shape for w in wb], name
        differ = [i for i, (a, b) in enumerate(zip(wa, wb)) if not np.array_equal(a, b)]
        assert not differ, (
            f"{name}: weights {differ} differ, by up to "
            f"{max(float(np.max(np.abs(wa[i] - wb[i]))) for i in differ):.3g}"
        )


@pytest.mark.large
def test_killed_and_resumed_cluster_ends_with_the_uninterrupted_weights(tiny_data, tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # A (uninterrupted) runs beside B's chain of killed clusters: they share nothing.
    cluster_a = start_cluster(tiny_data, run_a, tmp_path / "logs-a")
    try:
        for number, (kill_after, logged) in enumerate(KILLS):
            codes, report = wait_cluster(
                *start_cluster(tiny_data, run_b, tmp_path / f"logs-b{number}", kill_after)
            )
            assert codes == [-signal.SIGKILL] * NUM_WORKERS, report
            assert single.epochs_of(single.read_log(run_b)) == logged
        codes, report = wait_cluster(*start_cluster(tiny_data, run_b, tmp_path / "logs-b"))
        assert codes == [0] * NUM_WORKERS, report
    finally:
        codes, report = wait_cluster(*cluster_a)
    assert codes == [0] * NUM_WORKERS, report

    assert_same_models(run_a, run_b)

    log_a, log_b = single.read_log(run_a), single.read_log(run_b)
    assert single.epochs_of(log_a) == ALL_EPOCHS
    assert single.epochs_of(log_b) == ALL_EPOCHS
    for ra, rb in zip(log_a, log_b):
        for column in ("loss", "dsc", "ji", "val_dsc", "learning_rate"):
            assert rb[column] != "", (rb["stage"], rb["epoch"], column)
            assert rb[column] == ra[column], (ra["stage"], ra["epoch"], column)

    state_a = json.loads((run_a / "state.json").read_text())
    state_b = json.loads((run_b / "state.json").read_text())
    assert state_a.get("stage1_done") is True and state_a.get("stage2_done") is True
    assert state_b == state_a
    leftovers = [p for p in run_b.rglob("*") if ".worker-" in p.name or "tmp-" in p.name]
    assert leftovers == []
    for phase in ("stage1", "stage2_frozen", "stage2"):
        record = pathlib.Path("backup", f"multiworker_{phase}", "early_stopping.json")
        assert json.loads((run_b / record).read_text()) == json.loads((run_a / record).read_text())


STOP_COUNTS = (
    "train.stage1_epochs=2",
    "train.stage2_epochs=5",
    "train.freeze_cnn_epochs=4",
    "train.steps_per_epoch=2",
    "train.early_stopping_patience=1",
    # The frozen phase at a learning rate that leaves its weights as they are (it trains no
    # batch norm): its validation DSC repeats, which is no improvement, so patience 1 stops it
    # after its second epoch, whatever the CPU.
    "train.context_learning_rate=1e-12",
)


@pytest.mark.large
def test_early_stopping_on_two_workers_resumes_past_a_stopped_phase(tiny_data, tmp_path):
    args = train_args(STOP_COUNTS)
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    codes, report = wait_cluster(*start_cluster(tiny_data, run_a, tmp_path / "logs-a", args=args))
    assert codes == [0] * NUM_WORKERS, report
    epochs_a = single.epochs_of(single.read_log(run_a))
    stage1 = [e for s, e in epochs_a if s == 1]
    frozen = [e for s, e in epochs_a if s == 2 and e < 4]
    assert stage1 == list(range(len(stage1))), epochs_a
    assert frozen == [0, 1], epochs_a
    assert [e for s, e in epochs_a if s == 2 and e >= 4] == [4], epochs_a
    record = json.loads(
        (run_a / "backup" / "multiworker_stage2_frozen" / "early_stopping.json").read_text()
    )
    assert record["stopped_epoch"] == 1, record

    # B: killed as the end-to-end phase is about to start (the frozen phase stopped and backed
    # up), then rerun.
    kill_after = len(stage1) + len(frozen)
    codes, report = wait_cluster(
        *start_cluster(tiny_data, run_b, tmp_path / "logs-b0", kill_after, args=args)
    )
    assert codes == [-signal.SIGKILL] * NUM_WORKERS, report
    assert single.epochs_of(single.read_log(run_b)) == epochs_a[:kill_after]
    codes, report = wait_cluster(*start_cluster(tiny_data, run_b, tmp_path / "logs-b1", args=args))
    assert codes == [0] * NUM_WORKERS, report

    assert single.epochs_of(single.read_log(run_b)) == epochs_a
    assert_same_models(run_a, run_b)
    state_a = json.loads((run_a / "state.json").read_text())
    assert json.loads((run_b / "state.json").read_text()) == state_a
