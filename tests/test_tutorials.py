"""The tutorial notebooks and their solutions run top to bottom, as a student would run them.

Each notebook is executed with nbclient in a fresh kernel whose working directory and TMPDIR are a
temporary directory, so whatever a notebook writes (it makes its own `tempfile.mkdtemp()` directory)
lands there, never in the repository; any cell error fails the test. TRITON_INTERPRET is removed
from the kernel's environment (conftest.py sets it for this process): notebook 07 must set it itself,
in its first cell, as it tells students to.

The committed notebooks carry their outputs, so they also read well without running; the quick
checks below (not marked slow) keep their layout and size honest without executing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("0*.ipynb"))
SOLUTIONS = sorted((TUTORIALS / "solutions").glob("0*_solutions.ipynb"))
# The slowest cell (notebook 04's small forgetting experiment) takes about 90 s on 2 loaded cores;
# the limit leaves room for a slower machine and still stops a hung kernel.
CELL_TIMEOUT_S = 600
MAX_BYTES = 1_000_000  # committed with outputs, but no megabytes of logs or images


def _id(path: Path) -> str:
    return path.relative_to(TUTORIALS).as_posix()


def test_every_notebook_is_found_with_its_solutions():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_transformer_and_pretraining", "02_prompt_templates_and_datasets", "03_full_instruction_finetuning",
        "04_forgetting_and_multitask", "05_lora_and_peft", "06_memory", "07_triton_kernels",
        "08_parallel_strategies",
    ]
    assert [p.stem for p in SOLUTIONS] == [p.stem + "_solutions" for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=_id)
def test_layout_and_size(path):
    """A title, a versions cell first, outputs without errors, well under a megabyte; notebooks end with exercises."""
    assert path.stat().st_size < MAX_BYTES, f"{_id(path)} is {path.stat().st_size:,} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(s.startswith("# ") for s in markdown[:2]), "a title in the first cells"
    assert 'version(pkg)' in code[0].source, "the first code cell prints the versions"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{_id(path)} was committed with an error output"
    assert all(c.get("execution_count") for c in code), f"{_id(path)} has cells committed without running them"
    if path in NOTEBOOKS:
        assert markdown[-1].startswith("## Exercises") and f"solutions/{path.stem}_solutions.ipynb" in markdown[-1]
    assert "{{RUNTIME}}" not in "".join(markdown), "the measured runtime was filled in"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTIONS, ids=_id)
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
    before = sorted(p.relative_to(TUTORIALS) for p in TUTORIALS.rglob("*"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel inherits it: tempfile.mkdtemp() lands in tmp_path
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert sorted(p.relative_to(TUTORIALS) for p in TUTORIALS.rglob("*")) == before, "a notebook wrote into tutorials/"
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "Traceback" not in outputs
