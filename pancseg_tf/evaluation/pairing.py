"""Finding and pairing the cases of `pancseg_tf.evaluation.report.evaluate_predictions`, and
reading one case's masks (and image) on the ground truth's grid.

Predictions are ``<case>.nii.gz`` (or ``.nii``) files; ``<case>_prob.nii.gz`` probability maps
beside them are not masks. The truth is a folder of label files paired by file name, or a cohort
(`pancseg_tf.io.discover_cohort`) paired by case id. A prediction must hold only 0 and 1 and lie
on the grid it was written on (`check_prediction_grid`, with the rules of `pancseg_tf.io.grid`):
strictly on the case's image where the image is known (and the truth on the image's grid by
prepare's rule), else on the truth's grid by prepare's rule (warned beyond `GRID_TOLERANCE_MM`).

Plain numpy / nibabel; nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.cohorts import check_case_id, nifti_stem, pancreas_values
from pancseg_tf.io.grid import GRID_TOLERANCE_MM, grid_gap_mm, label_grid_problem, same_grid
from pancseg_tf.io.volume import Volume

log = logging.getLogger("pancseg_tf.evaluation")

__all__ = [
    "GRID_TOLERANCE_MM",
    "CaseMasks",
    "Truth",
    "axial_axis",
    "check_prediction_grid",
    "find_ground_truth",
    "find_images",
    "find_predictions",
    "pair_cases",
    "read_case",
    "same_grid",
    "voxel_volume_mm3",
    "without_path",
]

_PROBABILITY_SUFFIX = "_prob"  # pancseg predict --probabilities writes <case>_prob.nii.gz


# === Finding and pairing ===


@dataclasses.dataclass(frozen=True)
class Truth:
    """Where one case's ground truth (and, if known, its image) comes from."""

    label: pathlib.Path
    image: pathlib.Path | None = None
    modality: str | None = None  # None: guessed from the intensities for display
    # The cohort's own pancreas values for this case (a manifest's ``label_values`` cell: ints
    # or "nonzero"); None: the run's ``gt_labels``.
    label_values: tuple[int, ...] | str | None = None


def _nifti_files(folder: pathlib.Path, what: str) -> dict[str, pathlib.Path]:
    """Case id -> file for the visible ``<case>.nii.gz`` / ``<case>.nii`` files of a folder."""
    files: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        # Hidden files (macOS ._ files, temporary files of a running writer) are not cases.
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = nifti_stem(path)
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


