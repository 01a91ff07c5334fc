"""Serving: SavedModel export for TensorFlow Serving, gRPC and REST clients, a local test server.

The request contract is ``serving/CONTRACT.md``; its names live in `pancseg_tf.serving.constants`.

- `export_model` (``pancseg export``) writes ``BASE/<name>/<version>/`` for TF Serving;
- `query_file` / `query_volume` (``pancseg query``) segment a volume through a served export,
  with `GrpcClient` or `RestClient`;
- `LocalModelServer` is a stand-in for TF Serving on 127.0.0.1 (tests, notebooks, benchmarks).

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
    "LocalModelServer": "pancseg_tf.serving.testserver",
}

__all__ = ["constants", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pancseg_tf.serving' has no attribute {name!r}")
