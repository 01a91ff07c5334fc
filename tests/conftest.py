"""Shared fixtures: the real data in ../shared/data and the `large` marker."""

import os
import pathlib

import pytest

# Keep TensorFlow's C++ start-up lines out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
    """The read-only real images of ../shared/data (see its README)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}")
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
