"""``pancseg evaluate``: score predictions against ground truth
(`pancseg_tf.evaluation.report.evaluate_predictions`) and print the summary line."""

from __future__ import annotations

import argparse


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Writes the report; returns 1 when a case failed, else 0."""
    from pancseg_tf.evaluation.report import evaluate_predictions
    from pancseg_tf.io.label_values import parse_label_values

    labels = parse_label_values(args.gt_labels) if args.gt_labels else None
    summary = evaluate_predictions(
        args.pred,
        args.gt,
        args.output,
        gt_labels=labels,
        images=args.images,
    )
    dsc = summary["metrics"]["dsc"]
    counts = summary["num_cases"]
    print(
        f"DSC {100 * dsc['mean']:.1f} ± {100 * (dsc['std'] or 0):.1f} % over {dsc['n']} case(s); "
        f"report in {args.output}/index.html"
    )
    problems = (
        counts.get("failed", 0)
        + counts.get("prediction_only", 0)
        + counts.get("ground_truth_only", 0)
    )
    if problems:
        print(f"{problems} case(s) unpaired or failed: see {args.output}/summary.md")
    return 1 if counts.get("failed", 0) else 0
