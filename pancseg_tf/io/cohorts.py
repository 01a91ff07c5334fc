"""Cohort discovery: the cases of an MSD / nnU-Net folder, NIH Pancreas-CT or a CSV manifest.

`discover_cohort` turns a folder or a manifest into a sorted list of `Case` (case id, image path,
label path, modality) without reading any image; `Case.load_image` / `Case.load_label` read them.
Three layouts are recognised:

- **MSD** (Medical Segmentation Decathlon, Task07_Pancreas) and **nnU-Net v2**: ``dataset.json``,
  ``imagesTr/``, ``labelsTr/``, ``imagesTs/``; images named ``pancreas_001.nii.gz`` (MSD) or
  ``pancreas_001_0000.nii.gz`` (nnU-Net v2 channel suffix). macOS ``._`` files, which the MSD
  tarballs ship, are ignored.
- **NIH Pancreas-CT** as TCIA ships it: ``Pancreas-CT/PANCREAS_0001/<study>/<series>/*.dcm`` and
  the labels ``label0001.nii.gz`` in a folder beside ``Pancreas-CT/``
  (``TCIA_pancreas_labels-02-05-2017/``).
- **CSV manifest** with the columns ``case_id,image,label,modality`` and optionally
  ``label_values``: the values that mean pancreas in that row's label (integers separated by
  ``;`` or spaces, or a preset of `pancseg_tf.io.label_values.LABEL_PRESETS` such as
  ``totalsegmentator``), for a cohort that mixes label conventions (NIH 1, TotalSegmentator's
  multi-organ maps 7); empty: the config's ``preprocess.label_values``.

Case ids are always safe as file names (see `check_case_id`), so that outputs named after them
stay inside their output folder. Paths in a manifest or a ``dataset.json`` are relative to the
folder of that file, never to the working directory.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import pathlib
import re

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.volume import MODALITIES, Volume

log = logging.getLogger("pancseg_tf.io")

PathLike = str | os.PathLike

FORMATS = ("auto", "msd", "nih", "manifest")
SPLITS = ("train", "test", "all")
MANIFEST_COLUMNS = ("case_id", "image", "label", "modality", "label_values")
AMBIGUOUS_SLICES_FILE = "ambiguous_slices.json"

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NIH_CASE = re.compile(r"^PANCREAS_(\d{4})$", re.IGNORECASE)
_NIH_LABEL = re.compile(r"^label(\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_RECOGNISED = (
    "recognised layouts: an MSD / nnU-Net folder (dataset.json, imagesTr/, labelsTr/), "
    "NIH Pancreas-CT as TCIA ships it (a folder holding Pancreas-CT/PANCREAS_NNNN/ and the "
    "labelNNNN.nii.gz folder beside it), or a CSV manifest (case_id,image,label,modality"
    "[,label_values])"
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One case of a cohort: where its image and label are, not their contents.

    Attributes:
        case_id: unique within the cohort and safe as a file name.
        image: a NIfTI file, or a DICOM series folder.
        label: the NIfTI label file (1 = pancreas), or None for an unlabelled case.
        modality: ``"ct"`` or ``"mri"``.
        label_values: the label values that mean pancreas in this case's label (a tuple of
            ints, or ``"nonzero"``), or None: the config's ``preprocess.label_values``.
    """

    case_id: str
    image: pathlib.Path
    label: pathlib.Path | None
    modality: str = "ct"
    label_values: tuple[int, ...] | str | None = None

    def load_image(self, *, allow_uneven: bool = False) -> Volume:
        """Reads the image (NIfTI file or DICOM series folder) as a `Volume` of this modality.

        Args:
            allow_uneven: read a DICOM series with uneven slice spacing or a missing slice.

        Raises:
            PancsegError: what `pancseg_tf.io.read_volume` raises.
        """
        from pancseg_tf.io.read import read_volume

        return read_volume(self.image, modality=self.modality, allow_uneven=allow_uneven)

    def load_label(self) -> Volume:
        """Reads the label as a NIfTI `Volume` (its array as stored, e.g. uint8 {0, 1}).

        Raises:
            PancsegError: the case has no label, or what `pancseg_tf.io.read_nifti` raises.
        """
        from pancseg_tf.io.nifti import read_nifti

        if self.label is None:
            raise PancsegError(f"case {self.case_id} has no label")
        return read_nifti(self.label, modality=self.modality)


