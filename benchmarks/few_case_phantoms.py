"""Phantoms beside one real scan, by leave-one-out among the two real TotalSegmentator CTs.

`benchmarks/PROTOCOL.md`'s amendment 2026-12-07 (i), written before this ran: each of the two
TotalSegmentator CTs of ``../shared/data`` is held out in turn; the `quick` config's stage 1 is
trained once per arm, and the held-out scan is segmented by that run's ``stage1.keras`` and
scored on its own grid. NIH Pancreas-CT 0002, the test case, is not read.

Arms (fixed in the amendment, not tuned):

- ``real``: the other TotalSegmentator scan alone;
- ``real_and_phantoms``: that scan and the `PHANTOMS` phantoms of the synthetic CT development
  cohort (seed `PHANTOM_SEED`), in one manifest.

Both validate on every training case (`VALIDATION`). The commands, in order (recorded in the
JSON)::

    pancseg synth WORK/phantoms --cases 16 --seed 11                          (once)
    pancseg prepare WORK/<fold>/<arm>/manifest.csv WORK/<fold>/<arm>/prepared --config quick
    pancseg train WORK/<fold>/<arm>/prepared WORK/<fold>/<arm>/run --config quick --stage 1 \\
        --seed 0 --set train.validation_fraction=0 --set train.validation_cases=17

and in process the held-out scan is segmented and scored as `few_case_augmentation.score`
does. The decision (the amendment's rule) is printed and recorded: ``real_and_phantoms`` only
if it beats ``real`` on both held-out scans.

Usage::

    python benchmarks/few_case_phantoms.py --work /tmp/few_case_phantoms \\
        --json benchmarks/results/few_case_phantoms.json
"""

from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import few_case_augmentation  # noqa: E402
from bench_common import emit_json, provenance  # noqa: E402
from few_case_augmentation import QUICK_CONFIG, score, write_manifest  # noqa: E402
from real_ct_transfer import TRAINING_CASES, run  # noqa: E402

#: The synthetic CT development cohort of PROTOCOL section (a): 16 phantoms of seed 11.
PHANTOMS, PHANTOM_SEED = 16, 11
#: Every training case validated (one real scan and at most 16 phantoms).
VALIDATION = ("train.validation_fraction=0", f"train.validation_cases={PHANTOMS + 1}")
ARMS = ("real", "real_and_phantoms")


def phantom_cases(cohort: pathlib.Path) -> list[tuple[str, str, str, str]]:
    """Manifest rows of the synthetic cohort's cases: absolute paths, label value 1."""
    images = sorted((cohort / "imagesTr").glob("*.nii.gz"))
    return [
        (p.name[: -len(".nii.gz")], str(p), str(cohort / "labelsTr" / p.name), "1") for p in images
    ]


def decide(folds: dict[str, dict[str, dict]]) -> str:
    """The amendment's rule: ``real_and_phantoms`` only if it beats ``real`` on every fold."""
    return few_case_augmentation.decide(folds, "real_and_phantoms", "real")


def main(argv: list[str] | None = None) -> int:
    args = few_case_augmentation.parse_arguments(__doc__.splitlines()[0], argv)
    data = pathlib.Path(args.data).resolve()
    work = pathlib.Path(args.work).resolve()
    started_at = provenance()
    commands: list[dict] = []
    cohort = work / "phantoms"
    run(
        ["synth", str(cohort), "--cases", str(PHANTOMS), "--seed", str(PHANTOM_SEED)],
        commands,
    )
    phantoms = phantom_cases(cohort)
    assert len(phantoms) == PHANTOMS, phantoms
    folds: dict[str, dict[str, dict]] = {}
    seconds: dict[str, float] = {}
    for held_out in TRAINING_CASES:
        training = [c for c in TRAINING_CASES if c is not held_out]
        folds[held_out[0]] = {}
        for arm in ARMS:
            folder = work / f"held_out_{held_out[0]}" / arm
            cases = training + (phantoms if arm == "real_and_phantoms" else [])
            write_manifest(folder / "manifest.csv", data, cases)
            start = time.monotonic()
            prepared = folder / "prepared"
            run(
                ["prepare", str(folder / "manifest.csv"), str(prepared)] + ["--config", "quick"],
                commands,
            )
            run(
                ["train", str(prepared), str(folder / "run"), "--config", "quick"]
                + ["--stage", "1", "--seed", str(args.seed)]
                + [item for kv in VALIDATION for item in ("--set", kv)],
                commands,
            )
            folds[held_out[0]][arm] = score(folder / "run" / "stage1.keras", data, held_out)
            seconds[f"{held_out[0]}/{arm}"] = round(time.monotonic() - start, 1)
            print(f"held out {held_out[0]}, {arm}: DSC {folds[held_out[0]][arm]['dsc']:.4f}")
    choice = decide(folds)
    print(f"decision (amendment 2026-12-07 (i)): {choice}")
    result = {
        "what": "leave-one-out among the two TotalSegmentator CTs: quick stage 1 trained on one "
        f"alone and on it with {PHANTOMS} development phantoms (seed {PHANTOM_SEED}), scored on "
        "the other (development only; NIH 0002 not read)",
        "protocol": "benchmarks/PROTOCOL.md, amendment 2026-12-07 (i)",
        "arms": {
            "real": "the held-in scan",
            "real_and_phantoms": f"the held-in scan and {PHANTOMS} phantoms",
        },
        "settings": list(VALIDATION),
        "held_out": folds,
        "decision": choice,
        "seconds": seconds,
        "commands": commands,
        "provenance": provenance(QUICK_CONFIG, ["benchmarks/few_case_phantoms.py", *(argv or [])]),
        "provenance_at_start": {
            k: started_at[k] for k in ("git_commit", "git_dirty_paths", "date_utc")
        },
    }
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
