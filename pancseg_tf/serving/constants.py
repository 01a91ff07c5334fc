"""The serving contract's names and numbers: the one module the export and every client read.

Nothing here imports TensorFlow, so a client can read the names without loading a model. The
contract itself is written out in ``serving/CONTRACT.md``; bump `CONTRACT_VERSION` whenever a
name, dtype, shape or the meaning of a value changes, and say what changed there.
"""

from __future__ import annotations

# The names of the served signature's inputs and outputs (`SLICES`, `SLICE_COUNT`,
# `PERCENTILES`, `PROBABILITIES`, `MASK`, with their shapes and dtypes) are those of the
# computation it serves, `pancseg_tf.inference.ChunkNetwork`: defined below both inference and
# serving, re-exported here.
from pancseg_tf.inference.signature import (  # noqa: F401 - re-exported
    MASK,
    PERCENTILES,
    PROBABILITIES,
    SLICE_COUNT,
    SLICES,
)

#: Version of the request / response contract in ``serving/CONTRACT.md``. Exports record it in
#: ``assets.extra/pancseg.json`` and in the ``pancseg_config`` signature; clients refuse an
#: export whose contract version they do not know.
CONTRACT_VERSION = 1

#: SavedModel tag TF Serving loads.
SERVE_TAG = "serve"
#: ``method_name`` of both signatures (TF Serving's Predict API).
PREDICT_METHOD_NAME = "tensorflow/serving/predict"

# === Signature "serving_default": chunks of slices in, per-slice probabilities and mask out ===

#: The signature that segments chunks of consecutive model-grid slices.
SERVING_SIGNATURE = "serving_default"
# Its inputs `SLICES`, `SLICE_COUNT`, `PERCENTILES` and outputs `PROBABILITIES`, `MASK`: see the
# import above.

# === Signature "pancseg_config": what a client needs to prepare requests ===

#: The signature that returns the export's settings as JSON (see `CONFIG_JSON`).
CONFIG_SIGNATURE = "pancseg_config"
#: ``(B,)`` ``int32``, any values: one answer per row (TF Serving batches on axis 0 only).
CONFIG_REQUEST = "request"
#: ``(B,)`` string: the same UTF-8 JSON document in every row (``client_config`` of
#: ``assets.extra/pancseg.json``: contract version, chunk rule, preprocessing, post-processing).
CONFIG_JSON = "config_json"

#: Wire dtype of `SLICES` per modality (numpy names).
WIRE_DTYPES = {"ct": "int16", "mri": "float32"}
#: int16 range the CT client clips rounded Hounsfield units to.
INT16_RANGE = (-32768, 32767)

# === Files of an export (``BASE/<name>/<version>/``) ===

#: Folder TF Serving reads warm-up requests and extra assets from.
ASSETS_EXTRA = "assets.extra"
#: TFRecord of ``tensorflow.serving.PredictionLog`` records, replayed by
#: ``--enable_model_warmup``.
WARMUP_FILE = "tf_serving_warmup_requests"
#: The export's own description: contract version, resolved configs, package version,
#: training provenance.
METADATA_FILE = "pancseg.json"

# === Defaults ===

#: Model name in TF Serving (``BASE/<name>/<version>/``) and in requests.
DEFAULT_MODEL_NAME = "pancseg"
#: Slices per chunk of an export: 40 mm at the default 2.5 mm slice spacing, several times a
#: training window (3 to 9 slices); a 256 x 256 chunk is a 2 MiB CT request.
DEFAULT_CHUNK = 16
#: Largest request a client sends: the receive limit a gRPC server has unless it raises it
#: (TF Serving itself accepts up to 2 GiB). Chunks per request are sized from it.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Largest response a client accepts (its channel's receive limit; gRPC's own default is 4 MiB).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Chunks in one request at most: ``max_batch_size`` of ``serving/batching_parameters.txt``
#: (TF Serving refuses a request with more rows than that).
DEFAULT_MAX_CHUNKS_PER_REQUEST = 8
#: TF Serving's ports.
GRPC_PORT = 8500
REST_PORT = 8501
