"""``pancseg train`` and ``pancseg cv``: the config is read before TensorFlow starts, so that
its errors come at once."""

from __future__ import annotations

import argparse
import pathlib

from pancseg_tf.cli.options import config_from_args
from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly


def cmd_train(args: argparse.Namespace) -> int:
    """Trains one or both stages into the run folder (`pancseg_tf.training.trainer.Trainer`)."""
    cfg = config_from_args(args)  # before TensorFlow's start-up: config errors come at once
    import_tensorflow_quietly()
    from pancseg_tf.training.trainer import Trainer

    trainer = Trainer(
        args.data,
        args.run,
        cfg,
        seed=args.seed,
        deterministic=args.deterministic,
        strategy=args.strategy,
    )
    result = trainer.run(args.stage)
    best = ", ".join(f"{k} val DSC {v:.4f}" for k, v in sorted(result.best.items()))
    print(f"run folder {result.run_dir}: {best or 'no validation score'}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """Runs (or resumes, or summarises) a cross-validation (`pancseg_tf.training.cv`)."""
    from pancseg_tf.training.cv import CrossValidation, write_summary

    cfg = config_from_args(args)
    losses = tuple(x.strip() for x in args.losses.split(",") if x.strip()) if args.losses else None
    cv = CrossValidation(
        pathlib.Path(args.cohort),
        pathlib.Path(args.out),
        cfg,
        folds=args.folds,
        losses=losses,
        stages=args.stages,
        seed=args.seed,
        strategy=args.strategy,
        folds_file=pathlib.Path(args.folds_file) if args.folds_file else None,
        workers=args.workers,
        data_dir=pathlib.Path(args.data) if args.data else None,
    )
    if args.summary_only:
        summary = write_summary(cv.out)
    else:
        cv.setup(args.fold)  # before TensorFlow starts: prepare's worker processes
        if args.prepare_only:
            print(f"prepared {cv.data_dir}; folds in {cv.out / 'folds.json'}")
            return 0
        import_tensorflow_quietly()
        summary = cv.run(args.fold)
    print((cv.out / "cv_summary.md").read_text().strip())
    print(f"\n{len(summary.get('experiments', {}))} experiment(s); everything is in {cv.out}")
    return 0
