"""Which voxel values of a label file mean pancreas: the public cohorts' presets and parsing.

Cohorts code the pancreas differently (MSD Task07 1 and 2, NIH Pancreas-CT 1, TotalSegmentator
7); a manifest's ``label_values`` column and ``--gt-labels`` name them by preset or as integers.
Here, below both `pancseg_tf.io.cohorts` (which reads the column) and
`pancseg_tf.preprocessing.labels` (which maps label arrays with them).
"""

from __future__ import annotations

from pancseg_tf.errors import PancsegError

# Preset name -> label values that mean pancreas (None: every non-zero value).
LABEL_PRESETS: dict[str, tuple[int, ...] | None] = {
    "msd": (1, 2),
    "totalsegmentator": (7,),
    "nih": (1,),
    "nonzero": None,
}


def parse_label_values(text: str) -> tuple[int, ...] | None:
    """Parses a label-values option: a preset name or comma-separated integers.

    Args:
        text: ``"1,2"``, ``"7"``, or a preset name of `LABEL_PRESETS` (``"msd"``,
            ``"totalsegmentator"``, ``"nih"``, ``"nonzero"``).

    Returns:
        The sorted unique values, or ``None`` for ``"nonzero"``.

    Raises:
        PancsegError: on an empty string, a non-integer item, or a value under 1 (0 is the
            background, so it cannot mean pancreas).
    """
    key = text.strip().lower()
    if key in LABEL_PRESETS:
        return LABEL_PRESETS[key]
    items = [item.strip() for item in key.split(",")]
    if not key or any(not item for item in items):
        raise PancsegError(
            f"label values must be comma-separated integers or one of {sorted(LABEL_PRESETS)}, "
            f"got {text!r}"
        )
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError:
            raise PancsegError(
                f"label values must be comma-separated integers or one of "
                f"{sorted(LABEL_PRESETS)}, got {text!r} ({item!r} is not an integer)"
            ) from None
    return checked_values(values, text)


def checked_values(values: list, shown: object) -> tuple[int, ...]:
    out = []
    for value in values:
        try:
            whole = not isinstance(value, bool) and float(value).is_integer()
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise PancsegError(f"label values must be integers, got {shown!r}")
        out.append(int(value))
    if not out or min(out) < 1:
        raise PancsegError(f"label values must be one or more integers >= 1, got {shown!r}")
    return tuple(sorted(set(out)))
