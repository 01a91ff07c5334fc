"""The pancreas outside the model's in-plane field, as the evaluation reports state it.

``pancseg prepare`` records per case how much of the pancreas lies outside the model's
in-plane field of ``preprocess.size`` pixels of ``preprocess.spacing_mm`` (index.json's
``label_outside_field_fraction``, `pancseg_tf.data.prepare.cases_outside_field`): training
never sees that part, while prediction covers the whole body in tiles of the field's size. A
score on such a case mixes in tissue the model was never trained on, so ``pancseg evaluate
--prepared`` and ``pancseg cv`` list these cases with their lost fraction beside the scores.

Plain Python; nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["field_of_index", "outside_field_line", "outside_fractions"]


def field_of_index(index: Mapping[str, Any]) -> dict[str, Any]:
    """The model's in-plane field of a prepared index: ``{"size": [H, W], "spacing_mm": s}``."""
    preprocess = index["preprocess"]
    return {
        "size": [int(v) for v in preprocess["size"]],
        "spacing_mm": float(preprocess["spacing_mm"]),
    }


def outside_fractions(index: Mapping[str, Any]) -> dict[str, float | None]:
    """Case id -> fraction of its pancreas outside the field, for every prepared case of the
    index; None for a case prepared before the fraction was recorded."""
    fractions: dict[str, float | None] = {}
    for entry in index.get("cases", []):
        value = entry.get("label_outside_field_fraction")
        fractions[entry["case_id"]] = None if value is None else float(value)
    return fractions


def _field_text(field: Mapping[str, Any]) -> str:
    height, width = field["size"]
    spacing = float(field["spacing_mm"])
    return (
        f"{height} x {width} field of {spacing:g} mm pixels "
        f"({height * spacing:g} x {width * spacing:g} mm)"
    )


def outside_field_line(
    cases: Sequence[tuple[str, float]],
    field: Mapping[str, Any],
    *,
    unknown: int = 0,
    what: str = "evaluated",
) -> str:
    """One sentence naming the cases whose pancreas lies partly outside the model's field.

    Args:
        cases: ``(case_id, fraction)`` of the cases with a fraction above 0.
        field: ``{"size": [H, W], "spacing_mm": s}`` (`field_of_index`).
        unknown: cases whose fraction is not known (not in the prepared index, or prepared
            before it was recorded).
        what: the cases' adjective ("evaluated", "held-out").

    Returns:
        E.g. ``"1 evaluated case has pancreas outside the model's 128 x 128 field of 1.6 mm
        pixels (204.8 x 204.8 mm), which training never sees: PANCREAS_0002 (1.30 %)."``
    """
    where = f"the model's {_field_text(field)}"
    if cases:
        listed = ", ".join(f"{case} ({100.0 * fraction:.2f} %)" for case, fraction in cases)
        has = "case has" if len(cases) == 1 else "cases have"
        line = (
            f"{len(cases)} {what} {has} pancreas outside {where}, which training never "
            f"sees: {listed}."
        )
    else:
        line = f"No {what} case has pancreas outside {where}."
    if unknown:
        line += (
            f" Unknown for {unknown} case(s): not in the prepared data, or prepared before "
            "the field was checked."
        )
    return line
