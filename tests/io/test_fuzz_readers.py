"""Fuzzed readers: odd NIfTI headers and DICOM tag sets either read right or fail in one line.

Property, for every generated file: `read_volume` returns the volume the file defines (shape,
finite affine equal to the one the header or tags define, the voxel values written), or raises
`PancsegError` whose message is one line; never another exception and never a hang (hypothesis
``deadline``). An oracle computed here from the standards (not from the reader) says which of
the two must happen, so a reader that refused everything would fail too. Every file also goes
through ``pancseg info`` in-process: exit 0, or exit 2 with exactly one ``pancseg: error:`` line.
Two subprocess tests check that nothing else (nibabel's or pydicom's own messages) reaches the
terminal.

How many cases a run tries: profile ``pancseg-fuzz-dev`` (the default) 60 NIfTI + 25 DICOM
cases, random each run; ``pancseg-fuzz-ci`` (chosen by ``--run-large``, as CI runs, or by
``PANCSEG_FUZZ_PROFILE=pancseg-fuzz-ci``) 200 NIfTI + 100 DICOM cases, derandomized, so every
CI run tries the same cases.
"""

import contextlib
import io
import os
import pathlib
import subprocess
import sys
import tempfile
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pancseg_tf.cli import main
from pancseg_tf.errors import PancsegError
from pancseg_tf.io import read_volume
from tests.fuzz_factory import (
    NIFTI_DTYPES,
    DicomCase,
    expected_nifti_affine,
    quaternion_matrix,
    write_dicom_case,
    write_raw_nifti,
)

# === Profiles ===

settings.register_profile(
    "pancseg-fuzz-dev",
    deadline=timedelta(seconds=10),  # a hang fails; the 2-core machine is shared, so generous
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "pancseg-fuzz-ci", settings.get_profile("pancseg-fuzz-dev"), derandomize=True
)
CASES = {
    "pancseg-fuzz-dev": {"nifti": 60, "dicom": 25},
    "pancseg-fuzz-ci": {"nifti": 200, "dicom": 100},
}


def fuzz_settings(request, kind: str) -> settings:
    """The run's profile with its number of ``kind`` cases (see the module docstring)."""
    name = os.environ.get("PANCSEG_FUZZ_PROFILE") or (
        "pancseg-fuzz-ci" if request.config.getoption("--run-large") else "pancseg-fuzz-dev"
    )
    if name not in CASES:
        raise pytest.UsageError(f"PANCSEG_FUZZ_PROFILE must be one of {sorted(CASES)}, not {name}")
    return settings(settings.get_profile(name), max_examples=CASES[name][kind])


# === Shared checks ===


def run_info(path: pathlib.Path) -> tuple[int, str]:
    """``pancseg info PATH`` in this process: (exit status, what it wrote to stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(["info", str(path)])
    return status, err.getvalue()


def assert_one_line_error(status: int, stderr: str) -> None:
    """Exit 2, one ``pancseg: error:`` line, and no line that is not pancseg's own."""
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert [line.startswith("pancseg: error: ") for line in lines].count(True) == 1, stderr
    assert lines[-1].startswith("pancseg: error: "), stderr
    assert all(line.startswith("pancseg: ") for line in lines), stderr


def read_or_error(path: pathlib.Path, **kwargs):
    """The volume, or the `PancsegError` (checked to be one line); anything else propagates."""
    try:
        return read_volume(path, **kwargs)
    except PancsegError as error:
        assert "\n" not in str(error) and str(error).strip(), repr(str(error))
        return error


# === NIfTI ===

F32_MAX = float(np.finfo(np.float32).max)
BAD_SIZES = (0.0, -1.5, float("nan"), float("inf"))


