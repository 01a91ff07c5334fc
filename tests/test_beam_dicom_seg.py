"""`pancseg predict --runner DirectRunner --output-format dicom-seg`: the in-process command's SEG.

The tiny run of tests/test_predict.py segments the real JPEG 2000 TotalSegmentator series (a copy
given the study and series UIDs its anonymisation removed) in this process and on Beam's
DirectRunner (two worker processes, as in tests/test_beam.py), the inputs given to Beam as a
quoted glob that also matches the series as anonymised (no UIDs: that case fails alone). The two
SEGs must be one SEG: the same decoded frames placed on the same voxels, and every attribute
equal except those generated fresh by each write (`PER_WRITE`).
"""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from tests.io.test_dicom_seg import (
    assert_pancreas_segment,
    assert_references_source,
    copy_with_study_uids,
    seg_voxels,
)
from tests.test_beam import BEAM
from tests.test_predict import (
    pancseg,
    tiny_run,  # noqa: F401 - the module-scoped fixture
)

hd = pytest.importorskip("highdicom")
pytest.importorskip("apache_beam")

# Keras saving a model under NumPy 2 (not our code).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

#: Attributes (sequence items' paths without their indices) that differ between two writes of
#: the SEG of one series, in this process or on Beam alike. highdicom gives every SEG a new
#: SOPInstanceUID and SeriesInstanceUID (we ask it to: two SEGs of one series filed in a PACS
#: must not collide) and a new DimensionOrganizationUID; the file meta repeats the SOP instance
#: UID, and its group length follows that UID's length; the creation, content and contribution
#: times are the clock's at the write.
PER_WRITE = {
    "meta.FileMetaInformationGroupLength",
    "meta.MediaStorageSOPInstanceUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "DimensionOrganizationSequence.DimensionOrganizationUID",
    "DimensionIndexSequence.DimensionOrganizationUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "ContributingEquipmentSequence.ContributionDateTime",
}
#: Of `PER_WRITE`, the UIDs that must differ: a SEG that reused another's would replace it.
FRESH_UIDS = {"SOPInstanceUID", "SeriesInstanceUID", "meta.MediaStorageSOPInstanceUID"}


def differences(a, b, path: str = "") -> set[str]:
    """The attributes whose values differ between two datasets, recursing into sequences; an
    attribute only one of them has counts, PixelData too."""
    found = set()
    for tag in sorted(set(a.keys()) | set(b.keys())):
        name = path + (pydicom.datadict.keyword_for_tag(tag) or str(tag))
        if tag not in a or tag not in b:
            found.add(name)
        elif a[tag].VR == "SQ":
            if len(a[tag].value) != len(b[tag].value):
                found.add(name)
            for x, y in zip(a[tag].value, b[tag].value):
                found |= differences(x, y, name + ".")
        elif a[tag].value != b[tag].value:
            found.add(name)
    return found


@pytest.fixture(scope="module")
def series_folder(ts_dicom_dir, tmp_path_factory):
    """``series/ct_dicom`` (the series with study and series UIDs) and ``series/no_uids`` (the
    series as anonymised: a SEG cannot reference it)."""
    folder = tmp_path_factory.mktemp("inputs") / "series"
    copy_with_study_uids(ts_dicom_dir, folder / "ct_dicom")
    shutil.copytree(ts_dicom_dir, folder / "no_uids")
    return folder


@pytest.fixture(scope="module")
def seg_runs(tiny_run, series_folder, tmp_path_factory):  # noqa: F811
    """The in-process SEG of ``ct_dicom``, and the pipeline's over the glob ``series/*``."""
    tmp = tmp_path_factory.mktemp("seg")
    reference = tmp / "in_process"
    args = ("--output-format", "dicom-seg")
    proc = pancseg("predict", tiny_run, series_folder / "ct_dicom", "-o", reference, *args)
    assert proc.returncode == 0, proc.stderr
    out = tmp / "beam"
    proc = pancseg("predict", tiny_run, series_folder / "*", "-o", out, *args, *BEAM)
    return reference, out, proc


@pytest.mark.large
def test_beam_seg_is_the_in_process_seg(seg_runs, series_folder):
    from pancseg_tf.io.dicom import read_dicom_series_with_headers

    reference, out, proc = seg_runs
    assert proc.returncode == 1, proc.stderr  # no_uids failed, below
    assert sorted(p.name for p in out.iterdir()) == ["ct_dicom.dcm", "failures.tsv", "summary.json"]
    volume, headers = read_dicom_series_with_headers(series_folder / "ct_dicom")
    expected = hd.seg.segread(reference / "ct_dicom.dcm")
    seg = hd.seg.segread(out / "ct_dicom.dcm")

    np.testing.assert_array_equal(seg.pixel_array, expected.pixel_array)
    placed = seg_voxels(seg, volume.affine, volume.shape)
    np.testing.assert_array_equal(placed, seg_voxels(expected, volume.affine, volume.shape))
    assert 0 < placed.sum() < placed.size, "a mask neither empty nor full"
    assert_references_source(seg, headers)
    assert_pancreas_segment(seg)

    changed = {re.sub(r"\[\d+\]", "", d) for d in differences(expected, seg)}
    changed |= differences(expected.file_meta, seg.file_meta, "meta.")
    assert changed <= PER_WRITE, changed - PER_WRITE
    assert FRESH_UIDS <= changed


