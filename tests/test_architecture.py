"""The layout docs/architecture.md describes, held to: modules are modules, imports point one way, files stay small.

The import graph is read from the source with `ast` (no import is executed for it), so a cycle or an
upward import fails here even where Python would tolerate it at run time.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lower layers never import higher ones; packages of one layer do not import each other.
LAYERS = {
    "minift._files": 0, "minift._plots": 0,  # helpers for files and figures, importing nothing of minift
    "minift.kernels": 1, "minift.tokenizer": 1,
    "minift.model": 2, "minift.data": 2,
    "minift.peft": 3, "minift.evaluation": 3,
    "minift.training": 4,
    "minift.memory": 5,
    "minift.recipes": 6,
    "minift.cli": 7,
    "minift": 8,  # the package's __init__: the public API, above everything it gathers
}
MAX_LINES = 400  # code lines of a file, its module docstring counted apart


def _source_files() -> dict[str, Path]:
    """Dotted module name -> file, for minift/ and kernels/ (installed as minift.kernels)."""
    found = {}
    for base, prefix in ((ROOT / "minift", "minift"), (ROOT / "kernels", "minift.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _source_files()


def _package_of(name: str) -> str:
    """The stage a module belongs to: the longest prefix in LAYERS."""
    return max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported minift module, line, at module level) for every import of a minift module in `path`."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module
            # `from pkg import sub` imports the submodule pkg.sub when there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out += [(t, node.lineno, id(node) in top) for t in targets if t in MODULES]
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports_as_a_module_under_its_dotted_path(name):
    module = importlib.import_module(name)
    assert isinstance(module, types.ModuleType)
    parent, _, child = name.rpartition(".")
    if parent:
        attribute = getattr(importlib.import_module(parent), child)
        assert isinstance(attribute, types.ModuleType), f"{parent}.{child} is a {type(attribute).__name__}, not the module"


def test_no_package_exports_a_name_of_one_of_its_submodules():
    """`minift/training/train.py` beside an exported function `train` would make `minift.training.train` the
    function or the module depending on what was imported first; read from the source, so order cannot hide it."""
    clashes = []
    for package, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        submodules = {n.rpartition(".")[2] for n in MODULES if n.rpartition(".")[0] == package}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    exported = alias.asname or alias.name
                    source = f"{node.module}.{alias.name}" if node.module else alias.name
                    if exported in submodules and source != f"{package}.{exported}":
                        clashes.append(f"{package} exports {exported!r} from {node.module}, the name of {package}.{exported}")
    assert not clashes, "\n".join(clashes)


def test_imports_point_down_the_layers():
    wrong = []
    for name, imports in GRAPH.items():
        mine = _package_of(name)
        for target, line, _ in imports:
            theirs = _package_of(target)
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and theirs != mine):
                wrong.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} ({theirs}, layer "
                             f"{LAYERS[theirs]}) from {mine} (layer {LAYERS[mine]})")
    assert not wrong, "\n".join(wrong)


def test_the_kernels_import_nothing_from_the_rest_of_minift():
    outside = [(n, t) for n, imports in GRAPH.items() if n.startswith("minift.kernels")
               for t, _, _ in imports if not t.startswith("minift.kernels")]
    assert not outside


def test_no_lazy_import_of_minift():
    lazy = [f"{MODULES[n].relative_to(ROOT)}:{line} imports {t} inside a function"
            for n, imports in GRAPH.items() for t, line, at_top in imports if not at_top]
    assert not lazy, "\n".join(lazy)


def _cycle() -> list[str] | None:
    """A cycle of the module import graph (a package's __init__ counts as the module of its name), or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target, _, _ in GRAPH[node]:
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The check itself can fail: a model module importing the data package closes model -> data -> model."""
    graph = {**GRAPH, "minift.data.world": GRAPH["minift.data.world"] + [("minift.model.gpt", 1, True)],
             "minift.model.gpt": GRAPH["minift.model.gpt"] + [("minift.data.world", 1, True)]}
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)
    assert _cycle() is not None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_stay_small(name):
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    lines = path.read_text().count("\n")
    docstring = ast.get_docstring(tree, clean=False)
    if docstring is not None:
        first = tree.body[0]
        lines -= first.end_lineno - first.lineno + 1
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines besides its docstring"


def test_the_distribution_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    assert set(config["packages"]) == packages
    assert config["package-dir"] == {"minift.kernels": "kernels"}


# the functions that read this process's resident memory (minift.memory.probes and the probes built on it)
_RSS_READERS = {"rss_bytes", "peak_rss_bytes", "reset_peak_rss", "PeakProbe", "_scratch_bytes", "measure_step"}


def test_no_test_reads_the_test_runners_own_memory():
    """A test that asserts on memory measures in a fresh process (tests/fresh_process.py) or counts tensors
    exactly; what the runner's malloc kept from earlier tests would decide the outcome of an in-process peak."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                          for n in ast.walk(node) if isinstance(n, ast.Call)}
                offenders += [f"{path.relative_to(ROOT)}::{node.name} calls {c}" for c in sorted(called & _RSS_READERS)]
    assert not offenders, "\n".join(offenders)
