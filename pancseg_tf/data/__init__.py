"""Prepared data: TFRecord shards (``pancseg prepare``) and the tf.data slice-window pipeline.

Importing this package does not import TensorFlow (``prepare``'s worker processes import it):
the pipeline's names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from pancseg_tf.data.prepare import load_index, merge_indexes, prepare_case, prepare_cohort

_PIPELINE = (
    "ValidationVolume",
    "load_validation_volumes",
    "make_training_dataset",
    "num_windows",
    "steps_per_epoch",
)

__all__ = ["load_index", "merge_indexes", "prepare_case", "prepare_cohort", *_PIPELINE]


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        from pancseg_tf.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
