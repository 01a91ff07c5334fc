"""No patient field reaches anything pancseg prints or writes.

Two DICOM patients with distinctive names, IDs, birth dates, institutions, study dates,
accession numbers and referring physicians go through `pancseg info`, `convert`, `prepare`,
`predict` and `export`, as a TCIA-style NIH Pancreas-CT download whose study and series
folders are named after the ID, the accession number and the study date. The second patient's
series has a truncated slice, so the error paths run too. Every byte of stdout, stderr and
every file written (NIfTI headers and voxels, TFRecord shards, JSON, YAML, the SavedModel and
its assets), and every written file's name, is searched for every value and its common
transformations (upper and lower case, the DICOM ``^`` name separator as a space or a comma,
each name part, the dates in six spellings, the digits of the IDs).

Paths in messages follow `pancseg_tf.cli.InputPathDisplay`: an input the user typed is shown by
its last component, never the folders above it, and a path found below it never (cases are
named by case id, slices by position). So the typed series folder here is named as TCIA names
series folders (``1.000000-NA-59319``) and the identifiers sit in the folders above it and in
the cohort's found study and series folders.
"""

import gzip
import os
import pathlib
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.cli import InputPathDisplay
from tests.dicom_factory import write_series

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PATIENTS = [
    {
        "PatientName": "Quennell^Zebedee^Marmaduke",
        "PatientID": "ZQX7734521",
        "PatientBirthDate": "19380517",
        "InstitutionName": "Vexley Abbey Infirmary",
        "StudyDate": "20190417",
        "AccessionNumber": "AXN55320871",
        "ReferringPhysicianName": "Hornblower^Ebenezer",
    },
    {
        "PatientName": "Fairweather^Ottoline",
        "PatientID": "KWJ0918273",
        "PatientBirthDate": "19520923",
        "InstitutionName": "Grimsby Lantern Clinic",
        "StudyDate": "20201109",
        "AccessionNumber": "AXN90817264",
        "ReferringPhysicianName": "Pettigrew^Amaryllis",
    },
]
#: The model grid of the run (tests/serving's tiny model: 48 x 48 slices at 3.2 mm).
SETTINGS = ["preprocess.size=[48, 48]", "preprocess.spacing_mm=3.2"]


