"""How messages show text and paths: one line each, input paths by their last component.

The rules every ``pancseg`` message follows (the command line applies them to its errors and
log lines; `pancseg_tf.beam` to the reasons in its failures file): `one_line` escapes what would
split a line, `InputPathDisplay` shows an input by its last component only, and
`file_names_only` cuts every other path in an error (a library's message, a manifest's entry, an
output) to its last component. An error nobody foresaw (a library's, a server's) is shown by
`error_summary` / `short_message`: its first line, cut to `INTERNAL_MESSAGE_CHARS`, never the
array its message may print.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
from collections.abc import Callable


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (``\\n``, ``\\x00``).

    Error messages name paths and values as given; a file name holding a newline would
    otherwise split the one ``pancseg: error:`` line.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def exception_text(error: BaseException) -> str:
    """A library's exception message on one line (whitespace collapsed), every path in it cut
    to its last component (`file_names_only`: folders may name the patient); the exception
    type's name when the message is empty."""
    return file_names_only(" ".join(str(error).split())) or type(error).__name__


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


# === Any path in an error: its last component ===

# What an unquoted path runs on with: not a space, quote, comma, semicolon or bracket; a colon
# only inside it (``/a/b.nii.gz: truncated`` ends before the colon).
_PATH_CHARS = r"(?:[^\s'\"`,;()\[\]{}<>:]|:(?=[^\s'\"`,;()\[\]{}<>]))"
# A name that reads as a file name (an extension starting with a letter: not 1.5/2.5).
_FILE_NAME = re.compile(r"[^/]*\.[A-Za-z][\w-]*")
_PATHS = re.compile(
    # A quoted path (an OSError's repr, nibabel's "Cannot work out file type of ..."): whole,
    # spaces included (a relative one without spaces: "model's input" is no quote).
    r"(?<!\w)(?P<quote>['\"])"
    r"(?P<quoted>(?:~|\.{1,2})?/[^'\"\n]*|[^'\"\s/][^'\"\s]*/[^'\"\s]*)(?P=quote)"
    # An absolute or home path: not after a word, a dot or a scheme's "://".
    rf"|(?P<absolute>(?<![\w.~/:\->])(?:~|\.{{1,2}})?/(?!/){_PATH_CHARS}+)"
    # A relative path with a folder: not part of a longer word or of a URL.
    rf"|(?P<relative>(?<![\w.~/:\-])[\w.\-]+/{_PATH_CHARS}+)"
)


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` (which holds a ``/``) reads as a path, not a ratio or an abbreviation.

    A path starts with ``/``, ``./``, ``../`` or ``~/``, or has two folders, or ends in a file
    name with an extension; ``N/A``, ``and/or``, ``1/2``, ``1.5/2.5`` and ``[3/12]`` do not.
    """
    if "://" in text:  # a URL: the server's address is not a patient's
        return False
    if text.startswith(("/", "./", "../", "~/")):
        return True
    parts = [part for part in text.split("/") if part]
    if parts and parts[-1] == "…":  # InputPathDisplay's "name/…": already shown as it should be
        return False
    return len(parts) >= 3 or (len(parts) == 2 and bool(_FILE_NAME.fullmatch(parts[-1])))


def _last_component(path: str) -> str:
    parts = [part for part in path.split("/") if part]
    if not parts:
        return path
    if parts[-1] == "…" and len(parts) > 1:
        return f"{parts[-2]}/…"
    return parts[-1]


def file_names_only(text: str) -> str:
    """``text`` with every path in it that names folders cut to its last component.

    Library messages name the files they failed on in full (nibabel's ``File
    /data/DOE_JOHN_19600101/ct.nii.gz is not a gzip file``, pydicom's, NumPy's, an `OSError`'s
    ``'/data/…/IM0001.dcm'``), and so do paths found in a manifest or written to: the folders
    above a file may name the patient, so an error shows the file's own name only
    (``ct.nii.gz``). Applied after `InputPathDisplay`, whose ``name/…`` forms it keeps.

    What counts as a path: anything in quotes that holds a ``/``; an unquoted word that starts
    with ``/``, ``./``, ``../`` or ``~/``; and an unquoted relative word with two folders or a
    folder and a file name with an extension (so ``N/A``, ``and/or``, ``[3/12]`` and ``1.5/2.5``
    stay). URLs stay. An unquoted path whose folder holds a space (``/data/DOE JOHN/ct.nii.gz``)
    is followed across the space while the folder exists on disk or the next word continues it
    as a path.

    Example:
        >>> file_names_only("File /data/DOE_JOHN_19600101/ct.nii.gz is not a gzip file")
        'File ct.nii.gz is not a gzip file'
    """
    out: list[str] = []
    position = 0
    while (match := _PATHS.search(text, position)) is not None:
        start, end = match.span()
        if match["quote"]:
            path = match["quoted"]
            shown = f"{match['quote']}{_last_component(path)}{match['quote']}"
        else:
            end = _follow_spaces(text, start, end)
            path = text[start:end]
            shown = _last_component(path)
        if not _looks_like_path(path):
            # Not a path: keep its first character and look again from the next one (a path
            # may start inside a quoted text that is not one).
            out.append(text[position : start + 1])
            position = start + 1
            continue
        out.append(text[position:start])
        out.append(shown)
        position = end
    out.append(text[position:])
    return "".join(out)


_NEXT_WORD = re.compile(rf" (?P<word>{_PATH_CHARS}+)")
#: How many words after a space an unquoted path is followed across, at most.
_MAX_WORDS = 6


def _follow_spaces(text: str, start: int, end: int) -> int:
    """Where the unquoted path at ``text[start:end]`` really ends, when its folders hold spaces.

    The path runs on to the furthest of the next words that, with the path so far, names
    something on disk (``/data/DOE`` + `` JOHN 1960/ct.nii.gz``: ``/data/DOE JOHN 1960``
    exists), or to the very next word when that is itself a relative path (``JOHN/ct.nii.gz`` in
    ``/gone/DOE JOHN/ct.nii.gz``). A word that starts a new absolute path ends the search.
    """
    found = end
    probe = end
    for count in range(1, _MAX_WORDS + 1):
        word = _NEXT_WORD.match(text, probe)
        if word is None or word["word"].startswith(("/", "~")):
            break
        following = word["word"]
        head = text[start : word.start("word")] + following.split("/", 1)[0]
        try:
            exists = os.path.lexists(os.path.expanduser(head))
        except (OSError, ValueError):  # an embedded NUL, a name too long
            exists = False
        if exists or (count == 1 and _looks_like_path(following)):
            found = word.end()
        if "/" in following:
            break
        probe = word.end()
    return found


# === An unexpected error's message, short ===

#: How many characters of an unexpected error's message are shown (`short_message`).
INTERNAL_MESSAGE_CHARS = 200
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def short_message(text: str, limit: int = INTERNAL_MESSAGE_CHARS) -> str:
    """``text`` as one short line: its first non-empty line, every path by its last component
    (`file_names_only`), control characters escaped (`one_line`), at most ``limit`` characters;
    an ellipsis (``…``) ends it when anything was left out.

    A library's or a server's message can hold a whole array (TensorFlow prints every value of
    a tensor that does not bind to a tf.function, over dozens of lines); image data must reach
    no terminal, log, failures file or index through it. Python's messages say what went wrong
    on their first line; ``--debug`` shows the rest.

    Args:
        text: the message.
        limit: the most characters returned (at least 2).

    Example:
        >>> short_message("Can not cast (30, 30) to (None, 4): array([[0., 0.],\\n [0., 0.]])")
        'Can not cast (30, 30) to (None, 4): array([[0., 0.], …'
    """
    lines = [line.strip() for line in _LINE_BREAK.split(text) if line.strip()]
    if not lines:
        return ""
    message = one_line(file_names_only(lines[0]))
    marker = " …" if len(lines) > 1 else ""
    if len(message) + len(marker) > limit:
        message, marker = message[: limit - 1], "…"
    return message + marker


def error_summary(
    err: BaseException,
    limit: int = INTERNAL_MESSAGE_CHARS,
    show: Callable[[str], str] | None = None,
) -> str:
    """``<Type>: <message>`` for an exception nobody foresaw: its type's name and
    `short_message` of its message (the type's name alone when the message is empty).

    The one form every place that reports such an error uses: the command line's internal-error
    line, ``pancseg prepare``'s skipped cases, Beam's failure reasons.

    Args:
        err: the exception.
        limit: the most characters of its message kept (the type's name comes on top).
        show: applied to the whole message first, so that a path is replaced whole before the
            cut (an `InputPathDisplay`, a case's paths as ``<image>``).

    Example:
        >>> error_summary(KeyError("spacing"))
        "KeyError: 'spacing'"
    """
    text = str(err)
    message = short_message(show(text) if show is not None else text, limit)
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
