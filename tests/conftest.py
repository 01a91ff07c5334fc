"""Shared fixtures: the real data ($PANCSEG_TEST_DATA, default ../shared/data) and the `large`
marker."""

import os
import pathlib

import pytest

from pancseg_tf import testdata

# Keep TensorFlow's C++ start-up lines out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = testdata.default_data_dir(REPO)


# The reason the real-data tests were skipped, repeated once at the end of the run.
_DATA_SKIPPED: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_terminal_summary(terminalreporter):
    if _DATA_SKIPPED:
        terminalreporter.write_line(f"real-data tests skipped: {_DATA_SKIPPED[0]}")


def pytest_addoption(parser):
    parser.addoption(
        "--run-large", action="store_true", default=False, help="also run tests marked large"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: run with --run-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The read-only real images (see ../shared/data/README.md) in $PANCSEG_TEST_DATA, by default
    ../shared/data. Missing or incomplete (sizes checked against the manifest): the tests that
    need them skip with how to get them, or fail where CI is set."""
    manifest = testdata.load_manifest()
    missing = testdata.problems(SHARED_DATA, manifest, hashes=False)
    if missing:
        incomplete = None
        if len(missing) < len(manifest):
            incomplete = f"{len(missing)} of {len(manifest)} files wrong, e.g. {missing[0]}"
        message = testdata.how_to_get(SHARED_DATA, incomplete)
        if _in_ci():
            pytest.fail(message, pytrace=False)
        _DATA_SKIPPED.append(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def ts_ct_path(shared_data) -> pathlib.Path:
    return shared_data / "totalsegmentator_example" / "ct_3mm.nii.gz"


@pytest.fixture(scope="session")
def ts_labels_path(shared_data) -> pathlib.Path:
    return shared_data / "totalsegmentator_example" / "ct_3mm_labels.nii.gz"


@pytest.fixture(scope="session")
def ts_dicom_dir(shared_data) -> pathlib.Path:
    return shared_data / "totalsegmentator_example" / "ct_dicom"


@pytest.fixture(scope="session")
def nih_root(shared_data) -> pathlib.Path:
    return shared_data / "nih_pancreas_ct"


@pytest.fixture(scope="session")
def nih_series_dir(nih_root) -> pathlib.Path:
    return next((nih_root / "Pancreas-CT" / "PANCREAS_0002").glob("*/*"))


@pytest.fixture(scope="session")
def nih_label_path(nih_root) -> pathlib.Path:
    return nih_root / "TCIA_pancreas_labels-02-05-2017" / "label0002.nii.gz"
