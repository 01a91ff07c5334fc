"""`evaluate_predictions`: a folder of predicted masks against the truth, as a report folder.

What ``pancseg evaluate PRED GT -o REPORT`` runs. Predictions are the masks ``pancseg predict``
writes, one ``<case>.nii.gz`` per case (``<case>_prob.nii.gz`` probability maps beside them are
ignored). The truth is either a folder of label files paired by file name, or a cohort (MSD /
nnU-Net folder, NIH Pancreas-CT download, CSV manifest; see `pancseg_tf.io.discover_cohort`)
paired by case id. The report folder gets:

==============================  ===============================================================
``metrics.csv``                 one row per evaluated case: ``case``, then `CASE_KEYS` (and
                                `OUTSIDE_FIELD_KEY` with ``prepared``)
``summary.json``                per metric mean / std / min / max / n, the evaluated, unpaired
                                and failed cases (the value this function returns)
``summary.md``                  the paper's table (metric | mean ± std | min | max | n), lists;
                                with ``prepared``, the cases whose pancreas lies partly outside
                                the model's in-plane field (`pancseg_tf.evaluation.field`)
``dsc_boxplot.png``             per-case DSC as a box plot (when a case was evaluated)
``cases/<case>.png``            axial montage, 1218 px wide: ground truth (green) and
                                prediction (red) outlines, yellow where they coincide, over the
                                image or the masks; slices through the pancreas and the worst
                                false-positive and false-negative slices, each captioned
``cases/<case>.html``           the case's page: its metrics, the montage (each tile links to its
                                slice) and a slice scroller (plain HTML and inline JavaScript)
``cases/<case>/slice_<n>.png``  every slice through either mask, 640 px wide (``n``: the index
                                along the stored file's slice axis)
``index.html``                  all of the above by relative links; no external resources
==============================  ===============================================================

The pictures (`pancseg_tf.evaluation.figures`) are axial slices in the radiological view,
anterior at the top and the patient's right on the image's left, from the volume's own affine.
The report is a folder of files that works offline; each page counts its images once loaded
(``data-images-total`` / ``data-images-loaded`` on ``<body>``) and says so when one is missing.

Nothing is dropped silently: a prediction without a truth or a truth without a prediction is
"unpaired", and a case that cannot be scored (unreadable file, a prediction on another grid, a
prediction that is not binary) is "failed" with its reason; both are listed in ``summary.json``,
``summary.md`` and ``index.html`` while the other cases are evaluated. Every file is written under
a temporary name and renamed, so a reader never sees half a file; ``index.html`` comes last.

Plain numpy / scipy / nibabel; nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import logging
import math
import os
import pathlib
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation.field import field_of_index, outside_field_line, outside_fractions
from pancseg_tf.evaluation.figures import (
    ORIENTATION_NOTE,
    CaseVolumes,
    Montage,
    boxplot_png,
    canonical_case,
    display_window,
    montage_png,
    radiological_view,
    scroller_slices,
    slice_box,
    slice_counts,
    slice_png,
)
from pancseg_tf.evaluation.metrics import CASE_KEYS, SUMMARY_KEYS, evaluate_case, summarize
from pancseg_tf.io.cohorts import check_case_id
from pancseg_tf.io.volume import Volume

log = logging.getLogger("pancseg_tf.evaluation")

PathLike = str | os.PathLike

__all__ = [
    "GRID_TOLERANCE_MM",
    "OUTSIDE_FIELD_KEY",
    "REPORT_KEYS",
    "evaluate_predictions",
    "outside_field_note",
]

# The figures' names this module had before they moved to `pancseg_tf.evaluation.figures`.
_canonical = canonical_case
_display = radiological_view

# Two grids are the same when every corner voxel of the volume lands within this many mm.
GRID_TOLERANCE_MM = 1e-4

# The metrics of summary.json / summary.md: the paper's table plus the two volumes.
REPORT_KEYS: tuple[str, ...] = (*SUMMARY_KEYS, "gt_volume_ml", "pred_volume_ml")

# metric -> (label, scale, decimals) for summary.md and index.html. DSC and JI are percentages
# as in the paper's tables ("82.4 ± 6.7"); summary.json keeps the raw fractions.
_DISPLAY: dict[str, tuple[str, float, int]] = {
    "dsc": ("DSC (%)", 100.0, 1),
    "ji": ("JI (%)", 100.0, 1),
    "precision": ("precision (%)", 100.0, 1),
    "recall": ("recall (%)", 100.0, 1),
    "hd95_mm": ("HD95 (mm)", 1.0, 2),
    "assd_mm": ("ASSD (mm)", 1.0, 2),
    "rvd": ("RVD (%)", 100.0, 1),
    "slice_consistency": ("slice consistency", 1.0, 3),
    "gt_volume_ml": ("ground-truth volume (ml)", 1.0, 1),
    "pred_volume_ml": ("predicted volume (ml)", 1.0, 1),
}

# metrics.csv's column (with ``prepared``): the fraction of the case's pancreas outside the
# model's in-plane field, as prepare recorded it; empty where unknown.
OUTSIDE_FIELD_KEY = "label_outside_field_fraction"

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PROBABILITY_SUFFIX = "_prob"  # pancseg predict --probabilities writes <case>_prob.nii.gz


# === Pairing ===


@dataclasses.dataclass(frozen=True)
class _Truth:
    """Where one case's ground truth (and, if known, its image) comes from."""

    label: pathlib.Path
    image: pathlib.Path | None = None
    modality: str | None = None  # None: guessed from the intensities for display


