"""The stage ablation of `benchmarks/PROTOCOL.md`: stage 1, stage 2, the control and what the
run ships, scored case by case on a test cohort, with paired comparisons and provenance.

Arms (all from one run folder):

- ``stage1``: ``RUN/stage1.keras``, the best stage-1 CNN;
- ``stage2``: ``RUN/stage2.keras``, the best contextual model (``RUN/model.keras`` in runs made
  before the trainer wrote ``stage2.keras``);
- ``control``: the stage-1 CNN trained on for exactly the optimizer steps stage 2 gets
  (``train.steps_per_epoch`` x ``train.stage2_epochs``), from ``stage1.keras``'s weights, with
  stage 1's own loss, deep supervision and slice batches (``data.slice_batch_size``), on the
  run's training cases, the data stream continuing stage 1's (epochs ``stage1_epochs`` on);
  peak learning rate ``train.stage2_learning_rate`` (the rate at which the package fine-tunes a
  trained CNN) with the trainer's warm-up and cosine schedule; the best epoch by the run's
  validation DSC is kept, as the trainer keeps stage 2's. It answers "is stage 2's gain just
  more training?". Written to ``RUN/control/`` (``control.keras``, ``log.csv``,
  ``state.json``);
- ``shipped``: ``RUN/model.keras``, what ``pancseg predict RUN`` uses (a copy of one stage; an
  arm whose file has the same bytes as another's is scored once and named as that one).

Each arm segments every test case through `pancseg_tf.inference.Segmenter` (what ``pancseg
predict`` runs; masks on each case's own grid) and is scored with
`pancseg_tf.evaluation.metrics.evaluate_case`: DSC, ambiguous-slice DSC (synthetic cohorts:
``ambiguous_slices.json``) and slice consistency (lower is better). Comparisons (`paired_stats`):
stage 2 vs stage 1, stage 2 vs control, control vs stage 1, shipped vs stage 1; with a single
test case there are per-case values only.

Usage:
    python benchmarks/stage_ablation.py --reanalyse RESULTS.json  # comparisons of `METRICS`
        # from the per-case rows a results file holds: no model runs, the rows are unchanged
    python benchmarks/stage_ablation.py RUN TEST_COHORT --data DATA --json OUT.json
        [--config CFG [--set KEY=VALUE ...] [--seed S]]   # train RUN first if it has no model
        [--no-control] [--control-learning-rate LR] [--cases id,id] [--validation]

``DATA`` is the run's prepared data (``pancseg prepare``; the control trains on it). With
``--config`` and a ``RUN`` that holds no ``model.keras``, the script first runs ``pancseg train
DATA RUN --config CFG ...`` and records that command. ``--validation`` scores the run's
validation cases of ``TEST_COHORT`` (its own cohort) instead: a development check, never a
reported result.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    file_sha256,
    pancseg,
    provenance,
    with_provenance_summary,
)
from paired_stats import paired_comparison  # noqa: E402

ARMS = ("stage1", "stage2", "control", "shipped")
#: (A, B) of each paired comparison: differences are A - B.
COMPARISONS = (
    ("stage2", "stage1"),
    ("stage2", "control"),
    ("control", "stage1"),
    ("shipped", "stage1"),
)
#: metric -> higher is better. HD95 and ASSD (mm) say whether the boundaries hold.
METRICS = {
    "dsc": True,
    "dsc_ambiguous": True,
    "slice_consistency": False,
    "hd95_mm": False,
    "assd_mm": False,
}


def ambiguous_dice(pred: np.ndarray, gt: np.ndarray, slices: list[int]) -> float:
    """DSC over the given axial slices only (pooled voxels); NaN when the case has none."""
    from pancseg_tf.evaluation.metrics import dice

    if not slices:
        return float("nan")
    return float(dice(pred[:, :, slices], gt[:, :, slices]))


def train_run(data: pathlib.Path, run: pathlib.Path, config: str, sets: list[str], seed: int):
    """``pancseg train DATA RUN --config CONFIG [--set ...] --seed SEED``; returns its argv."""
    args = ["train", str(data), str(run), "--config", config, "--seed", str(seed)]
    for item in sets:
        args += ["--set", item]
    pancseg(*args)
    return ["pancseg", *args]


def train_control(
    run: pathlib.Path,
    data: pathlib.Path,
    out: pathlib.Path,
    *,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """Trains the control arm into ``out/control.keras`` (see the module docstring).

    Args:
        run: the run folder (``config.yaml``, ``splits.json``, ``stage1.keras``).
        data: the run's prepared data.
        out: the control's folder (emptied first).
        learning_rate: peak learning rate; default the run's ``train.stage2_learning_rate``.

    Returns:
        What was trained: steps, epochs, learning rate, seed, per-epoch validation DSC, the
        best epoch and its score, seconds.
    """
    import keras

    from pancseg_tf.config import load_config
    from pancseg_tf.data.pipeline import make_training_dataset
    from pancseg_tf.inference import load_model
    from pancseg_tf.training.callbacks import BestModel, RunLog, WholeVolumeValidation, read_json
    from pancseg_tf.training.recipe import (
        make_optimizer,
        phase_seed,
        side_loss_weights,  # the trainer's rule for the side outputs' weights: stage 1's loss
        stage_losses,
    )

    cfg = load_config(run / "config.yaml")
    splits = json.loads((run / "splits.json").read_text())
    seed = int(splits.get("seed", 0))
    epochs, steps = cfg.train.stage2_epochs, cfg.train.steps_per_epoch
    rate = cfg.train.stage2_learning_rate if learning_rate is None else float(learning_rate)
    if epochs < 1:
        raise SystemExit("the run's train.stage2_epochs is 0: stage 2 adds no steps to match")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.monotonic()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    try:
        keras.utils.set_random_seed(phase_seed(seed, "control"))
        cnn = load_model(run / "stage1.keras")
        cnn.compile(
            optimizer=make_optimizer(rate, cfg, epochs, cfg.train.warmup_epochs),
            loss=stage_losses(cfg, cnn.loss_keys, stage=1),
            loss_weights=side_loss_weights(cnn.loss_keys, cfg.train.side_output_weights),
            jit_compile=cfg.train.jit_compile,
        )
        first = cfg.train.stage1_epochs  # stage 1 drew epochs 0 .. stage1_epochs - 1
        dataset = None
        for epoch in range(first, first + epochs):
            part = make_training_dataset(
                data, cfg, stage=1, seed=seed, epoch=epoch, cases=splits["train"]
            )
            part = part.repeat().take(steps)
            dataset = part if dataset is None else dataset.concatenate(part)
        dataset = dataset.map(lambda image, mask: (image, cnn.targets(mask)))
        validation = WholeVolumeValidation(
            data,
            splits["validation"][: cfg.train.validation_cases],
            threshold=cfg.postprocess.threshold,
            largest_component=cfg.postprocess.largest_component,
        )
        history = cnn.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=steps,
            shuffle=False,
            verbose=2,
            callbacks=[
                validation,
                RunLog(out / "log.csv", "control", 0),
                BestModel(
                    out / "control.keras", out / "state.json", "control", validation=validation
                ),
            ],
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    history = history.history
    state = read_json(out / "state.json", {})
    return {
        "what": "stage1.keras trained on with stage 1's loss and slice batches",
        "optimizer_steps": epochs * steps,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "slices_per_step": cfg.data.slice_batch_size,
        "peak_learning_rate": rate,
        "seed": seed,
        "data_epochs": [first, first + epochs - 1],
        "val_dsc": [float(v) for v in history.get("val_dsc", [])],
        "best_epoch": state.get("control_epoch"),
        "best_val_dsc": state.get("control"),
        "seconds": round(time.monotonic() - start, 1),
    }


def score_model(path: pathlib.Path, cases, ambiguous: dict, label_values) -> list[dict[str, Any]]:
    """Segments and scores every case with one model; one row per case. A case's label is
    read with its own ``label_values`` (a manifest row's), else with ``label_values``."""
    from pancseg_tf.evaluation.metrics import evaluate_case
    from pancseg_tf.inference import Segmenter
    from pancseg_tf.preprocessing.labels import map_labels

    segmenter = Segmenter.from_path(path)
    rows = []
    for case in cases:
        volume = case.load_image()
        values = case.label_values if case.label_values is not None else label_values
        gt = map_labels(case.load_label().array, values)
        mask = segmenter.segment(volume).mask
        row = evaluate_case(mask, gt, volume.spacing)
        row["case"] = case.case_id
        row["dsc_ambiguous"] = ambiguous_dice(mask, gt, ambiguous.get(case.case_id, []))
        rows.append(row)
    return rows


def compare(arms: dict[str, dict], seed: int = 0) -> dict[str, Any]:
    """The protocol's paired comparisons of the arms' per-case metrics (None with < 2 cases)."""
    out: dict[str, Any] = {}
    for a, b in COMPARISONS:
        if a not in arms or b not in arms:
            continue
        key = f"{a}_vs_{b}"
        out[key] = {}
        for metric, higher in METRICS.items():
            x = [row[metric] for row in arms[a]["cases"]]
            y = [row[metric] for row in arms[b]["cases"]]
            try:
                out[key][metric] = paired_comparison(x, y, seed=seed, higher_is_better=higher)
            except ValueError as error:  # one test case, or no ambiguous slices
                out[key][metric] = {"not_tested": str(error)}
    return out


def reanalyse(path: pathlib.Path, command: list[str]) -> dict[str, Any]:
    """Recomputes a results file's per-arm summaries and comparisons for every metric of
    `METRICS` from the per-case rows it holds (recorded by the governed run; nothing is scored
    again) and records this analysis's own provenance under ``reanalysis`` beside the run's."""
    from pancseg_tf.evaluation.metrics import summarize

    report = json.loads(path.read_text(encoding="utf-8"))
    for arm in report["arms"].values():
        arm["summary"] = summarize(arm["cases"], keys=("dsc", "ji", *METRICS))
    report["comparisons"] = compare(report["arms"])
    report["reanalysis"] = {
        "why": "comparisons of the metrics added to METRICS since the run, from its own rows",
        "metrics": list(METRICS),
        "provenance": provenance(None, command),
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    partial.replace(path)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reanalyse"]:
        if len(argv) != 2:
            raise SystemExit("usage: stage_ablation.py --reanalyse RESULTS.json")
        report = reanalyse(pathlib.Path(argv[1]), ["benchmarks/stage_ablation.py", *argv])
        for key, metrics in report["comparisons"].items():
            for metric, result in metrics.items():
                if "verdict" in result:
                    print(
                        f"{key} {metric}: {result['mean_difference']:+.4f} "
                        f"[{result['ci_low']:+.4f}, {result['ci_high']:+.4f}] {result['verdict']}"
                    )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=pathlib.Path, help="the run folder")
    parser.add_argument("cohort", type=pathlib.Path, help="the test cohort (MSD, NIH or CSV)")
    parser.add_argument("--data", type=pathlib.Path, required=True, help="the run's prepared data")
    parser.add_argument("--config", help="train RUN first with this config if it has no model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0, help="training seed (with --config)")
    parser.add_argument("--no-control", action="store_true", help="skip the control arm")
    parser.add_argument("--control-learning-rate", type=float, help="default: the run's")
    parser.add_argument("--control-dir", type=pathlib.Path, help="default RUN/control")
    parser.add_argument("--cases", help="comma-separated case ids (default: all)")
    parser.add_argument("--validation", action="store_true", help="the run's validation cases")
    parser.add_argument("--json", type=pathlib.Path, required=True, help="the results JSON")
    args = parser.parse_args(argv)
    command = ["benchmarks/stage_ablation.py", *argv]

    training_command = None
    if not (args.run / "model.keras").is_file():
        if not args.config:
            parser.error(f"{args.run} holds no model.keras: train it, or pass --config")
        training_command = train_run(args.data, args.run, args.config, args.set, args.seed)

    from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    from pancseg_tf.config import load_config
    from pancseg_tf.evaluation.metrics import summarize
    from pancseg_tf.io.cohorts import ambiguous_slices, discover_cohort

    cfg = load_config(args.run / "config.yaml")
    cases = discover_cohort(args.cohort)
    wanted = None
    if args.validation:
        wanted = set(json.loads((args.run / "splits.json").read_text())["validation"])
    if args.cases:
        wanted = set(args.cases.split(","))
    if wanted is not None:
        cases = [c for c in cases if c.case_id in wanted]
    if not cases:
        parser.error(f"no case of {args.cohort} to score")
    ambiguous = ambiguous_slices(args.cohort)

    control = None
    paths = {
        "stage1": args.run / "stage1.keras",
        "stage2": args.run / "stage2.keras",
        "shipped": args.run / "model.keras",
    }
    if not paths["stage2"].is_file():  # runs made before the trainer wrote stage2.keras
        paths["stage2"] = paths["shipped"]
    if not args.no_control:
        control_dir = args.control_dir or args.run / "control"
        control = train_control(
            args.run, args.data, control_dir, learning_rate=args.control_learning_rate
        )
        paths["control"] = control_dir / "control.keras"

    arms: dict[str, dict[str, Any]] = {}
    by_hash: dict[str, str] = {}
    for name in ARMS:
        if name not in paths:
            continue
        digest = file_sha256(paths[name])
        arm: dict[str, Any] = {"model": str(paths[name]), "sha256": digest}
        if digest in by_hash:  # the same bytes as an arm already scored
            arm.update(same_as=by_hash[digest], cases=arms[by_hash[digest]]["cases"])
        else:
            by_hash[digest] = name
            start = time.monotonic()
            arm["cases"] = score_model(paths[name], cases, ambiguous, cfg.preprocess.label_values)
            arm["seconds"] = round(time.monotonic() - start, 1)
        arm["summary"] = summarize(arm["cases"], keys=("dsc", "ji", *METRICS))
        arms[name] = arm
        summary = arm["summary"]
        print(
            f"{name}: DSC {summary['dsc']['mean']:.4f}  ambiguous-slice DSC "
            f"{summary['dsc_ambiguous']['mean']:.4f}  slice consistency "
            f"{summary['slice_consistency']['mean']:.4f}  ({len(cases)} cases)"
            + (f"  [same file as {arm['same_as']}]" if "same_as" in arm else ""),
            flush=True,
        )
    state_path = args.run / "state.json"
    report = {
        "protocol": "benchmarks/PROTOCOL.md",
        "provenance": provenance(args.run / "config.yaml", command),
        "training_command": training_command,
        "run": str(args.run),
        "cohort": str(args.cohort),
        "data": str(args.data),
        "scored": "validation cases (development only)" if args.validation else "test cohort",
        "cases": [c.case_id for c in cases],
        "run_state": json.loads(state_path.read_text()) if state_path.is_file() else None,
        "run_log": (args.run / "log.csv").read_text() if (args.run / "log.csv").is_file() else None,
        "control": control,
        "arms": arms,
        "comparisons": compare(arms),
    }
    for key, metrics in report["comparisons"].items():
        dsc = metrics["dsc"]
        if "verdict" in dsc:
            print(
                f"{key} DSC: mean difference {dsc['mean_difference']:+.4f}, 95 % CI "
                f"[{dsc['ci_low']:+.4f}, {dsc['ci_high']:+.4f}], Wilcoxon p "
                f"{dsc['wilcoxon_p']:.3g}: {dsc['verdict']} (n={dsc['n']})"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    partial = args.json.with_name(args.json.name + ".partial")
    text = json.dumps(with_provenance_summary(report), indent=2, default=float)
    partial.write_text(text + "\n", encoding="utf-8")
    partial.replace(args.json)
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
