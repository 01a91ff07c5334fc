"""Few-case intensity augmentation, by leave-one-out among the two real TotalSegmentator CTs.

`benchmarks/PROTOCOL.md`'s amendment 2026-12-06 (b), written before this ran: each of the two
TotalSegmentator CTs of ``../shared/data`` is held out in turn; the `quick` config's stage 1 is
trained on the other scan alone, once per arm, and the held-out scan is segmented by that run's
``stage1.keras`` and scored on its own grid. NIH Pancreas-CT 0002, the test case, is not read.

Arms (fixed in the amendment, not tuned):

- ``off``: `quick` as committed;
- ``intensity``: `quick` with `INTENSITY` (contrast, gamma and noise augmentation).

The commands of each fold and arm, in order (recorded in the JSON)::

    pancseg prepare WORK/<fold>/manifest.csv WORK/<fold>/prepared --config quick
    pancseg train WORK/<fold>/prepared WORK/<fold>/<arm> --config quick --stage 1 --seed 0 \\
        --set train.validation_fraction=0 [--set ... of the arm]

and in process: `pancseg_tf.inference.Segmenter.from_path(stage1.keras).segment(held-out scan)`,
scored by `pancseg_tf.evaluation.metrics.evaluate_case` against its label (its own values).
The decision (the amendment's rule) is printed and recorded: ``intensity`` only if it beats
``off`` on both held-out scans.

Usage::

    python benchmarks/few_case_augmentation.py --work /tmp/few_case \\
        --json benchmarks/results/few_case_augmentation.json
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import emit_json, provenance  # noqa: E402
from real_ct_transfer import SHARED_DATA, TRAINING_CASES, run  # noqa: E402

#: The ``intensity`` arm's settings (amendment 2026-12-06 (b)).
INTENSITY = (
    "data.contrast_range=[0.75, 1.33]",
    "data.gamma_range=[0.7, 1.4]",
    "data.noise_std=0.03",
)
ARMS = {"off": (), "intensity": INTENSITY}
QUICK_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "pancseg_tf" / "configs" / "quick.yaml"


def write_manifest(path: pathlib.Path, data: pathlib.Path, cases) -> None:
    """A CSV manifest of ``cases`` (rows of `TRAINING_CASES`) with absolute paths into ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [("case_id", "image", "label", "modality", "label_values")]
    rows += [(c, str(data / image), str(data / label), "ct", v) for c, image, label, v in cases]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def score(model: pathlib.Path, data: pathlib.Path, case) -> dict:
    """The held-out scan segmented by ``model`` (as ``pancseg predict`` does), scored on its
    own grid against its label's pancreas values."""
    import numpy as np

    from pancseg_tf.evaluation.metrics import evaluate_case
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.io import read_volume
    from pancseg_tf.io.label_values import parse_label_values
    from pancseg_tf.preprocessing.labels import map_labels

    _, image, label, values = case
    volume = read_volume(data / image)
    truth = map_labels(np.asarray(read_volume(data / label).array), parse_label_values(values))
    mask = Segmenter.from_path(model).segment(volume).mask
    row = evaluate_case(mask, truth, volume.spacing)
    return {k: (v if isinstance(v, bool | str) else float(v)) for k, v in row.items()}


def decide(
    folds: dict[str, dict[str, dict]], challenger: str = "intensity", incumbent: str = "off"
) -> str:
    """The amendments' rule for a few-case arm: ``challenger`` only if its DSC beats
    ``incumbent``'s on every held-out scan (a tie is no win), else ``incumbent``."""
    wins = [fold[challenger]["dsc"] > fold[incumbent]["dsc"] for fold in folds.values()]
    return challenger if wins and all(wins) else incumbent


def parse_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The few-case benchmarks' command line: ``--work``, ``--json``, ``--seed``, ``--data``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", required=True, help="working folder (cohorts, runs)")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(SHARED_DATA), help="the shared real data folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(__doc__.splitlines()[0], argv)
    data = pathlib.Path(args.data).resolve()
    work = pathlib.Path(args.work)
    started_at = provenance()
    commands: list[dict] = []
    folds: dict[str, dict[str, dict]] = {}
    seconds: dict[str, float] = {}
    for held_out in TRAINING_CASES:
        fold = work / f"held_out_{held_out[0]}"
        training = [c for c in TRAINING_CASES if c is not held_out]
        write_manifest(fold / "manifest.csv", data, training)
        prepared = fold / "prepared"
        run(
            ["prepare", str(fold / "manifest.csv"), str(prepared), "--config", "quick"],
            commands,
        )
        folds[held_out[0]] = {}
        for arm, settings in ARMS.items():
            run_dir = fold / arm
            start = time.monotonic()
            run(
                [
                    "train",
                    str(prepared),
                    str(run_dir),
                    "--config",
                    "quick",
                    "--stage",
                    "1",
                    "--seed",
                    str(args.seed),
                    "--set",
                    "train.validation_fraction=0",
                    *[item for kv in settings for item in ("--set", kv)],
                ],
                commands,
            )
            folds[held_out[0]][arm] = score(run_dir / "stage1.keras", data, held_out)
            seconds[f"{held_out[0]}/{arm}"] = round(time.monotonic() - start, 1)
            print(f"held out {held_out[0]}, {arm}: DSC {folds[held_out[0]][arm]['dsc']:.4f}")
    choice = decide(folds)
    print(f"decision (amendment 2026-12-06 (b)): {choice}")
    result = {
        "what": "leave-one-out among the two TotalSegmentator CTs: quick stage 1 trained on one, "
        "scored on the other, without and with intensity augmentation (development only; "
        "NIH 0002 not read)",
        "protocol": "benchmarks/PROTOCOL.md, amendment 2026-12-06 (b)",
        "arms": {arm: list(settings) for arm, settings in ARMS.items()},
        "held_out": folds,
        "decision": choice,
        "seconds": seconds,
        "commands": commands,
        "provenance": provenance(
            QUICK_CONFIG, ["benchmarks/few_case_augmentation.py", *(argv or [])]
        ),
        "provenance_at_start": {
            k: started_at[k] for k in ("git_commit", "git_dirty_paths", "date_utc")
        },
    }
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
