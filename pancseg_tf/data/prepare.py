"""``pancseg prepare``: a cohort -> one TFRecord shard per case + ``index.json``.

Every case goes through the host geometry (`pancseg_tf.preprocessing.geometry`: canonical RAS,
``spacing_mm`` in-plane, the slice-spacing policy, the crop or pad to ``size`` around the
body, widened to hold the whole body where it is wider: `GeometryPlan.covering_body`, the
field ``pancseg predict`` covers in tiles) and is stored compactly: CT as int16 Hounsfield
units, MRI as float16 with the volume's normalisation percentiles, the label as uint8 {0, 1}
(`pancseg_tf.data.tfrecord` describes the record). Intensities are NOT normalised here: the
tf.data pipeline, prediction and the exported graph all normalise with the same
`pancseg_tf.preprocessing.intensity` code.

Output folder::

    OUT/index.json              cases, shards, skipped and missing cases, preprocessing config
    OUT/shards/<case>.tfrecord  one record: the whole prepared case
    OUT/cases/<case>.json       the case's index entry (geometry plan, spacings, pancreas slices)
    OUT/skipped/<case>.json     a case that failed under ``skip_bad`` (and why)

Resumable and deterministic: each case is written to its own shard under a temporary name and
renamed, and its entry is written (the same way) only after its shard; a rerun skips cases whose
entry and shard are there, and the same case always gives the same bytes. So a run killed at any
point, then rerun, ends with exactly the files of an uninterrupted run.

Cluster job arrays: ``num_shards=K, shard_index=I`` prepares the cases ``I, I + K, I + 2K, ...``
of the cohort sorted by case id. Every run rebuilds ``index.json`` from all entries in
``OUT/cases`` (`merge_indexes`), so the slices merge into the index of one run; after a job
array, rerun without a slice (or call `merge_indexes`) once all jobs are done.

Workers are separate processes (``forkserver``, or ``spawn`` where there is none; a script that
calls `prepare_cohort` with ``workers > 1`` needs the usual ``if __name__ == "__main__":``
guard). They hold one volume at a time and do not import TensorFlow for CT (TFRecords are
written by `pancseg_tf.data.tfrecord` in pure Python).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import pathlib
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from pancseg_tf.atomic import write_bytes
from pancseg_tf.config import Config
from pancseg_tf.data.tfrecord import encode_case, write_tfrecord_atomic
from pancseg_tf.errors import PancsegError
from pancseg_tf.messages import error_summary, exception_text, file_names_only

log = logging.getLogger("pancseg_tf.data")

INDEX_FORMAT = "pancseg_tf.prepared"
#: 2: each case's plane holds its whole body (`GeometryPlan.covering_body`); 1 held the central
#: ``preprocess.size`` field only, and is refused (prepare again).
INDEX_VERSION = 2
_OLD_VERSION = (
    "{} was prepared by an earlier pancseg that kept only each case's central field; prepare "
    "the cohort again into a new folder (training now sees each case's whole body)"
)
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
CASES_DIR = "cases"
SKIPPED_DIR = "skipped"

# === One case ===


def _model_body_box(plan: Any) -> list[int]:
    """The plan's body box (canonical grid) on the model grid: ``[h0, h1, w0, w1]``, half-open.

    Model pixel ``u`` sits at canonical coordinate ``(u + start + 0.5) * r - 0.5`` (see
    `GeometryPlan`), so canonical voxel ``x`` is at model coordinate ``(x + 0.5) / r - 0.5 -
    start``; the box is clipped to the model's field.
    """
    out = []
    for axis in (0, 1):
        lo, hi = plan.body_box[2 * axis], plan.body_box[2 * axis + 1]
        ratio = plan.ratios[axis]
        start = plan.window_start[axis]
        size = plan.size[axis]
        u0 = math.floor((lo + 0.5) / ratio - 0.5 - start)
        u1 = math.ceil((hi - 1 + 0.5) / ratio - 0.5 - start) + 1
        u0, u1 = max(0, u0), min(size, u1)
        if u0 >= u1:  # no body inside the field (should not happen): the whole plane
            u0, u1 = 0, size
        out += [u0, u1]
    return out


def _check_same_grid(image: Any, label: Any) -> None:
    """Raises when the label's voxels are not where the image's are (by half a voxel or more).

    A label on another grid would teach the model the wrong voxels; an affine that differs only
    by float rounding (NIfTI stores float32, another tool may round otherwise) passes. The rule
    is `pancseg_tf.io.grid.label_grid_problem`, the one ``pancseg evaluate`` applies too.
    """
    from pancseg_tf.io.grid import label_grid_problem

    problem = label_grid_problem(image, label)
    if problem is not None:
        raise PancsegError(f"the label is not on the image's grid: {problem}")


def _label_array(label: Any) -> np.ndarray:
    return np.asarray(label.array if hasattr(label, "array") else label)


def prepare_case(case: Any, config: Config) -> tuple[bytes, dict[str, Any]]:
    """Runs one case through the geometry and encodes its record and index entry.

    Args:
        case: a cohort `Case` (``case_id``, ``modality``, ``load_image()``, ``load_label()``;
            its ``label_values``, where set, replace ``preprocess.label_values`` for this case).
        config: the run's config; ``config.preprocess`` is used.

    Returns:
        ``(record, entry)``: the serialised record (see `pancseg_tf.data.tfrecord`) and the
        case's JSON-able index entry (without the shard's file name and size).

    Raises:
        PancsegError: the image or label cannot be read, the label is not on the image's grid
            (another shape, or an affine half a voxel or more away), or the case's modality is
            not the configured one.
    """
    from pancseg_tf.io.cohorts import pancreas_values
    from pancseg_tf.preprocessing.geometry import plan_geometry
    from pancseg_tf.preprocessing.labels import map_labels

    p = config.preprocess
    image = case.load_image()
    if image.modality != p.modality:
        raise PancsegError(
            f"the case is {image.modality.upper()} but preprocess.modality is {p.modality!r}; "
            f"set preprocess.modality={image.modality}"
        )
    label_volume = case.load_label()
    label = _label_array(label_volume)
    if label.shape != image.shape:
        raise PancsegError(
            f"label shape {tuple(label.shape)} differs from the image's {image.shape}"
        )
    if hasattr(label_volume, "affine"):
        _check_same_grid(image, label_volume)
    del label_volume
    plan = plan_geometry(
        image, spacing_mm=p.spacing_mm, slice_spacing_mm=p.slice_spacing_mm, size=tuple(p.size)
    ).covering_body()
    case_values = getattr(case, "label_values", None)  # recorded in the index below
    label_values = pancreas_values(case, p.label_values)
    original_label = map_labels(label, label_values, require_present=True)
    del label
    outside, total = plan.label_outside_field(original_label)
    mask = plan.forward(original_label, is_label=True)
    from pancseg_tf.preprocessing.quantize import store_model_grid

    # The compact form that validation reads back and `pancseg predict` reproduces.
    stored, scale = store_model_grid(plan.forward(image.array), p.modality)
    if p.modality == "ct":
        percentiles = [float(v) for v in p.hu_window]
    else:
        percentiles = [v * scale for v in _mri_percentiles(image.array, p.mri_percentiles)]
    # Model grid (H, W, K) -> slice-major (K, H, W): a window is then a slice of the first axis.
    stored = np.ascontiguousarray(np.moveaxis(stored, 2, 0))
    mask = np.ascontiguousarray(np.moveaxis(mask, 2, 0))
    box = _model_body_box(plan)
    spacing_hwk = [float(v) for v in plan.model_spacing]
    record = encode_case(
        case_id=case.case_id,
        modality=p.modality,
        image=stored,
        label=mask,
        percentiles=percentiles,
        intensity_scale=scale,
        body_box=box,
        spacing=[spacing_hwk[2], spacing_hwk[0], spacing_hwk[1]],
        # Validation scores on the scan's own grid, as `pancseg evaluate` does.
        original_label=original_label,
    )
    del original_label
    voxels = mask.reshape(mask.shape[0], -1).sum(axis=1)
    entry = {
        "case_id": case.case_id,
        "modality": p.modality,
        "original": {
            "shape": list(image.shape),
            "spacing_mm": [float(v) for v in image.spacing],
            "affine": np.asarray(image.affine, np.float64).tolist(),
        },
        "num_slices": int(mask.shape[0]),
        "size": [int(mask.shape[1]), int(mask.shape[2])],
        "spacing_mm": spacing_hwk,
        "body_box": box,
        "geometry": plan.to_dict(),
        "intensity": {
            "dtype": stored.dtype.name,
            "scale": scale,
            # MRI: in the original units; CT: the HU window applied in the pipeline.
            "percentiles": [v / scale for v in percentiles],
        },
        "positive_slices": [int(k) for k in np.flatnonzero(voxels)],
        "pancreas_voxels": int(voxels.sum()),
        # Label voxels (on the scan's own grid) outside the prepared plane (the body's box).
        "label_outside_field_voxels": outside,
        "label_outside_field_fraction": round(outside / total, 6) if total else 0.0,
    }
    if case_values is not None:
        entry["label_values"] = case_values if isinstance(case_values, str) else list(case_values)
    return record, entry


def _mri_percentiles(array: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """The shared `mri_percentiles` (host numpy code).

    Its module imports ``keras.ops`` at the top, so an MRI worker imports TensorFlow (a CT worker
    does not); Keras's numpy backend would avoid that but needs JAX.
    """
    from pancseg_tf.preprocessing.intensity import mri_percentiles

    return [float(v) for v in mri_percentiles(array, *percentiles)]


# === Files ===


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _remove_temporaries(out: pathlib.Path, case_id: str) -> None:
    """Removes what a killed run left of one case (temporary files under hidden names)."""
    for folder, name in (
        (SHARDS_DIR, f"{case_id}.tfrecord"),
        (CASES_DIR, f"{case_id}.json"),
        (SKIPPED_DIR, f"{case_id}.json"),
    ):
        for tmp in (out / folder).glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class _Task:
    case: Any
    out: str
    config: Config
    preprocess_hash: str
    cohort: str


def _scrub_paths(message: str, task: _Task) -> str:
    """A case's error without the paths of its files (folder names may hold a study date)."""
    places = [(task.case.image, "<image>"), (task.case.label, "<label>"), (task.cohort, "<cohort>")]
    for path, name in places:
        if path is not None:
            for form in {str(path), str(pathlib.Path(path).resolve())}:
                message = message.replace(form, name)
    return message


