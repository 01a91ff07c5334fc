"""Loads a pancseg export the way TF Serving does, in a process where pancseg_tf cannot load.

Run by ``tests/serving/test_export.py`` as ``python -I savedmodel_check.py EXPORT INPUTS.npz
OUTPUTS.npz`` from a folder outside the repository. Before anything else it blocks every import
of ``pancseg_tf`` (the package is installed editable, so ``-I`` alone would still find it) and
checks that the import fails. Then, with TensorFlow only:

- TensorFlow's C++ SavedModel loader (``tf.compat.v1.saved_model.loader.load``, tag ``serve``)
  into a ``tf.compat.v1.Session``;
- each signature of INPUTS.npz (keys ``<signature>/<input>``) fed and fetched by the tensor
  names of its ``SignatureDef``; the outputs saved as ``<signature>/<output>`` in OUTPUTS.npz;
- every op type of the graph and its function library looked up in TensorFlow's own op
  registry (no add-on op library is loaded here).

The last line printed is a JSON report.
"""

import importlib.abc
import json
import pathlib
import sys


class _BlockPancseg(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pancseg_tf" or name.startswith("pancseg_tf."):
            raise ModuleNotFoundError(f"{name} is blocked in this process", name=name)
        return None


sys.meta_path.insert(0, _BlockPancseg())


def _pancseg_importable() -> bool:
    try:
        import pancseg_tf  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def main(export_dir: str, inputs_path: str, outputs_path: str) -> dict:
    importable = _pancseg_importable()

    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    signatures = meta_graph.signature_def
    inputs = np.load(inputs_path)
    feeds_by_signature: dict = {}
    for key in inputs.files:
        signature, alias = key.split("/", 1)
        feeds_by_signature.setdefault(signature, {})[alias] = inputs[key]
    outputs = {}
    for signature_name, feeds in feeds_by_signature.items():
        signature = signatures[signature_name]
        feed_dict = {signature.inputs[alias].name: value for alias, value in feeds.items()}
        aliases = sorted(signature.outputs)
        values = session.run([signature.outputs[a].name for a in aliases], feed_dict=feed_dict)
        for alias, value in zip(aliases, values):
            if value.dtype == object:  # strings: fixed-width bytes, which load without pickle
                value = value.astype(bytes)
            outputs[f"{signature_name}/{alias}"] = value
    np.savez(outputs_path, **outputs)

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(export_dir) / "saved_model.pb").read_bytes())
    ops, functions = set(), set()
    for graph_def in (m.graph_def for m in proto.meta_graphs):
        ops.update(node.op for node in graph_def.node)
        for function in graph_def.library.function:
            functions.add(function.signature.name)
            ops.update(node.op for node in function.node_def)
    op_types = sorted(ops - functions)
    return {
        "pancseg_tf_importable": importable,
        "pancseg_tf_loaded": any(m.split(".")[0] == "pancseg_tf" for m in sys.modules),
        "tensorflow_version": tf.__version__,
        "signatures": {
            name: {
                "method_name": s.method_name,
                "inputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in s.inputs.items()},
                "outputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in s.outputs.items()},
            }
            for name, s in signatures.items()
            if not name.startswith("__")  # the SavedModel's own init op, not a served signature
        },
        "op_types": op_types,
        "unregistered_ops": [op for op in op_types if op_def_registry.get(op) is None],
    }


if __name__ == "__main__":
    report = main(*sys.argv[1:4])
    print(json.dumps(report))
