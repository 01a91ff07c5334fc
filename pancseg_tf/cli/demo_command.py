"""``pancseg demo``: the whole path on a synthetic cohort (`pancseg_tf.demo`)."""

from __future__ import annotations

import argparse
import pathlib

from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly


def cmd_demo(args: argparse.Namespace) -> int:
    """Runs (or resumes) the demo in ``args.out`` and prints its summary."""
    import_tensorflow_quietly()
    from pancseg_tf.demo import print_demo_summary, run_demo

    out = pathlib.Path(args.out)
    summary = run_demo(out, modality=args.modality, seed=args.seed)
    print_demo_summary(out, summary)
    return 0