def _run_task(task: _Task) -> dict[str, Any]:
    """Prepares and writes one case; never raises for a bad case (the caller decides)."""
    case_id = task.case.case_id
    out = pathlib.Path(task.out)
    start = time.perf_counter()
    try:
        _remove_temporaries(out, case_id)
        record, entry = prepare_case(task.case, task.config)
    except MemoryError:
        return {"case_id": case_id, "error": "out of memory while preparing the case"}
    except Exception as err:  # noqa: BLE001 - reported per case, named, by the caller
        return {"case_id": case_id, **case_error(err, task)}
    shard = pathlib.Path(SHARDS_DIR) / f"{case_id}.tfrecord"
    write_tfrecord_atomic(out / shard, [record])
    entry["shard"] = shard.as_posix()
    entry["shard_bytes"] = (out / shard).stat().st_size
    entry["preprocess_hash"] = task.preprocess_hash
    entry["version"] = INDEX_VERSION
    # The entry only after its shard: an entry on disk always means a complete shard.
    write_bytes(out / CASES_DIR / f"{case_id}.json", _json_bytes(entry))
    (out / SKIPPED_DIR / f"{case_id}.json").unlink(missing_ok=True)
    return {
        "case_id": case_id,
        "entry": entry,
        "seconds": time.perf_counter() - start,
    }


