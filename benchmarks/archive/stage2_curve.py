"""What stage 2's context layers learn, epoch by epoch, on held-out cases.

Trains the context layers of a new `ContextualSegmenter` on a run's frozen stage-1 CNN (the
frozen-CNN phase of stage 2, with the run's config and data), and after each epoch segments a
held-out cohort and splits the error voxels into the cohort's ambiguous slices (where only the
neighbouring slices tell the pancreas from its look-alike) and the rest. A context that learns
context removes errors on the ambiguous slices; one that learns to recalibrate the CNN moves
the rest too.

``--cnns fold`` feeds each training window through the fold CNN that never saw its case (the
cross-fitted stage 2 of ``train.cross_fit_folds``; the run must be a cross-fitted one);
``--cnns full`` through the run's stage-1 CNN, as the plain recipe does. ``--gate range`` is
the package's gated fusion (``fusion_gate: range``); ``--gate`` (``mean``) an experiment that is
not in the package: the context's correction of a slice's logit is scaled by how much the
slice's CNN probability differs from the mean of its two neighbours'.

Usage:
    python benchmarks/stage2_curve.py DATA RUN HELDOUT [--epochs N] [--cnns fold|full]
        [--gate [mean|range]] [--ema M] [--set key=value ...] [--json OUT.json]

``DATA`` is the run's prepared data, ``RUN`` a run folder with ``stage1.keras`` (and, for
``--cnns fold``, ``stage1_fold{k}.keras`` and ``splits.json``'s ``cross_fit``), ``HELDOUT`` a
synthetic cohort (``pancseg synth``) with its ``ambiguous_slices.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def error_counts(segmenter, volumes, ambiguous: dict) -> dict:
    """Pooled TP / FP / FN voxels on ambiguous slices and on the rest; DSC of each and overall."""
    counts = {"ambiguous": np.zeros(3), "rest": np.zeros(3)}
    for case_id, volume, label in volumes:
        mask = segmenter.segment(volume).mask > 0
        chosen = set(ambiguous.get(case_id, []))
        for k in range(label.shape[2]):
            pred, truth = mask[:, :, k], label[:, :, k]
            kind = "ambiguous" if k in chosen else "rest"
            counts[kind] += [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]

    def dsc(c):
        return float(2 * c[0] / max(2 * c[0] + c[1] + c[2], 1))

    out = {"dsc": dsc(counts["ambiguous"] + counts["rest"])}
    for kind, c in counts.items():
        out[kind] = {"dsc": dsc(c), "fp": int(c[1]), "fn": int(c[2])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=pathlib.Path)
    parser.add_argument("run", type=pathlib.Path)
    parser.add_argument("heldout", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cnns", choices=("fold", "full"), default="fold")
    parser.add_argument(
        "--gate",
        nargs="?",
        const="mean",
        choices=("mean", "range"),
        help="scale the context's correction of a slice by |p - mean of the neighbours' p| "
        "(mean) or by how far p lies outside the range of the two neighbours' p (range)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="MOMENTUM",
        help="train with an exponential moving average of the weights, swapped in each epoch",
    )
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)

    from pancseg_tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf
    from bench_common import emit_json
    from keras import ops

    from pancseg_tf.config import apply_overrides, load_config
    from pancseg_tf.inference import Segmenter, load_model
    from pancseg_tf.io.cohorts import ambiguous_slices, discover_cohort
    from pancseg_tf.models import transfer_stage1_weights
    from pancseg_tf.preprocessing.labels import map_labels
    from pancseg_tf.training import trainer as T
    from pancseg_tf.training.crossfit import (
        CrossFittedContext,
        cross_fit_folds,
        cross_fitted_windows,
    )

    sets = ["model.overrides.context_channels=0", *args.set]
    if args.gate == "range":  # the package's gate: ContextualSegmenter(fusion_gate="range")
        sets.append("model.overrides.fusion_gate=range")
    cfg = apply_overrides(load_config(str(args.run / "config.yaml")), sets)
    splits = json.loads((args.run / "splits.json").read_text())
    folds = splits.get("cross_fit") or cross_fit_folds(splits["train"], 2, 0)
    keras.utils.set_random_seed(args.seed)
    model = T.build_contextual(cfg)
    model(tf.zeros((1, cfg.data.window, *cfg.preprocess.size, 1)))
    stage1 = load_model(args.run / "stage1.keras")
    transfer_stage1_weights(stage1, model)
    if args.cnns == "fold":
        cnns = [load_model(args.run / f"stage1_fold{k}.keras") for k in range(len(folds))]
    else:
        cnns = [load_model(args.run / "stage1.keras") for _ in folds]
    T.freeze_for_stage2(model, frozen=True)

    def gate_of(prob):  # the "mean" experiment: (B, T, H, W, 1), edges replicated
        before = ops.concatenate([prob[:, :1], prob[:, :-1]], axis=1)
        after = ops.concatenate([prob[:, 1:], prob[:, -1:]], axis=1)
        return ops.abs(prob - 0.5 * (before + after))

    class Gated(CrossFittedContext):
        def call(self, inputs, training=False):
            out = super().call(inputs, training=training)["prob"]
            slices = inputs["slices"]
            folded = ops.reshape(slices, (-1, *slices.shape[2:]))
            choose = ops.one_hot(ops.cast(inputs["fold"], "int32"), len(self.fold_cnns))
            logit = 0.0
            for k, cnn in enumerate(self.fold_cnns):
                weight = ops.reshape(choose[:, k], (-1, 1, 1, 1, 1))
                logit = logit + weight * ops.reshape(cnn(folded)["logit"], ops.shape(out))
            p = ops.clip(out, 1e-6, 1 - 1e-6)
            correction = ops.log(p) - ops.log(1 - p) - logit
            return {"prob": ops.sigmoid(logit + gate_of(ops.sigmoid(logit)) * correction)}

    mean_gate = args.gate == "mean"
    view = (Gated if mean_gate else CrossFittedContext)(model, cnns)
    optimizer = T.make_optimizer(T.stage2_learning_rate(cfg, "stage2_frozen"), cfg, args.epochs, 1)
    if args.ema:
        optimizer = keras.optimizers.AdamW(
            learning_rate=optimizer._learning_rate,  # the schedule
            weight_decay=cfg.train.weight_decay,
            clipnorm=5.0,
            use_ema=True,
            ema_momentum=args.ema,
            ema_overwrite_frequency=cfg.train.steps_per_epoch,
        )
    view.compile(optimizer=optimizer, loss=T.stage_losses(cfg, ["prob"], stage=2))

    if mean_gate:  # the same gate at inference, on whole volumes
        plain = Segmenter._run_contextual

        def gated_volume(self, slices):
            prob = plain(self, slices)
            logit = np.concatenate(
                [
                    np.asarray(self.model.slice_encoder(slices[s : s + 16])["logit"])
                    for s in range(0, len(slices), 16)
                ]
            )
            p = np.clip(prob, 1e-6, 1 - 1e-6)
            correction = np.log(p) - np.log(1 - p) - logit
            gate = np.asarray(gate_of(1 / (1 + np.exp(-logit[None]))))[0]
            return 1 / (1 + np.exp(-(logit + gate * correction)))

        Segmenter._run_contextual = gated_volume

    ambiguous = ambiguous_slices(args.heldout)
    volumes = [
        (c.case_id, c.load_image(), map_labels(c.load_label().array, None) > 0)
        for c in discover_cohort(args.heldout)
    ]
    segmenter = Segmenter(model, cfg.preprocess)

    curve = [{"epoch": None, "loss": None, **error_counts(segmenter, volumes, ambiguous)}]
    print(json.dumps(curve[-1]), flush=True)
    for epoch in range(args.epochs):
        ds = cross_fitted_windows(args.data, cfg, folds, seed=0, epoch=epoch)
        ds = ds.map(lambda inputs, mask: (inputs, {"prob": mask}))
        history = view.fit(ds.take(cfg.train.steps_per_epoch), epochs=1, verbose=0)
        loss = float(history.history["loss"][-1])
        curve.append({"epoch": epoch, "loss": loss, **error_counts(segmenter, volumes, ambiguous)})
        print(json.dumps(curve[-1]), flush=True)
    emit_json(
        {
            "run": str(args.run),
            "heldout": str(args.heldout),
            "cnns": args.cnns,
            "gate": args.gate,
            "ema": args.ema,
            "seed": args.seed,
            "set": sets,
            "steps_per_epoch": cfg.train.steps_per_epoch,
            "curve": curve,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
