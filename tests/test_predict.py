"""`pancseg predict` and `pancseg evaluate` on real CT: masks land on each input's exact grid."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.config import Config, apply_overrides, save_config


def pancseg(*args):
    return subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=900,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with an untrained tiny contextual model, its stage-1 CNN and config.

    The output layer's bias is set so that the model marks bright soft tissue: masks are neither
    empty nor full, which is what the geometry checks need.
    """
    import keras

    from pancseg_tf.models import ContextualSegmenter, SliceCNN, transfer_stage1_weights

    run = tmp_path_factory.mktemp("run")
    cfg = apply_overrides(
        Config(),
        [
            "preprocess.size=[48, 48]",
            "preprocess.spacing_mm=4.0",
            "preprocess.slice_spacing_mm=3.0",
        ],
    )
    save_config(cfg, run / "config.yaml")
    keras.utils.set_random_seed(0)
    cnn = SliceCNN(base_filters=4, depth=2, input_size=(48, 48))
    cnn.save(run / "stage1.keras")
    model = ContextualSegmenter(
        slice_cnn=SliceCNN(base_filters=4, depth=2, input_size=(48, 48)),
        lstm_filters=4,
        lstm_resolution=2,
    )
    transfer_stage1_weights(cnn, model)
    model.save(run / "model.keras")
    return run


def assert_on_grid(mask_path, reference_affine, reference_shape):
    img = nib.load(str(mask_path))
    assert img.shape == tuple(reference_shape)
    np.testing.assert_allclose(img.affine, reference_affine, atol=1e-4)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data)) <= {0, 1}


def test_predict_nifti_and_dicom_land_on_their_grids(tiny_run, ts_ct_path, ts_dicom_dir, tmp_path):
    from pancseg_tf.io import read_volume

    out = tmp_path / "out"
    proc = pancseg("predict", tiny_run, ts_ct_path, ts_dicom_dir, "-o", out, "--probabilities")
    assert proc.returncode == 0, proc.stderr
    ct = read_volume(ts_ct_path)
    assert_on_grid(out / "ct_3mm.nii.gz", ct.affine, ct.shape)
    dicom = read_volume(ts_dicom_dir)
    assert_on_grid(out / "ct_dicom.nii.gz", dicom.affine, dicom.shape)
    prob = nib.load(str(out / "ct_3mm_prob.nii.gz"))
    assert prob.get_data_dtype() == np.float32 and prob.shape == ct.shape
    assert "TensorFlow" not in proc.stderr and "oneDNN" not in proc.stderr


def test_stage1_model_chunks_and_tta(tiny_run, ts_ct_path, tmp_path):
    from pancseg_tf.io import read_volume

    ct = read_volume(ts_ct_path)
    runs = (
        ((tiny_run / "stage1.keras",), "s1"),
        ((tiny_run, "--chunk", 4), "chunk"),
        ((tiny_run, "--tta"), "tta"),
    )
    for args, name in runs:
        out = tmp_path / name
        proc = pancseg("predict", args[0], ts_ct_path, "-o", out, *args[1:])
        assert proc.returncode == 0, proc.stderr
        assert_on_grid(out / "ct_3mm.nii.gz", ct.affine, ct.shape)