def case_error(err: Exception, task: _Task) -> dict[str, str]:
    """What a case that failed reports: ``error`` (for the log line) and ``public_error`` (for
    ``index.json``: without the paths of the case's files).

    A `PancsegError` is ours and says what is wrong with the case: it is shown whole, on one
    line. Any other exception is unexpected and its message may hold an array (NumPy's and
    TensorFlow's print their operands): it is shown as `error_summary` shows it, its first
    line cut to `INTERNAL_MESSAGE_CHARS`.
    """
    if isinstance(err, PancsegError):
        message = " ".join(str(err).split())  # whole: `_scrub_paths` finds the case's paths
        return {"error": message, "public_error": file_names_only(_scrub_paths(message, task))}
    return {
        "error": error_summary(err),
        "public_error": error_summary(err, show=lambda text: _scrub_paths(text, task)),
    }


def _worker_init() -> None:
    # If a worker does import TensorFlow (MRI: see _mri_percentiles), no start-up log lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _mp_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


# === The cohort ===


def _select(case_ids: Sequence[str], num_shards: int | None, shard_index: int | None) -> set[str]:
    if num_shards is None and shard_index is None:
        return set(case_ids)
    if num_shards is None or shard_index is None:
        raise PancsegError("--num-shards and --shard-index go together: give both or neither")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise PancsegError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, int):
        raise PancsegError(f"shard_index must be an integer, got {shard_index!r}")
    if not 0 <= shard_index < num_shards:
        raise PancsegError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return set(sorted(case_ids)[shard_index::num_shards])


