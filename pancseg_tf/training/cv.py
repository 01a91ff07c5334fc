"""``pancseg cv``: k-fold cross-validation, the paper's protocol, and its ablations as tables.

One command runs the protocol the paper's CT comparisons use (4-fold cross-validation on NIH
Pancreas-CT) on any cohort:

1. ``OUT/folds.json``: the fold of every case. NIH Pancreas-CT with 4 folds gets the
   literature's split by case number (1-20, 21-40, 41-61, 62-82; cases missing from the
   download are skipped); any other cohort a split seeded by case id; ``folds_file`` supplies
   one.
2. ``OUT/data/``: the whole cohort prepared once (`pancseg_tf.data.prepare.prepare_cohort`).
3. For each fold and each loss (``losses``; default the config's ``train.loss``), in
   ``OUT/<loss>/fold_<i>/``: ``run/``, a run folder trained on the other folds (validation
   cases drawn from them by the run's seeded split), both stages or stage 1 alone; the
   post-processing (largest connected component + hole filling, on or off) chosen on the
   validation cases' predictions for each stage and written into ``run/config.yaml``, which
   ``pancseg predict`` follows; the fold's held-out cases segmented by each stage into
   ``pred_stage1/`` and ``pred_stage2/`` (masks on each case's own grid); ``fold.json`` with
   every per-case metric, the DSC on the cohort's ambiguous slices, slice consistency and the
   DSC at thresholds 0.1 to 0.9. A fold with a ``fold.json`` is done and skipped on a rerun;
   an interrupted fold resumes its training where it stopped.
4. ``OUT/cv_summary.json`` / ``.md`` and ``OUT/threshold_curves.png``: the paper's table (DSC
   and JI, mean ± std, min, max, per fold and over all held-out cases, stage 1 beside stage 2)
   and the ablation table (loss x stage: DSC, JI, DSC on ambiguous slices, slice consistency,
   the DSC's spread over thresholds), rebuilt from whatever folds exist.

Folds are numbered from 0. ``fold`` runs one fold (a cluster job array, one Colab session at a
time): run ``pancseg cv COHORT OUT --prepare-only`` first so that parallel jobs do not race
on ``OUT/data``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pancseg_tf.atomic import replacing, write_text
from pancseg_tf.config import Config, apply_overrides
from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation.tables import missing

log = logging.getLogger("pancseg_tf.training.cv")

#: The literature's 4-fold split of NIH Pancreas-CT by case number (inclusive ranges).
NIH_FOLD_RANGES = ((1, 20), (21, 40), (41, 61), (62, 82))
#: Thresholds of the DSC-vs-threshold curves.
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Losses `pancseg cv --losses` accepts (`pancseg_tf.training.trainer.make_loss`'s names).
LOSSES = ("bce", "weighted_bce", "dice", "jaccard_per_sample", "jaccard", "jaccard_bce")
#: What the tables call each loss.
LOSS_TITLES = {
    "bce": "binary cross-entropy",
    "weighted_bce": "class-weighted cross-entropy",
    "dice": "Dice",
    "jaccard_per_sample": "Jaccard, per sample",
    "jaccard": "Jaccard, over the batch",
    "jaccard_bce": "Jaccard + cross-entropy",
}
STAGE_TITLES = {"stage1": "stage 1 (CNN)", "stage2": "stage 2 (CNN + BiConvLSTM)"}
_NIH_ID = re.compile(r"PANCREAS_(\d{4})")


# === Folds ===


def assign_folds(case_ids: Sequence[str], folds: int, *, seed: int = 0) -> dict[str, Any]:
    """The fold of every case.

    NIH Pancreas-CT case ids (``PANCREAS_0001`` ...) with ``folds == 4`` get the literature's
    split by case number (`NIH_FOLD_RANGES`); anything else a shuffle seeded by ``seed`` over
    the sorted ids, dealt round-robin, so fold sizes differ by at most one.

    Args:
        case_ids: the cohort's labelled case ids.
        folds: number of folds, 2 or more and at most the number of cases.
        seed: seeds the shuffle.

    Returns:
        ``{"scheme": "nih-case-number" | "seeded", "seed": int, "folds": [[case id, ...], ...]}``
        with each fold's ids sorted.

    Raises:
        PancsegError: fewer than 2 folds, more folds than cases, or duplicate ids.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise PancsegError("the cohort has duplicate case ids")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise PancsegError(f"--folds must be an integer >= 2, got {folds!r}")
    if folds > len(ids):
        raise PancsegError(f"--folds {folds} needs at least {folds} labelled cases; got {len(ids)}")
    numbers = [_NIH_ID.fullmatch(i) for i in ids]
    if folds == len(NIH_FOLD_RANGES) and all(numbers):
        split = [
            [i for i, m in zip(ids, numbers) if lo <= int(m.group(1)) <= hi]
            for lo, hi in NIH_FOLD_RANGES
        ]
        outside = sorted(set(ids) - {i for fold in split for i in fold})
        if not outside and all(split):
            return {"scheme": "nih-case-number", "seed": seed, "folds": split}
    order = np.random.default_rng(seed).permutation(len(ids))
    split = [sorted(ids[j] for j in order[k::folds]) for k in range(folds)]
    return {"scheme": "seeded", "seed": seed, "folds": split}


