"""`evaluate_predictions`: a folder of predicted masks against the truth, as a report folder.

What ``pancseg evaluate PRED GT -o REPORT`` runs. Predictions are the masks ``pancseg predict``
writes, one ``<case>.nii.gz`` per case (``<case>_prob.nii.gz`` probability maps beside them are
ignored). The truth is either a folder of label files paired by file name, or a cohort (MSD /
nnU-Net folder, NIH Pancreas-CT download, CSV manifest; see `pancseg_tf.io.discover_cohort`)
paired by case id. The report folder gets:

==============================  ===============================================================
``metrics.csv``                 one row per evaluated case: ``case``, then `CASE_KEYS`
``summary.json``                per metric mean / std / min / max / n, the evaluated, unpaired
                                and failed cases (the value this function returns)
``summary.md``                  the paper's table (metric | mean ± std | min | max | n), lists
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

This module composes the others: finding, pairing and reading the cases
(`pancseg_tf.evaluation.pairing`), the metrics (`pancseg_tf.evaluation.metrics`), the tables
(`pancseg_tf.evaluation.tables`), the pictures (`pancseg_tf.evaluation.figures`) and the pages
(`pancseg_tf.evaluation.pages`). The pictures are axial slices in the radiological view,
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

import logging
import os
import pathlib
import time
from collections.abc import Mapping

import numpy as np

from pancseg_tf.atomic import replacing
from pancseg_tf.errors import PancsegError
from pancseg_tf.evaluation.figures import (
    CaseVolumes,
    boxplot_png,
    canonical_case,
    display_window,
    montage_png,
    scroller_slices,
    slice_box,
    slice_counts,
    slice_png,
)
from pancseg_tf.evaluation.metrics import evaluate_case
from pancseg_tf.evaluation.pages import case_html, index_html
from pancseg_tf.evaluation.pairing import (
    GRID_TOLERANCE_MM,
    CaseMasks,
    axial_axis,
    find_ground_truth,
    find_images,
    find_predictions,
    pair_cases,
    read_case,
    voxel_volume_mm3,
)
from pancseg_tf.evaluation.tables import (
    REPORT_KEYS,
    metrics_csv,
    summary_json,
    summary_md,
    summary_of,
)

log = logging.getLogger("pancseg_tf.evaluation")

PathLike = str | os.PathLike

# GRID_TOLERANCE_MM (from `pancseg_tf.io.grid`, through `pairing`) and REPORT_KEYS (`tables`)
# stay importable from here, where the command and the tests take them.
__all__ = ["GRID_TOLERANCE_MM", "REPORT_KEYS", "evaluate_predictions"]


def _write(path: pathlib.Path, data: bytes) -> None:
    """Writes under a hidden temporary name in the same folder, then renames over ``path``."""
    try:
        with replacing(path) as tmp:
            tmp.write_bytes(data)
    except OSError as error:
        raise PancsegError(f"could not write {path}: {error.strerror or error}") from None


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
    _write(cases_folder / f"{case}.png", montage.png)
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
        _write(folder / name, slice_png(volume, k, box, window))
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
    page = case_html(case, row, f"{case}.png", montage, slices)
    _write(cases_folder / f"{case}.html", page)


def _check_output(out: pathlib.Path, *inputs: pathlib.Path) -> None:
    if out.exists() and not out.is_dir():
        raise PancsegError(f"report folder {out} exists and is not a folder")
    for folder in inputs:
        if folder.exists() and out.resolve() == folder.resolve():
            raise PancsegError(
                f"report folder {out} is an input folder; expected a separate folder"
            )


def _score(
    case: str, masks: CaseMasks
) -> tuple[dict[str, object], CaseVolumes, tuple[float, float] | None]:
    """Scores one case `read_case` read and puts it in display order.

    Returns:
        The metrics row, the case in display order (`canonical_case`), and the image's grey
        levels (None when no image is shown).
    """
    grid = masks.label_map
    if grid.is_sheared:
        log.warning(
            "case %s: the grid is sheared (gantry tilt?); HD95 and ASSD treat its axes as "
            "orthogonal and are approximate, volumes use the true voxel volume",
            case,
        )
    row = evaluate_case(
        masks.pred,
        masks.gt,
        grid.spacing,
        slice_axis=axial_axis(grid.affine),
        voxel_volume_mm3=voxel_volume_mm3(grid.affine),
    )
    volume = canonical_case(masks.gt, masks.pred, masks.image, grid)
    window = (
        display_window(volume.image, masks.modality or "ct") if masks.image is not None else None
    )
    return row, volume, window


def evaluate_predictions(
    pred: PathLike,
    gt: PathLike,
    out: PathLike,
    *,
    gt_labels: tuple[int, ...] | None = None,
    images: PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Evaluates a folder of predicted masks against the ground truth and writes a report folder.

    Pairing: a prediction ``PRED/<case>.nii.gz`` (or ``.nii``; ``<case>_prob.nii.gz``
    probability maps are ignored) goes with ``GT/<case>.nii.gz`` (or ``.nii``) when ``gt`` is a
    folder of label files, or with the cohort case of that id when ``gt`` is a cohort. A
    prediction must hold only 0 and 1 and lie on the grid it was written on
    (`pancseg_tf.evaluation.pairing.check_prediction_grid`): where the case's image is known (a
    cohort, or ``images``), strictly on the image's grid (corners within `GRID_TOLERANCE_MM`),
    with the truth on the image's grid by ``pancseg prepare``'s rule (corners less than half a
    voxel away); with a label folder alone, on the truth's grid by that same rule, a gap beyond
    `GRID_TOLERANCE_MM` warned per case in mm. The masks are compared voxel by voxel on the
    truth's grid, as prepare trains and ``pancseg cv`` scores; half a voxel or more away, the
    case fails. Distances use the truth's voxel spacing, volumes its voxel volume (|det| of the
    affine, right on a gantry-tilted grid too); slice consistency runs along the voxel axis
    closest to the body's long axis.

    Args:
        pred: folder of predicted masks, each ``(I, J, K)`` uint8 {0, 1} on its image's grid
            (or its truth's).
        gt: a folder of label maps named like the predictions, or a cohort (MSD / nnU-Net
            folder, NIH Pancreas-CT download, CSV manifest or its folder) whose labelled cases
            are paired by case id.
        out: the report folder (created; files of an earlier report are replaced).
        gt_labels: the label values that mean pancreas (MSD 1, 2; NIH 1; TotalSegmentator 7);
            None: every non-zero value. A cohort case with its own values (a CSV manifest's
            ``label_values`` cell, which ``pancseg prepare`` trains on) is read with those.
        images: folder of images ``<case>.nii.gz`` or ``<case>_0000.nii.gz`` for the montages;
            it takes precedence over a cohort's images. Without images the montages show the
            masks alone. Images never change a metric.
        progress: log one line per case (logger ``pancseg_tf.evaluation``, level INFO; case ids
            only).

    Returns:
        The content of ``summary.json``: ``metrics`` (per key of `REPORT_KEYS`: ``mean``,
        ``std``, ``min``, ``max``, ``n``, ``n_undefined``, ``n_empty``, ``n_excluded``, raw
        fractions and mm as `summarize` gives them, None where undefined), ``num_cases``
        (``evaluated``, ``failed``, ``prediction_only``, ``ground_truth_only``), ``evaluated``
        (case ids), ``unpaired`` (``prediction_only`` and ``ground_truth_only`` case-id lists),
        ``failed`` (``[{"case", "reason"}]``), ``gt_labels`` (list or None),
        ``case_label_values`` (evaluated case -> its cohort's own label values, list or
        ``"nonzero"``, for the cases read with those instead of ``gt_labels``),
        ``ground_truth`` (``"folder"`` or ``"cohort"``) and ``cases_without_image`` (evaluated
        cases whose montage shows the masks alone: no image given or found, unreadable, or on
        another grid).

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
    predictions = find_predictions(pred_folder)
    truths, source = find_ground_truth(gt_path)
    image_files = find_images(pathlib.Path(images)) if images is not None else {}

    paired, prediction_only, ground_truth_only = pair_cases(predictions, truths)

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
            masks = read_case(case, predictions[case], truths[case], image_files, gt_labels)
            row, volume, window = _score(case, masks)
        except PancsegError as error:
            failed.append({"case": case, "reason": str(error)})
            log.warning("[%d/%d] case %s failed: %s", number, len(paired), case, error)
            continue
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

    summary = summary_of(
        rows,
        failed=failed,
        prediction_only=prediction_only,
        ground_truth_only=ground_truth_only,
        gt_labels=gt_labels,
        ground_truth=source,
        cases_without_image=without_image,
        case_label_values={
            case: truths[case].label_values
            for case, _ in rows
            if truths[case].label_values is not None
        },
    )

    _write(out / "metrics.csv", metrics_csv(rows))
    _write(out / "summary.json", summary_json(summary))
    _write(out / "summary.md", summary_md(summary))
    boxplot = None
    if rows:
        boxplot = "dsc_boxplot.png"
        _write(out / boxplot, boxplot_png([float(row["dsc"]) for _, row in rows]))
    _write(out / "index.html", index_html(summary, rows, montages, boxplot))

    if not rows:
        raise PancsegError(
            f"none of the {len(paired)} paired cases could be evaluated (first: case "
            f"{failed[0]['case']}: {failed[0]['reason']}); see {out / 'summary.json'}"
        )
    if progress:
        dsc = summary["metrics"]["dsc"]
        log.info(
            "evaluated %d cases in %.1f s: DSC %.1f ± %.1f %%; report in %s",
            len(rows),
            time.perf_counter() - started,
            100.0 * dsc["mean"],
            100.0 * dsc["std"],
            out,
        )
    return summary
