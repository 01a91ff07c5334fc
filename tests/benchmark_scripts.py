"""Loading a ``benchmarks/`` script as a module in a test (the scripts are not a package)."""

import importlib.util
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(path: pathlib.Path, name: str):
    """A benchmark script as module ``name`` (registered in ``sys.modules``, where dataclasses
    look their module up); the ``sys.path`` entry the script adds is taken back."""
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module