def test_exit_status_when_some_inputs_fail(tiny_run, ts_ct_path, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    proc = pancseg("predict", tiny_run, ts_ct_path, bad, "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert (out / "ct_3mm.nii.gz").is_file()
    assert not (out / "broken.nii.gz").exists()
    assert "broken" in proc.stderr


@pytest.mark.parametrize("model_kind", ["missing", "not_a_model", "lambda"])
def test_bad_models_are_one_line_errors(tmp_path, ts_ct_path, model_kind):
    if model_kind == "missing":
        model = tmp_path / "nope.keras"
    elif model_kind == "not_a_model":
        model = tmp_path / "fake.keras"
        model.write_bytes(b"PK\x03\x04 definitely not a keras archive")
    else:
        import keras

        inp = keras.Input((4,))
        model = tmp_path / "lambda.keras"
        keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(model)
    proc = pancseg("predict", model, ts_ct_path, "-o", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: "), proc.stderr
    assert not (tmp_path / "out" / "ct_3mm.nii.gz").exists()


@pytest.mark.large
def test_nih_case_predicts_on_its_grid_and_evaluates_against_its_label(
    tiny_run, nih_root, tmp_path
):
    from pancseg_tf.io import read_volume

    out = tmp_path / "pred"
    proc = pancseg("predict", tiny_run, nih_root, "-o", out)
    assert proc.returncode == 0, proc.stderr
    series = next((nih_root / "Pancreas-CT" / "PANCREAS_0002").glob("*/*"))
    ct = read_volume(series)
    assert_on_grid(out / "PANCREAS_0002.nii.gz", ct.affine, ct.shape)
    report = tmp_path / "report"
    proc = pancseg("evaluate", out, nih_root, "-o", report)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((report / "summary.json").read_text())
    assert summary["evaluated"] == ["PANCREAS_0002"]
    assert (report / "index.html").is_file()
    # Nothing of the study's date or institution reaches any output.
    for path in list(report.rglob("*")) + list(out.rglob("*")):
        if path.is_file():
            blob = path.read_bytes()
            assert b"20151124" not in blob and b"11-24-2015" not in blob, path


def test_mri_given_to_a_ct_model_warns(tiny_run, tmp_path):
    from pancseg_tf.synthetic import make_cohort

    cohort = make_cohort(tmp_path / "mri", cases=1, modality="mri", seed=2, shape=(64, 64, 12))
    image = next((cohort / "imagesTr").glob("*.nii.gz"))
    proc = pancseg("predict", tiny_run, image, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "trained on CT" in proc.stderr and "MRI" in proc.stderr


def test_an_mri_model_takes_an_mri_nifti_without_a_warning(tiny_run, ts_ct_path, tmp_path):
    """A NIfTI file carries no modality, so its intensities decide: an MRI model given an MRI
    NIfTI says nothing, given a CT in HU it warns (the reader's default modality, "ct", is no
    statement about the file)."""
    import shutil

    from pancseg_tf.config import load_config
    from pancseg_tf.synthetic import make_cohort

    run = tmp_path / "mri_run"
    shutil.copytree(tiny_run, run)
    save_config(
        apply_overrides(load_config(run / "config.yaml"), ["preprocess.modality=mri"]),
        run / "config.yaml",
    )
    cohort = make_cohort(tmp_path / "mri", cases=1, modality="mri", seed=2, shape=(64, 64, 12))
    image = next((cohort / "imagesTr").glob("*.nii.gz"))

    proc = pancseg("predict", run, image, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "trained on" not in proc.stderr, proc.stderr

    proc = pancseg("predict", run, ts_ct_path, "-o", tmp_path / "out_ct")
    assert proc.returncode == 0, proc.stderr
    assert "the model was trained on MRI but ct_3mm.nii.gz looks CT (HU)" in proc.stderr


def test_an_internal_error_is_one_short_line():
    """TensorFlow's own error for an array that does not bind to a tf.function prints the whole
    array; the command line's internal-error line keeps type and start, on one line."""
    import numpy as np
    import tensorflow as tf

    from pancseg_tf.cli import INTERNAL_MESSAGE_CHARS, internal_error_line

    fn = tf.function(lambda x: x, input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    try:
        fn(np.zeros((30, 30), np.float32))  # under numpy's summarising threshold: printed whole
    except (TypeError, ValueError) as err:
        error = err
    assert len(str(error)) > 1000  # the dump this guards against
    line = internal_error_line(error)
    assert "\n" not in line and line.startswith("pancseg: error: internal error: ")
    assert len(line) < INTERNAL_MESSAGE_CHARS + 120
    assert "--debug" in line


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("runner", [None, "DirectRunner"])
def test_outputs_never_replace_another_cases_input(
    tiny_run, ts_ct_path, ts_dicom_dir, tmp_path, runner
):
    """Before any work, a run whose outputs would land on one of its inputs is refused: case
    a's ``a_prob.nii.gz`` over the input of case a_prob (read only after it), a manifest's
    label named like its mask, and an output folder inside a DICOM series folder."""
    flags = [] if runner is None else ["--runner", runner]
    for folder in ("one", "two", "labels"):
        (tmp_path / folder).mkdir()
    (tmp_path / "one" / "a.nii.gz").write_bytes(ts_ct_path.read_bytes())
    (tmp_path / "two" / "a_prob.nii.gz").write_bytes(ts_ct_path.read_bytes())
    (tmp_path / "labels" / "ct.nii.gz").write_bytes(ts_ct_path.read_bytes())
    (tmp_path / "manifest.csv").write_text(
        "case_id,image,label\nct,one/a.nii.gz,labels/ct.nii.gz\n"
    )
    series = tmp_path / "series"
    series.mkdir()
    for f in sorted(ts_dicom_dir.iterdir())[:3]:
        (series / f.name).write_bytes(f.read_bytes())
    before = _tree(tmp_path)

    cases = [
        (
            ["one/a.nii.gz", "two/a_prob.nii.gz", "-o", "two", "--probabilities"],
            "the output a_prob.nii.gz would overwrite the input a_prob.nii.gz",
        ),
        (
            ["manifest.csv", "-o", "labels"],
            "the output ct.nii.gz would overwrite the input case ct's label",
        ),
        (
            ["series", "-o", "series/masks"],
            "the output folder is inside the input DICOM series folder series",
        ),
    ]
    for args, said in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "pancseg_tf.cli", "predict", str(tiny_run), *args, *flags],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=900,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"pancseg: error: {said}: choose another output folder"
    assert _tree(tmp_path) == before  # nothing written, nothing replaced
    assert not (tmp_path / "series" / "masks").exists()
