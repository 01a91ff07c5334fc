"""Safe loading and paths: models that run foreign code, manifest paths, hostile case ids.

- A ``.keras`` file with a ``Lambda`` layer (Python bytecode in the file) or a class that
  neither Keras nor pancseg_tf registers is refused by ``pancseg predict`` and ``pancseg
  export`` with one line that names it and ``--unsafe``; with ``--unsafe`` both load and work
  (`pancseg_tf.inference.load_model`). tests/test_predict.py checks the Lambda refusal's
  one-line form through a subprocess; here the whole table runs in-process.
- A manifest's relative paths are the manifest folder's, whatever the working directory.
- A case id that could name a path (``../../x``, an absolute path, ``a/b``, ``..``, NUL, a
  newline, a space) is refused with one line by every command that names files after it
  (`pancseg_tf.io.cohorts.check_case_id` states the rule), and no command writes anything
  outside its output folder: each test lists the whole sandbox before and after.
"""

import contextlib
import io
import json
import pathlib
import zipfile

import keras
import numpy as np
import pytest

from pancseg_tf.cli import main
from pancseg_tf.config import Config, apply_overrides, save_config
from pancseg_tf.errors import PancsegError
from pancseg_tf.inference import load_model
from pancseg_tf.io import Volume, check_case_id, discover_cohort, read_nifti, write_volume
from pancseg_tf.synthetic import make_phantom
from tests.dicom_factory import write_series

SIZE = 16  # the model grid of every model here: 16 x 16 pixels of 4 mm


class Brighter(keras.layers.Layer):
    """Unregistered on purpose: Keras can only find it by importing this module."""

    def call(self, x):
        return keras.ops.sigmoid(20.0 * (x - 0.5))


def pancseg(*args) -> tuple[int, str]:
    """``pancseg ARGS`` in this process: (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main([str(a) for a in args])
    return status, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line or "failed" in line]


def assert_one_line_error(status: int, stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


def listing(root: pathlib.Path) -> set[pathlib.Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@contextlib.contextmanager
def nothing_written_outside(sandbox: pathlib.Path, output: pathlib.Path):
    """Asserts that what appears under ``sandbox`` meanwhile is in ``output`` (or its folders)."""
    before = listing(sandbox)
    yield
    allowed = output.relative_to(sandbox)
    new = listing(sandbox) - before
    outside = sorted(
        p
        for p in new
        if not (p == allowed or allowed in p.parents)
        and not (p in allowed.parents and (sandbox / p).is_dir())  # the output's own folders
    )
    assert not outside, f"written outside {output}: {outside}"


def tiny_ct(path: pathlib.Path, seed: int = 0) -> Volume:
    image, label, _ = make_phantom(
        np.random.default_rng(seed), shape=(32, 32, 12), spacing=(2.0, 2.0, 3.0)
    )
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    volume = Volume(array=image, affine=affine, modality="ct")
    write_volume(volume, path)
    write_volume(volume.with_array(label), path.with_name(path.name.replace(".nii", "_label.nii")))
    return volume


def run_folder(folder: pathlib.Path, model: keras.Model) -> pathlib.Path:
    """A run folder: the model as model.keras and a config for 16 x 16 model grids."""
    folder.mkdir(parents=True)
    cfg = apply_overrides(
        Config(),
        [
            f"preprocess.size=[{SIZE}, {SIZE}]",
            "preprocess.spacing_mm=4.0",
            "postprocess.threshold=0.5",
        ],
    )
    save_config(cfg, folder / "config.yaml")
    model.save(folder / "model.keras")
    return folder


def intensity_model(kind: str) -> keras.Model:
    """Marks bright tissue, through a Lambda layer or an unregistered class."""
    inputs = keras.Input((SIZE, SIZE, 1))
    if kind == "lambda":
        # No global names: a deserialised lambda does not see this module's imports.
        outputs = keras.layers.Lambda(lambda x: x * x, name="square")(inputs)
    else:
        outputs = Brighter(name="brighter")(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders: ``safe`` (a registered SliceCNN), ``lambda`` and ``custom``."""
    from pancseg_tf.models import SliceCNN

    root = tmp_path_factory.mktemp("runs")
    keras.utils.set_random_seed(0)
    return {
        "safe": run_folder(
            root / "safe", SliceCNN(base_filters=2, depth=1, input_size=(SIZE, SIZE))
        ),
        "lambda": run_folder(root / "lambda", intensity_model("lambda")),
        "custom": run_folder(root / "custom", intensity_model("custom")),
    }


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    volume = tiny_ct(folder / "ct.nii.gz")
    return folder / "ct.nii.gz", volume


# === Models that would run foreign code ===


@pytest.mark.parametrize(
    "kind, named",
    [("lambda", "its Lambda layer 'square'"), ("custom", "its class 'Brighter'")],
)
@pytest.mark.parametrize("command", ["predict", "export"])
def test_foreign_code_is_refused_in_one_line(runs, ct, tmp_path, kind, named, command):
    out = tmp_path / "out"
    if command == "predict":
        status, stderr = pancseg("predict", runs[kind], ct[0], "-o", out)
    else:
        status, stderr = pancseg("export", runs[kind], out)
    assert_one_line_error(status, stderr, "refusing to load", named, "--unsafe")
    assert not any(out.rglob("*.nii.gz")) and not any(out.rglob("saved_model.pb"))


