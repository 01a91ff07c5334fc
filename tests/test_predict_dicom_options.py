"""`pancseg predict --series NUMBER --allow-uneven`: which DICOM series is segmented, and one
with a missing slice, in this process and on Beam.

Made from the real JPEG 2000 TotalSegmentator series (pixel data copied byte for byte, each copy
given new UIDs and a SeriesNumber): ``study/`` holds series 3 (all 20 slices) and series 4 (12 of
them), ``gap/`` holds series 4 with its 11th slice removed (19 slices, one 4 mm step among 2 mm
ones). ``--series 4`` picks series 4 in every DICOM folder input; ``--allow-uneven`` reads
``gap`` at its mean spacing, which the NIfTI mask keeps, while a DICOM SEG places each frame on
its own source slice and references that slice.
"""

import json
import pathlib

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.test_predict import (
    pancseg,
    tiny_run,  # noqa: F401 - the module-scoped fixture
)

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

ALL_SLICES, FEWER_SLICES, GAP_SLICES = 20, 12, 19


def copy_as_series(
    source: pathlib.Path,
    target: pathlib.Path,
    number: int,
    study: str,
    keep: list[int] | None = None,
) -> pathlib.Path:
    """The slices of ``source`` at the given position indices (along the slice normal, all by
    default) copied into ``target`` as a new series of the study ``study``: new
    SeriesInstanceUID and SOPInstanceUIDs, SeriesNumber ``number``; pixel data untouched."""
    files = sorted(source.iterdir())
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in headers])
    keep = range(len(files)) if keep is None else keep
    target.mkdir(parents=True, exist_ok=True)
    series = pydicom.uid.generate_uid()
    for index in keep:
        path = files[order[index]]
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(target / f"s{number}_{path.name}", enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def inputs(ts_dicom_dir, tmp_path_factory):
    """``study`` (series 3: 20 slices, series 4: 12) and ``gap`` (series 4, a slice missing)."""
    root = tmp_path_factory.mktemp("inputs")
    uid = pydicom.uid.generate_uid()
    study = copy_as_series(ts_dicom_dir, root / "study", 3, uid)
    copy_as_series(ts_dicom_dir, study, 4, uid, keep=list(range(FEWER_SLICES)))
    missing = [k for k in range(ALL_SLICES) if k != 10]
    gap = copy_as_series(ts_dicom_dir, root / "gap", 4, pydicom.uid.generate_uid(), missing)
    return study, gap


def assert_mask_on(path: pathlib.Path, volume) -> np.ndarray:
    image = nib.load(str(path))
    assert image.shape == volume.shape
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
    return np.asarray(image.dataobj)


@pytest.fixture(scope="module")
def in_process(tiny_run, inputs, tmp_path_factory):  # noqa: F811
    """``predict study gap --series 4`` without and with ``--allow-uneven``."""
    tmp = tmp_path_factory.mktemp("predict")
    runs = {}
    for name, flags in (("refused", ()), ("allowed", ("--allow-uneven",))):
        out = tmp / name
        runs[name] = out, pancseg("predict", tiny_run, *inputs, "--series", 4, "-o", out, *flags)
    return runs


def test_series_picks_the_series_of_every_dicom_folder(in_process, inputs):
    from pancseg_tf.io import read_volume

    study, _ = inputs
    out, proc = in_process["allowed"]
    assert proc.returncode == 0, proc.stderr
    chosen = read_volume(study, series=4)
    assert chosen.shape[2] == FEWER_SLICES and read_volume(study).shape[2] == ALL_SLICES
    assert_mask_on(out / "study.nii.gz", chosen)
    assert "wrote 2 of 2 mask(s)" in proc.stdout


def test_an_uneven_series_fails_alone_without_allow_uneven(in_process):
    out, proc = in_process["refused"]
    assert proc.returncode == 1, proc.stderr
    assert (out / "study.nii.gz").is_file() and not (out / "gap.nii.gz").exists()
    (line,) = [line for line in proc.stderr.splitlines() if "gap failed" in line]
    assert "(a missing slice?)" in line and "pass --allow-uneven" in line
    assert "Traceback" not in proc.stderr and "wrote 1 of 2 mask(s)" in proc.stdout


def test_allow_uneven_writes_the_mask_on_the_mean_spacing_grid(in_process, inputs):
    from pancseg_tf.io import read_volume

    _, gap = inputs
    out, proc = in_process["allowed"]
    assert proc.returncode == 0, proc.stderr
    volume = read_volume(gap, allow_uneven=True)
    assert volume.shape[2] == GAP_SLICES
    mask = assert_mask_on(out / "gap.nii.gz", volume)
    assert 0 < mask.sum() < mask.size, "a mask neither empty nor full"


def test_series_with_no_dicom_folder_input_is_one_line(tiny_run, ts_ct_path, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    proc = pancseg("predict", tiny_run, ts_ct_path, "-o", out, "--series", 3)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: --series "), proc.stderr
    assert "ct_3mm.nii.gz" in lines[0]
    assert not out.exists()


def test_the_seg_of_an_uneven_series_places_each_frame_on_its_own_slice(
    tiny_run,  # noqa: F811
    in_process,
    inputs,
    tmp_path,
):
    """With the mask of the NIfTI run: frame by frame, the SEG holds the mask's slice of the
    source slice it references, at that slice's own position (4 mm across the gap)."""
    hd = pytest.importorskip("highdicom")
    from pancseg_tf.io.dicom import read_dicom_series_with_headers
    from tests.io.test_dicom_seg import assert_references_source

    _, gap = inputs
    nifti, _ = in_process["allowed"]
    mask = np.asarray(nib.load(str(nifti / "gap.nii.gz")).dataobj)
    out = tmp_path / "seg"
    flags = ("--output-format", "dicom-seg", "--allow-uneven")
    proc = pancseg("predict", tiny_run, gap, "-o", out, *flags)
    assert proc.returncode == 0, proc.stderr
    _, headers = read_dicom_series_with_headers(gap, allow_uneven=True)
    seg = hd.seg.segread(out / "gap.dcm")
    assert_references_source(seg, headers)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(headers)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    placed = np.zeros_like(mask)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        (image,) = item.DerivationImageSequence[0].SourceImageSequence
        placed[:, :, index[str(image.ReferencedSOPInstanceUID)]] = frame.T
    np.testing.assert_array_equal(placed, mask)
    assert 0 < mask.sum() < mask.size, "a mask neither empty nor full"
    z = sorted(
        float(i.PlanePositionSequence[0].ImagePositionPatient[2])
        for i in seg.PerFrameFunctionalGroupsSequence
    )
    steps = np.diff(z) / 2.0  # the series' own 2 mm, never the mean 2.11 mm of the NIfTI grid
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


def test_the_beam_read_takes_the_series_flags(inputs, tmp_path):
    """`ReadCase` as a worker runs it: the NIfTI path and the DICOM SEG path read the series
    the flags name, and without ``allow_uneven`` the gap is a dead letter naming the flag."""
    pytest.importorskip("apache_beam")
    from pancseg_tf.beam.pipeline import FAILED, CaseTask, ReadCase

    study, gap = inputs
    out = tmp_path / "out"
    out.mkdir()
    options = {"series": 4, "allow_uneven": True}
    for dicom_seg in (False, True):
        reader = ReadCase(str(out), False, dicom_seg, read_options=options)
        (case,) = reader.process(CaseTask("study", study))
        assert case.volume.shape[2] == FEWER_SLICES
        (case,) = reader.process(CaseTask("gap", gap))
        assert case.volume.shape[2] == GAP_SLICES
        assert (case.headers is not None) == dicom_seg
        assert case.headers is None or len(case.headers) == GAP_SLICES
    reader = ReadCase(str(out), False, read_options={"series": 4, "allow_uneven": False})
    (failed,) = reader.process(CaseTask("gap", gap))
    assert failed.tag == FAILED and "pass --allow-uneven" in failed.value["reason"]


@pytest.mark.large
def test_beam_takes_series_and_allow_uneven_as_in_process(tiny_run, in_process, inputs, tmp_path):  # noqa: F811
    pytest.importorskip("apache_beam")
    from tests.test_beam import BEAM

    reference, _ = in_process["allowed"]
    out = tmp_path / "beam"
    flags = ("--series", 4, "--allow-uneven")
    proc = pancseg("predict", tiny_run, *inputs, "-o", out, *flags, *BEAM)
    assert proc.returncode == 0, proc.stderr
    for name in ("study.nii.gz", "gap.nii.gz"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written_cases"] == ["gap", "study"] and summary["failed"] == 0
