"""Evaluation on the host: volume metrics in mm (DSC, JI, HD95, ASSD, RVD, slice consistency).

Plain numpy / scipy; nothing here imports TensorFlow.
"""

from pancseg_tf.evaluation.metrics import (
    CASE_KEYS,
    SUMMARY_KEYS,
    SliceConsistency,
    assd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    precision,
    recall,
    relative_volume_difference,
    slice_consistency,
    summarize,
    surface_distances,
)
from pancseg_tf.evaluation.report import GRID_TOLERANCE_MM, REPORT_KEYS, evaluate_predictions

__all__ = [
    "CASE_KEYS",
    "SUMMARY_KEYS",
    "SliceConsistency",
    "assd",
    "dice",
    "evaluate_case",
    "hd95",
    "jaccard",
    "precision",
    "recall",
    "relative_volume_difference",
    "slice_consistency",
    "summarize",
    "surface_distances",
    "GRID_TOLERANCE_MM",
    "REPORT_KEYS",
    "evaluate_predictions",
]