def pancreas_values(case: object, default):
    """The label values that mean pancreas in ``case``'s label: its own ``label_values`` (a
    manifest's cell) where set, else ``default`` (the config's ``preprocess.label_values``, or
    ``evaluate --gt-labels``). One rule for `pancseg prepare`, ``cv`` and ``evaluate``; any
    object with or without ``label_values`` (a `Case`, an evaluation truth)."""
    own = getattr(case, "label_values", None)
    return default if own is None else own


# === Entry point ===


def discover_cohort(
    path: PathLike,
    *,
    format: str = "auto",
    split: str = "train",
    labels_dir: PathLike | None = None,
) -> list[Case]:
    """Lists the cases of a cohort, sorted by case id, without reading any image.

    Args:
        path: an MSD / nnU-Net folder (or its ``dataset.json``), an NIH Pancreas-CT download (the
            folder holding ``Pancreas-CT/``, or ``Pancreas-CT/`` itself), or a CSV manifest.
        format: ``"auto"`` (detect), ``"msd"``, ``"nih"`` or ``"manifest"``.
        split: ``"train"``: the labelled cases (MSD ``imagesTr``, NIH cases, manifest rows with a
            label); ``"test"``: the unlabelled ones (MSD ``imagesTs``, manifest rows without a
            label; NIH has none); ``"all"``: both.
        labels_dir: NIH only: the folder of ``labelNNNN.nii.gz`` files (default: found beside
            ``Pancreas-CT/``).

    Returns:
        The cases, sorted by case id.

    Raises:
        PancsegError: a nonexistent path, an unknown layout (the message lists the recognised
            ones), an unknown format or split, a missing image or label file (naming the case and
            the path), a duplicate or unsafe case id, or a malformed ``dataset.json`` / manifest.
    """
    if format not in FORMATS:
        raise PancsegError(f"format must be one of {FORMATS}, got {format!r}")
    if split not in SPLITS:
        raise PancsegError(f"split must be one of {SPLITS}, got {split!r}")
    path = pathlib.Path(path)
    if not path.exists():
        raise PancsegError(f"no such cohort file or folder: {path}")
    detected = _detect(path)
    if format == "auto":
        if detected is None:
            raise PancsegError(f"{path} is not a cohort layout pancseg_tf knows; {_RECOGNISED}")
        format = detected
    if labels_dir is not None and format != "nih":
        raise PancsegError(f"labels_dir applies to NIH Pancreas-CT cohorts only, not {format}")

    if format == "msd":
        cases = _discover_msd(path.parent if path.is_file() else path, split)
    elif format == "nih":
        cases = _discover_nih(path, split, labels_dir)
    else:
        cases = _discover_manifest(_manifest_file(path), split)
    _check_unique(cases)
    return sorted(cases, key=lambda case: case.case_id)


def ambiguous_slices(cohort_path: PathLike) -> dict[str, list[int]]:
    """The slices on which each synthetic case's pancreas is ambiguous on its own.

    Reads ``ambiguous_slices.json`` written by `pancseg_tf.synthetic.make_cohort`: case id ->
    indices k along the image's third voxel axis.

    Args:
        cohort_path: the cohort folder (or its ``dataset.json``).

    Returns:
        Case id -> sorted slice indices; empty when the cohort has no such file.

    Raises:
        PancsegError: the file exists but is not a JSON object of lists of integers.
    """
    folder = pathlib.Path(cohort_path)
    if folder.is_file():
        folder = folder.parent
    file = folder / AMBIGUOUS_SLICES_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PancsegError(f"cannot read {file}: {error}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(k, int) and not isinstance(k, bool) for k in v)
        for v in data.values()
    ):
        raise PancsegError(
            f"{file}: expected a JSON object of case id -> list of slice indices (integers)"
        )
    return {str(case): sorted(slices) for case, slices in data.items()}