def _nifti_stem(path: pathlib.Path) -> str | None:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _nifti_files(folder: pathlib.Path, what: str) -> dict[str, pathlib.Path]:
    """Case id -> file for the visible ``<case>.nii.gz`` / ``<case>.nii`` files of a folder."""
    files: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        # Hidden files (macOS ._ files, temporary files of a running writer) are not cases.
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = _nifti_stem(path)
        if stem is None:
            continue
        # The id names report files (cases/<id>.png) and table rows: the rule of every command.
        check_case_id(stem, where=f"{what} folder {folder}")
        if stem in files:
            raise PancsegError(
                f"{what} folder {folder} holds two files for case {stem}: {files[stem].name} and "
                f"{path.name}; expected one per case"
            )
        files[stem] = path
    return files


def _predictions(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "not a folder"
        raise PancsegError(
            f"predictions {folder}: {what}; expected a folder of predicted masks <case>.nii.gz"
        )
    files = {
        case: path
        for case, path in _nifti_files(folder, "predictions").items()
        if not case.endswith(_PROBABILITY_SUFFIX)
    }
    if not files:
        raise PancsegError(
            f"no predicted masks in {folder}: expected files <case>.nii.gz (or .nii); "
            f"<case>{_PROBABILITY_SUFFIX}.nii.gz probability maps are not masks"
        )
    return files


def _ground_truth(gt: pathlib.Path) -> tuple[dict[str, _Truth], str]:
    """Case id -> truth, and "folder" or "cohort"."""
    if not gt.exists():
        raise PancsegError(
            f"no such ground-truth file or folder: {gt}; expected a folder of label files "
            "<case>.nii.gz or a cohort (MSD folder, NIH Pancreas-CT folder, CSV manifest)"
        )
    if gt.is_dir():
        labels = _nifti_files(gt, "ground-truth")
        if labels:
            return {case: _Truth(path) for case, path in labels.items()}, "folder"
    from pancseg_tf.io.cohorts import discover_cohort

    try:
        cases = discover_cohort(gt, split="train")
    except PancsegError as error:
        raise PancsegError(
            f"ground truth {gt} is not a folder of label files <case>.nii.gz, and reading it as "
            f"a cohort failed: {error}"
        ) from None
    truths = {
        case.case_id: _Truth(case.label, case.image, case.modality)
        for case in cases
        if case.label is not None
    }
    return truths, "cohort"


def _image_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Case id -> image for ``<case>.nii.gz`` or nnU-Net's ``<case>_0000.nii.gz`` names."""
    if not folder.is_dir():
        raise PancsegError(
            f"images {folder} is not a folder; expected a folder of images <case>.nii.gz or "
            "<case>_0000.nii.gz"
        )
    files = _nifti_files(folder, "images")
    images = dict(files)
    for stem, path in files.items():
        if stem.endswith("_0000"):
            case = stem[: -len("_0000")]
            # An exact <case>.nii.gz wins over the channel-suffixed name.
            images.setdefault(case, path)
    return images


# === Reading and checking one case ===


def _grid_difference_mm(a: Volume, b: Volume) -> float:
    """Largest distance in mm between where the two affines put the volume's corner voxels."""
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, a.shape[0] - 1)
            for j in (0, a.shape[1] - 1)
            for k in (0, a.shape[2] - 1)
        ]
    ).T
    moved = (a.affine - b.affine) @ corners
    return float(np.linalg.norm(moved[:3], axis=0).max())


def _same_grid(a: Volume, b: Volume) -> str | None:
    """None when ``a`` and ``b`` share a grid, else why not (no paths in it)."""
    if a.shape != b.shape:
        return f"shape {a.shape} differs from {b.shape}"
    difference = _grid_difference_mm(a, b)
    if difference > GRID_TOLERANCE_MM:
        return (
            f"affines differ: the volume's corners are up to {difference:.4g} mm apart "
            f"(tolerance {GRID_TOLERANCE_MM:g} mm)"
        )
    return None


def _binary(pred: Volume) -> np.ndarray:
    """The prediction as a boolean mask, or PancsegError when it holds other values than 0, 1."""
    array = pred.array
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.unsignedinteger):
        ok = array.size == 0 or int(array.max()) <= 1
    else:
        ok = not bool(np.any((array != 0) & (array != 1)))
    if not ok:
        bad = np.unique(array[(array != 0) & (array != 1)])
        shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
        raise PancsegError(
            f"prediction holds values [{shown}{', ...' if bad.size > 5 else ''}] besides 0 and 1; "
            f"expected a binary mask (a probability map must be thresholded first, or be named "
            f"<case>{_PROBABILITY_SUFFIX}.nii.gz to be skipped)"
        )
    return array != 0


