"""An exception that ends a ``pancseg`` command, as the one line it prints and its exit status.

A `PancsegError` (the user's input), a full disk and a path the user may not access are the
user's to fix: ``pancseg: error: <message>``, status 2. Anything else is a bug: its type and the
first line of its message, cut to `INTERNAL_MESSAGE_CHARS`, status 1.
"""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Callable

from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import INTERNAL_MESSAGE_CHARS, error_summary, one_line

__all__ = [
    "INTERNAL_MESSAGE_CHARS",
    "access_error",
    "error_line",
    "internal_error_line",
    "storage_full_error",
]

#: Arguments that name where a command writes, in the order a message should name them.
_OUTPUT_ARGS = ("output", "out", "base", "run")


def error_line(
    err: Exception, args: argparse.Namespace, show: Callable[[str], str] = str
) -> tuple[str, int]:
    """The line ``err`` ends the command with, and the exit status.

    Args:
        err: what the command raised.
        args: the command's parsed arguments (a full disk without a file name names the
            output among them).
        show: shows paths in the message the way the command's messages do.

    Returns:
        ``(line, status)``: status 2 for a `PancsegError`, a full disk or a denied path, else 1.
    """
    if isinstance(err, PancsegError):
        return f"pancseg: error: {one_line(show(str(err)))}", 2
    full = storage_full_error(err)
    if full is not None:
        # A full disk is the user's to fix, not a bug: one line, status 2.
        return f"pancseg: error: {one_line(show(_storage_full_message(full, args)))}", 2
    denied = access_error(err)
    if denied is not None:
        # Likewise a path the user may not write (or read): which one, and why.
        reason = denied.strerror or os.strerror(denied.errno or 0)
        where = f"cannot access {denied.filename}" if denied.filename else "cannot access"
        return f"pancseg: error: {one_line(show(f'{where}: {reason}'))}", 2
    return internal_error_line(err, show), 1


def internal_error_line(err: BaseException, show=str) -> str:
    """The one line an unexpected exception gets: `error_summary` (its type and the first line
    of its message, cut to `INTERNAL_MESSAGE_CHARS`: a message can hold a whole array, and
    image data must not reach a terminal or a log through it), after ``show`` (the command's
    input paths by their last component)."""
    return (
        f"pancseg: error: internal error: {error_summary(err, show=show)} "
        "(rerun with --debug for the traceback)"
    )


def storage_full_error(err: BaseException | None) -> OSError | None:
    """The `OSError` behind ``err`` that says the output's storage is full, else None.

    Looks at ``err`` itself, then its ``__cause__`` / ``__context__`` chain (a `PancsegError`
    raised while handling an `OSError` keeps it as its context). Full means: no space left on
    the device (``ENOSPC``), the disk quota is exceeded (``EDQUOT``), or a file grew past the
    largest size allowed (``EFBIG``: ``ulimit -f``, or the file system's largest file).
    """
    return _os_error_in_chain(err, {errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def access_error(err: BaseException | None) -> OSError | None:
    """The `OSError` behind ``err`` that says a path may not be read or written (permission
    denied, operation not permitted, read-only file system), else None."""
    return _os_error_in_chain(err, {errno.EACCES, errno.EPERM, errno.EROFS})


def _os_error_in_chain(err: BaseException | None, errnos: set[int]) -> OSError | None:
    """The first `OSError` with one of ``errnos`` in ``err`` and its cause / context chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in errnos:
            return err
        err = err.__cause__ or err.__context__
    return None


def _storage_full_message(error: OSError, args: argparse.Namespace) -> str:
    """One line for a full disk: which file (or output) and the system's reason."""
    reason = error.strerror or os.strerror(error.errno or 0)
    if error.filename:
        return f"could not write {error.filename}: {reason}"
    outputs = [getattr(args, key) for key in _OUTPUT_ARGS if getattr(args, key, None)]
    return f"could not write into {outputs[0]}: {reason}" if outputs else f"{reason}"
