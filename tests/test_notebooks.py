"""The Colab notebooks in notebooks/: their shape on disk, and each run end to end under smoke.

Every notebook's first code cell is tagged ``parameters`` and holds ``smoke = False``
(papermill style). The execution test inserts a cell setting ``smoke = True`` right after it, as
papermill's injected-parameters cell does, and runs the notebook headless with nbclient in this
interpreter's own ``python3`` kernel (the ipykernel kernelspec installed in ``sys.prefix``): with
smoke set each notebook trains a tiny network on a tiny synthetic cohort in a temporary folder,
on CPU, without network access.
"""

import os
import pathlib
import re
import sys

import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_quickstart.ipynb", "02_train_on_your_data.ipynb", "03_serving.ipynb")
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
#: Seconds one cell may run with smoke set: training a tiny network, on a loaded 2-core machine.
CELL_TIMEOUT = 420


def read(path: pathlib.Path):
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def first_code_cell(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")


def test_the_three_notebooks_are_there():
    assert set(EXPECTED) <= {p.name for p in PATHS}


# --- on disk ---


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = read(path)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.get('id')} has outputs"
            assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
        assert "attachments" not in cell or not cell.attachments


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_starts_with_a_header_then_its_parameters(path):
    nb = read(path)
    header = nb.cells[0]
    assert header.cell_type == "markdown"
    assert header.source.startswith("# "), "the header cell opens with a title"
    for what in ("**Accelerator:**", "**Run time:**", "colab.research.google.com/github/"):
        assert what in header.source, f"the header cell names {what}"
    parameters = nb.cells[first_code_cell(nb)]
    assert "parameters" in parameters.metadata.get("tags", [])
    assert re.search(r"^smoke = False\b", parameters.source, re.MULTILINE)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_install_cell_is_skipped_under_smoke(path):
    nb = read(path)
    installs = [c for c in nb.cells if c.cell_type == "code" and "pip install" in c.source]
    assert len(installs) == 1
    source = installs[0].source
    assert re.search(r'^REPO_URL = "https://github\.com/[^"]+/pancseg_tf"', source, re.MULTILINE)
    guard = source.index("if not smoke:")
    for match in re.finditer(r"^(\s*)\S*pip install", source, re.MULTILINE):
        assert match.start() > guard and match.group(1), "pip runs only inside `if not smoke:`"


# --- executed ---


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """The kernel and what it starts see this environment: this venv's ``pancseg`` first on
    PATH, temporary folders under ``tmp_path``, kernelspecs of ``sys.prefix`` before a
    user-level ``python3``, and this checkout as ``PANCSEG_REPO`` (notebook 03 loads the TF
    Serving stand-in, ``serving/standin_server.py``, from it instead of downloading it)."""
    bin_dir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PANCSEG_REPO", str(NOTEBOOKS.parent))
    return tmp_path


@pytest.mark.large
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_end_to_end_with_smoke(name, kernel_env):
    from nbclient import NotebookClient

    nb = read(NOTEBOOKS / name)
    injected = nbformat.v4.new_code_cell(
        "# Parameters injected by tests/test_notebooks.py\n"
        "import sys\n"
        f"assert sys.executable == {sys.executable!r}, sys.executable  # the venv's own kernel\n"
        "smoke = True"
    )
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(first_code_cell(nb) + 1, injected)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(kernel_env)}},
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Each notebook ends by showing a picture: the overlays, the threshold curves, the mask.
    assert any("image/png" in o.get("data", {}) for o in outputs)
