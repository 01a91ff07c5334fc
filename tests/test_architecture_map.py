"""docs/ARCHITECTURE.md stays true: every module of pancseg_tf/ is on the map, every module on
the map exists, and the map's three nevers hold on the source's imports (lazy ones included).

Reads the source with `ast` only: nothing of the package is imported, no TensorFlow.
"""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pancseg_tf"
MAP = REPO / "docs" / "ARCHITECTURE.md"


def module_name(path: pathlib.Path) -> str:
    """``pancseg_tf/io/nifti.py`` -> ``pancseg_tf.io.nifti``; a package's ``__init__.py`` -> it."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports anywhere in its source (top level, in functions, under
    ``if``), relative imports resolved; ``from X import Y`` also names ``X.Y``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def executed(name: str) -> set[str]:
    """``name`` and the packages above it: importing a module runs its parents' ``__init__``."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(start: str) -> tuple[set[str], set[str]]:
    """What importing ``start`` can ever import: (our modules, other top-level packages)."""
    ours: set[str] = set()
    others: set[str] = set()
    todo = sorted(executed(start) & MODULES.keys())
    while todo:
        name = todo.pop()
        if name in ours:
            continue
        ours.add(name)
        for imported in imports_of(name):
            if imported.split(".")[0] != "pancseg_tf":
                others.add(imported.split(".")[0])
            else:
                todo.extend(sorted((executed(imported) & MODULES.keys()) - ours))
    return ours, others


def map_text() -> str:
    assert MAP.is_file(), f"{MAP.relative_to(REPO)} is missing: the repository's map"
    return MAP.read_text(encoding="utf-8")


def test_every_module_is_on_the_map():
    named = set(re.findall(r"`(pancseg_tf/[\w/]+\.py)`", map_text()))
    missing = [str(p.relative_to(REPO)) for p in MODULES.values()]
    missing = [p for p in missing if p not in named]
    assert not missing, f"modules not named in docs/ARCHITECTURE.md: {missing}"


def test_every_module_on_the_map_exists():
    named = set(re.findall(r"`(pancseg_tf/[\w/]+\.py)`", map_text()))
    gone = sorted(p for p in named if not (REPO / p).is_file())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {gone}"


@pytest.mark.parametrize(
    "name",
    sorted(n for n in MODULES if n.startswith("pancseg_tf.models"))
    + ["pancseg_tf.losses", "pancseg_tf.metrics"],
)
def test_the_network_knows_no_pipeline(name):
    ours = {i for i in imports_of(name) if i in MODULES}  # modules, not the names taken from them
    # `replicas`: the cross-replica sum of the batch losses (a distribution hook, no pipeline).
    base = {"pancseg_tf.errors", "pancseg_tf.replicas"}
    allowed = {i for i in ours if i in base or i.startswith("pancseg_tf.models")}
    assert ours == allowed, f"{name} imports {sorted(ours - allowed)} (keras and models/ only)"


@pytest.mark.parametrize("start", sorted(n for n in MODULES if n.startswith("pancseg_tf.io")))
def test_reading_images_needs_no_tensorflow(start):
    ours, others = closure(start)
    assert "pancseg_tf.io.volume" in ours  # the closure works: every reader builds a Volume
    heavy = {"tensorflow", "keras"}
    culprits = sorted(n for n in ours if heavy & {i.split(".")[0] for i in imports_of(n)})
    assert not others & heavy, f"{start} reaches TensorFlow / Keras through {culprits}"


@pytest.mark.parametrize("start", ["pancseg_tf.inference", "pancseg_tf.predict_io"])
def test_prediction_needs_no_trainer(start):
    ours, _ = closure(start)
    assert "pancseg_tf.errors" in ours  # the closure works
    trainer = sorted(n for n in ours if n.startswith("pancseg_tf.training"))
    assert not trainer, f"{start} reaches {trainer}"


def code_strings(name: str) -> list[str]:
    """The string constants of ``name``'s source, its docstrings left out."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    scopes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, scopes) and node.body and isinstance(node.body[0], ast.Expr)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_the_package_never_loads_the_serving_standin():
    """The TF Serving stand-in is the repository's ``serving/standin_server.py`` (not shipped by
    ``pip install``): tests, notebook 03 and a benchmark load it; no module of the package
    imports it, by name or by its file's path."""
    assert (REPO / "serving" / "standin_server.py").is_file()
    assert "pancseg_tf.serving.client" in MODULES  # the map of modules is there
    culprits = sorted(
        name
        for name in MODULES
        if any(i.split(".")[0] in ("serving", "standin_server") for i in imports_of(name))
        or any("standin_server" in text for text in code_strings(name))
    )
    assert not culprits, f"{culprits} load serving/standin_server.py"


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of our modules'
    imports (lazy ones too; importing a module runs the ``__init__`` of its packages, so an
    import of ``a.b.c`` is an edge to ``a.b`` as well, except to a package enclosing the
    importer, which is running already)."""
    edges = {}
    for name in MODULES:
        targets = set()
        for imported in imports_of(name):
            for module in executed(imported) & MODULES.keys():
                if module != name and module != "pancseg_tf" and not name.startswith(module + "."):
                    targets.add(module)
        edges[name] = targets
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_circle(monkeypatch):
    """The check above can fail: two modules importing each other (lazily) are a circle."""
    real = imports_of
    a, b = "pancseg_tf.io.read", "pancseg_tf.io.nifti"
    monkeypatch.setitem(
        globals(), "imports_of", lambda name: real(name) | ({a} if name == b else set())
    )
    assert [a, b] in [sorted(c) for c in import_cycles()] or [b, a] in import_cycles()
