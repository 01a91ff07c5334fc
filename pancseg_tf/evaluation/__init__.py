"""Evaluation on the host: volume metrics in mm (DSC, JI, HD95, ASSD, RVD, slice consistency).

Plain numpy / scipy; nothing here imports TensorFlow.
"""

from pancseg_tf.evaluation import metrics
from pancseg_tf.evaluation.metrics import *  # noqa: F403 (the names of metrics.__all__)
from pancseg_tf.evaluation.pairing import GRID_TOLERANCE_MM
from pancseg_tf.evaluation.report import evaluate_predictions
from pancseg_tf.evaluation.tables import REPORT_KEYS

__all__ = ["GRID_TOLERANCE_MM", "REPORT_KEYS", "evaluate_predictions"]
__all__ += metrics.__all__
