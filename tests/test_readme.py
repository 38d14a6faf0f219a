"""The README's Python snippet runs as written, and runs again: a used output directory is no error there."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_python_snippet():
    assert len(_python_snippets()) == 1


@pytest.mark.slow
def test_the_python_snippet_runs_twice_in_one_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    snippet = _python_snippets()[0]
    printed = []
    for _ in range(2):
        exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})
        printed.append(capsys.readouterr().out.splitlines()[-1])  # its print(): test accuracy, trainable parameters
    assert printed[0] == printed[1] and printed[0].split()[1] == "16384"  # the same numbers; LoRA r=8 on c_attn
    assert len(list(tmp_path.rglob("result.json"))) == 1  # one run directory, replaced by the second run