def find_predictions(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Case id -> predicted mask of a folder (probability maps left out); PancsegError when the
    folder is missing or holds no mask."""
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


def find_ground_truth(gt: pathlib.Path) -> tuple[dict[str, Truth], str]:
    """Case id -> truth, and "folder" or "cohort"."""
    if not gt.exists():
        raise PancsegError(
            f"no such ground-truth file or folder: {gt}; expected a folder of label files "
            "<case>.nii.gz or a cohort (MSD folder, NIH Pancreas-CT folder, CSV manifest)"
        )
    if gt.is_dir():
        labels = _nifti_files(gt, "ground-truth")
        if labels:
            return {case: Truth(path) for case, path in labels.items()}, "folder"
    from pancseg_tf.io.cohorts import discover_cohort

    try:
        cases = discover_cohort(gt, split="train")
    except PancsegError as error:
        raise PancsegError(
            f"ground truth {gt} is not a folder of label files <case>.nii.gz, and reading it as "
            f"a cohort failed: {error}"
        ) from None
    truths = {
        case.case_id: Truth(case.label, case.image, case.modality, case.label_values)
        for case in cases
        if case.label is not None
    }
    return truths, "cohort"


def find_images(folder: pathlib.Path) -> dict[str, pathlib.Path]:
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


def pair_cases(
    predictions: Mapping[str, pathlib.Path], truths: Mapping[str, Truth]
) -> tuple[list[str], list[str], list[str]]:
    """The case ids with both, with a prediction only and with a truth only (each sorted); the
    unpaired ones are logged. PancsegError when no case pairs."""
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
    return paired, prediction_only, ground_truth_only


def _some(cases: Sequence[str], limit: int = 3) -> str:
    if not cases:
        return "none"
    shown = ", ".join(cases[:limit])
    return f"e.g. {shown}" if len(cases) > limit else shown


# === Reading and checking one case ===


@dataclasses.dataclass(frozen=True)
class CaseMasks:
    """One case read and checked: both masks on the truth's grid, and the image if shown."""

    label_map: Volume  # the ground truth as read: its grid (affine, spacing) is the case's
    gt: np.ndarray  # (I, J, K) bool, the pancreas of the truth (its label values applied)
    pred: np.ndarray  # (I, J, K) bool
    image: np.ndarray | None  # (I, J, K) on the same grid; None when not shown
    modality: str | None  # None: unknown (no image, or none stated by the cohort)


def read_case(
    case: str,
    pred_path: pathlib.Path,
    truth: Truth,
    images: Mapping[str, pathlib.Path],
    gt_labels: tuple[int, ...] | None,
) -> CaseMasks:
    """Reads and checks one case's prediction, truth and (when known) image.

    The pancreas is the truth's own label values where its cohort states them (a manifest's
    ``label_values`` cell, as `pancseg prepare` reads them), else ``gt_labels`` (None: every
    non-zero value). The image comes from ``images`` or else the truth's cohort, and the grids
    are checked with it (`check_prediction_grid`); an image that cannot be read is left out with
    a warning (the prediction is then checked against the truth alone). The image never changes
    a metric. Messages name files by their last part only (folders may name a patient or a date).

    Raises:
        PancsegError: a file cannot be read; the prediction is not on the grid it was written on
            (`check_prediction_grid`) or is not binary.
    """
    from pancseg_tf.io.nifti import read_nifti
    from pancseg_tf.preprocessing.labels import map_labels

    try:
        gt = read_nifti(truth.label, modality=truth.modality or "ct")
        pred = read_nifti(pred_path, modality=truth.modality or "ct")
    except PancsegError as error:
        raise PancsegError(without_path(str(error), truth.label, pred_path)) from None

    image = None
    image_path = images.get(case, truth.image)
    if image_path is not None:
        from pancseg_tf.io.read import read_volume

        try:
            image = read_volume(image_path, modality=truth.modality)
        except PancsegError as error:
            log.warning("case %s: image not shown: %s", case, without_path(str(error), image_path))
    show_image = check_prediction_grid(case, pred, gt, image)

    pred_mask = binary_mask(pred)
    values = pancreas_values(truth, gt_labels)
    gt_mask = map_labels(gt.array, values).astype(bool, copy=False)
    if not gt_mask.any() and values not in (None, "nonzero") and gt.array.any():
        found = np.unique(gt.array[gt.array != 0])[:10].tolist()
        log.warning(
            "case %s: the ground truth holds none of the label values %s (values found: %s)",
            case,
            list(values),
            found,
        )

    image_array, modality = None, truth.modality
    if image is not None and show_image:
        image_array = image.array
        if modality is None:
            # Only display depends on it: air in HU is about -1000, MRI is never negative.
            modality = "ct" if float(image_array.min()) < -500 else "mri"
    return CaseMasks(gt, gt_mask, pred_mask, image_array, modality)


_PREDICT_GRID = "expected the mask pancseg predict writes on the input's own grid"


def check_prediction_grid(case: str, pred: Volume, gt: Volume, image: Volume | None) -> bool:
    """Checks that the prediction lies on the grid it was written on; whether to show the image.

    With the case's image (a cohort's, or ``--images``): the prediction must be on the image's
    grid strictly (`same_grid`: ``pancseg predict`` writes there), and the truth on the image's
    grid by prepare's rule (`label_grid_problem`: ``pancseg prepare`` trained on that pair). A
    prediction that is instead strictly on the truth's own grid (another tool wrote it there)
    is scored too; the image is then shown only when on the truth's grid by prepare's rule.
    Without an image: the prediction must be on the truth's grid by prepare's rule, and a gap
    beyond `GRID_TOLERANCE_MM` is warned once, in mm. Either way the masks are scored voxel by
    voxel on the truth's grid, as prepare trains and ``pancseg cv`` scores.

    Args:
        case: the case id, for the warning.
        pred: the predicted mask as read.
        gt: the ground truth as read.
        image: the case's image, or None when it is not known or could not be read.

    Returns:
        Whether ``image`` (when given) lies on the truth's grid and can be shown under it.

    Raises:
        PancsegError: the prediction is of another shape or half a voxel or more from the grid it
            was written on, or the truth is so far from its image; no paths in the message.
    """
    on_truth = same_grid(pred, gt)
    if image is not None:
        on_image = same_grid(pred, image)
        if on_image is None:
            label_problem = label_grid_problem(image, gt)
            if label_problem is not None:
                raise PancsegError(
                    f"the ground truth is not on its image's grid: {label_problem}; the "
                    "prediction is on the image's grid, so the two do not compare voxel by voxel"
                )
            return True
        if on_truth is None:
            problem = label_grid_problem(image, gt)
            if problem is not None:
                log.warning("case %s: image not shown, it is on another grid: %s", case, problem)
            return problem is None
        raise PancsegError(
            f"the prediction is not on its image's grid: {on_image}; {_PREDICT_GRID}"
        )
    if on_truth is None:
        return False
    problem = label_grid_problem(gt, pred)
    if problem is not None:
        raise PancsegError(
            f"the prediction is not on the ground truth's grid: {problem}; {_PREDICT_GRID}"
        )
    log.warning(
        "case %s: the prediction's voxels are up to %.3g mm from the ground truth's (tolerance "
        "%g mm, under half a voxel): scored voxel by voxel, as prepare trains on such a label",
        case,
        grid_gap_mm(gt.affine, pred.affine, gt.shape),
        GRID_TOLERANCE_MM,
    )
    return False


def binary_mask(pred: Volume) -> np.ndarray:
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


def without_path(message: str, *paths: pathlib.Path | None) -> str:
    """The message with full paths cut to their last part (folders may name a patient or date)."""
    for path in paths:
        if path is not None:
            message = message.replace(str(path), path.name)
    return message


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """One voxel's volume in mm^3: ``|det|`` of the affine's 3x3 part (the product of the voxel
    sizes only when the axes are orthogonal; smaller on a gantry-tilted grid)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the body's long (S) axis: the axial slice axis."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = linear / np.linalg.norm(linear, axis=0)
    return int(np.argmax(np.abs(directions[2])))
