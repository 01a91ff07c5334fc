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

Importing this package imports nothing else: each name loads its submodule on first use, and the
network parts import TensorFlow when they run.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the submodule that defines it: importing the package loads none of
# them (a client that needs only `signature`'s names does not load scipy or the segmenter).
_LAZY = {
    "DEFAULT_OVERLAP_FRACTION": "pancseg_tf.inference.chunks",
    "blend_chunks": "pancseg_tf.inference.chunks",
    "blend_tiles": "pancseg_tf.inference.chunks",
    "chunk_spans": "pancseg_tf.inference.chunks",
    "chunk_weights": "pancseg_tf.inference.chunks",
    "run_in_tiles": "pancseg_tf.inference.chunks",
    "stack_chunks": "pancseg_tf.inference.chunks",
    "tile_spans": "pancseg_tf.inference.chunks",
    "unstack_chunks": "pancseg_tf.inference.chunks",
    "check_modality": "pancseg_tf.inference.host",
    "plan_volume": "pancseg_tf.inference.host",
    "request_intensities": "pancseg_tf.inference.host",
    "load_model": "pancseg_tf.inference.loading",
    "resolve_model_path": "pancseg_tf.inference.loading",
    "ChunkNetwork": "pancseg_tf.inference.network",
    "check_model_fits": "pancseg_tf.inference.network",
    "compiled_call": "pancseg_tf.inference.network",
    "Segmentation": "pancseg_tf.inference.postprocess",
    "finish_segmentation": "pancseg_tf.inference.postprocess",
    "postprocess_mask": "pancseg_tf.inference.postprocess",
    "Segmenter": "pancseg_tf.inference.segmenter",
    "TTA_TRANSFORMS": "pancseg_tf.inference.tta",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pancseg_tf.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
