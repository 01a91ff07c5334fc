"""`import_tensorflow_quietly`: TensorFlow's start-up without its C++ lines on the terminal.

Used by the command line before any command that needs TensorFlow and by the Beam model
handler on each worker; below both, so neither imports the other for it.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and Keras with file descriptor 2 pointed at /dev/null.

    TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, CPU features) are written before its
    logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not stop them all; they are not for
    the user's terminal. Python-level errors during the import are still raised.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