@pytest.mark.large
def test_a_series_that_cannot_take_a_seg_is_a_dead_letter(seg_runs):
    _, out, proc = seg_runs
    rows = (out / "failures.tsv").read_text().splitlines()
    assert rows[0] == "case\treason" and len(rows) == 2, rows
    case, reason = rows[1].split("\t")
    # The in-process command's reason for the same series (tests/test_predict_dicom_seg.py).
    assert case == "no_uids"
    assert reason.startswith("series in no_uids: DICOM tag StudyInstanceUID (0020,000D)"), reason
    assert str(out.parent) not in reason
    assert f"no_uids failed: {reason}" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [summary[key] for key in ("cases", "written", "skipped", "failed")] == [2, 1, 0, 1]
    assert "wrote 1 of 2 DICOM SEG(s)" in proc.stdout


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancseg: error: "), proc.stderr
    return lines[0]


def test_nifti_among_the_inputs_is_refused_as_in_process(ts_dicom_dir, ts_ct_path, tmp_path):
    # No model there: the inputs are refused before it is looked at or a worker starts.
    args = ("predict", tmp_path / "run", ts_dicom_dir, ts_ct_path, "--output-format", "dicom-seg")
    beam = pancseg(*args, "-o", tmp_path / "beam", "--runner", "DirectRunner")
    in_process = pancseg(*args, "-o", tmp_path / "in_process")
    assert beam.returncode == in_process.returncode == 2
    line = one_error_line(beam)
    assert line == one_error_line(in_process)
    assert "dicom-seg needs DICOM series input, got the file ct_3mm.nii.gz" in line
    assert not (tmp_path / "beam").exists() or list((tmp_path / "beam").iterdir()) == []


def test_without_highdicom_the_same_line_as_in_process(ts_dicom_dir, tmp_path):
    # highdicom made unimportable in the command's process, as on an install without the extra.
    code = (
        "import sys; sys.modules['highdicom'] = None; from pancseg_tf.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["predict", tmp_path / "run", ts_dicom_dir, "--output-format", "dicom-seg"]
    lines = []
    for extra in (["-o", tmp_path / "in_process"], ["-o", tmp_path / "beam", *BEAM]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args + extra)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        lines.append(one_error_line(proc))
    assert lines[0] == lines[1]
    assert 'pip install "pancseg-tf[dicom-seg]"' in lines[0]


def test_read_case_reads_the_headers_on_the_worker_and_skips_a_written_seg(tmp_path):
    """`ReadCase` as the worker runs it: the series' headers read from its files, kept out of
    the element's repr, carried through Beam's coder (a fusion break on a distributed runner);
    a case is skipped by its ``.dcm``, not by a NIfTI mask of an earlier run."""
    from apache_beam import coders

    from pancseg_tf.beam.handler import LoadedCase
    from pancseg_tf.beam.pipeline import SKIPPED, CaseTask, ReadCase
    from tests.dicom_factory import DEFAULT_PATIENT, write_series

    hu = np.full((8, 6, 3), 40, np.int16)
    write_series(tmp_path / "series", hu, pixel_spacing=(1.0, 1.0), spacing=2.0)
    out = tmp_path / "out"
    out.mkdir()
    task = CaseTask("series", tmp_path / "series")
    (nifti_case,) = ReadCase(str(out), False).process(task)
    assert nifti_case.headers is None  # a NIfTI mask needs no headers

    (out / "series.nii.gz").write_bytes(b"an earlier NIfTI mask")
    (case,) = ReadCase(str(out), False, dicom_seg=True).process(task)
    assert isinstance(case, LoadedCase) and case.volume.shape == (8, 6, 3)
    assert [str(ds.PatientID) for ds in case.headers] == [DEFAULT_PATIENT["PatientID"]] * 3
    assert not [v for v in DEFAULT_PATIENT.values() if v in repr(case)]
    coder = coders.registry.get_coder(LoadedCase)
    assert coder.decode(coder.encode(case)).headers == case.headers

    (out / "series.dcm").write_bytes(b"a SEG of an earlier run")
    (skipped,) = ReadCase(str(out), False, dicom_seg=True).process(task)
    assert skipped.tag == SKIPPED and skipped.value == {"case": "series", "status": SKIPPED}


def test_a_remote_nifti_is_refused_and_a_remote_series_is_not():
    """A ``gs://`` input is checked as a local one: a series folder passes, a NIfTI file is
    named (no bucket is reached: the sources are what `expand_inputs` found)."""
    from pancseg_tf.beam.files import RemoteSource
    from pancseg_tf.errors import PancsegError
    from pancseg_tf.predict_io import check_dicom_seg_inputs

    series = ("ct_dicom", RemoteSource("gs://bucket/export/ct_dicom", series=True))
    check_dicom_seg_inputs([series])
    nifti = ("ct_3mm", RemoteSource("gs://bucket/export/ct_3mm.nii.gz"))
    with pytest.raises(PancsegError, match=r"got the file ct_3mm\.nii\.gz \(case ct_3mm\)"):
        check_dicom_seg_inputs([series, nifti])