def _without_path(message: str, *paths: pathlib.Path | None) -> str:
    """The message with full paths cut to their last part (folders may name a patient or date)."""
    for path in paths:
        if path is not None:
            message = message.replace(str(path), path.name)
    return message


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the body's long (S) axis: the axial slice axis."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = linear / np.linalg.norm(linear, axis=0)
    return int(np.argmax(np.abs(directions[2])))


# === Writing ===


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes under a hidden temporary name in the same folder, then renames over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as file:
            file.write(data)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise PancsegError(f"could not write {path}: {error.strerror or error}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _metrics_csv(rows: Sequence[tuple[str, Mapping[str, object]]], field: bool = False) -> bytes:
    keys = (*CASE_KEYS, OUTSIDE_FIELD_KEY) if field else CASE_KEYS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", *keys])
    for case, row in rows:
        writer.writerow([case, *("" if row[k] is None else _csv_value(row[k]) for k in keys)])
    return buffer.getvalue().encode("utf-8")


def json_safe(value: object) -> object:
    """For strict JSON: NaN and infinities become None (JSON has neither), NumPy scalars plain
    Python values; containers are walked."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _statistic(value: object, scale: float, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value) * scale:.{decimals}f}"


def _table_rows(metrics: Mapping[str, Mapping[str, object]]) -> list[tuple[str, ...]]:
    """(metric, mean ± std, min, max, n) as display strings, one tuple per metric."""
    rows = []
    for key in REPORT_KEYS:
        label, scale, decimals = _DISPLAY[key]
        stats = metrics[key]
        mean = _statistic(stats["mean"], scale, decimals)
        std = _statistic(stats["std"], scale, decimals)
        rows.append(
            (
                label,
                "n/a" if mean == "n/a" else f"{mean} ± {std}",
                _statistic(stats["min"], scale, decimals),
                _statistic(stats["max"], scale, decimals),
                str(stats["n"]),
            )
        )
    return rows


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _counts_line(summary: Mapping[str, object]) -> str:
    counts = summary["num_cases"]
    return (
        f"{_plural(counts['evaluated'], 'case', 'cases')} evaluated; "
        f"{counts['failed']} failed; "
        f"{_plural(counts['prediction_only'], 'prediction', 'predictions')} without ground truth; "
        f"{_plural(counts['ground_truth_only'], 'ground-truth case', 'ground-truth cases')} "
        "without prediction."
    )


def _undefined_notes(metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    notes = []
    for key in REPORT_KEYS:
        undefined = metrics[key]["n_undefined"]
        if undefined:
            notes.append(
                f"{_DISPLAY[key][0]}: {undefined} case(s) undefined (empty ground truth), "
                "left out of its statistics."
            )
    empty = max(int(metrics[key]["n_empty"]) for key in REPORT_KEYS)
    if empty:
        notes.append(
            f"{empty} case(s) with an empty prediction or ground truth are included with the "
            "worst-case values documented in pancseg_tf.evaluation.metrics."
        )
    return notes


def outside_field_note(summary: Mapping[str, object]) -> str | None:
    """The sentence naming the evaluated cases whose pancreas lies partly outside the model's
    field, from a summary `evaluate_predictions` returned; None when it was not given
    ``prepared``."""
    outside = summary.get("outside_field")
    if outside is None:
        return None
    cases = [(entry["case"], entry["fraction"]) for entry in outside["cases"]]
    return outside_field_line(cases, outside["field"], unknown=len(outside["unknown"]))


def _summary_md(summary: Mapping[str, object]) -> bytes:
    lines = ["# Pancreas segmentation: evaluation", "", _counts_line(summary), ""]
    lines += ["| metric | mean ± std | min | max | n |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(summary["metrics"])]
    notes = _undefined_notes(summary["metrics"])
    if notes:
        lines += ["", *notes]
    field_line = outside_field_note(summary)
    if field_line is not None:
        lines += ["", "## Pancreas outside the model's field", "", field_line]
        if summary["outside_field"]["cases"]:
            lines += ["", "| case | pancreas outside the field (%) |", "| --- | --- |"]
            for entry in summary["outside_field"]["cases"]:
                lines.append(f"| {entry['case']} | {100.0 * entry['fraction']:.2f} |")
    unpaired = summary["unpaired"]
    if unpaired["prediction_only"] or unpaired["ground_truth_only"]:
        lines += ["", "## Unpaired cases (not evaluated)", ""]
        for case in unpaired["prediction_only"]:
            lines.append(f"- {case}: prediction without ground truth")
        for case in unpaired["ground_truth_only"]:
            lines.append(f"- {case}: ground truth without prediction")
    if summary["failed"]:
        lines += ["", "## Failed cases (not evaluated)", ""]
        for entry in summary["failed"]:
            lines.append(f"- {entry['case']}: {entry['reason']}")
    return ("\n".join(lines) + "\n").encode("utf-8")


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img.thumb { width: 320px; }
img.montage { display: block; max-width: none; }
figure { margin: 0 0 2em; }
.missing { color: #b00000; font-weight: bold; }
.legend .gt { color: #00a000; } .legend .pred { color: #d00000; } .legend .both { color: #b09000; }
.viewer { display: inline-grid; grid-template-columns: 1.5em auto 1.5em; align-items: center;
          justify-items: center; gap: 0.2em; }
.viewer img { display: block; }
.controls { margin: 0.5em 0; }
.controls input[type=range] { width: 480px; vertical-align: middle; }
"""

# Counts the page's images once everything has loaded, writes the counts on <body>
# (data-images-total / data-images-loaded) and shows which failed: a report folder copied
# without its cases/ folder says so instead of showing broken images silently.
_IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var missing = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesLoaded = String(images.length - missing.length);
  if (missing.length) {
    var note = document.getElementById("missing-images");
    note.hidden = false;
    note.textContent = missing.length + " image(s) did not load (is the report folder complete?): "
      + missing.map(function (i) { return i.getAttribute("src"); }).join(", ");
  }
});
"""

# The case page's slice scroller: a range input, buttons, the arrow keys and the mouse wheel
# over the image move through the slices; #slice-<n> in the address (the montage's tiles and
# the lists link there) opens slice n. Without JavaScript the page lists every slice's image.
_SCROLLER_JS = """
(function () {
  var slices = JSON.parse(document.getElementById("slice-data").textContent);
  var viewer = document.getElementById("scroller");
  var image = document.getElementById("slice-image");
  var range = document.getElementById("slice-range");
  var caption = document.getElementById("slice-caption");
  var at = 0;
  function show(n) {
    at = Math.max(0, Math.min(slices.length - 1, n));
    var s = slices[at];
    image.src = s.file;
    image.alt = "slice " + s.label;
    range.value = String(at);
    image.dataset.slice = String(s.stored);
    caption.textContent = "slice " + s.label + " (" + (at + 1) + " of " + slices.length
      + ", superior first): ground truth " + s.gt + " voxels, prediction " + s.pred
      + ", false positive " + s.fp + ", false negative " + s.fn;
  }
  function fromHash() {
    var m = /^#slice-(\\d+)$/.exec(window.location.hash);
    if (!m) { return false; }
    for (var n = 0; n < slices.length; n++) {
      if (slices[n].stored === Number(m[1])) { show(n); viewer.scrollIntoView(); return true; }
    }
    return false;
  }
  viewer.hidden = false;
  range.max = String(slices.length - 1);
  range.addEventListener("input", function () { show(Number(range.value)); });
  var previous = document.getElementById("slice-previous");
  previous.addEventListener("click", function () { show(at - 1); });
  document.getElementById("slice-next").addEventListener("click", function () { show(at + 1); });
  image.addEventListener("wheel", function (e) {
    e.preventDefault();
    show(at + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", function (e) {
    if (e.target === range) { return; }
    if (e.key === "ArrowDown" || e.key === "ArrowRight") { show(at + 1); e.preventDefault(); }
    if (e.key === "ArrowUp" || e.key === "ArrowLeft") { show(at - 1); e.preventDefault(); }
  });
  window.addEventListener("hashchange", fromHash);
  if (!fromHash()) { show(Number(viewer.dataset.start)); }
})();
"""

_LEGEND = (
    '<p class="legend">Outlines: <span class="gt">green: ground truth</span>, '
    '<span class="pred">red: prediction</span>, <span class="both">yellow: both</span>. '
    f"Axial slices in the {html.escape(ORIENTATION_NOTE)} (as PACS viewers show them).</p>"
)


def _page(title: str, body: Sequence[str], scripts: Sequence[str] = ()) -> bytes:
    """A complete HTML page: the shared style, ``body``, the image check and ``scripts``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<p id="missing-images" class="missing" hidden></p>',
        *body,
        f"<script>{_IMAGE_CHECK_JS}</script>",
        *(f"<script>{script}</script>" for script in scripts),
        "</body>",
        "</html>",
    ]
    return ("\n".join(parts) + "\n").encode("utf-8")


