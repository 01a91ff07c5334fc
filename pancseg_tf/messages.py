"""How messages show text and paths: one line each, input paths by their last component.

The rules every ``pancseg`` message follows (the command line applies them to its errors and
log lines; `pancseg_tf.beam` to the reasons in its failures file): `one_line` escapes what would
split a line, `InputPathDisplay` shows an input by its last component only.
"""

from __future__ import annotations

import argparse
import os
import pathlib


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (``\\n``, ``\\x00``).

    Error messages name paths and values as given; a file name holding a newline would
    otherwise split the one ``pancseg: error:`` line.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


#: Arguments that name data to read (a volume, a DICOM series folder, a cohort, ground truth).
INPUT_ARGS = ("path", "input", "inputs", "cohort", "gt", "images")
# Characters a path shown in a message runs on with (it ends at a space, quote, comma or colon).
_PATH_TAIL = r"[^\s'\",;:]*"


class InputPathDisplay:
    """Shows the input paths of a command the way every message of pancseg shows them.

    The rule: an input path the user typed is shown by its last component only, and a path
    found below it (a slice file, a cohort's patient, study and series folders) is shown as
    that component followed by ``/…``. Archive exports name the folders above and below a
    series after the patient (TCIA: ``PANCREAS_0002/11-24-2015-PANCREAS0002-.../``, with the
    study date); the last component is the user's own handle on the input, the same name
    ``pancseg predict`` gives its output. Output paths (where a command writes) are shown as
    typed. ``--debug`` tracebacks are shown as they are.

    Args:
        inputs: the input paths as typed.

    Example:
        >>> show = InputPathDisplay(["/data/PAT/11-24-2015-X/series1"])
        >>> show("could not read /data/PAT/11-24-2015-X/series1/IM0001.dcm: truncated")
        'could not read series1/…: truncated'
    """

    def __init__(self, inputs: list[str]) -> None:
        import re

        shown: dict[str, str] = {}
        for raw in inputs:
            path = pathlib.Path(raw)
            name = path.name if path.name not in ("", ".", "..") else str(raw)
            forms = {str(raw), str(path), os.path.abspath(raw)}
            try:
                forms.add(str(path.resolve()))
            except (OSError, RuntimeError):  # a symlink loop: the other forms remain
                pass
            for form in forms:
                form = form.rstrip(os.sep) or form
                if form not in ("", ".", "..", os.sep):
                    shown[form] = name
        self._shown = shown
        self._pattern = None
        if shown:
            # Longest first: an input inside another input's folder is matched whole.
            alternatives = "|".join(re.escape(f) for f in sorted(shown, key=len, reverse=True))
            self._pattern = re.compile(
                rf"(?P<quote>['\"])(?P<qpath>{alternatives})(?P<qbelow>/[^'\"]*)?(?P=quote)"
                rf"|(?<![\w.\-/~])(?P<path>{alternatives})(?P<below>/{_PATH_TAIL})?(?![\w\-])"
            )

    def __call__(self, text: str) -> str:
        """``text`` with every input path (and anything below one) in its shown form."""
        if self._pattern is None:
            return text

        def replace(match) -> str:
            quote = match["quote"] or ""
            path = match["qpath"] or match["path"]
            below = match["qbelow"] if quote else match["below"]
            tail = "/…" if below and below.strip("/") else ""
            return f"{quote}{self._shown[path]}{tail}{quote}"

        return self._pattern.sub(replace, text)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InputPathDisplay:
        """The display of a parsed command's input arguments (`INPUT_ARGS`)."""
        inputs: list[str] = []
        for key in INPUT_ARGS:
            value = getattr(args, key, None)
            if isinstance(value, str):
                inputs.append(value)
            elif isinstance(value, list):
                inputs += [v for v in value if isinstance(v, str)]
        return cls(inputs)
