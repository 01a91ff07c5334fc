"""Names of the served computation's inputs and outputs (`ChunkNetwork.serve`, the export's
``serving_default`` signature).

They live here, below both inference and serving: `pancseg_tf.serving.constants`, the serving
contract every client reads (``serving/CONTRACT.md``), re-exports them. Imports nothing.
"""

from __future__ import annotations

#: ``(B, T, H, W)`` raw intensities of ``B`` independent chunks of ``T = chunk`` slices:
#: ``int16`` Hounsfield units for CT, ``float32`` for MRI.
SLICES = "slices"
#: ``(B,)`` ``int32``: valid slices at the start of each chunk, ``1 <= n <= T`` (``T`` except
#: for a volume shorter than one chunk, whose chunk is padded with zeros after ``n`` slices).
SLICE_COUNT = "slice_count"
#: ``(B, 2)`` ``float32``, MRI exports only: each chunk's volume percentiles ``(p_low, p_high)``.
PERCENTILES = "percentiles"
#: ``(B, T, H, W)`` ``float32`` probabilities in [0, 1]; 0 after ``slice_count`` slices.
PROBABILITIES = "probabilities"
#: ``(B, T, H, W)`` ``uint8`` {0, 1}: ``probabilities >= threshold`` (the run's threshold).
MASK = "mask"
