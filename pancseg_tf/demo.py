"""``pancseg demo``: the whole path on a synthetic cohort, offline, on CPU, in minutes.

synthetic cohort -> prepare -> train both stages -> segment held-out cases -> evaluate (the
paper-style table in the terminal, an HTML report) -> export a SavedModel for TF Serving.
Everything lands in one folder; rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

from pancseg_tf.errors import PancsegError

log = logging.getLogger("pancseg_tf")

#: The demo's settings: the quick config, made smaller so the whole path runs in minutes.
DEMO_OVERRIDES = (
    "train.stage1_epochs=8",
    "train.stage2_epochs=3",
    "train.freeze_cnn_epochs=2",
    "train.steps_per_epoch=30",
    "train.validation_cases=2",
)
DEMO_TRAIN_CASES = 10
DEMO_HELDOUT_CASES = 4


def run_demo(
    out: str | pathlib.Path,
    *,
    modality: str = "ct",
    seed: int = 0,
    overrides: tuple[str, ...] = DEMO_OVERRIDES,
    train_cases: int = DEMO_TRAIN_CASES,
    heldout_cases: int = DEMO_HELDOUT_CASES,
    shape: tuple[int, int, int] | None = None,
) -> dict:
    """Runs the demo into ``out``; returns the held-out summary (`evaluate_predictions`').

    ``overrides``, the case counts and ``shape`` (of the synthetic volumes) exist so that
    tests can run a smaller demo through the same code.

    Raises:
        PancsegError: ``out`` exists and holds something other than a previous demo.
    """
    from pancseg_tf.config import apply_overrides, load_config
    from pancseg_tf.data.prepare import prepare_cohort
    from pancseg_tf.evaluation.report import evaluate_predictions
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.io import write_nifti
    from pancseg_tf.io.cohorts import discover_cohort
    from pancseg_tf.serving.export import export_model
    from pancseg_tf.synthetic import make_cohort
    from pancseg_tf.training.trainer import Trainer

    out = pathlib.Path(out)
    marker = out / "demo.json"
    if out.exists() and any(out.iterdir()) and not marker.is_file():
        raise PancsegError(f"{out} exists and is not a pancseg demo folder: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"modality": modality, "seed": seed}))
    cfg = apply_overrides(load_config("quick"), [f"preprocess.modality={modality}", *overrides])
    started = time.monotonic()

    def step(text: str) -> None:
        log.info("== %s (%.0f s so far)", text, time.monotonic() - started)

    shape_kw = {} if shape is None else {"shape": tuple(shape)}
    step("1/6 synthetic cohort")
    cohort, heldout = out / "cohort", out / "heldout"
    if not (cohort / "dataset.json").is_file():
        make_cohort(
            cohort, cases=train_cases, modality=modality, seed=seed, overwrite=True, **shape_kw
        )
    if not (heldout / "dataset.json").is_file():
        make_cohort(
            heldout,
            cases=heldout_cases,
            modality=modality,
            seed=seed + 1000,
            overwrite=True,
            **shape_kw,
        )
    step("2/6 prepare")
    prepare_cohort(cohort, out / "prepared", config=cfg, workers=2)
    step("3/6 train (stage 1: CNN; stage 2: CNN + bidirectional ConvLSTM)")
    Trainer(out / "prepared", out / "run", cfg, seed=seed).run("both")
    step("4/6 segment the held-out cases")
    segmenter = Segmenter.from_path(out / "run")
    predictions = out / "predictions"
    predictions.mkdir(exist_ok=True)
    for case in discover_cohort(heldout):
        volume = case.load_image()
        result = segmenter.segment(volume)
        write_nifti(result.mask, volume, predictions / f"{case.case_id}.nii.gz", dtype="uint8")
    step("5/6 evaluate")
    summary = evaluate_predictions(predictions, heldout, out / "report", progress=False)
    step("6/6 export for TensorFlow Serving")
    exports = out / "exports"
    existing = sorted(p for p in (exports / "pancseg").glob("[0-9]*") if p.is_dir())
    export_path = existing[-1] if existing else export_model(out / "run", exports)
    summary["export"] = str(export_path)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def print_demo_summary(out: pathlib.Path, summary: dict) -> None:
    """The paper-style table, where everything is, and what to run next."""
    print()
    print((out / "report" / "summary.md").read_text().strip())
    print()
    print(f"Done in {summary['seconds'] / 60:.1f} min. Everything is in {out}/:")
    print("  cohort/, heldout/     synthetic training and held-out cases (MSD layout)")
    print("  prepared/             TFRecord shards and index.json")
    print("  run/                  config.yaml, log.csv, stage1.keras, model.keras, tensorboard/")
    print("  predictions/          held-out masks on each input's own grid")
    print("  report/index.html     the evaluation report")
    print(f"  {summary['export']}   SavedModel for TensorFlow Serving")
    print()
    print("Next:")
    print("  your data   pancseg prepare COHORT prepared --config paper")
    print("              pancseg train prepared runs/exp1 --config paper")
    print(f"  predict     pancseg predict {out}/run CT.nii.gz -o masks/")
    print("  GPUs        pancseg train ... --strategy mirrored (or multiworker with TF_CONFIG)")
    print(f"  serving     see serving/README.md (TF Serving on {out}/exports), then")
    print("              pancseg query CT.nii.gz mask.nii.gz --server localhost:8500")