def _check_case_ids(cases: Sequence[Any]) -> None:
    from pancseg_tf.io.cohorts import check_case_id

    seen: set[str] = set()
    for case in cases:
        case_id = check_case_id(case.case_id)
        if case_id in seen:
            raise PancsegError(f"case id {case_id!r} appears twice in the cohort")
        seen.add(case_id)


def _is_done(out: pathlib.Path, case_id: str, preprocess_hash: str) -> bool:
    """A case is done when its entry exists, matches the config and its shard is complete."""
    path = out / CASES_DIR / f"{case_id}.json"
    if not path.is_file():
        return False
    entry = _read_json(path)
    if entry.get("preprocess_hash") != preprocess_hash:
        raise PancsegError(
            f"{out} holds case {case_id} prepared with another preprocessing config (hash "
            f"{entry.get('preprocess_hash')}, this run's is {preprocess_hash}); prepare into a "
            "new folder"
        )
    if entry.get("version", 1) != INDEX_VERSION:
        raise PancsegError(_OLD_VERSION.format(out))
    shard = out / entry.get("shard", "")
    return shard.is_file() and shard.stat().st_size == entry.get("shard_bytes")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PancsegError(f"cannot read {path}: {exception_text(err)}") from None


def prepare_cohort(
    cohort: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: Config,
    format: str = "auto",  # noqa: A002 - the CLI flag's name
    workers: int = 1,
    skip_bad: bool = False,
    num_shards: int | None = None,
    shard_index: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepares a cohort (or one slice of it) into TFRecord shards and writes ``index.json``.

    Args:
        cohort: the cohort folder or manifest (`pancseg_tf.io.cohorts.discover_cohort`).
        out: the output folder (created if missing). A folder that holds a previous run with
            the same preprocessing config is resumed: finished cases are skipped.
        config: the run's config; ``config.preprocess`` decides the geometry and is stored in
            the index with its hash.
        format: cohort format, ``"auto"``, ``"msd"``, ``"nih"`` or ``"manifest"``.
        workers: cases prepared at once, each in its own process (1: in this process).
        skip_bad: report a case that cannot be prepared and go on (it is listed under
            ``"skipped"`` in the index) instead of stopping.
        num_shards: with ``shard_index``, prepare only slice ``shard_index`` of ``num_shards``
            of the cohort (case ``n`` of the sorted case ids belongs to slice ``n % K``).
        shard_index: see ``num_shards``.
        progress: log one line per case at INFO level (else DEBUG).

    Returns:
        The index written to ``OUT/index.json`` (see `merge_indexes`).

    Raises:
        PancsegError: bad arguments, an unreadable cohort, an output folder prepared with
            another config, or (without ``skip_bad``) the first case that fails, named.
    """
    from pancseg_tf.io.cohorts import discover_cohort

    config.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PancsegError(f"workers must be an integer >= 1, got {workers!r}")
    cases = list(discover_cohort(cohort, format=format))
    if not cases:
        raise PancsegError(f"no cases found in cohort {cohort}")
    unlabelled = [c.case_id for c in cases if getattr(c, "label", None) is None]
    if unlabelled:
        raise PancsegError(
            f"{len(unlabelled)} case(s) have no label (first: {unlabelled[0]}); prepare needs "
            "labelled cases"
        )
    _check_case_ids(cases)
    selected = _select([c.case_id for c in cases], num_shards, shard_index)
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise PancsegError(f"output {out} exists and is not a folder")
    for folder in (SHARDS_DIR, CASES_DIR, SKIPPED_DIR):
        (out / folder).mkdir(parents=True, exist_ok=True)
    preprocess_hash = config.hash("preprocess")
    _check_existing_config(out, preprocess_hash)

    todo = [
        c
        for c in sorted(cases, key=lambda c: c.case_id)
        if c.case_id in selected and not _is_done(out, c.case_id, preprocess_hash)
    ]
    level = logging.INFO if progress else logging.DEBUG
    log.log(
        level,
        "preparing %d of %d cases into %s (%d already done)",
        len(todo),
        len(selected),
        out,
        len(selected) - len(todo),
    )
    tasks = [_Task(c, str(out), config, preprocess_hash, str(cohort)) for c in todo]
    results = _run_tasks(tasks, workers)
    try:
        for done, result in enumerate(results, start=1):
            case_id = result["case_id"]
            if "error" in result:
                message = f"case {case_id}: {result['error']}"
                if not skip_bad:
                    raise PancsegError(f"cannot prepare {message} (use --skip-bad to skip it)")
                log.warning("skipping %s", message)
                # The index gets the message without file paths: it may be shared.
                skipped = {"case_id": case_id, "error": result["public_error"]}
                write_bytes(out / SKIPPED_DIR / f"{case_id}.json", _json_bytes(skipped))
                continue
            entry = result["entry"]
            log.log(
                level,
                "[%d/%d] %s: %d slices, %d with pancreas (%.1f s)",
                done,
                len(tasks),
                case_id,
                entry["num_slices"],
                len(entry["positive_slices"]),
                result["seconds"],
            )
            if entry["label_outside_field_voxels"]:
                # The plane holds the body's box: a label outside it lies outside the body
                # found in the image (a label on the wrong scan, or a body found too small).
                log.warning(
                    "case %s: %.2f %% of its pancreas (%d voxels) lies outside the body found "
                    "in the image (the prepared %d x %d plane of %s mm pixels); training never "
                    "sees it",
                    case_id,
                    100.0 * entry["label_outside_field_fraction"],
                    entry["label_outside_field_voxels"],
                    *entry["size"],
                    f"{config.preprocess.spacing_mm:g}",
                )
    finally:
        results.close()  # stops the worker pool at once on an error
    return merge_indexes(out, config=config, cohort_case_ids=[c.case_id for c in cases])


def _run_tasks(tasks: Sequence[_Task], workers: int) -> Generator[dict[str, Any], None, None]:
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task)
        return
    context = _mp_context()
    pool = context.Pool(min(workers, len(tasks)), initializer=_worker_init)
    try:
        yield from pool.imap_unordered(_run_task, tasks, chunksize=1)
        pool.close()
    finally:
        # On an error (or the caller stopping early) the other cases are abandoned: each is
        # either complete on disk or left as a temporary file that the rerun removes.
        pool.terminate()
        pool.join()


def _check_existing_config(out: pathlib.Path, preprocess_hash: str) -> None:
    index = out / INDEX_FILE
    if index.is_file():
        existing = _read_json(index)
        if existing.get("version") != INDEX_VERSION:
            raise PancsegError(_OLD_VERSION.format(out))
        old = existing.get("preprocess_hash")
        if old is not None and old != preprocess_hash:
            raise PancsegError(
                f"{out} was prepared with another preprocessing config (hash {old}, this run's "
                f"is {preprocess_hash}); prepare into a new folder"
            )


# === The index ===


def merge_indexes(
    out: str | os.PathLike,
    *,
    config: Config | None = None,
    cohort_case_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rebuilds ``OUT/index.json`` from the per-case entries of every run into ``OUT``.

    Runs of different slices (``num_shards``/``shard_index``), resumed runs and one complete run
    all end in the same index: it lists the cases sorted by id and holds no time stamp or path
    outside ``OUT``.

    Args:
        out: the prepared folder.
        config: the preprocessing config; default: the one of the existing ``index.json``.
        cohort_case_ids: every case id of the cohort, to list the ``"missing"`` ones (neither
            prepared nor skipped); default: the existing index's list.

    Returns:
        The index: ``format``, ``version``, ``preprocess`` (the config section),
        ``preprocess_hash``, ``modality``, ``cases`` (entries sorted by id), ``shards`` (paths
        relative to ``OUT``), ``skipped`` (``{"case_id", "error"}``), ``missing`` (case ids),
        ``num_cases``, ``num_slices``, ``num_positive_slices``.

    Raises:
        PancsegError: ``OUT`` holds entries of several configs, or neither a config nor an
            index is given.
    """
    out = pathlib.Path(out)
    old = _read_json(out / INDEX_FILE) if (out / INDEX_FILE).is_file() else {}
    if config is not None:
        preprocess = config.to_dict()["preprocess"]
        preprocess_hash = config.hash("preprocess")
    elif old:
        preprocess, preprocess_hash = old["preprocess"], old["preprocess_hash"]
    else:
        raise PancsegError(f"{out} has no {INDEX_FILE}: give the config to merge its cases")
    entries = []
    for path in sorted((out / CASES_DIR).glob("*.json")):
        entry = _read_json(path)
        if entry.get("preprocess_hash") != preprocess_hash:
            raise PancsegError(
                f"{path} was prepared with another preprocessing config (hash "
                f"{entry.get('preprocess_hash')}, expected {preprocess_hash})"
            )
        entries.append(entry)
    entries.sort(key=lambda e: e["case_id"])
    prepared = {e["case_id"] for e in entries}
    skipped = []
    for path in sorted((out / SKIPPED_DIR).glob("*.json")):
        item = _read_json(path)
        if item["case_id"] not in prepared:
            skipped.append({"case_id": item["case_id"], "error": item["error"]})
    skipped.sort(key=lambda s: s["case_id"])
    if cohort_case_ids is None:
        known = set(old.get("missing", [])) | prepared | {s["case_id"] for s in skipped}
        cohort_case_ids = sorted(known)
    accounted = prepared | {s["case_id"] for s in skipped}
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "preprocess": preprocess,
        "preprocess_hash": preprocess_hash,
        "modality": preprocess["modality"],
        "record": "one record per case: see pancseg_tf.data.tfrecord",
        "cases": entries,
        "shards": [e["shard"] for e in entries],
        "skipped": skipped,
        "missing": sorted(set(cohort_case_ids) - accounted),
        "num_cases": len(entries),
        "num_slices": sum(e["num_slices"] for e in entries),
        "num_positive_slices": sum(len(e["positive_slices"]) for e in entries),
    }
    write_bytes(out / INDEX_FILE, _json_bytes(index))
    return index


def load_index(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks ``DATA_DIR/index.json`` of a prepared folder.

    Raises:
        PancsegError: no index, or not a pancseg_tf prepared index of a known version.
    """
    data_dir = pathlib.Path(data_dir)
    path = data_dir / INDEX_FILE
    if not path.is_file():
        raise PancsegError(
            f"{data_dir} is not a prepared folder: no {INDEX_FILE} (run pancseg prepare first)"
        )
    index = _read_json(path)
    if index.get("format") == INDEX_FORMAT and index.get("version") == 1:
        raise PancsegError(_OLD_VERSION.format(data_dir))
    if index.get("format") != INDEX_FORMAT or index.get("version") != INDEX_VERSION:
        raise PancsegError(
            f"{path} is not a {INDEX_FORMAT} index of version {INDEX_VERSION} (format "
            f"{index.get('format')!r}, version {index.get('version')!r})"
        )
    return index
