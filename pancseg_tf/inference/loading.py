"""Model loading and its safety: `resolve_model_path`, `load_model`.

A ``.keras`` file is searched, before Keras reads it, for what would run code from outside
Keras and this package (a ``Lambda`` layer's Python code, an unregistered class); such a file is
refused unless the caller says it trusts it (``--unsafe``).
"""

from __future__ import annotations

import pathlib
from typing import Any

from pancseg_tf.errors import PancsegError


def resolve_model_path(path: str | pathlib.Path) -> pathlib.Path:
    """A run folder (its ``model.keras``, else ``stage1.keras``) or a ``.keras`` file.

    Raises:
        PancsegError: nothing of the kind is there, or the ``.keras`` file is no zip archive
            (truncated, or another format under that name).
    """
    import zipfile

    path = pathlib.Path(path)
    if path.is_dir():
        found = [path / n for n in ("model.keras", "stage1.keras") if (path / n).is_file()]
        if not found:
            raise PancsegError(f"no model.keras or stage1.keras in the run folder {path}")
        path = found[0]
    elif not path.exists():
        raise PancsegError(f"model not found: {path}")
    elif path.suffix != ".keras":
        raise PancsegError(f"expected a run folder or a .keras model file, got {path}")
    if not zipfile.is_zipfile(path):
        raise PancsegError(
            f"{path.name} is not a .keras model: a .keras file is a zip archive and this one is "
            "not (truncated, or another format under that name)"
        )
    return path


def load_model(path: str | pathlib.Path, *, unsafe: bool = False):
    """Loads a SliceCNN or ContextualSegmenter saved as ``.keras``.

    Safe by default: before Keras reads the file, its ``config.json`` is searched for what would
    run code from outside Keras and this package, and such a file is refused with one line
    naming it: a ``Lambda`` layer holding a Python lambda (its bytecode is in the file), or a
    class that neither Keras nor pancseg_tf registers (Keras could only get it by importing the
    module the file names). Keras' own ``safe_mode`` stays on as a second guard.

    With ``unsafe`` (``--unsafe``) both load: lambdas are deserialised and the modules the file
    names are imported, so the module must be importable here. Only for files you trust.

    Args:
        path: a run folder or a ``.keras`` file (see `resolve_model_path`).
        unsafe: load Lambda layers and unregistered classes.

    Returns:
        The Keras model, uncompiled.

    Raises:
        PancsegError: the path is not a model this package can load, holds a Lambda layer or
            an unregistered class (unless ``unsafe``), or names a module that cannot be
            imported (with ``unsafe``).
    """
    import keras

    import pancseg_tf.losses  # noqa: F401 - registers the serialisable classes
    import pancseg_tf.metrics  # noqa: F401
    import pancseg_tf.models  # noqa: F401

    path = resolve_model_path(path)
    foreign = _code_from_outside(path)
    custom_objects = None
    if foreign and not unsafe:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise PancsegError(
            f"refusing to load {path}: {foreign[0][0]}{more}; loading it would run code from "
            "outside Keras and pancseg_tf: pass --unsafe (unsafe=True) only for a file you trust"
        )
    if foreign:
        custom_objects = _import_classes(path, foreign)
    try:
        return keras.saving.load_model(
            str(path), safe_mode=not unsafe, compile=False, custom_objects=custom_objects
        )
    except Exception as err:  # keras raises many types for a bad file
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise PancsegError(f"cannot load a model from {path}: {reason}") from None


# Packages whose classes Keras imports by itself when a file names them.
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")


def _code_from_outside(path: pathlib.Path) -> list[tuple[str, str | None, str | None]]:
    """What in a ``.keras`` file would run code from outside Keras and pancseg_tf.

    Returns:
        ``(description, module, class name)`` per finding: module and class name for an
        unregistered class, None for a lambda. Empty for a file that is not a readable
        ``.keras`` archive (Keras reports those itself).
    """
    import json
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[tuple[str, str | None, str | None]] = []

    def visit(node: Any, layer: str | None) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, layer)
            return
        if not isinstance(node, dict):
            return
        class_name, module = node.get("class_name"), node.get("module")
        inner = node.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            layer = inner["name"]
        if class_name == "__lambda__":
            found.append((f"its Lambda layer {layer!r} holds Python code", None, None))
        elif (
            isinstance(class_name, str)
            and isinstance(module, str)
            and module.split(".")[0] not in (*_KERAS_PACKAGES, "builtins")
            and keras.saving.get_registered_object(node.get("registered_name") or class_name)
            is None
        ):
            found.append(
                (
                    f"its class {class_name!r} comes from module {module!r}, which neither Keras "
                    "nor pancseg_tf registers",
                    module,
                    class_name,
                )
            )
        for key, value in node.items():
            if key != "class_name":
                visit(value, layer)

    visit(config, None)
    return found


def _import_classes(
    path: pathlib.Path, foreign: list[tuple[str, str | None, str | None]]
) -> dict[str, Any]:
    """The unregistered classes a file names, imported from their modules (``--unsafe``)."""
    import importlib

    classes: dict[str, Any] = {}
    for _, module, class_name in foreign:
        if module is None or class_name is None:
            continue
        try:
            found = getattr(importlib.import_module(module), class_name)
        except (ImportError, AttributeError) as err:
            raise PancsegError(
                f"cannot load a model from {path}: its class {class_name!r} of module "
                f"{module!r} cannot be imported here ({err})"
            ) from None
        classes[class_name] = found
    return classes
