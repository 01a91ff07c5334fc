"""Serving: SavedModel export for TensorFlow Serving, gRPC and REST clients.

The request contract is ``serving/CONTRACT.md``; its names live in `pancseg_tf.serving.constants`.

- `export_model` (``pancseg export``) writes ``BASE/<name>/<version>/`` for TF Serving;
- `query_file` / `query_volume` (``pancseg query``) segment a volume through a served export,
  with `GrpcClient` or `RestClient`.

The local stand-in for TF Serving (tests, notebooks, benchmarks) is not part of the package:
it is the repository's ``serving/standin_server.py``.

Importing this package is cheap: the submodules (TensorFlow, gRPC) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from pancseg_tf.serving import constants

_LAZY = {
    "export_model": "pancseg_tf.serving.export",
    "read_export_metadata": "pancseg_tf.serving.export",
    "GrpcClient": "pancseg_tf.serving.client",
    "RestClient": "pancseg_tf.serving.client",
    "ServedModel": "pancseg_tf.serving.client",
    "QueryResult": "pancseg_tf.serving.client",
    "connect": "pancseg_tf.serving.client",
    "query_file": "pancseg_tf.serving.client",
    "query_volume": "pancseg_tf.serving.client",
}

__all__ = ["constants", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pancseg_tf.serving' has no attribute {name!r}")