# === Layout detection ===


def _detect(path: pathlib.Path) -> str | None:
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        if path.name == "dataset.json":
            return "msd"
        return None
    if (path / "dataset.json").is_file() or (path / "imagesTr").is_dir():
        return "msd"
    if _nih_images_root(path) is not None:
        return "nih"
    if (path / "manifest.csv").is_file():
        return "manifest"
    return None


def _manifest_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    if (path / "manifest.csv").is_file():
        return path / "manifest.csv"
    raise PancsegError(f"{path} is a folder without manifest.csv: expected a CSV manifest file")


def _visible(path: pathlib.Path) -> bool:
    # macOS AppleDouble files (._name) and other hidden files are not cases.
    return not path.name.startswith(".")


def nifti_stem(path: pathlib.Path) -> str | None:
    """The case id of a ``<case>.nii.gz`` / ``<case>.nii`` file (any case of the suffix), or
    None for another file."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def check_case_id(case_id: str, where: str = "") -> str:
    """Returns ``case_id`` if it can name output files, else raises: the rule of every command.

    A case id names files directly inside an output folder (``predict``: ``<id>.nii.gz`` and
    ``<id>_prob.nii.gz``; ``prepare``: ``shards/<id>.tfrecord`` and ``cases/<id>.json``;
    ``evaluate``: ``cases/<id>.png``), so it must not be able to name anything else. The rule:
    1 to 128 characters, each a letter, digit, ``.``, ``_`` or ``-``; the first a letter or a
    digit; no ``..`` anywhere. That leaves out path separators (``a/b``, ``a\\b``), absolute
    paths (``/abs/x``), ``.`` and ``..`` (``../../x``), hidden names, NUL, newlines and every
    other control character, spaces, and names too long for a file system.

    An id that breaks the rule is refused with one line, never rewritten: a sanitised id could
    collide with another case's, and would no longer match the name of its ground truth, by
    which ``evaluate`` pairs predictions with labels.

    Args:
        case_id: the id (from a manifest, a file or folder name, or a ``dataset.json``).
        where: what the message names as the id's origin (e.g. a manifest row); may be empty.

    Returns:
        ``case_id`` unchanged.

    Raises:
        PancsegError: the id breaks the rule; the message shows it with escapes (``'a\\nb'``),
            on one line.
    """
    if not isinstance(case_id, str) or not _SAFE_ID.fullmatch(case_id) or ".." in case_id:
        prefix = f"{where}: " if where else ""
        raise PancsegError(
            f"{prefix}case id {case_id!r} is not safe as a file name: expected 1 to 128 letters, "
            "digits, '.', '_' or '-', not starting with '.' and without '..' or path separators"
        )
    return case_id


def _check_unique(cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise PancsegError(
                f"case id {case.case_id} appears twice: {seen[case.case_id].image} and {case.image}"
            )
        seen[case.case_id] = case


# === MSD / nnU-Net ===


def _modality_from_name(name: str, where: str) -> str:
    upper = str(name).strip().upper()
    if upper == "CT":
        return "ct"
    if upper.startswith("MR") or upper in ("T1", "T2") or upper.startswith(("T1", "T2")):
        return "mri"
    raise PancsegError(
        f"{where}: modality {name!r} is not supported; expected CT or MRI (MRI, MR, T1, T2)"
    )


def _read_dataset_json(root: pathlib.Path) -> dict:
    file = root / "dataset.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PancsegError(f"cannot read {file}: {error}") from None
    if not isinstance(data, dict):
        raise PancsegError(f"{file}: expected a JSON object")
    return data


def _msd_modality(root: pathlib.Path, dataset: dict) -> str:
    where = str(root / "dataset.json")
    channels = dataset.get("modality", dataset.get("channel_names"))
    if channels is None:
        if dataset:
            log.info("%s names no modality: assuming CT", where)
        return "ct"
    if not isinstance(channels, dict) or not channels:
        raise PancsegError(f'{where}: \'modality\' must be an object such as {{"0": "CT"}}')
    if len(channels) > 1:
        raise PancsegError(
            f"{where}: {len(channels)} input channels {sorted(channels.values())}; pancseg_tf "
            "segments single-channel CT or MRI"
        )
    return _modality_from_name(next(iter(channels.values())), where)


def _nifti_files(folder: pathlib.Path) -> list[pathlib.Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if _visible(p) and p.is_file() and nifti_stem(p) is not None
    )


def _uses_channel_suffix(image_stems: list[str], label_stems: set[str]) -> bool:
    """True when image names carry nnU-Net v2's ``_0000`` channel suffix.

    MSD names images like their labels (``pancreas_001``); nnU-Net v2 adds ``_XXXX``. Labels decide
    when there are any, since MSD ids may themselves end in four digits.
    """
    if not image_stems or not all(_CHANNEL.match(stem) for stem in image_stems):
        return False
    if label_stems:
        return not set(image_stems) <= label_stems
    return True


def _image_cases(
    folder: pathlib.Path, suffixed: bool
) -> list[tuple[str, pathlib.Path]]:  # (case id, image)
    cases = []
    for file in _nifti_files(folder):
        stem = nifti_stem(file)
        if suffixed:
            match = _CHANNEL.match(stem)
            if match is None:
                raise PancsegError(
                    f"{file}: expected a name ending in the channel suffix _0000 like the other "
                    "images of the folder (nnU-Net v2)"
                )
            if match["channel"] != "0000":
                raise PancsegError(
                    f"{file}: channel {match['channel']} found; pancseg_tf segments single-channel "
                    "CT or MRI (only _0000)"
                )
            stem = match["case"]
        cases.append((check_case_id(stem, str(file)), file))
    return cases


def _find_label(folder: pathlib.Path, case_id: str) -> pathlib.Path:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{case_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise PancsegError(f"case {case_id}: label file not found: expected {folder / case_id}.nii.gz")


def _listed_file(root: pathlib.Path, entry: object, where: str) -> pathlib.Path:
    if not isinstance(entry, str) or not entry:
        raise PancsegError(f"{where}: expected a relative file path, got {entry!r}")
    return root / entry


def _resolve_listed_image(path: pathlib.Path) -> pathlib.Path:
    # dataset.json may list MSD names while the files carry nnU-Net's _0000 suffix (a converted
    # copy of Task07): accept the suffixed file.
    if path.is_file():
        return path
    stem = nifti_stem(path)
    if stem is not None:
        for suffix in NIFTI_SUFFIXES:
            candidate = path.with_name(f"{stem}_0000{suffix}")
            if candidate.is_file():
                return candidate
    return path


def _discover_msd(root: pathlib.Path, split: str) -> list[Case]:
    if not any((root / name).exists() for name in ("dataset.json", "imagesTr", "imagesTs")):
        raise PancsegError(
            f"{root} is not an MSD / nnU-Net folder (no dataset.json, imagesTr/ or imagesTs/); "
            f"{_RECOGNISED}"
        )
    dataset = _read_dataset_json(root)
    modality = _msd_modality(root, dataset)
    where = str(root / "dataset.json")
    labels_folder = root / "labelsTr"
    label_stems = {nifti_stem(p) for p in _nifti_files(labels_folder)}
    train_suffixed = _uses_channel_suffix(
        [nifti_stem(p) for p in _nifti_files(root / "imagesTr")], label_stems
    )
    cases: list[Case] = []

    if split in ("train", "all"):
        listed = dataset.get("training")
        if isinstance(listed, list) and listed:
            for n, entry in enumerate(listed):
                if not isinstance(entry, dict):
                    raise PancsegError(f"{where}: training[{n}] must be an object")
                image = _listed_file(root, entry.get("image"), f"{where} training[{n}].image")
                label = _listed_file(root, entry.get("label"), f"{where} training[{n}].label")
                case_id = check_case_id(nifti_stem(image) or image.name, where)
                image = _resolve_listed_image(image)
                if not image.is_file():
                    raise PancsegError(f"case {case_id}: image file not found: {image}")
                if not label.is_file():
                    raise PancsegError(f"case {case_id}: label file not found: {label}")
                cases.append(Case(case_id, image, label, modality))
        else:
            for case_id, image in _image_cases(root / "imagesTr", train_suffixed):
                cases.append(Case(case_id, image, _find_label(labels_folder, case_id), modality))
        if not cases and split == "train":
            raise PancsegError(
                f"{root}: no training cases (no images in imagesTr/ and no 'training' list in "
                "dataset.json)"
            )

    if split in ("test", "all"):
        test_stems = [nifti_stem(p) for p in _nifti_files(root / "imagesTs")]
        has_train_images = bool(_nifti_files(root / "imagesTr"))
        suffixed = train_suffixed if has_train_images else _uses_channel_suffix(test_stems, set())
        listed = dataset.get("test")
        if isinstance(listed, list) and listed:
            for n, entry in enumerate(listed):
                if isinstance(entry, dict):  # some converters write {"image": ...}
                    entry = entry.get("image")
                image = _listed_file(root, entry, f"{where} test[{n}]")
                case_id = check_case_id(nifti_stem(image) or image.name, where)
                image = _resolve_listed_image(image)
                if not image.is_file():
                    raise PancsegError(f"case {case_id}: image file not found: {image}")
                cases.append(Case(case_id, image, None, modality))
        else:
            for case_id, image in _image_cases(root / "imagesTs", suffixed):
                cases.append(Case(case_id, image, None, modality))
    return cases


# === NIH Pancreas-CT ===


def _nih_case_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in folder.iterdir() if p.is_dir() and _NIH_CASE.match(p.name)]


def _nih_images_root(path: pathlib.Path) -> pathlib.Path | None:
    """The ``Pancreas-CT`` folder: ``path`` itself or its child, or None."""
    if not path.is_dir():
        return None
    for child in path.iterdir():
        if child.is_dir() and child.name.lower() == "pancreas-ct":
            return child
    if path.name.lower() == "pancreas-ct" or _nih_case_folders(path):
        return path
    return None


def _nih_label_files(folder: pathlib.Path) -> dict[int, pathlib.Path]:
    files = {}
    for p in folder.iterdir():
        match = _NIH_LABEL.match(p.name)
        if match and p.is_file() and _visible(p):
            files.setdefault(int(match[1]), p)
    return files


def _nih_labels_dir(images_root: pathlib.Path) -> pathlib.Path:
    parent = images_root.parent
    candidates = sorted(
        p
        for p in parent.iterdir()
        if p.is_dir() and p != images_root and _visible(p) and _nih_label_files(p)
    )
    if not candidates:
        raise PancsegError(
            f"no folder of labelNNNN.nii.gz files found beside {images_root}: pass labels_dir= "
            "(TCIA ships them as TCIA_pancreas_labels-02-05-2017/)"
        )
    if len(candidates) > 1:
        log.info("several label folders beside %s: using %s", images_root, candidates[0])
    return candidates[0]


def _nih_series_folder(case_folder: pathlib.Path) -> pathlib.Path | None:
    """The folder under a case holding the most .dcm files (its CT series), or None."""
    best, best_count = None, 0
    for folder in sorted([case_folder, *(p for p in case_folder.rglob("*") if p.is_dir())]):
        count = sum(
            1
            for p in folder.iterdir()
            if p.suffix.lower() == ".dcm" and _visible(p) and p.is_file()
        )
        if count > best_count:
            best, best_count = folder, count
    return best


def _discover_nih(path: pathlib.Path, split: str, labels_dir: PathLike | None) -> list[Case]:
    images_root = _nih_images_root(path)
    if images_root is None:
        raise PancsegError(
            f"{path} holds no Pancreas-CT/ folder nor PANCREAS_NNNN/ case folders; {_RECOGNISED}"
        )
    if split == "test":
        return []  # the collection has no unlabelled test cases
    if labels_dir is None:
        labels_folder = _nih_labels_dir(images_root)
    else:
        labels_folder = pathlib.Path(labels_dir)
        if not labels_folder.is_dir():
            raise PancsegError(f"labels_dir {labels_folder} is not a folder")
    labels = _nih_label_files(labels_folder)
    folders = {int(_NIH_CASE.match(p.name)[1]): p for p in _nih_case_folders(images_root)}

    cases = []
    for number in sorted(set(folders) | set(labels)):
        case_id = f"PANCREAS_{number:04d}"
        folder = folders.get(number)
        series = _nih_series_folder(folder) if folder is not None else None
        if series is None:
            # Cases 0025 and 0070 are empty in the current TCIA release.
            log.warning(
                "NIH case %s: %s: skipped",
                case_id,
                "no case folder" if folder is None else "no .dcm files in its folder",
            )
            continue
        label = labels.get(number)
        if label is None:
            raise PancsegError(
                f"case {case_id}: label file not found: expected "
                f"{labels_folder / f'label{number:04d}.nii.gz'}"
            )
        cases.append(Case(case_id, series, label, "ct"))
    if not cases:
        raise PancsegError(f"{images_root}: no NIH Pancreas-CT case with DICOM files")
    return cases


# === CSV manifest ===


def _discover_manifest(file: pathlib.Path, split: str) -> list[Case]:
    try:
        text = file.read_text(encoding="utf-8-sig")  # spreadsheets write a byte-order mark
    except (OSError, UnicodeDecodeError) as error:
        raise PancsegError(f"cannot read manifest {file}: {error}") from None
    # newline="": a quoted field keeps its line breaks (which `check_case_id` then refuses)
    # instead of losing them to a line split.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if "case_id" not in columns or "image" not in columns or unknown:
        raise PancsegError(
            f"manifest {file}: columns {columns}; expected a header "
            f"{','.join(MANIFEST_COLUMNS)} (label, modality and label_values optional)"
        )
    root = file.absolute().parent  # relative paths are the manifest's, whatever the cwd
    cases = []
    seen: dict[str, int] = {}
    for row_number, raw in enumerate(reader, start=2):  # line 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        if None in raw:
            raise PancsegError(f"manifest {file} row {row_number}: more fields than columns")
        where = f"manifest {file} row {row_number}"
        case_id = check_case_id(row.get("case_id", ""), where)
        if case_id in seen:
            raise PancsegError(f"{where}: case id {case_id} is already used on row {seen[case_id]}")
        seen[case_id] = row_number
        modality = (row.get("modality") or "ct").lower()
        if modality == "mr":
            modality = "mri"
        if modality not in MODALITIES:
            raise PancsegError(f"{where}: modality {row['modality']!r}; expected ct or mri")
        if not row.get("image"):
            raise PancsegError(f"{where}: case {case_id} has no image path")
        image = root / row["image"]
        if not image.exists():
            raise PancsegError(f"case {case_id} ({where}): image not found: {image}")
        label = root / row["label"] if row.get("label") else None
        if label is not None and not label.is_file():
            raise PancsegError(f"case {case_id} ({where}): label file not found: {label}")
        values = _manifest_label_values(row.get("label_values", ""), f"{where}: case {case_id}")
        if values is not None and label is None:
            raise PancsegError(f"{where}: case {case_id} has label_values but no label")
        if split == "all" or (split == "train") == (label is not None):
            cases.append(Case(case_id, image, label, modality, values))
    return cases


def _manifest_label_values(text: str, where: str) -> tuple[int, ...] | str | None:
    """A manifest's ``label_values`` cell: None when empty, else ints or ``"nonzero"``."""
    from pancseg_tf.io.label_values import parse_label_values

    text = text.strip()
    if not text:
        return None
    try:
        values = parse_label_values(re.sub(r"[;\s]+", ",", text))
    except PancsegError as error:
        raise PancsegError(f"{where}: label_values {text!r}: {error}") from None
    return "nonzero" if values is None else values
