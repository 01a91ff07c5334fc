"""The network: the 2D slice CNN (stage 1) and the contextual CNN + bidirectional ConvLSTM
model (stage 2), written with `keras` and `keras.ops` only.

Example:
    >>> cnn = SliceCNN.from_preset("quick")                       # stage 1: fit on slices
    >>> model = ContextualSegmenter(slice_cnn=cnn.get_config())   # stage 2
    >>> transfer_stage1_weights(cnn, model)
"""

from pancseg_tf.models.blocks import FoldTime, UnfoldTime, downsample_mask
from pancseg_tf.models.contextual import (
    CNN_PROB,
    CONTEXTUAL_PRESETS,
    ContextualSegmenter,
    transfer_stage1_weights,
)
from pancseg_tf.models.slice_cnn import (
    FEATURES,
    LOGIT,
    PROB,
    SLICE_CNN_PRESETS,
    SliceCNN,
    side_output_name,
)

__all__ = [
    "CNN_PROB",
    "CONTEXTUAL_PRESETS",
    "FEATURES",
    "LOGIT",
    "PROB",
    "SLICE_CNN_PRESETS",
    "ContextualSegmenter",
    "FoldTime",
    "SliceCNN",
    "UnfoldTime",
    "downsample_mask",
    "side_output_name",
    "transfer_stage1_weights",
]
