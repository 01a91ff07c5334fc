"""The report's tables: ``metrics.csv``, ``summary.json`` and ``summary.md`` of
`pancseg_tf.evaluation.report.evaluate_predictions`, and the paper-style text of each metric
(``82.4 ± 6.7``) that ``summary.md`` and the HTML pages (`pancseg_tf.evaluation.pages`) show.

Plain Python and numpy; nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from pancseg_tf.evaluation.metrics import CASE_KEYS, SUMMARY_KEYS, summarize

__all__ = [
    "DISPLAY",
    "REPORT_KEYS",
    "case_values",
    "counts_line",
    "json_safe",
    "metrics_csv",
    "missing",
    "statistic",
    "summary_json",
    "summary_md",
    "summary_of",
    "table_rows",
    "undefined_notes",
]

# The metrics of summary.json / summary.md: the paper's table plus the two volumes.
REPORT_KEYS: tuple[str, ...] = (*SUMMARY_KEYS, "gt_volume_ml", "pred_volume_ml")


# metric -> (label, scale, decimals) for summary.md and index.html. DSC and JI are percentages
# as in the paper's tables ("82.4 ± 6.7"); summary.json keeps the raw fractions.
DISPLAY: dict[str, tuple[str, float, int]] = {
    "dsc": ("DSC (%)", 100.0, 1),
    "ji": ("JI (%)", 100.0, 1),
    "precision": ("precision (%)", 100.0, 1),
    "recall": ("recall (%)", 100.0, 1),
    "hd95_mm": ("HD95 (mm)", 1.0, 2),
    "assd_mm": ("ASSD (mm)", 1.0, 2),
    "rvd": ("RVD (%)", 100.0, 1),
    "slice_consistency": ("slice consistency", 1.0, 3),
    "gt_volume_ml": ("ground-truth volume (ml)", 1.0, 1),
    "pred_volume_ml": ("predicted volume (ml)", 1.0, 1),
}


def summary_of(
    rows: Sequence[tuple[str, Mapping[str, object]]],
    *,
    failed: Sequence[Mapping[str, str]],
    prediction_only: Sequence[str],
    ground_truth_only: Sequence[str],
    gt_labels: tuple[int, ...] | None,
    ground_truth: str,
    cases_without_image: Sequence[str],
    case_label_values: Mapping[str, tuple[int, ...] | str] | None = None,
) -> dict:
    """``summary.json``'s content (see `pancseg_tf.evaluation.report.evaluate_predictions`),
    strict JSON (`json_safe`).

    Args:
        rows: ``(case, metrics row)`` of the evaluated cases (`evaluate_case`'s keys).
        failed: ``{"case", "reason"}`` of the cases that could not be scored.
        prediction_only: cases with a prediction and no ground truth.
        ground_truth_only: cases with a ground truth and no prediction.
        gt_labels: the label values read as pancreas (None: every non-zero value).
        ground_truth: ``"folder"`` or ``"cohort"``.
        cases_without_image: evaluated cases whose montage shows the masks alone.
        case_label_values: evaluated cases read with their cohort's own label values instead
            of ``gt_labels``, and those values.
    """
    if rows:
        metrics = summarize([row for _, row in rows], REPORT_KEYS)
    else:
        metrics = {
            key: {
                "mean": None,
                "std": None,
                "min": None,
                "max": None,
                "n": 0,
                "n_undefined": 0,
                "n_empty": 0,
                "n_excluded": 0,
            }  # fmt: skip
            for key in REPORT_KEYS
        }
    return json_safe(
        {
            "metrics": metrics,
            "num_cases": {
                "evaluated": len(rows),
                "failed": len(failed),
                "prediction_only": len(prediction_only),
                "ground_truth_only": len(ground_truth_only),
            },
            "evaluated": [case for case, _ in rows],
            "unpaired": {
                "prediction_only": list(prediction_only),
                "ground_truth_only": list(ground_truth_only),
            },
            "failed": list(failed),
            "gt_labels": None if gt_labels is None else list(gt_labels),
            "case_label_values": {
                case: values if isinstance(values, str) else list(values)
                for case, values in (case_label_values or {}).items()
            },
            "ground_truth": ground_truth,
            "cases_without_image": list(cases_without_image),
        }
    )


def json_safe(value: object) -> object:
    """For strict JSON: NaN and infinities become None (JSON has neither), NumPy scalars plain
    Python values; containers are walked."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def summary_json(summary: Mapping[str, object]) -> bytes:
    """``summary.json``'s bytes: indented strict JSON, UTF-8."""
    text = json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8")


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def metrics_csv(rows: Sequence[tuple[str, Mapping[str, object]]]) -> bytes:
    """``metrics.csv``'s bytes: ``case``, then `CASE_KEYS`, one row per evaluated case; floats
    in full (``repr``), NaN as ``nan``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", *CASE_KEYS])
    for case, row in rows:
        writer.writerow([case, *(_csv_value(row[key]) for key in CASE_KEYS)])
    return buffer.getvalue().encode("utf-8")


def missing(value: object) -> bool:
    """True for a statistic that has no value: None (read back from strict JSON) or NaN
    (`summarize` over no cases)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def statistic(value: object, scale: float, decimals: int) -> str:
    """``value * scale`` with ``decimals`` digits, or ``n/a`` for None or NaN (`missing`)."""
    if missing(value):
        return "n/a"
    return f"{float(value) * scale:.{decimals}f}"


def table_rows(metrics: Mapping[str, Mapping[str, object]]) -> list[tuple[str, ...]]:
    """(metric, mean ± std, min, max, n) as display strings, one tuple per metric."""
    rows = []
    for key in REPORT_KEYS:
        label, scale, decimals = DISPLAY[key]
        stats = metrics[key]
        mean = statistic(stats["mean"], scale, decimals)
        std = statistic(stats["std"], scale, decimals)
        rows.append(
            (
                label,
                "n/a" if mean == "n/a" else f"{mean} ± {std}",
                statistic(stats["min"], scale, decimals),
                statistic(stats["max"], scale, decimals),
                str(stats["n"]),
            )
        )
    return rows


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def counts_line(summary: Mapping[str, object]) -> str:
    """The sentence counting the evaluated, failed and unpaired cases of a summary."""
    counts = summary["num_cases"]
    return (
        f"{_plural(counts['evaluated'], 'case', 'cases')} evaluated; "
        f"{counts['failed']} failed; "
        f"{_plural(counts['prediction_only'], 'prediction', 'predictions')} without ground truth; "
        f"{_plural(counts['ground_truth_only'], 'ground-truth case', 'ground-truth cases')} "
        "without prediction."
    )


def undefined_notes(metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Sentences on the undefined values and the empty masks behind a summary's statistics."""
    notes = []
    for key in REPORT_KEYS:
        undefined = metrics[key]["n_undefined"]
        if undefined:
            notes.append(
                f"{DISPLAY[key][0]}: {undefined} case(s) undefined (empty ground truth), "
                "left out of its statistics."
            )
    empty = max(int(metrics[key]["n_empty"]) for key in REPORT_KEYS)
    if empty:
        notes.append(
            f"{empty} case(s) with an empty prediction or ground truth are included with the "
            "values documented in pancseg_tf.evaluation.metrics: the worst ones where one mask "
            "is empty (HD95 and ASSD the volume's diagonal in mm), perfect ones where both are."
        )
    return notes


def summary_md(summary: Mapping[str, object]) -> bytes:
    """``summary.md``'s bytes: the counts, the paper's table (metric | mean ± std | min | max |
    n), the notes, and the unpaired or failed cases."""
    lines = ["# Pancreas segmentation: evaluation", "", counts_line(summary), ""]
    lines += ["| metric | mean ± std | min | max | n |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary["metrics"])]
    notes = undefined_notes(summary["metrics"])
    if notes:
        lines += ["", *notes]
    unpaired = summary["unpaired"]
    if unpaired["prediction_only"] or unpaired["ground_truth_only"]:
        lines += ["", "## Unpaired cases (not evaluated)", ""]
        for case in unpaired["prediction_only"]:
            lines.append(f"- {case}: prediction without ground truth")
        for case in unpaired["ground_truth_only"]:
            lines.append(f"- {case}: ground truth without prediction")
    if summary["failed"]:
        lines += ["", "## Failed cases (not evaluated)", ""]
        for entry in summary["failed"]:
            lines.append(f"- {entry['case']}: {entry['reason']}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def case_values(row: Mapping[str, object]) -> list[str]:
    """One case's `REPORT_KEYS` as display strings (the HTML pages' case tables)."""
    values = []
    for key in REPORT_KEYS:
        _, scale, decimals = DISPLAY[key]
        values.append(statistic(row[key], scale, decimals))
    return values