def spellings(value: str) -> set[str]:
    """A patient value and the forms it commonly takes once copied around."""
    forms = {value, value.replace("^", " "), value.replace("^", ", ")}
    forms |= {part for part in re.split(r"[\^ ]", value) if len(part) >= 4}
    if re.fullmatch(r"(19|20)\d{6}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        forms |= {f"{y}-{m}-{d}", f"{m}-{d}-{y}", f"{d}.{m}.{y}", f"{y}/{m}/{d}", f"{m}/{d}/{y}"}
    forms |= set(re.findall(r"\d{5,}", value))
    return {f for form in forms for f in (form, form.upper(), form.lower())}


FORBIDDEN = sorted({s for patient in PATIENTS for v in patient.values() for s in spellings(v)})


@pytest.mark.parametrize(
    "value, some_spellings",
    [
        (
            "Quennell^Zebedee^Marmaduke",
            ["QUENNELL ZEBEDEE MARMADUKE", "Quennell, Zebedee, Marmaduke", "zebedee"],
        ),
        ("20190417", ["2019-04-17", "04-17-2019", "17.04.2019", "04/17/2019"]),
        ("AXN55320871", ["axn55320871", "55320871"]),
    ],
)
def test_spellings_cover_the_usual_forms(value, some_spellings):
    found = spellings(value)
    for form in some_spellings:
        assert form in found


def leaks(blob: bytes) -> list[str]:
    """The forbidden strings found in ``blob`` (and in it gunzipped, for a gzip file)."""
    blobs = [blob]
    if blob[:2] == b"\x1f\x8b":
        blobs.append(gzip.decompress(blob))
    return [f for f in FORBIDDEN for b in blobs if f.encode() in b]


def pancseg(*args) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    return proc.returncode, proc.stdout, proc.stderr


class Transcript:
    """Everything the commands printed, and the folders they wrote into."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def run(self, *args, status: int = 0) -> str:
        code, out, err = pancseg(*args)
        label = " ".join(str(a) for a in args[:1])
        self.texts += [(f"{label} stdout", out), (f"{label} stderr", err)]
        assert code == status, f"{args}: {err}"
        assert "Traceback" not in err
        return out + err

    def assert_clean(self, *folders: pathlib.Path) -> int:
        """No forbidden string in any text, file or file name; returns the files searched."""
        found = [f"{label}: {leaks(text.encode())}" for label, text in self.texts]
        found = [f for f in found if not f.endswith("[]")]
        files = 0
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                name = path.relative_to(folder).as_posix()
                found += [f"file name {name}: {v}" for v in FORBIDDEN if v in name]
                if path.is_file():
                    files += 1
                    found += [f"{name}: {v}" for v in leaks(path.read_bytes())]
        assert found == [], "\n".join(found)
        return files


def assert_empty_text_fields(path: pathlib.Path) -> None:
    header = nib.load(str(path)).header
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        assert header[field].item() in (b"", ""), (path, field, header[field])


# === The data ===


def _hu(seed: int) -> np.ndarray:
    """(64, 64, 12) HU: air, a body of soft tissue with noise, a brighter organ."""
    rng = np.random.default_rng(seed)
    hu = np.full((64, 64, 12), -1000, np.int16)
    hu[10:54, 12:52] = rng.integers(0, 80, size=(44, 40, 12))
    hu[28:38, 26:36, 3:9] = 120
    return hu


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A TCIA-style NIH download of two patients, a typed series of the first, and its label.

    ``nih/Pancreas-CT/PANCREAS_000N/<MM-DD-YYYY>-<ID>-<accession>/1.000000-<ID>-<date>/``:
    study and series folders named after the patient (found, never typed); and
    ``typed/<ID>/<MM-DD-YYYY>-<accession>/1.000000-NA-59319/`` for the commands that take a
    series folder, with the identifiers above the typed folder.
    """
    from pancseg_tf.io import read_volume

    root = tmp_path_factory.mktemp("privacy")
    nih = root / "nih"
    labels = nih / "TCIA_pancreas_labels-02-05-2017"
    labels.mkdir(parents=True)
    series = []
    for number, patient in enumerate(PATIENTS, start=1):
        date = patient["StudyDate"]
        tcia_date = f"{date[4:6]}-{date[6:]}-{date[:4]}"
        folder = (
            nih
            / "Pancreas-CT"
            / f"PANCREAS_{number:04d}"
            / f"{tcia_date}-{patient['PatientID']}-{patient['AccessionNumber']}"
            / f"1.000000-{patient['PatientID']}-{date}"
        )
        files = write_series(
            folder,
            _hu(number),
            pixel_spacing=(3.0, 3.0),
            spacing=3.0,
            patient=patient,
            description="Pancreas",
            file_names="ordered",
            seed=number,
        )
        volume = read_volume(folder)
        label = np.zeros(volume.shape, np.uint8)
        label[28:38, 26:36, 3:9] = 1
        nib.save(nib.Nifti1Image(label, volume.affine), str(labels / f"label{number:04d}.nii.gz"))
        series.append((folder, files))
    # The second patient's copy was cut short: one slice is missing its last bytes.
    broken = series[1][1][5]
    broken.write_bytes(broken.read_bytes()[:-300])
    typed = []
    for (folder, _), patient in zip(series, PATIENTS):
        date = patient["StudyDate"]
        study = f"{date[4:6]}-{date[6:]}-{date[:4]}-{patient['AccessionNumber']}"
        target = root / "typed" / patient["PatientID"] / study / "1.000000-NA-59319"
        shutil.copytree(folder, target)
        typed.append(target)
    return {"root": root, "nih": nih, "typed": typed}


# === Paths in messages: the rule, on a hand-written table ===

TYPED = "/data/ZQX7734521/04-17-2019-AXN55320871/1.000000-NA-59319"


@pytest.mark.parametrize(
    "inputs, message, shown",
    [
        # The typed input: its last component.
        ([TYPED], f"series 1 in {TYPED}: bad", "series 1 in 1.000000-NA-59319: bad"),
        ([TYPED + "/"], f"no files in {TYPED}", "no files in 1.000000-NA-59319"),
        # A file found below it: the component and "/…".
        (
            [TYPED],
            f"cannot read {TYPED}/IM0001.dcm: truncated",
            "cannot read 1.000000-NA-59319/…: truncated",
        ),
        # Quoted, with spaces below (an OSError's repr).
        (
            [TYPED],
            f"No such file: '{TYPED}/sub dir/IM 1.dcm'",
            "No such file: '1.000000-NA-59319/…'",
        ),
        # A cohort typed as a relative name: what was found below it is hidden.
        (
            ["nih"],
            "case 2: nih/Pancreas-CT/PANCREAS_0002/11-09-2020-KWJ/1.0: bad",
            "case 2: nih/…: bad",
        ),
        # Words that only contain an input's name are left alone.
        (["nih"], "the nihilist reads nih", "the nihilist reads nih"),
        # An input inside another input's folder is matched whole.
        (["/d/a", "/d/a/b.nii.gz"], "no such file: /d/a/b.nii.gz", "no such file: b.nii.gz"),
        # Outputs are not inputs: shown as typed.
        ([TYPED], "wrote /out/ZQX/mask.nii.gz", "wrote /out/ZQX/mask.nii.gz"),
    ],
)
def test_input_paths_in_messages(inputs, message, shown):
    assert InputPathDisplay(inputs)(message) == shown


def test_absolute_and_relative_forms_of_one_input_show_the_same(tmp_path, monkeypatch):
    folder = tmp_path / "04-17-2019-ZQX7734521" / "series"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    show = InputPathDisplay(["04-17-2019-ZQX7734521/series"])
    assert show(f"bad: {folder}") == show("bad: 04-17-2019-ZQX7734521/series") == "bad: series"


# === The commands ===


def test_info_convert_prepare_print_and_write_no_patient_field(tmp_path, data):
    good, broken = data["typed"]
    out = tmp_path / "out"
    said = Transcript()
    said.run("info", good)
    said.run("info", good, "--json")
    said.run("convert", good, out / "ct.nii.gz")
    assert_empty_text_fields(out / "ct.nii.gz")
    assert "could not decode slice" in said.run("info", broken, status=2)
    assert "1.000000-NA-59319" in said.run("convert", broken, out / "broken.nii.gz", status=2)
    assert not (out / "broken.nii.gz").exists()
    # Without --skip-bad the broken case stops the run; with it, it is listed in the index.
    error = said.run("prepare", data["nih"], out / "stopped", *_sets(), status=2)
    assert "PANCREAS_0002" in error and "nih/…" in error
    said.run("prepare", data["nih"], out / "prepared", *_sets(), "--skip-bad")
    index = (out / "prepared" / "index.json").read_text()
    assert "PANCREAS_0002" in index and "could not decode slice" in index
    assert said.assert_clean(out) >= 7
    # Not vacuous: the search finds every patient field in the input files themselves.
    values = {v for patient in PATIENTS for v in patient.values()}
    blob = b"".join(next(f.iterdir()).read_bytes() for f in data["typed"])
    assert values <= set(leaks(blob))


@pytest.mark.large
def test_predict_and_export_print_and_write_no_patient_field(tmp_path, data):
    from pancseg_tf.config import Config, apply_overrides, save_config
    from pancseg_tf.training.trainer import data_index_hash
    from tests.serving import tiny_model

    out = tmp_path / "out"
    said = Transcript()
    said.run("prepare", data["nih"], out / "prepared", *_sets(), "--skip-bad")
    # The run a training on that folder leaves: model and the resolved config with provenance.
    run = out / "run"
    run.mkdir()
    tiny_model(seed=0).save(run / "model.keras")
    cfg = apply_overrides(Config(), SETTINGS)
    provenance = {
        "package": "pancseg_tf",
        "package_version": "test",
        "data_index_hash": data_index_hash(out / "prepared"),
        "seed": 0,
    }
    save_config(cfg, run / "config.yaml", extra=provenance)
    text = said.run("predict", run, data["nih"], "-o", out / "masks", "--probabilities", status=1)
    assert "PANCREAS_0002 failed" in text and "wrote 1 of 2" in text
    said.run("predict", run, data["typed"][0], "-o", out / "typed_masks")
    for mask in (out / "masks").glob("*.nii.gz"):
        assert_empty_text_fields(mask)
    said.run("export", run, out / "exports", "--chunk", "4")
    assert (out / "exports" / "pancseg" / "1" / "assets.extra" / "pancseg.json").is_file()
    assert said.assert_clean(out) >= 15


@pytest.mark.large
def test_dicom_seg_is_the_one_output_that_carries_patient_fields(tmp_path, data):
    """``--output-format dicom-seg``: the SEG copies the Patient and Study modules, as a SEG
    filed beside its series must; nothing else printed or written holds a patient field. In
    this process and on Beam (over the typed series and the TCIA-style cohort, whose second
    patient's broken series fails: its reason in failures.tsv and the log)."""
    import keras
    import pydicom

    from pancseg_tf.config import Config, apply_overrides, save_config
    from pancseg_tf.models import ContextualSegmenter, SliceCNN

    pytest.importorskip("highdicom")
    run = tmp_path / "run"
    run.mkdir()
    save_config(apply_overrides(Config(), SETTINGS), run / "config.yaml")
    keras.utils.set_random_seed(0)
    ContextualSegmenter(
        slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=(48, 48)),
        lstm_filters=4,
        lstm_resolution=2,
    ).save(run / "model.keras")
    out = tmp_path / "out"
    said = Transcript()
    args = ("predict", run, data["typed"][0], "-o", out, "--output-format", "dicom-seg")
    said.run(*args, "--probabilities")
    said.run("--debug", *args[:-3], out / "debug", *args[-2:])
    beam = ("--runner", "DirectRunner", "--pipeline-option", "direct_running_mode=multi_threading")
    said.run(*args[:3], data["nih"], "-o", out / "beam", *args[-2:], *beam, status=1)
    assert "PANCREAS_0002" in (out / "beam" / "failures.tsv").read_text()
    segs = [out / "1.000000-NA-59319.dcm", out / "debug" / "1.000000-NA-59319.dcm"]
    segs += [out / "beam" / "1.000000-NA-59319.dcm", out / "beam" / "PANCREAS_0001.dcm"]
    for seg in segs:
        ds = pydicom.dcmread(seg)
        assert ds.Modality == "SEG"
        assert (ds.PatientID, str(ds.PatientName), ds.StudyDate) == (
            PATIENTS[0]["PatientID"],
            PATIENTS[0]["PatientName"],
            PATIENTS[0]["StudyDate"],
        )
        assert not [v for v in FORBIDDEN if v in seg.name]
        seg.unlink()  # the one file that may hold them; the rest is searched below
    assert (out / "1.000000-NA-59319_prob.nii.gz").is_file()
    assert said.assert_clean(out) >= 3  # the probabilities, failures.tsv, summary.json


def _sets() -> list[str]:
    return [arg for setting in SETTINGS for arg in ("--set", setting)]