def _href(path: str) -> str:
    return html.escape(urllib.parse.quote(path))


def _index_html(
    summary: Mapping[str, object],
    rows: Sequence[tuple[str, Mapping[str, object]]],
    montages: Mapping[str, str],
    boxplot: str | None,
) -> bytes:
    e = html.escape

    def link(href: str, text: str) -> str:
        return f'<a href="{_href(href)}">{e(text)}</a>'

    parts = [
        "<h1>Pancreas segmentation: evaluation</h1>",
        f"<p>{e(_counts_line(summary))}</p>",
        "<p>Files: "
        + ", ".join(link(name, name) for name in ("metrics.csv", "summary.json", "summary.md"))
        + "</p>",
        "<h2>Summary</h2>",
        "<table>",
        "<tr><th>metric</th><th>mean ± std</th><th>min</th><th>max</th><th>n</th></tr>",
    ]
    for row in _table_rows(summary["metrics"]):
        parts.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</table>")
    for note in _undefined_notes(summary["metrics"]):
        parts.append(f"<p>{e(note)}</p>")
    field_line = outside_field_note(summary)
    if field_line is not None:
        parts.append("<h2>Pancreas outside the model's field</h2>")
        parts.append(f'<p id="outside-field">{e(field_line)}</p>')
    if boxplot is not None:
        parts += [
            "<h2>DSC per case</h2>",
            f'<p><img src="{_href(boxplot)}" alt="box plot of the DSC per case"></p>',
        ]
    unpaired = summary["unpaired"]
    if unpaired["prediction_only"] or unpaired["ground_truth_only"]:
        parts += ["<h2>Unpaired cases (not evaluated)</h2>", "<ul>"]
        for case in unpaired["prediction_only"]:
            parts.append(f"<li>{e(case)}: prediction without ground truth</li>")
        for case in unpaired["ground_truth_only"]:
            parts.append(f"<li>{e(case)}: ground truth without prediction</li>")
        parts.append("</ul>")
    if summary["failed"]:
        parts += ["<h2>Failed cases (not evaluated)</h2>", "<ul>"]
        for entry in summary["failed"]:
            parts.append(f"<li>{e(entry['case'])}: {e(entry['reason'])}</li>")
        parts.append("</ul>")
    if rows:
        parts += [
            "<h2>Cases</h2>",
            _LEGEND,
            "<p>Each case's page has its montage at full size and a scroller through every "
            "slice with either mask.</p>",
            "<table>",
            "<tr><th>case</th><th>axial slices</th>"
            + "".join(f"<th>{e(_DISPLAY[key][0])}</th>" for key in _CASE_COLUMNS)
            + ("<th>pancreas outside the field (%)</th>" if field_line is not None else "")
            + "</tr>",
        ]
        for case, row in rows:
            href = montages.get(case)
            page = f"cases/{case}.html"
            image = (
                f'<a href="{_href(page)}"><img class="thumb" src="{_href(href)}" '
                f'alt="axial slices of {e(case)}"></a>'
                if href
                else ""
            )
            cells = [f"<td>{link(page, case) if href else e(case)}</td>", f"<td>{image}</td>"]
            cells += [f"<td>{e(value)}</td>" for value in _case_values(row)]
            if field_line is not None:
                fraction = row.get(OUTSIDE_FIELD_KEY)
                cells.append(f"<td>{_statistic(fraction, 100.0, 2)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        parts.append("<h2>Montages</h2>")
        for case, _ in rows:
            href = montages.get(case)
            if href:
                parts.append(
                    f'<figure><a href="{_href(f"cases/{case}.html")}"><img class="montage" '
                    f'src="{_href(href)}" alt="axial slices of {e(case)}"></a></figure>'
                )
    return _page("pancseg evaluation", parts)


_CASE_COLUMNS = ("dsc", "ji", "precision", "recall", "hd95_mm", "assd_mm", "rvd",
                 "slice_consistency", "gt_volume_ml", "pred_volume_ml")  # fmt: skip


def _case_values(row: Mapping[str, object]) -> list[str]:
    values = []
    for key in _CASE_COLUMNS:
        _, scale, decimals = _DISPLAY[key]
        values.append(_statistic(row[key], scale, decimals))
    return values


def _slice_links(slices: Sequence[Mapping[str, object]], key: str) -> str:
    """The slices with ``key`` voxels (most first, at most 10) as links into the scroller."""
    ranked = sorted((s for s in slices if s[key]), key=lambda s: -int(s[key]))[:10]
    if not ranked:
        return "none"
    return ", ".join(
        f'<a href="#slice-{s["stored"]}" data-slice="{s["stored"]}" data-voxels="{s[key]}">'
        f"{html.escape(str(s['label']))}</a> ({s[key]} voxels)"
        for s in ranked
    )


def _case_html(
    case: str,
    row: Mapping[str, object],
    montage_file: str,
    montage: Montage,
    slices: Sequence[Mapping[str, object]],
) -> bytes:
    """``cases/<case>.html``: the case's metrics, montage and slice scroller (links relative to
    ``cases/``)."""
    e = html.escape
    start = max(range(len(slices)), key=lambda n: int(slices[n]["gt"]))
    areas = "".join(
        f'<area shape="rect" coords="{t.left},{t.top},{t.right},{t.bottom}" '
        f'href="#slice-{t.stored}" title="slice {e(t.reason)}" alt="slice {t.stored}">'
        for t in montage.tiles
    )
    first = slices[start]
    data = json.dumps(list(slices)).replace("</", "<\\/")
    parts = [
        '<p><a href="../index.html">all cases</a></p>',
        f"<h1>{e(case)}</h1>",
        "<table>",
        "<tr>" + "".join(f"<th>{e(_DISPLAY[key][0])}</th>" for key in _CASE_COLUMNS) + "</tr>",
        "<tr>" + "".join(f"<td>{e(value)}</td>" for value in _case_values(row)) + "</tr>",
        "</table>",
        _LEGEND,
        f"<p>False-positive slices (predicted, not in the ground truth): "
        f'<span id="false-positive-slices">{_slice_links(slices, "fp")}</span></p>',
        f"<p>False-negative slices (in the ground truth, not predicted): "
        f'<span id="false-negative-slices">{_slice_links(slices, "fn")}</span></p>',
        "<h2>Montage</h2>",
        "<p>Click a slice to open it in the scroller below.</p>",
        f'<p><img class="montage" src="{_href(montage_file)}" width="{montage.width}" '
        f'height="{montage.height}" usemap="#tiles" alt="axial slices of {e(case)}"></p>',
        f'<map name="tiles">{areas}</map>',
        "<h2>Slices</h2>",
        f'<div id="scroller" data-start="{start}" hidden>',
        '<div class="controls"><button id="slice-previous" type="button">previous</button> '
        f'<input id="slice-range" type="range" min="0" max="{len(slices) - 1}" value="{start}" '
        'aria-label="slice"> <button id="slice-next" type="button">next</button> '
        "(or the arrow keys, or the mouse wheel over the image)</div>",
        '<div class="viewer"><span></span><span>A</span><span></span>',
        f'<span>R</span><img id="slice-image" src="{_href(str(first["file"]))}" '
        f'alt="slice {e(str(first["label"]))}"><span>L</span>',
        "<span></span><span>P</span><span></span></div>",
        '<p id="slice-caption"></p>',
        "</div>",
        f"<details><summary>Every slice ({len(slices)}) as an image</summary><ul>",
    ]
    for s in slices:
        parts.append(
            f'<li id="slice-{s["stored"]}"><a href="{_href(str(s["file"]))}">slice '
            f"{e(str(s['label']))}</a>: ground truth {s['gt']}, prediction {s['pred']}, false "
            f"positive {s['fp']}, false negative {s['fn']} voxels</li>"
        )
    parts.append("</ul></details>")
    parts.append(f'<script type="application/json" id="slice-data">{data}</script>')
    return _page(f"pancseg evaluation: {case}", parts, scripts=[_SCROLLER_JS])


def _write_case_figures(
    cases_folder: pathlib.Path,
    case: str,
    row: Mapping[str, object],
    volume: CaseVolumes,
    window: tuple[float, float] | None,
) -> None:
    """Writes the case's montage, per-slice images and page into ``cases_folder``.

    Slice images of an earlier report into the same folder that this one does not show are
    removed, so the folder holds what the page links.
    """
    counts = slice_counts(volume)
    montage = montage_png(case, volume, window, float(row["dsc"]), counts)
    _write_atomic(cases_folder / f"{case}.png", montage.png)
    folder = cases_folder / case
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise PancsegError(f"could not create {folder}: {error.strerror or error}") from None
    box = slice_box(volume)
    slices, written = [], set()
    for k in scroller_slices(volume, required=[tile.k for tile in montage.tiles]):
        stored = volume.stored_index(k)
        name = f"slice_{stored:04d}.png"
        _write_atomic(folder / name, slice_png(volume, k, box, window))
        written.add(name)
        slices.append(
            {
                "file": f"{case}/{name}",
                "stored": stored,
                "label": f"{volume.axis_name}={stored}",
                "gt": int(counts.gt[k]),
                "pred": int(counts.pred[k]),
                "fp": int(counts.false_positive[k]),
                "fn": int(counts.false_negative[k]),
            }
        )
    for stale in folder.glob("slice_*.png"):
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    page = _case_html(case, row, f"{case}.png", montage, slices)
    _write_atomic(cases_folder / f"{case}.html", page)


# === Entry point ===


def _check_output(out: pathlib.Path, *inputs: pathlib.Path) -> None:
    if out.exists() and not out.is_dir():
        raise PancsegError(f"report folder {out} exists and is not a folder")
    for folder in inputs:
        if folder.exists() and out.resolve() == folder.resolve():
            raise PancsegError(
                f"report folder {out} is an input folder; expected a separate folder"
            )


def _evaluate_one(
    case: str,
    pred_path: pathlib.Path,
    truth: _Truth,
    images: Mapping[str, pathlib.Path],
    gt_labels: tuple[int, ...] | None,
) -> tuple[dict[str, object], CaseVolumes, tuple[float, float] | None]:
    """Reads, checks and scores one case; PancsegError if it fails.

    Returns:
        The metrics row, the case in display order (`canonical_case`), and the image's grey
        levels (None when no image is shown).
    """
    from pancseg_tf.io.nifti import read_nifti
    from pancseg_tf.preprocessing.labels import map_labels

    try:
        gt = read_nifti(truth.label, modality=truth.modality or "ct")
        pred = read_nifti(pred_path, modality=truth.modality or "ct")
    except PancsegError as error:
        raise PancsegError(_without_path(str(error), truth.label, pred_path)) from None
    mismatch = _same_grid(pred, gt)
    if mismatch is not None:
        raise PancsegError(
            f"the prediction is not on the ground truth's grid: {mismatch}; expected the mask "
            "pancseg predict writes on the input's own grid"
        )
    pred_mask = _binary(pred)
    gt_mask = map_labels(gt.array, gt_labels).astype(bool, copy=False)
    if not gt_mask.any() and gt_labels is not None and gt.array.any():
        found = np.unique(gt.array[gt.array != 0])[:10].tolist()
        log.warning(
            "case %s: the ground truth holds none of the label values %s (values found: %s)",
            case,
            list(gt_labels),
            found,
        )
    row = evaluate_case(pred_mask, gt_mask, gt.spacing, slice_axis=axial_axis(gt.affine))

    image_array, modality = None, truth.modality
    image_path = images.get(case, truth.image)
    if image_path is not None:
        from pancseg_tf.io.read import read_volume

        try:
            image = read_volume(image_path, modality=truth.modality)
        except PancsegError as error:
            log.warning("case %s: image not shown: %s", case, _without_path(str(error), image_path))
        else:
            problem = _same_grid(image, gt)
            if problem is None:
                image_array = image.array
                if modality is None:
                    # Only display depends on it: air in HU is about -1000, MRI is never negative.
                    modality = "ct" if float(image_array.min()) < -500 else "mri"
            else:
                log.warning("case %s: image not shown, it is on another grid: %s", case, problem)
    volume = canonical_case(gt_mask, pred_mask, image_array, gt)
    window = display_window(volume.image, modality or "ct") if image_array is not None else None
    return row, volume, window


def evaluate_predictions(
    pred: PathLike,
    gt: PathLike,
    out: PathLike,
    *,
    gt_labels: tuple[int, ...] | None = None,
    images: PathLike | None = None,
    prepared: PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Evaluates a folder of predicted masks against the ground truth and writes a report folder.

    Pairing: a prediction ``PRED/<case>.nii.gz`` (or ``.nii``; ``<case>_prob.nii.gz``
    probability maps are ignored) goes with ``GT/<case>.nii.gz`` (or ``.nii``) when ``gt`` is a
    folder of label files, or with the cohort case of that id when ``gt`` is a cohort. A
    prediction must lie on its truth's grid (same shape, corners within `GRID_TOLERANCE_MM`) and
    hold only 0 and 1. Distances use the truth's voxel spacing; slice consistency runs along the
    voxel axis closest to the body's long axis.

    Args:
        pred: folder of predicted masks, each ``(I, J, K)`` uint8 {0, 1} on its truth's grid.
        gt: a folder of label maps named like the predictions, or a cohort (MSD / nnU-Net
            folder, NIH Pancreas-CT download, CSV manifest or its folder) whose labelled cases
            are paired by case id.
        out: the report folder (created; files of an earlier report are replaced).
        gt_labels: the label values that mean pancreas (MSD 1, 2; NIH 1; TotalSegmentator 7);
            None: every non-zero value.
        images: folder of images ``<case>.nii.gz`` or ``<case>_0000.nii.gz`` for the montages;
            it takes precedence over a cohort's images. Without images the montages show the
            masks alone. Images never change a metric.
        prepared: a prepared data folder (``pancseg prepare``'s, with the preprocessing of
            the model that predicted) whose ``index.json`` records, per case, the fraction of
            the pancreas outside the model's in-plane field: the report lists the evaluated
            cases with such a fraction (summary.md, index.html, a metrics.csv column
            `OUTSIDE_FIELD_KEY`). None: not stated (evaluate cannot know the model's field).
        progress: log one line per case (logger ``pancseg_tf.evaluation``, level INFO; case ids
            only).

    Returns:
        The content of ``summary.json``: ``metrics`` (per key of `REPORT_KEYS`: ``mean``,
        ``std``, ``min``, ``max``, ``n``, ``n_undefined``, ``n_empty``, ``n_excluded``, raw
        fractions and mm as `summarize` gives them, None where undefined), ``num_cases``
        (``evaluated``, ``failed``, ``prediction_only``, ``ground_truth_only``), ``evaluated``
        (case ids), ``unpaired`` (``prediction_only`` and ``ground_truth_only`` case-id lists),
        ``failed`` (``[{"case", "reason"}]``), ``gt_labels`` (list or None),
        ``ground_truth`` (``"folder"`` or ``"cohort"``) and ``cases_without_image`` (evaluated
        cases whose montage shows the masks alone: no image given or found, unreadable, or on
        another grid), ``outside_field`` (None without ``prepared``; else ``field``: ``{"size":
        [H, W], "spacing_mm"}``, ``cases``: ``[{"case", "fraction"}]`` of the evaluated cases
        with pancreas outside the field, ``unknown``: evaluated cases the index does not
        state).

    Raises:
        PancsegError: ``pred`` is not a folder of masks; ``gt`` is neither a label folder nor a
            cohort; ``images`` is not a folder; ``out`` is a file or an input folder; bad
            ``gt_labels``; no prediction pairs with a ground truth; every paired case failed
            (the report is written first, so its reasons can be read); a file cannot be
            written.
    """
    from pancseg_tf.preprocessing.labels import map_labels

    started = time.perf_counter()
    pred_folder, gt_path, out = pathlib.Path(pred), pathlib.Path(gt), pathlib.Path(out)
    if gt_labels is not None:
        # Validates the values (integers >= 1) before any file is read.
        map_labels(np.zeros(1, np.uint8), tuple(gt_labels))
        gt_labels = tuple(sorted({int(v) for v in gt_labels}))
    _check_output(out, pred_folder, gt_path)
    predictions = _predictions(pred_folder)
    truths, source = _ground_truth(gt_path)
    image_files = _image_files(pathlib.Path(images)) if images is not None else {}
    field, fractions = None, {}
    if prepared is not None:
        from pancseg_tf.data.prepare import load_index

        index = load_index(prepared)
        field, fractions = field_of_index(index), outside_fractions(index)

    paired = sorted(set(predictions) & set(truths))
    prediction_only = sorted(set(predictions) - set(truths))
    ground_truth_only = sorted(set(truths) - set(predictions))
    if not paired:
        raise PancsegError(
            f"no prediction pairs with a ground truth: {len(predictions)} predictions "
            f"({_some(prediction_only)}) and {len(truths)} ground-truth cases "
            f"({_some(ground_truth_only)}); expected predictions named <case>.nii.gz after the "
            "ground truth's case ids"
        )
    for case in prediction_only:
        log.warning("case %s: prediction without ground truth (not evaluated)", case)
    for case in ground_truth_only:
        log.warning("case %s: ground truth without prediction (not evaluated)", case)

    cases_folder = out / "cases"
    try:
        cases_folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PancsegError(f"could not create {cases_folder}: {error.strerror or error}") from None

    rows: list[tuple[str, dict[str, object]]] = []
    failed: list[dict[str, str]] = []
    montages: dict[str, str] = {}
    without_image: list[str] = []
    for number, case in enumerate(paired, start=1):
        case_started = time.perf_counter()
        try:
            row, volume, window = _evaluate_one(
                case, predictions[case], truths[case], image_files, gt_labels
            )
        except PancsegError as error:
            failed.append({"case": case, "reason": str(error)})
            log.warning("[%d/%d] case %s failed: %s", number, len(paired), case, error)
            continue
        if field is not None:
            row[OUTSIDE_FIELD_KEY] = fractions.get(case)
        # Outside the try: a report that cannot be written is not one case's failure.
        _write_case_figures(cases_folder, case, row, volume, window)
        rows.append((case, row))
        montages[case] = f"cases/{case}.png"
        if window is None:
            without_image.append(case)
        if progress:
            log.info(
                "[%d/%d] case %s: DSC %.1f %%, HD95 %.1f mm (%.1f s)",
                number,
                len(paired),
                case,
                100.0 * float(row["dsc"]),
                float(row["hd95_mm"]),
                time.perf_counter() - case_started,
            )

    if rows:
        metrics = summarize([row for _, row in rows], REPORT_KEYS)
    else:
        metrics = {
            key: {
                "mean": None,
                "std": None,
                "min": None,
                "max": None,
                "n": 0,
                "n_undefined": 0,
                "n_empty": 0,
                "n_excluded": 0,
            }  # fmt: skip
            for key in REPORT_KEYS
        }
    summary = json_safe(
        {
            "metrics": metrics,
            "num_cases": {
                "evaluated": len(rows),
                "failed": len(failed),
                "prediction_only": len(prediction_only),
                "ground_truth_only": len(ground_truth_only),
            },
            "evaluated": [case for case, _ in rows],
            "unpaired": {
                "prediction_only": prediction_only,
                "ground_truth_only": ground_truth_only,
            },
            "failed": failed,
            "gt_labels": None if gt_labels is None else list(gt_labels),
            "ground_truth": source,
            "cases_without_image": without_image,
            "outside_field": None if field is None else _outside_field(rows, field),
        }
    )

    _write_atomic(out / "metrics.csv", _metrics_csv(rows, field is not None))
    text = json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _write_atomic(out / "summary.json", text.encode("utf-8"))
    _write_atomic(out / "summary.md", _summary_md(summary))
    boxplot = None
    if rows:
        boxplot = "dsc_boxplot.png"
        _write_atomic(out / boxplot, boxplot_png([float(row["dsc"]) for _, row in rows]))
    _write_atomic(out / "index.html", _index_html(summary, rows, montages, boxplot))

    if not rows:
        raise PancsegError(
            f"none of the {len(paired)} paired cases could be evaluated (first: case "
            f"{failed[0]['case']}: {failed[0]['reason']}); see {out / 'summary.json'}"
        )
    if progress:
        dsc = metrics["dsc"]
        log.info(
            "evaluated %d cases in %.1f s: DSC %.1f ± %.1f %%; report in %s",
            len(rows),
            time.perf_counter() - started,
            100.0 * dsc["mean"],
            100.0 * dsc["std"],
            out,
        )
    return summary


def _outside_field(
    rows: Sequence[tuple[str, Mapping[str, object]]], field: Mapping[str, object]
) -> dict[str, object]:
    """summary.json's ``outside_field``: the evaluated cases with pancreas outside the field
    and those whose fraction the prepared index does not state."""
    return {
        "field": dict(field),
        "cases": [
            {"case": case, "fraction": row[OUTSIDE_FIELD_KEY]}
            for case, row in rows
            if row[OUTSIDE_FIELD_KEY] is not None and row[OUTSIDE_FIELD_KEY] > 0
        ],
        "unknown": [case for case, row in rows if row[OUTSIDE_FIELD_KEY] is None],
    }


def _some(cases: Sequence[str], limit: int = 3) -> str:
    if not cases:
        return "none"
    shown = ", ".join(cases[:limit])
    return f"e.g. {shown}" if len(cases) > limit else shown
