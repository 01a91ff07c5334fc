"""Inference: `Segmenter`, a volume in, a mask on the volume's own grid out.

One code path for ``pancseg predict``, validation during training and the serving client:

1. host geometry (`host.plan_volume` -> `pancseg_tf.preprocessing.geometry.plan_geometry`):
   canonical orientation, fixed in-plane spacing, slice-spacing policy, crop or pad around the
   body;
2. intensity normalisation (`pancseg_tf.preprocessing.intensity`, the same ``keras.ops`` code the
   training pipeline and the exported graph run);
3. the network (`network`): for a contextual model the CNN runs once per slice, in batches of
   slices, and the bidirectional ConvLSTM runs over the whole slice sequence in one pass; or
   over chunks of ``chunk`` slices blended by `chunks.blend_chunks` when memory requires it or
   the user asks. Chunks run through `ChunkNetwork`, the computation the exported SavedModel
   serves, on the request's wire intensities (int16 HU for CT), so ``pancseg predict --chunk N``
   and ``pancseg query`` against an export of ``N``-slice chunks write the same mask, bit for
   bit; ``--tta`` averages over in-plane shifts and zooms (`tta`);
4. back to the volume's own grid (linear interpolation of probabilities, then threshold);
5. post-processing (`postprocess`): the largest 3D connected component, holes filled.

Modules, one concern each: `chunks` (the chunk rule, in-plane tiles), `host` (plan, wire
intensities, modality check), `signature` (the served inputs' and outputs' names), `network`
(`ChunkNetwork`, compiled whole-volume calls, `check_model_fits`), `loading` (model files and
their safety), `tta`, `postprocess`, `segmenter` (`Segmenter`, which composes them).

Importing this package imports no TensorFlow: the network parts import it when they run.
"""

from __future__ import annotations

from pancseg_tf.inference.chunks import (
    DEFAULT_OVERLAP_FRACTION,
    blend_chunks,
    blend_tiles,
    chunk_spans,
    chunk_weights,
    run_in_tiles,
    stack_chunks,
    tile_spans,
    unstack_chunks,
)
from pancseg_tf.inference.host import check_modality, plan_volume, request_intensities
from pancseg_tf.inference.loading import load_model, resolve_model_path
from pancseg_tf.inference.network import ChunkNetwork, check_model_fits, compiled_call
from pancseg_tf.inference.postprocess import Segmentation, finish_segmentation, postprocess_mask
from pancseg_tf.inference.segmenter import Segmenter
from pancseg_tf.inference.tta import TTA_TRANSFORMS

__all__ = [
    "DEFAULT_OVERLAP_FRACTION",
    "TTA_TRANSFORMS",
    "ChunkNetwork",
    "Segmentation",
    "Segmenter",
    "blend_chunks",
    "blend_tiles",
    "check_modality",
    "check_model_fits",
    "chunk_spans",
    "chunk_weights",
    "compiled_call",
    "finish_segmentation",
    "load_model",
    "plan_volume",
    "postprocess_mask",
    "request_intensities",
    "resolve_model_path",
    "run_in_tiles",
    "stack_chunks",
    "tile_spans",
    "unstack_chunks",
]
