"""The batch losses span the global batch under `MirroredStrategy`: one step = one device's.

``replica_losses_worker.py`` runs in a fresh process (the CPU is split into two logical devices
before TensorFlow starts) and trains a small convolutional model one SGD step (learning rate 1)
on a global batch of 4 phantoms whose two replica halves differ (large organs / one pixel each),
on one device and under `MirroredStrategy` with 2 replicas; these tests read its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Run, not imported: it splits the CPU into logical devices before TensorFlow starts.
WORKER_SCRIPT = Path(__file__).with_name("replica_losses_worker.py")
REPO = WORKER_SCRIPT.parents[1]
WORKER_TIMEOUT_S = 300
# float32 sums in another order; the old per-replica sums were off by 9e-3 to 6e-2.
ATOL = 1e-5

FIT_CASES = [
    "jaccard",
    "dice",
    "jaccard_weighted",
    "dice_weighted",
    "weighted_bce",
    "jaccard_bce",
]


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("replica_losses") / "result.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["num_replicas"] == 2
    return result


@pytest.mark.large
@pytest.mark.parametrize("case", FIT_CASES)
def test_mirrored_fit_steps_like_one_device_on_the_global_batch(steps, case):
    # The step is real and a per-replica loss would step elsewhere (the test can fail).
    assert steps[f"moved_{case}"] > 1e-2
    assert steps[f"gap_{case}"] > 5e-3
    assert steps[f"fit_{case}"] < ATOL
    mirrored_loss, one_device_loss = steps[f"loss_{case}"]
    assert mirrored_loss == pytest.approx(one_device_loss, rel=1e-5)


@pytest.mark.large
@pytest.mark.parametrize("case", ["jaccard", "dice"])
def test_fit_distributed_steps_like_one_device_on_the_global_batch(steps, case):
    assert steps[f"moved_fit_distributed_{case}"] > 1e-2
    assert steps[f"fit_distributed_{case}"] < ATOL
