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


def _indented_blocks(text: str) -> list[str]:
    """The 4-space indented blocks of a text (files and commands), dedented."""
    return [re.sub(r"^    ", "", b, flags=re.M) for b in re.findall(r"((?:^    .*\n)+)", text, re.M)]


def test_the_own_data_example_is_in_the_readme_and_in_finetune_help(capsys):
    from minift.cli import main
    from minift.data import OWN_DATA_EXAMPLE

    assert OWN_DATA_EXAMPLE in README.read_text()
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert OWN_DATA_EXAMPLE in capsys.readouterr().out


@pytest.mark.slow
def test_the_own_data_example_runs_as_written_on_300_records(tmp_path, monkeypatch, capsys):
    """The README's two files and two commands, with default sizes, on a file of 300 records of the same shape."""
    import json
    import shlex

    from minift.cli import main
    from minift.data import OWN_DATA_EXAMPLE

    monkeypatch.chdir(tmp_path)
    records, templates, commands = _indented_blocks(OWN_DATA_EXAMPLE)
    shown = [json.loads(line) for line in records.splitlines()]
    more = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(15) for b in range(20)][:300 - len(shown)]
    Path("my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shown + more))
    Path("my_templates.json").write_text(templates)
    finetune, evaluate = commands.splitlines()
    assert main(shlex.split(finetune)[1:] + ["--no-progress"]) == 0
    record = json.loads(Path("runs/finetune-my-lora/result.json").read_text())
    assert (record["n_train"], record["n_val"], record["n_test"], record["steps"]) == (240, 30, 30, 12)
    losses = [r["loss"] for r in map(json.loads, Path("runs/finetune-my-lora/metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 2  # it learned: from about 7.6 nats, more than 2 nats lower in 12 steps
    capsys.readouterr()
    assert main(shlex.split(evaluate)[1:]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    # the adapter scores the file's 30 test examples as finetune did; the chance accuracy of a file is unknown
    assert row[0] == "my.jsonl" and float(row[2]) == pytest.approx(record["test_accuracy"], abs=1e-9) and row[3] == "-"