def load_folds(path: pathlib.Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """Reads and checks a folds file: every fold non-empty, no case twice, every case known.

    Cases of the cohort that no fold names are reported (they take part in no fold).

    Raises:
        PancsegError: unreadable, malformed, or naming cases the cohort lacks.
    """
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PancsegError(f"cannot read the folds file {path}: {error}") from None
    folds = data.get("folds") if isinstance(data, dict) else data
    if (
        not isinstance(folds, list)
        or len(folds) < 2
        or not all(isinstance(f, list) and f and all(isinstance(c, str) for c in f) for f in folds)
    ):
        raise PancsegError(
            f'{path}: expected {{"folds": [[case id, ...], ...]}} with 2 or more non-empty folds'
        )
    seen = [c for f in folds for c in f]
    twice = sorted({c for c in seen if seen.count(c) > 1})
    if twice:
        raise PancsegError(f"{path}: cases in more than one fold: {', '.join(twice[:5])}")
    unknown = sorted(set(seen) - set(case_ids))
    if unknown:
        raise PancsegError(f"{path}: cases not in the cohort: {', '.join(unknown[:5])}")
    unused = sorted(set(case_ids) - set(seen))
    if unused:
        log.warning("%d cohort case(s) are in no fold: %s", len(unused), ", ".join(unused[:5]))
    scheme = data.get("scheme", "file") if isinstance(data, dict) else "file"
    seed = data.get("seed") if isinstance(data, dict) else None
    return {"scheme": scheme, "seed": seed, "folds": [sorted(f) for f in folds]}


# === The run ===


@dataclasses.dataclass
class CrossValidation:
    """Runs cross-validation into ``out`` (see the module docstring); rerun to resume.

    Args:
        cohort: the labelled cohort (MSD / nnU-Net folder, NIH download, CSV manifest).
        out: the output folder.
        config: the resolved config (``train.loss`` is replaced by each of ``losses``).
        folds: number of folds (ignored when ``OUT/folds.json`` or ``folds_file`` exists).
        losses: the losses to compare; default ``(config.train.loss,)``.
        stages: ``"both"`` or ``"1"`` (stage 1 alone: the loss ablation on the CNN).
        seed: seeds the fold split (non-NIH cohorts), each run's split, weights and data order.
        strategy: the training strategy (`pancseg_tf.training.trainer.STRATEGIES`).
        folds_file: a JSON folds file to use instead of the default assignment.
        workers: processes preparing cases.
        progress: progress bars in training.
        data_dir: where the prepared cohort goes (default ``OUT/data``): e.g. a fast local disk
            while ``OUT`` is on a network drive.
    """

    cohort: pathlib.Path
    out: pathlib.Path
    config: Config
    folds: int = 4
    losses: tuple[str, ...] | None = None
    stages: str = "both"
    seed: int = 0
    strategy: str = "auto"
    folds_file: pathlib.Path | None = None
    workers: int = 2
    progress: bool = True
    data_dir: pathlib.Path | None = None

    def __post_init__(self) -> None:
        self.cohort = pathlib.Path(self.cohort)
        self.out = pathlib.Path(self.out)
        self.data_dir = pathlib.Path(self.data_dir) if self.data_dir else self.out / "data"
        if self.strategy == "multiworker":
            # Every worker would go on to choose post-processing and score the fold.
            raise PancsegError(
                "pancseg cv runs on one machine (--strategy auto, none or mirrored); on several "
                "machines train each fold with pancseg train --strategy multiworker"
            )
        if self.strategy == "auto" and os.environ.get("TF_CONFIG"):
            raise PancsegError(
                "TF_CONFIG is set, so --strategy auto would train each fold on several machines; "
                "pancseg cv runs on one: unset TF_CONFIG or pass --strategy none or mirrored"
            )
        if self.stages not in ("1", "both"):
            raise PancsegError(f"--stages must be 1 or both; got {self.stages!r}")
        self.losses = tuple(self.losses or (self.config.train.loss,))
        unknown = [name for name in self.losses if name not in LOSSES]
        if unknown or len(set(self.losses)) != len(self.losses):
            raise PancsegError(
                f"--losses takes distinct names among {', '.join(LOSSES)}; got "
                f"{', '.join(self.losses)}"
            )
        self.config.validate()
        self._setup: tuple[list[Any], dict[str, Any], dict[str, Any]] | None = None

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("stage1",) if self.stages == "1" else ("stage1", "stage2")

    # --- set-up ---

    def cases(self) -> list[Any]:
        from pancseg_tf.io.cohorts import discover_cohort

        cases = discover_cohort(self.cohort)
        if not cases:
            raise PancsegError(f"{self.cohort} holds no labelled cases")
        return cases

    def fold_assignment(self, case_ids: Sequence[str]) -> dict[str, Any]:
        """``OUT/folds.json``: made once (or copied from ``folds_file``), then reused."""
        path = self.out / "folds.json"
        if self.folds_file is not None:
            folds = load_folds(self.folds_file, case_ids)
            if path.is_file() and load_folds(path, case_ids)["folds"] != folds["folds"]:
                raise PancsegError(
                    f"{path} holds another fold assignment than {self.folds_file}: use a new OUT"
                )
        elif path.is_file():
            folds = load_folds(path, case_ids)
        else:
            folds = assign_folds(case_ids, self.folds, seed=self.seed)
        if not path.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(path, folds)
        return folds

    def prepare(self) -> dict[str, Any]:
        """Prepares the whole cohort once into ``data_dir`` (resumable)."""
        from pancseg_tf.data.prepare import prepare_cohort

        return prepare_cohort(self.cohort, self.data_dir, config=self.config, workers=self.workers)

    def loss_config(self, loss: str) -> Config:
        return apply_overrides(self.config, [f"train.loss={loss}"])

    def fold_dir(self, loss: str, fold: int) -> pathlib.Path:
        return self.out / loss / f"fold_{fold}"

    # --- everything ---

    def setup(self, fold: int | None = None) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """``OUT/folds.json`` and the prepared cohort (no TensorFlow: prepare's worker
        processes start before it); done once per object. ``fold`` is checked first."""
        if self._setup is None:
            cases = self.cases()
            folds = self.fold_assignment([c.case_id for c in cases])
            _check_fold(fold, len(folds["folds"]))
            self._setup = (cases, folds, self.prepare())
        return self._setup

    def run(self, fold: int | None = None) -> dict[str, Any]:
        """Runs every fold (or only ``fold``) not yet done, then rebuilds the summary.

        Returns:
            The summary (``OUT/cv_summary.json``'s content).
        """
        cases, folds, index = self.setup(fold)
        count = len(folds["folds"])
        _check_fold(fold, count)
        prepared = {entry["case_id"] for entry in index["cases"]}
        for loss in self.losses:
            for k in [fold] if fold is not None else range(count):
                self.run_fold(loss, k, folds["folds"], prepared, cases)
        return write_summary(self.out)

    def run_fold(
        self,
        loss: str,
        k: int,
        folds: list[list[str]],
        prepared: set[str],
        cases: list[Any],
    ) -> dict[str, Any]:
        """Trains, chooses post-processing, segments and scores one fold; skips a done fold."""
        from pancseg_tf.training.callbacks import STAGE1_FILE, STAGE2_FILE, read_json
        from pancseg_tf.training.trainer import Trainer

        folder = self.fold_dir(loss, k)
        done = folder / "fold.json"
        if done.is_file():
            log.info("%s fold %d: done, skipped (delete %s to redo it)", loss, k, done)
            return json.loads(done.read_text())
        start = time.monotonic()
        held_out = list(folds[k])
        train_cases = sorted(c for i, f in enumerate(folds) if i != k for c in f if c in prepared)
        missing = sorted(c for i, f in enumerate(folds) if i != k for c in f if c not in prepared)
        if missing:
            log.warning("%s fold %d: %d case(s) were not prepared", loss, k, len(missing))
        log.info(
            "== %s fold %d of %d: training on %d cases, %d held out",
            loss,
            k,
            len(folds),
            len(train_cases),
            len(held_out),
        )
        cfg = self.loss_config(loss)
        run_dir = folder / "run"
        finished = "stage1_done" if self.stages == "1" else "stage2_done"
        if not read_json(run_dir / "state.json", {}).get(finished):
            Trainer(
                self.data_dir,
                run_dir,
                cfg,
                seed=self.seed + k,
                strategy=self.strategy,
                progress=self.progress,
                cases=train_cases,
            ).run(self.stages)
        splits = json.loads((run_dir / "splits.json").read_text())
        models = {"stage1": run_dir / STAGE1_FILE, "stage2": run_dir / STAGE2_FILE}
        models = {s: models[s] for s in self.stage_names}
        # The model the fold's run ships (`ship_best_model`: stage 2 only where it beat stage 1
        # on the fold's validation cases); its post-processing goes into the run's config.
        shipped = read_json(run_dir / "state.json", {}).get("shipped", self.stage_names[-1])
        choice = choose_postprocessing(models, self.data_dir, splits["validation"], cfg)
        record_postprocessing(run_dir, choice, shipped)
        by_id = {c.case_id: c for c in cases}
        ambiguous = _ambiguous(self.cohort)
        results = {}
        for stage, path in models.items():
            results[stage] = segment_and_score(
                path,
                cfg,
                [by_id[c] for c in held_out],
                folder / f"pred_{stage}",
                largest_component=choice[stage]["largest_component"],
                ambiguous=ambiguous,
            )
        if len(models) > 1:  # the shipped model's scores are its stage's: no second prediction
            results["shipped"] = {**results[shipped], "stage": shipped}
        record = {
            "loss": loss,
            "fold": k,
            "held_out": held_out,
            "train": splits["train"],
            "validation": splits["validation"],
            "postprocessing": choice,
            "stages": results,
            "seconds": round(time.monotonic() - start, 1),
        }
        _write_json(done, record)
        write_summary(self.out)
        import keras

        keras.backend.clear_session()  # folds x losses in one process: free each fold's graphs
        return record


def _check_fold(fold: int | None, count: int) -> None:
    if fold is not None and not 0 <= fold < count:
        raise PancsegError(f"--fold must be in 0..{count - 1} (folds are numbered from 0)")


# === Steps of a fold ===


def choose_postprocessing(
    models: dict[str, pathlib.Path], data_dir: pathlib.Path, cases: Sequence[str], cfg: Config
) -> dict[str, dict[str, Any]]:
    """For each model, the validation cases' mean DSC with post-processing on and off.

    Post-processing (keeping the largest 3D connected component, filling holes) removes false
    positives away from the organ but can cut off a part the model found disconnected from the
    rest; as nnU-Net does, it is kept only where it does not lower the validation DSC.

    Returns:
        ``{stage: {"on": mean DSC, "off": mean DSC, "largest_component": bool, "cases": n}}``;
        without validation cases the config's setting is kept.
    """
    from pancseg_tf.evaluation.metrics import dice
    from pancseg_tf.inference import load_model, postprocess_mask
    from pancseg_tf.training.callbacks import validation_probabilities

    threshold = cfg.postprocess.threshold
    out = {}
    for stage, path in models.items():
        on, off = [], []
        for _, label, prob, _ in validation_probabilities(load_model(path), data_dir, cases):
            mask = (prob >= threshold).astype(np.uint8)
            off.append(dice(mask, label))
            on.append(dice(postprocess_mask(mask), label))
        if not on:
            out[stage] = {
                "on": None,
                "off": None,
                "largest_component": cfg.postprocess.largest_component,
                "cases": 0,
            }
            continue
        mean_on, mean_off = float(np.mean(on)), float(np.mean(off))
        out[stage] = {
            "on": round(mean_on, 6),
            "off": round(mean_off, 6),
            "largest_component": bool(mean_on >= mean_off),
            "cases": len(on),
        }
        log.info(
            "%s post-processing on validation: on %.4f, off %.4f -> %s",
            stage,
            mean_on,
            mean_off,
            "on" if mean_on >= mean_off else "off",
        )
    return out


def record_postprocessing(run_dir: pathlib.Path, choice: dict[str, dict], stage: str) -> None:
    """Writes ``stage``'s choice into ``run_dir/config.yaml`` (what ``pancseg predict RUN``
    follows) and every stage's scores under ``provenance.postprocessing_on_validation``, and
    the same into the model card of each of the run's ``.keras`` files."""
    import yaml

    from pancseg_tf.model_card import card_from_run_config, write_card

    path = run_dir / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["postprocess"]["largest_component"] = bool(choice[stage]["largest_component"])
    data.setdefault("provenance", {})["postprocessing_on_validation"] = choice
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    for model_file in sorted(run_dir.glob("*.keras")):
        if model_file.name.startswith("."):  # a killed writer's temporary file
            continue
        write_card(model_file, card_from_run_config(data))


def _ambiguous(cohort: pathlib.Path) -> dict[str, list[int]]:
    from pancseg_tf.io.cohorts import ambiguous_slices

    return ambiguous_slices(cohort)


def segment_and_score(
    model_path: pathlib.Path,
    cfg: Config,
    cases: Sequence[Any],
    pred_dir: pathlib.Path,
    *,
    largest_component: bool,
    ambiguous: dict[str, list[int]],
) -> dict[str, Any]:
    """Segments held-out cases with one model, writes their masks, scores them.

    Each case goes through `pancseg_tf.inference.Segmenter.segment` (what ``pancseg predict``
    runs; the mask on the case's own grid) and `pancseg_tf.evaluation.metrics.evaluate_case`
    against its label read with the case's own ``label_values`` (a manifest's cell) where set,
    else ``preprocess.label_values``, as `pancseg prepare` reads it;
    added: ``dsc_ambiguous`` (DSC over the cohort's ambiguous slices, NaN without any) and
    ``dsc_at_threshold`` (the DSC of the same probabilities thresholded at each of
    `THRESHOLDS`, post-processed the same way).

    Returns:
        ``{"cases": [row, ...], "summary": summarize(...)}``.
    """
    from pancseg_tf.evaluation.metrics import dice, evaluate_case, summarize
    from pancseg_tf.evaluation.pairing import axial_axis, voxel_volume_mm3
    from pancseg_tf.inference import Segmenter, load_model, postprocess_mask
    from pancseg_tf.io import write_nifti
    from pancseg_tf.io.cohorts import pancreas_values
    from pancseg_tf.preprocessing.labels import map_labels

    segmenter = Segmenter(
        load_model(model_path),
        cfg.preprocess,
        threshold=cfg.postprocess.threshold,
        postprocess=largest_component,
    )
    pred_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        volume = case.load_image()
        # A manifest case's own label values, as prepare trained on them; else the config's.
        truth = map_labels(
            case.load_label().array, pancreas_values(case, cfg.preprocess.label_values)
        )
        result = segmenter.segment(volume)
        write_nifti(result.mask, volume, pred_dir / f"{case.case_id}.nii.gz", dtype="uint8")
        row: dict[str, Any] = {"case": case.case_id}
        axis = axial_axis(volume.affine)
        row.update(
            evaluate_case(
                result.mask,
                truth,
                volume.spacing,
                slice_axis=axis,
                voxel_volume_mm3=voxel_volume_mm3(volume.affine),
            )
        )
        # The synthetic cohort's ambiguous slices index the image's third voxel axis.
        slices = ambiguous.get(case.case_id, [])
        row["dsc_ambiguous"] = (
            float(dice(result.mask[:, :, slices], truth[:, :, slices])) if slices else math.nan
        )
        curve = []
        for t in THRESHOLDS:
            mask = (result.probabilities >= t).astype(np.uint8)
            if largest_component:
                mask = postprocess_mask(mask)
            curve.append(round(float(dice(mask, truth)), 6))
        row["dsc_at_threshold"] = curve
        rows.append(row)
        log.info("  %s %s: DSC %.4f", model_path.name, case.case_id, row["dsc"])
    keys = ("dsc", "ji", "dsc_ambiguous", "slice_consistency", "hd95_mm", "assd_mm")
    return {"cases": rows, "summary": summarize(rows, keys=keys)}


# === The summary ===


def write_summary(out: pathlib.Path) -> dict[str, Any]:
    """Rebuilds ``cv_summary.json``, ``cv_summary.md`` and ``threshold_curves.png`` from every
    ``OUT/<loss>/fold_<i>/fold.json`` that exists."""
    from pancseg_tf.evaluation.metrics import summarize

    out = pathlib.Path(out)
    folds_path = out / "folds.json"
    folds_info = json.loads(folds_path.read_text()) if folds_path.is_file() else {}
    total = len(folds_info.get("folds", []))
    records = []
    for path in sorted(out.glob("*/fold_*/fold.json")):
        records.append(json.loads(path.read_text()))
    experiments: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (r["loss"], r["fold"])):
        exp = experiments.setdefault(record["loss"], {"folds_done": [], "stages": {}})
        exp["folds_done"].append(record["fold"])
        for stage, result in record["stages"].items():
            entry = exp["stages"].setdefault(stage, {"per_fold": {}, "cases": []})
            entry["per_fold"][str(record["fold"])] = summarize(result["cases"], keys=("dsc", "ji"))
            entry["cases"].extend(result["cases"])
    for exp in experiments.values():
        for entry in exp["stages"].values():
            rows = entry["cases"]
            entry["overall"] = summarize(
                rows, keys=("dsc", "ji", "dsc_ambiguous", "slice_consistency", "hd95_mm")
            )
            curves = np.asarray([r["dsc_at_threshold"] for r in rows], np.float64)
            entry["dsc_at_threshold"] = {
                "thresholds": list(THRESHOLDS),
                "mean": [round(float(v), 6) for v in curves.mean(axis=0)],
            }
            mean = entry["dsc_at_threshold"]["mean"]
            entry["dsc_threshold_spread"] = round(max(mean) - min(mean), 6)
            entry["num_cases"] = len(rows)
            del entry["cases"]
    summary = {
        "folds": total,
        "scheme": folds_info.get("scheme"),
        "experiments": experiments,
    }
    _write_json(out / "cv_summary.json", summary)
    text = summary_markdown(summary)
    write_text(out / "cv_summary.md", text)
    if experiments:
        plot_threshold_curves(summary, out / "threshold_curves.png")
    return summary