@pytest.mark.parametrize("kind", ["lambda", "custom"])
def test_unsafe_predict_loads_them(runs, ct, tmp_path, kind):
    path, volume = ct
    status, stderr = pancseg("predict", runs[kind], path, "-o", tmp_path, "--unsafe")
    assert status == 0, stderr
    mask = read_nifti(tmp_path / "ct.nii.gz")
    assert mask.shape == volume.shape
    np.testing.assert_array_equal(mask.affine, read_nifti(path).affine)
    # The model marks what is brighter than the middle of the HU window: not nothing, not all.
    assert 0 < int(mask.array.sum()) < mask.array.size


@pytest.mark.large
@pytest.mark.parametrize("kind", ["lambda", "custom"])
def test_unsafe_export_loads_them(runs, tmp_path, kind):
    status, stderr = pancseg("export", runs[kind], tmp_path, "--chunk", 4, "--unsafe")
    assert status == 0, stderr
    assert (tmp_path / "pancseg" / "1" / "saved_model.pb").is_file()


def test_a_class_whose_module_is_missing_is_one_line_even_when_unsafe(runs, tmp_path):
    model = tmp_path / "missing_module.keras"
    with zipfile.ZipFile(runs["custom"] / "model.keras") as source:
        entries = {name: source.read(name) for name in source.namelist()}
    config = entries["config.json"].decode().replace('"tests.test_safety"', '"no_such_module"')
    entries["config.json"] = config.encode()
    with zipfile.ZipFile(model, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)

    with pytest.raises(PancsegError, match="'Brighter' comes from module 'no_such_module'"):
        load_model(model)
    with pytest.raises(PancsegError, match="cannot be imported here") as error:
        load_model(model, unsafe=True)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("what", ["text", "truncated"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_keras_file_that_is_no_archive_is_one_line_naming_it(runs, ct, tmp_path, what, command):
    """Keras' own text for such a file says "File not found" of a file that is there."""
    source = (runs["safe"] / "model.keras").read_bytes()
    model = tmp_path / "run" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"not a model\n" if what == "text" else source[: len(source) // 2])
    out = tmp_path / "out"
    for given in (model, model.parent):  # the file, and the run folder holding it
        if command == "predict":
            status, stderr = pancseg("predict", given, ct[0], "-o", out)
        else:
            status, stderr = pancseg("export", given, out)
        assert_one_line_error(status, stderr, "model.keras is not a .keras model", "zip archive")
        assert "not found" not in stderr
        assert not out.exists() or not any(out.rglob("*.*"))


def test_registered_models_load_without_unsafe(runs):
    assert type(load_model(runs["safe"])).__name__ == "SliceCNN"


# === Manifest paths ===


def test_manifest_paths_are_the_manifests_not_the_working_directorys(runs, tmp_path, monkeypatch):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    volume = tiny_ct(data / "img.nii.gz")
    # A decoy of another shape where a cwd-relative reading would look.
    write_volume(Volume(np.zeros((5, 5, 5), np.int16), np.eye(4)), elsewhere / "img.nii.gz")
    write_volume(Volume(np.zeros((5, 5, 5), np.uint8), np.eye(4)), elsewhere / "img_label.nii.gz")
    (data / "cohort.csv").write_text(
        "case_id,image,label,modality\ncase1,img.nii.gz,img_label.nii.gz,ct\n"
    )
    monkeypatch.chdir(elsewhere)

    (case,) = discover_cohort("../data/cohort.csv")
    assert case.image.resolve() == (data / "img.nii.gz").resolve()
    assert case.load_image().shape == volume.shape

    status, stderr = pancseg("predict", runs["safe"], "../data/cohort.csv", "-o", "pred")
    assert status == 0, stderr
    assert read_nifti(elsewhere / "pred" / "case1.nii.gz").shape == volume.shape
    status, stderr = pancseg("evaluate", "pred", "../data/cohort.csv", "-o", "report")
    assert status == 0, stderr
    summary = json.loads((elsewhere / "report" / "summary.json").read_text())
    assert summary["evaluated"] == ["case1"]


# === Case ids ===

# "ABS" stands for an absolute path inside the test's sandbox (see `hostile_manifest`).
HOSTILE_IDS = ["../../x", "ABS", "a/b", "..", "x\x00y", "a\nb", "a b"]


@pytest.mark.parametrize(
    "case_id",
    [
        "../../x",
        "/abs/x",
        "a/b",
        "..",
        "x\x00y",
        "a\nb",
        "a b",
        "x" * 129,
        ".hidden",
        "a..b",
        "a\\b",
    ],
)
def test_check_case_id_refuses_in_one_line(case_id):
    with pytest.raises(PancsegError, match="not safe as a file name") as error:
        check_case_id(case_id, "here")
    assert "\n" not in str(error.value) and "\x00" not in str(error.value)


@pytest.mark.parametrize("case_id", ["PANCREAS_0001", "pancreas_001", "a.b-c_d", "7", "x" * 128])
def test_check_case_id_accepts_file_names(case_id):
    assert check_case_id(case_id) == case_id


def hostile_manifest(sandbox: pathlib.Path, case_id: str) -> pathlib.Path:
    """A manifest whose one case has ``case_id`` (``ABS``: an absolute path in the sandbox)."""
    if case_id == "ABS":
        case_id = str(sandbox / "abs" / "x")
    tiny_ct(sandbox / "img.nii.gz")
    quoted = '"' + case_id.replace('"', '""') + '"'
    manifest = sandbox / "cohort.csv"
    manifest.write_text(
        f"case_id,image,label,modality\n{quoted},img.nii.gz,img_label.nii.gz,ct\n",
        newline="",
    )
    return manifest


@pytest.mark.parametrize("case_id", HOSTILE_IDS)
@pytest.mark.parametrize("command", ["prepare", "predict", "evaluate"])
def test_hostile_manifest_ids_are_refused_and_nothing_escapes(runs, tmp_path, case_id, command):
    manifest = hostile_manifest(tmp_path, case_id)
    prediction = tmp_path / "pred" / "x.nii.gz"  # what evaluate would pair, were the id valid
    write_volume(read_nifti(tmp_path / "img_label.nii.gz"), prediction)
    out = tmp_path / "deep" / "er" / "out"  # ../../x from here stays inside the sandbox
    with nothing_written_outside(tmp_path, out):
        if command == "prepare":
            status, stderr = pancseg("prepare", manifest, out)
        elif command == "predict":
            status, stderr = pancseg("predict", runs["safe"], manifest, "-o", out)
        else:
            status, stderr = pancseg("evaluate", prediction.parent, manifest, "-o", out)
    assert_one_line_error(status, stderr, "not safe as a file name")


@pytest.mark.parametrize("file_name", ["a\nb.nii.gz", "x y.nii.gz", "..nii.gz", ".hidden.nii.gz"])
def test_predict_refuses_input_names_that_are_no_case_id(runs, ct, tmp_path, file_name):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / file_name).write_bytes(ct[0].read_bytes())
    out = tmp_path / "deep" / "out"
    with nothing_written_outside(tmp_path, out):
        status, stderr = pancseg("predict", runs["safe"], inputs / file_name, "-o", out)
    assert status == 1, stderr  # a failed case, as for an unreadable input
    (line,) = error_lines(stderr)
    assert "failed: case id" in line and "not safe as a file name" in line
    assert not any(out.iterdir())


def test_predict_refuses_a_series_folder_named_dot_dot(runs, tmp_path):
    series = tmp_path / "series"
    write_series(series / "inner" / "x", np.zeros((SIZE, SIZE, 3), np.int16))
    out = tmp_path / "deep" / "out"
    with nothing_written_outside(tmp_path, out):
        # series/inner/.. is the folder "series", but its name as typed is ".."
        status, stderr = pancseg("predict", runs["safe"], series / "inner" / "..", "-o", out)
    assert status == 1, stderr
    (line,) = error_lines(stderr)
    assert "case id '..' is not safe" in line


def test_convert_writes_only_its_output_whatever_the_tags_say(tmp_path):
    series = tmp_path / "series"
    hostile = {"PatientID": "../../x", "PatientName": "/abs/x", "StudyID": "a\nb"}
    write_series(
        series,
        np.full((6, 5, 3), -1000, np.int16),
        description="../../evil",
        patient={**hostile, "AccessionNumber": "x\x00y"},
    )
    out = tmp_path / "deep" / "out"
    with nothing_written_outside(tmp_path, out):
        status, stderr = pancseg("convert", series, out / "ct.nii.gz")
    assert status == 0, stderr
    assert listing(out) == {pathlib.Path("ct.nii.gz")}


def test_evaluate_writes_inside_its_report_whatever_the_file_names(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    volume = tiny_ct(tmp_path / "img.nii.gz")
    label = read_nifti(tmp_path / "img_label.nii.gz")
    for name in ("a\nb", "c d"):
        write_volume(label, pred / f"{name}.nii.gz")
        write_volume(label, gt / f"{name}.nii.gz")
    out = tmp_path / "deep" / "report"
    with nothing_written_outside(tmp_path, out):
        status, stderr = pancseg("evaluate", pred, gt, "-o", out)
    # File names that break the case-id rule of every command are refused in one line.
    assert_one_line_error(status, stderr, "is not safe as a file name")
    assert volume.shape == label.shape


def test_an_error_naming_a_file_with_a_newline_stays_one_line(tmp_path):
    path = tmp_path / "a\nb.nii.gz"
    path.write_bytes(b"not an image")
    status, stderr = pancseg("info", path)
    assert_one_line_error(status, stderr, "a\\nb.nii.gz")
