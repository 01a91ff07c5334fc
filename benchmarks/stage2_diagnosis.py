"""Why stage 2 helps or hurts a run: the two effects behind the stage-2 recipe, measured.

1. **The haze.** The stage-1 CNN's soft Jaccard index on training windows (what the stage-2 loss
   sees) next to its thresholded one (what DSC scores), and the share of its nonzero
   probabilities below 0.1. A large gap means the soft loss is dominated by low probabilities
   that never cross the threshold, and new layers trained on it learn to pull every logit down
   (``train.stage2_loss_sharpness`` weighs the haze out).
2. **Training cases against unseen ones.** Precision and recall of stage 1 and stage 2 on the
   run's training cases and on its validation cases, whole volumes on the model grid. Stage 2's
   new layers learn to correct what the CNN does on the cases it was trained on; where the CNN
   errs differently there (it over-segments the cases it has seen, say), the correction does
   not carry over to unseen cases.

Usage:
    python benchmarks/stage2_diagnosis.py DATA RUN [--cases N] [--windows N] [--json OUT.json]

``DATA`` is the run's prepared data (``pancseg prepare``), ``RUN`` a run folder with
``stage1.keras`` and ``stage2.keras`` (older runs: ``model.keras``). A diagnostic for
development runs (`benchmarks/PROTOCOL.md`): its earlier results, made on cohorts the recipe was
then chosen on, are in ``benchmarks/results/archive/``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np


def soft_and_hard(cnn, dataset) -> dict:
    """Soft and thresholded Jaccard of a `SliceCNN` over windows, pooled; the haze's share."""
    inter = union = inter_hard = union_hard = 0.0
    low = nonzero = 0
    for image, mask in dataset:
        image, mask = np.asarray(image), np.asarray(mask, dtype=np.float32)
        slices = image.reshape(-1, *image.shape[2:])
        prob = np.asarray(cnn(slices, training=False)["prob"], dtype=np.float32)
        prob = prob.reshape(mask.shape)
        inter += float((prob * mask).sum())
        union += float((prob + mask - prob * mask).sum())
        hard = (prob >= 0.5).astype(np.float32)
        inter_hard += float((hard * mask).sum())
        union_hard += float((hard + mask - hard * mask).sum())
        nonzero += int((prob > 0.02).sum())
        low += int(((prob > 0.02) & (prob < 0.1)).sum())
    return {
        "soft_jaccard": inter / max(union, 1e-9),
        "thresholded_jaccard": inter_hard / max(union_hard, 1e-9),
        "share_of_probabilities_above_0.02_that_are_below_0.1": low / max(nonzero, 1),
    }


def precision_recall(segmenters: dict, volumes) -> dict:
    """Pooled DSC, precision and recall of each segmenter on whole model-grid volumes."""
    counts = {name: np.zeros(3) for name in segmenters}
    for volume in volumes:
        image, label = volume.normalized_image(), volume.label > 0
        for name, segmenter in segmenters.items():
            pred = segmenter.predict_model_grid(image) >= segmenter.threshold
            counts[name] += [(pred & label).sum(), (pred & ~label).sum(), (~pred & label).sum()]
    out = {}
    for name, (tp, fp, fn) in counts.items():
        out[name] = {
            "dsc": 2 * tp / max(2 * tp + fp + fn, 1),
            "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=pathlib.Path)
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("--cases", type=int, default=6, help="cases per split (default 6)")
    parser.add_argument("--windows", type=int, default=30, help="batches of windows (default 30)")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    args = parser.parse_args(argv)

    from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly

    import_tensorflow_quietly()
    from pancseg_tf.config import apply_overrides, load_config
    from pancseg_tf.data.pipeline import load_validation_volumes, make_training_dataset
    from pancseg_tf.inference import Segmenter, load_model

    cfg = apply_overrides(load_config(str(args.run / "config.yaml")), ["data.augment=false"])
    splits = json.loads((args.run / "splits.json").read_text())
    cnn = load_model(args.run / "stage1.keras")
    # stage2.keras: the best contextual model; runs made before the trainer wrote it hold it
    # as model.keras (which now may be the stage-1 CNN that the run ships instead).
    stage2_path = args.run / "stage2.keras"
    if not stage2_path.is_file():
        stage2_path = args.run / "model.keras"
    segmenters = {
        "stage1": Segmenter.from_path(args.run / "stage1.keras", postprocess=False),
        "stage2": Segmenter.from_path(stage2_path, postprocess=False),
    }
    report: dict = {"run": str(args.run), "data": str(args.data), "haze": {}, "cases": {}}
    for split in ("train", "validation"):
        cases = splits[split][: args.cases]
        windows = make_training_dataset(args.data, cfg, stage=2, seed=0, epoch=0, cases=cases).take(
            args.windows
        )
        report["haze"][split] = soft_and_hard(cnn, windows)
        report["cases"][split] = {
            "case_ids": cases,
            **precision_recall(segmenters, load_validation_volumes(args.data, cases)),
        }
        haze = report["haze"][split]
        print(
            f"{split} windows, stage-1 CNN: soft Jaccard {haze['soft_jaccard']:.3f}, "
            f"thresholded {haze['thresholded_jaccard']:.3f}, share of p > 0.02 below 0.1: "
            f"{haze['share_of_probabilities_above_0.02_that_are_below_0.1']:.2f}"
        )
        for name in segmenters:
            row = report["cases"][split][name]
            print(
                f"{split} cases ({len(cases)}), {name}: DSC {row['dsc']:.4f} precision "
                f"{row['precision']:.3f} recall {row['recall']:.3f}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
