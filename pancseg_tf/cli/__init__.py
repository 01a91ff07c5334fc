"""The ``pancseg`` command.

Each subcommand parses and validates its flags, calls the library and prints a short summary.
Problems with the user's input, and a full disk, end as one line, ``pancseg: error: <message>``,
with exit status 2; ``--debug`` (before the subcommand) shows the traceback as well. Messages
show an input path by its last component only (`InputPathDisplay`), and an error any other path
too (`file_names_only`: folders may name a patient). Commands that do not need
TensorFlow never import it, and TensorFlow's start-up log lines are kept off the terminal.

The parts: `parser` (the argparse tree), `options` (option groups several commands share),
one module per command group (`data_commands`, `train_commands`, `predict_command`,
`evaluate_command`, `serving_commands`, `demo_command`) and `errors` (an exception as one line
and an exit status); `main` here runs them.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

# Before anything can import TensorFlow: its C++ start-up lines are not for the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

from pancseg_tf.cli.data_commands import volume_summary  # noqa: E402
from pancseg_tf.cli.errors import (  # noqa: E402
    INTERNAL_MESSAGE_CHARS,
    access_error,
    error_line,
    internal_error_line,
    storage_full_error,
)
from pancseg_tf.cli.parser import build_parser  # noqa: E402
from pancseg_tf.messages import InputPathDisplay, file_names_only  # noqa: E402
from pancseg_tf.quiet_tensorflow import import_tensorflow_quietly  # noqa: E402

__all__ = [
    "INTERNAL_MESSAGE_CHARS",
    "InputPathDisplay",
    "access_error",
    "build_parser",
    "import_tensorflow_quietly",
    "internal_error_line",
    "main",
    "storage_full_error",
    "volume_summary",
]

log = logging.getLogger("pancseg_tf")


def main(argv: list[str] | None = None) -> int:
    """Runs the ``pancseg`` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    display = InputPathDisplay.from_args(args)
    _configure_logging(args.debug, display)

    def show(text: str) -> str:
        # An error names no folder: typed inputs by their last component, any other path too.
        return file_names_only(display(text))

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pancseg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns crashes into a line
        if args.debug:
            traceback.print_exc()
        line, status = error_line(err, args, show)
        print(line, file=sys.stderr)
        return status


class _ShowInputs(logging.Filter):
    """Rewrites each log record's message with `InputPathDisplay` (the CLI's handler only);
    a warning or an error (a case that failed: a library's message) shows every other path by
    its last component too (`file_names_only`)."""

    def __init__(self, display: InputPathDisplay) -> None:
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.display(record.getMessage())
        if record.levelno >= logging.WARNING:
            record.msg = file_names_only(record.msg)
        record.args = None
        return True


def _configure_logging(debug: bool, display: InputPathDisplay | None = None) -> None:
    """The package's log on stderr as ``pancseg: <message>``, inputs shown by `display`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pancseg: %(message)s"))
    if display is not None:
        handler.addFilter(_ShowInputs(display))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