@st.composite
def rotations(draw) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A rotation matrix and its quaternion (b, c, d), with ``a >= 0.05`` so no rounding doubt."""
    a = draw(st.floats(0.05, 1.0))
    bcd = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(3)])
    q = np.concatenate([[a], bcd]) / np.linalg.norm(np.concatenate([[a], bcd]))
    b, c, d = (float(np.float32(v)) for v in q[1:])
    return quaternion_matrix(b, c, d), (b, c, d)


@st.composite
def nifti_cases(draw) -> dict:
    """Header fields and voxel values of one NIfTI file (see `write_raw_nifti`)."""
    ndim = draw(st.sampled_from([2, 3, 3, 3, 3, 4, 5]))
    size = st.integers(1, 4) if draw(st.integers(0, 9)) else st.integers(0, 4)
    dims = [draw(size) for _ in range(min(ndim, 3))]
    if ndim >= 4:
        dims.append(draw(st.sampled_from([1, 1, 2])))
    if ndim == 5:
        dims.append(draw(st.sampled_from([1, 1, 2])))
    datatype = draw(st.sampled_from([4, 4, 16, 2, 256, 512, 8, 768, 1024, 1280, 64, *NIFTI_DTYPES]))

    sizes = [draw(st.floats(0.25, 5.0, width=32)) for _ in range(3)]
    if draw(st.integers(0, 4)) == 0:  # an odd voxel size on one axis
        sizes[draw(st.integers(0, 2))] = draw(st.sampled_from(BAD_SIZES))
    qfac = draw(st.sampled_from([1.0, 1.0, -1.0, 0.0, 2.0]))
    rotation, quatern = draw(rotations())
    if draw(st.integers(0, 9)) == 0:  # outside the unit ball: no rotation
        quatern = (0.9, -0.8, 0.7)
    qoffset = tuple(draw(st.floats(-500, 500, width=32)) for _ in range(3))

    sform_rotation, _ = draw(rotations())
    srow_sizes = [draw(st.floats(0.25, 5.0, width=32)) for _ in range(3)]
    linear = sform_rotation * srow_sizes
    odd_sform = draw(st.sampled_from(["none"] * 6 + ["shear", "zero", "nan", "parallel"]))
    if odd_sform == "shear":
        linear[:, 2] += 0.4 * linear[:, 1]  # a gantry tilt: valid
    elif odd_sform == "zero":
        linear[:, 0] = 0.0
    elif odd_sform == "nan":
        linear[1, 1] = np.nan
    elif odd_sform == "parallel":
        linear[:, 1] = 2.0 * linear[:, 0]
    srow = np.hstack([linear, np.array([[draw(st.floats(-500, 500, width=32))] for _ in range(3)])])

    return {
        "dim": [ndim, *dims],
        "datatype": datatype,
        "pixdim": [qfac, *sizes],
        "qform_code": draw(st.integers(0, 4)),
        "sform_code": draw(st.integers(0, 4)),
        "quatern": quatern,
        "qoffset": qoffset,
        "srow": srow,
        "scl_slope": draw(st.sampled_from([0.0, 1.0, 1.0, 2.0, 0.5, -1.0, np.nan, np.inf, 1e37])),
        "scl_inter": draw(st.sampled_from([0.0, 0.0, -1024.0, 10.5, np.nan, np.inf])),
        "non_finite_voxel": draw(st.integers(0, 9)) == 0,
        "truncated": draw(st.integers(0, 9)) == 0,
        "gz": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def stored_values(dtype: np.dtype, count: int, seed: int, non_finite: bool) -> np.ndarray:
    """``count`` values of ``dtype``: HU-like where the type holds them, else its own range."""
    rng = np.random.default_rng(seed)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(int(info.min), -1024), min(int(info.max), 3071)
        return rng.integers(low, high, size=count, endpoint=True).astype(dtype)
    if dtype.kind == "f":
        values = rng.normal(0.0, 500.0, size=count).astype(dtype)
        if non_finite and count:
            values[rng.integers(count)] = np.nan
        return values
    # complex or RGB: bytes only, the reader must refuse them before their values matter
    return np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype)


def nifti_oracle(case: dict, values: np.ndarray | None) -> tuple[str | None, dict]:
    """Why the file must be refused (None: it must read) and what a correct read returns."""
    dims = case["dim"][1 : case["dim"][0] + 1]
    shape = list(dims)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    dtype = NIFTI_DTYPES[case["datatype"]]
    if len(shape) != 3:
        return "not 3D", {}
    if min(shape) < 1:
        return "empty axis", {}
    if dtype is None or dtype.kind not in "iuf":
        return "not real voxels", {}
    if case["truncated"]:
        return "truncated", {}
    slope, inter = case["scl_slope"], case["scl_inter"]
    scaled = bool(np.isfinite(slope) and slope != 0)
    if scaled and not np.isfinite(inter):
        return "invalid intercept", {}
    if case["sform_code"] == 0:
        sizes = np.asarray(case["pixdim"][1:4], dtype=np.float32)
        if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
            return "bad pixdim", {}
    affine = expected_nifti_affine(
        pixdim=case["pixdim"],
        qform_code=case["qform_code"],
        sform_code=case["sform_code"],
        quatern=case["quatern"],
        qoffset=case["qoffset"],
        srow=case["srow"],
    )
    if affine is None and case["sform_code"] == 0 and case["qform_code"] > 0:
        return "no rotation", {}
    if affine is not None:
        linear = affine[:3, :3]
        norms = np.linalg.norm(linear, axis=0)
        if not np.all(np.isfinite(affine)) or np.any(norms == 0):
            return "bad affine", {}
        if abs(np.linalg.det(linear / norms)) < 1e-6:
            return "singular affine", {}
    array = values.reshape(shape, order="F")
    expected = array.astype(np.float64)
    if scaled and (slope, inter) != (1.0, 0.0):
        expected = expected * np.float64(np.float32(slope)) + np.float64(np.float32(inter))
    if not np.all(np.isfinite(expected)) or np.abs(expected).max() > F32_MAX:
        return "non-finite voxels", {}
    return None, {"shape": tuple(shape), "affine": affine, "values": expected, "scaled": scaled}


def check_nifti_case(folder: pathlib.Path, case: dict) -> None:
    dims = case["dim"][1 : case["dim"][0] + 1]
    count = int(np.prod(dims)) if dims else 0
    dtype = NIFTI_DTYPES[case["datatype"]]
    values = None
    data = b""
    if dtype is not None:
        values = stored_values(dtype, count, case["seed"], case["non_finite_voxel"])
        data = values.tobytes()
    else:
        data = bytes(2 * count)
    if case["truncated"]:
        data = data[: len(data) // 2]
    path = folder / ("case.nii.gz" if case["gz"] else "case.nii")
    fields = {k: case[k] for k in ("dim", "datatype", "pixdim", "qform_code", "sform_code")}
    fields |= {k: case[k] for k in ("quatern", "qoffset", "srow", "scl_slope", "scl_inter")}
    write_raw_nifti(path, data=data, **fields)

    refusal, expected = nifti_oracle(case, values)
    result = read_or_error(path)
    status, stderr = run_info(path)
    if refusal is not None:
        assert isinstance(result, PancsegError), f"read, but must be refused ({refusal})"
        assert_one_line_error(status, stderr)
        return
    assert not isinstance(result, PancsegError), f"refused, but must read: {result}"
    assert status == 0, stderr
    assert result.shape == expected["shape"]
    assert np.all(np.isfinite(result.affine))
    if expected["affine"] is not None:
        np.testing.assert_allclose(result.affine, expected["affine"], rtol=1e-5, atol=1e-3)
    else:  # no qform, no sform: only the voxel sizes are defined
        sizes = np.asarray(case["pixdim"][1:4], dtype=np.float32)
        np.testing.assert_allclose(result.spacing, sizes, rtol=1e-6)
    assert (result.qform_code, result.sform_code) == (case["qform_code"], case["sform_code"])
    if not expected["scaled"] or (case["scl_slope"], case["scl_inter"]) == (1.0, 0.0):
        assert result.array.dtype == dtype.newbyteorder("=")  # stored dtype kept
        np.testing.assert_array_equal(result.array, values.reshape(result.shape, order="F"))
    elif np.issubdtype(result.array.dtype, np.integer):
        np.testing.assert_array_equal(result.array, expected["values"])
    else:
        assert result.array.dtype == np.float32
        np.testing.assert_allclose(result.array, expected["values"], rtol=1e-6, atol=1e-3)


def test_fuzzed_nifti_headers_read_right_or_fail_in_one_line(request):
    @fuzz_settings(request, "nifti")
    @given(case=nifti_cases())
    def check(case):
        with tempfile.TemporaryDirectory() as folder:
            check_nifti_case(pathlib.Path(folder), case)

    check()


# (what is odd, fields, reason the reader must give)
NIFTI_TABLE = [
    ("zero pixdim, qform", {"pixdim": (1, 0.0, 1, 1), "qform_code": 1}, r"pixdim\[1:4\]"),
    ("negative pixdim, qform", {"pixdim": (1, 1, -2.0, 1), "qform_code": 1}, "finite sizes > 0"),
    ("NaN pixdim, no codes", {"pixdim": (1, 1, 1, float("nan"))}, "finite sizes > 0"),
    ("complex voxels", {"datatype": 32, "qform_code": 1}, "complex numbers"),
    ("RGB voxels", {"datatype": 128, "qform_code": 1}, r"colour \(RGB\)"),
    ("empty axis", {"dim": (3, 2, 0, 4), "qform_code": 1}, "axis of size 0"),
    ("NaN intercept", {"scl_slope": 2.0, "scl_inter": float("nan"), "qform_code": 1}, "intercept"),
    ("huge dims", {"dim": (3, 30000, 30000, 30000), "qform_code": 1}, "more than the memory"),
    ("2D", {"dim": (2, 2, 3), "qform_code": 1}, r"\(2D\); expected a 3D volume"),
]


@pytest.mark.parametrize("what, fields, reason", NIFTI_TABLE, ids=[row[0] for row in NIFTI_TABLE])
def test_odd_nifti_is_refused_with_its_reason(tmp_path, what, fields, reason):
    fields = {"dim": (3, 2, 3, 4), "datatype": 4, **fields}
    dtype = NIFTI_DTYPES[fields["datatype"]]
    # .gz: a header that asks for terabytes must fail on memory, not on a short plain file
    path = write_raw_nifti(tmp_path / "odd.nii.gz", data=bytes(24 * dtype.itemsize), **fields)

    with pytest.raises(PancsegError, match=reason) as error:
        read_volume(path)
    assert "\n" not in str(error.value)
    assert_one_line_error(*run_info(path))


def test_sform_makes_odd_pixdim_irrelevant(tmp_path):
    srow = np.array([[0.0, 0.0, 2.5, -10.0], [-0.7, 0.0, 0.0, 20.0], [0.0, 0.7, 0.0, 5.0]])
    data = np.arange(24, dtype=np.int16)
    path = write_raw_nifti(
        tmp_path / "x.nii",
        dim=(3, 2, 3, 4),
        datatype=4,
        data=data.tobytes(),
        pixdim=(1, 0.0, -1.0, float("nan")),
        qform_code=0,
        sform_code=2,
        srow=srow,
    )
    volume = read_volume(path)
    np.testing.assert_allclose(volume.affine[:3], srow, atol=1e-6)
    assert volume.orientation == ("P", "S", "R")
    np.testing.assert_array_equal(volume.array, data.reshape((2, 3, 4), order="F"))


def test_no_qform_no_sform_reads_with_a_warning(tmp_path, caplog):
    path = write_raw_nifti(
        tmp_path / "x.nii",
        dim=(3, 2, 3, 4),
        datatype=2,
        data=bytes(24),
        pixdim=(1, 0.8, 0.9, 2.5),
    )
    volume = read_volume(path)
    assert volume.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert volume.orientation == ("L", "A", "S")  # the ANALYZE fallback: first axis flipped
    assert "orientation is unknown" in caplog.text


# === DICOM ===

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORIENTATIONS = [
    AXIAL,
    (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # NIH Pancreas-CT: columns run to -y
    (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
    (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
]
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
]
# Tags spoiled in every slice; each must be refused.
SPOILS = [
    ("PixelSpacing", ["0", "0.8"]),
    ("PixelSpacing", ["-0.8", "0.8"]),
    ("PixelSpacing", ["0.8"]),
    ("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]),  # parallel directions
    ("ImageOrientationPatient", ["0", "0", "0", "0", "0", "0"]),
    ("RescaleSlope", "0"),
    ("RescaleSlope", "NaN"),
    ("RescaleIntercept", "inf"),
    ("Rows", None),
    ("Rows", 0),
    ("SamplesPerPixel", 3),
    ("NumberOfFrames", 2),
]
# Tags dropped from some slices; each must be refused (a slice without Rows used to be left
# out of its series unnoticed).
DROPPED_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)


def euler_rotation(x: float, y: float, z: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@st.composite
def dicom_cases(draw) -> tuple[DicomCase, dict]:
    """A series (and maybe a second one beside it) and the defect it was given."""
    transfer = draw(st.sampled_from(TRANSFER_SYNTAXES))
    num_slices = draw(st.integers(1, 4))
    if transfer == JPEG2000Lossless:
        columns = rows = 32  # OpenJPEG's default resolutions need at least 32 x 32
    else:
        columns, rows = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):
        orientation = draw(st.sampled_from(ORIENTATIONS))
    else:  # oblique: a few to 30 degrees about each axis
        angles = [draw(st.floats(-0.5, 0.5)) for _ in range(3)]
        rotation = euler_rotation(*angles)
        orientation = tuple(np.round(np.concatenate([rotation[:, 0], rotation[:, 1]]), 8))
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = (draw(st.sampled_from([0.5, 0.8, 1.25])), draw(st.sampled_from([0.6, 0.9])))
    spacing = draw(st.sampled_from([1.0, 2.5, 3.0]))
    origin = np.array([draw(st.integers(-300, 300)) for _ in range(3)], dtype=np.float64)
    positions = origin + np.arange(num_slices)[:, None] * spacing * normal

    defects = ["none"] * 5 + ["drop", "spoil"]
    if num_slices >= 2:
        defects += ["tilt", "duplicate"]
    if num_slices >= 3:
        defects.append("uneven")
    defect = draw(st.sampled_from(defects))
    drop, spoil = (), ()
    if defect == "tilt":  # gantry tilt: each slice shifted in-plane, a sheared grid
        positions = positions + np.arange(num_slices)[:, None] * 0.4 * spacing * col_dir
    elif defect == "duplicate":
        k = draw(st.integers(1, num_slices - 1))
        positions[k] = positions[k - 1]
    elif defect == "uneven":
        k = draw(st.integers(1, num_slices - 1))
        positions[k:] += 0.5 * spacing * normal
    elif defect == "drop":
        tag = draw(st.sampled_from(DROPPED_TAGS))
        slices = draw(st.sampled_from(["all", "one"]))
        which = (
            tuple(range(num_slices)) if slices == "all" else (draw(st.integers(0, num_slices - 1)),)
        )
        drop = ((tag, which),)
    elif defect == "spoil":
        spoil = (draw(st.sampled_from(SPOILS)),)

    slope, intercept = draw(
        st.sampled_from([(1.0, -1024.0), (1.0, 0.0), (2.0, -1000.0), (0.5, -1000.5)])
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    stored = rng.integers(0, 3000, size=(columns, rows, num_slices))
    hu = stored * slope + intercept
    second = draw(st.integers(0, num_slices)) if draw(st.integers(0, 3)) == 0 else 0
    case = DicomCase(
        hu=hu,
        orientation=orientation,
        pixel_spacing=pixel_spacing,
        positions=positions,
        slice_thickness=spacing,
        rescale=(slope, intercept),
        transfer_syntax=transfer,
        drop=drop,
        spoil=spoil,
        second_slices=second,
    )
    return case, {"defect": defect}


def expected_dicom_affine(case: DicomCase) -> np.ndarray:
    """RAS+ affine of the series as DICOM defines it (slices in the order written)."""
    row_dir = np.asarray(case.orientation[:3], dtype=np.float64)
    col_dir = np.asarray(case.orientation[3:], dtype=np.float64)
    row_spacing, col_spacing = case.pixel_spacing
    positions = np.asarray(case.positions, dtype=np.float64)
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        step = np.cross(row_dir, col_dir) * case.slice_thickness
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * col_spacing, col_dir * row_spacing
    lps[:3, 2], lps[:3, 3] = step, positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def check_dicom_case(folder: pathlib.Path, case: DicomCase, facts: dict) -> None:
    write_dicom_case(folder, case)
    result = read_or_error(folder)
    status, stderr = run_info(folder)
    defect = facts["defect"]
    if defect in ("drop", "spoil", "duplicate", "uneven"):
        assert isinstance(result, PancsegError), f"read, but must be refused ({defect})"
        assert_one_line_error(status, stderr)
        if defect != "uneven":
            return
        # The user's way out of an uneven series: the mean spacing, with a warning.
        result = read_or_error(folder, allow_uneven=True)
    assert not isinstance(result, PancsegError), f"refused, but must read: {result}"
    if defect != "uneven":
        assert status == 0, stderr
    assert result.shape == case.hu.shape
    np.testing.assert_array_equal(result.array.astype(np.float64), case.hu)
    np.testing.assert_allclose(result.affine, expected_dicom_affine(case), rtol=1e-6, atol=1e-5)
    assert result.is_sheared == (defect == "tilt")
    assert (result.qform_code, result.sform_code) == ((0, 1) if result.is_sheared else (1, 1))


def test_fuzzed_dicom_series_read_right_or_fail_in_one_line(request):
    @fuzz_settings(request, "dicom")
    @given(drawn=dicom_cases())
    def check(drawn):
        case, facts = drawn
        with tempfile.TemporaryDirectory() as folder:
            check_dicom_case(pathlib.Path(folder), case, facts)

    check()


# === The terminal sees one line ===


def pancseg_info_subprocess(path: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pancseg_tf.cli", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nibabel_messages_stay_off_the_terminal(tmp_path):
    # nibabel prints "data code 1 not supported; not attempting fix" on its own handler.
    path = write_raw_nifti(tmp_path / "bits.nii", dim=(3, 2, 3, 4), datatype=1, data=bytes(24))
    proc = pancseg_info_subprocess(path)
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "not a valid NIfTI file" in proc.stderr


def test_pydicom_warnings_stay_off_the_terminal(tmp_path):
    # Rows 2 with pixel data for 4 rows: pydicom warns about the extra bytes, then it decodes
    # two frames, which the reader refuses.
    case = DicomCase(hu=np.zeros((3, 4, 2)), spoil=(("Rows", 2),))
    write_dicom_case(tmp_path, case)
    proc = pancseg_info_subprocess(tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "decodes to shape (2, 2, 3); expected (2, 3)" in proc.stderr