def _pct(stats: dict[str, Any] | None) -> str:
    if not stats or missing(stats.get("mean")):
        return "-"
    std = stats.get("std")
    return f"{100 * stats['mean']:.1f} ± {0.0 if missing(std) else 100 * std:.1f}"


def _range(stats: dict[str, Any] | None) -> str:
    if not stats or missing(stats.get("min")):
        return "-"
    return f"{100 * stats['min']:.1f} - {100 * stats['max']:.1f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The paper's table and the ablation table as Markdown."""
    lines = ["# Cross-validation", ""]
    total = summary["folds"]
    scheme = {"nih-case-number": "NIH case numbers 1-20, 21-40, 41-61, 62-82"}.get(
        summary["scheme"], summary["scheme"] or "?"
    )
    lines.append(f"{total} folds ({scheme}). DSC and JI in %, over held-out cases.")
    lines.append("")
    for loss, exp in summary["experiments"].items():
        done = exp["folds_done"]
        lines.append(
            f"## Loss: {LOSS_TITLES.get(loss, loss)} (`{loss}`), folds done: {len(done)} of {total}"
        )
        lines.append("")
        lines.append(
            "| fold | model | n | DSC mean ± std | DSC min - max | JI mean ± std | JI min - max |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for fold in [str(f) for f in done] + ["all"]:
            for stage, entry in exp["stages"].items():
                stats = entry["overall"] if fold == "all" else entry["per_fold"].get(fold)
                if stats is None:
                    continue
                n = stats["dsc"]["n"]
                lines.append(
                    f"| {fold} | {STAGE_TITLES.get(stage, stage)} | {n} | {_pct(stats['dsc'])} | "
                    f"{_range(stats['dsc'])} | {_pct(stats['ji'])} | {_range(stats['ji'])} |"
                )
        lines.append("")
    lines.append("## Ablation: loss x stage, over all held-out cases of the folds done")
    lines.append("")
    lines.append(
        "| loss | model | n | DSC | JI | DSC on ambiguous slices | slice consistency "
        "(lower is better) | DSC spread over thresholds 0.1-0.9 |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for loss, exp in summary["experiments"].items():
        for stage, entry in exp["stages"].items():
            o = entry["overall"]
            consistency = o["slice_consistency"]
            cons = "-" if missing(consistency.get("mean")) else f"{consistency['mean']:.3f}"
            lines.append(
                f"| {LOSS_TITLES.get(loss, loss)} | {STAGE_TITLES.get(stage, stage)} | "
                f"{entry['num_cases']} | {_pct(o['dsc'])} | {_pct(o['ji'])} | "
                f"{_pct(o['dsc_ambiguous'])} | {cons} | "
                f"{100 * entry['dsc_threshold_spread']:.1f} |"
            )
    lines.append("")
    lines.append("Mean DSC (%) at each threshold:")
    lines.append("")
    lines.append("| loss | model | " + " | ".join(f"{t:.1f}" for t in THRESHOLDS) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in THRESHOLDS) + " |")
    for loss, exp in summary["experiments"].items():
        for stage, entry in exp["stages"].items():
            values = " | ".join(f"{100 * v:.1f}" for v in entry["dsc_at_threshold"]["mean"])
            lines.append(f"| {loss} | {stage} | {values} |")
    lines.append("")
    return "\n".join(lines)


def plot_threshold_curves(summary: dict[str, Any], path: pathlib.Path) -> None:
    """Mean held-out DSC against the output threshold, one line per loss and stage (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for loss, exp in summary["experiments"].items():
        for stage, entry in exp["stages"].items():
            curve = entry["dsc_at_threshold"]
            style = "-" if stage == "stage2" else "--"
            ax.plot(
                curve["thresholds"],
                [100 * v for v in curve["mean"]],
                style,
                marker="o",
                markersize=3,
                label=f"{LOSS_TITLES.get(loss, loss)}, {stage.replace('stage', 'stage ')}",
            )
    ax.set_xlabel("output threshold")
    ax.set_ylabel("mean held-out DSC (%)")
    ax.set_title("DSC against the output threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with replacing(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _write_json(path: pathlib.Path, data: Any) -> None:
    """Strict JSON (NaN, e.g. the DSC on ambiguous slices of a case without any, written as
    null), atomically."""
    from pancseg_tf.evaluation.tables import json_safe

    write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
