"""The one exception type that the `pancseg` command turns into a one-line error, and the
integer check that every layer raises it with."""

from __future__ import annotations

import numbers
from typing import Any


class PancsegError(ValueError):
    """A problem with the user's input (file, folder, option, configuration).

    The command line prints it as ``pancseg: error: <message>`` and exits with status 2.
    Messages say what was received and what was expected, and never contain a patient
    identifier (name, ID, birth date, institution, study date, accession number).
    """


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer >= ``minimum`` (Python's or NumPy's, not a
    bool), else a `PancsegError` naming ``name`` and what it got."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise PancsegError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
