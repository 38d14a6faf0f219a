"""The `minift` command: the subcommands run the library functions and bad input exits 2 with a message."""

import subprocess
import sys

import pytest

import minift
from minift.checkpoint import load_model
from minift.cli import main
from minift.templates import ALPACA_FORMAT


def test_version():
    out = subprocess.run([sys.executable, "-m", "minift.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"minift {minift.__version__}"


def test_generate_formats_the_prompt_and_decodes_greedily(tiny_checkpoint, capsys):
    assert main(["generate", str(tiny_checkpoint), "--prompt", "Rate this review: great lamp", "--max-new-tokens", "8"]) == 0
    model, tokenizer = load_model(tiny_checkpoint)
    ids = model.generate([tokenizer.encode(ALPACA_FORMAT.format_prompt("Rate this review: great lamp"))], 8,
                         stop_tokens=[tokenizer.eot_id])[0]
    expected = tokenizer.decode(ids[:-1] if ids[-1] == tokenizer.eot_id else ids)
    assert capsys.readouterr().out == expected + "\n"


def test_finetune_then_evaluate_the_adapter(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "--task", "reviews", "--method", "lora", "--rank", "2", "--base", str(tiny_checkpoint),
                 "--n-train", "16", "--n-val", "8", "--n-test", "8", "--steps", "2", "--batch-size", "8",
                 "--eval-every", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reviews / lora: trainable params: 512 || all params:" in printed  # 2 layers x r 2 x (32 + 96)
    assert "test accuracy" in printed and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["evaluate", str(tiny_checkpoint), "--adapter", str(out / "adapter"), "--tasks", "reviews", "--n", "8"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["task", "shots", "accuracy"] and table[1].split()[:2] == ["reviews", "0"]


def test_few_shot_evaluation_reports_the_context_it_spends(tiny_checkpoint, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--tasks", "reviews", "--n", "4", "--shots", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:2] == ["reviews", "1"] and float(row[-1].rstrip("%")) > 10  # one shot takes over 10% of 256 tokens


def test_answer_only_turns_off_scoring_the_end_of_text(tiny_checkpoint, capsys, monkeypatch):
    import importlib

    module = importlib.import_module("minift.evaluate")  # the attribute minift.evaluate is the function
    real, seen = module.evaluate_task, []

    def spy(*args, **kwargs):
        seen.append(kwargs["score_end"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate_task", spy)
    for flag in ([], ["--answer-only"]):
        assert main(["evaluate", str(tiny_checkpoint), "--tasks", "qa", "--n", "4", "--shots", "1", *flag]) == 0
    assert seen == [True, False]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "/nonexistent", "--prompt", "x"], "checkpoint directory not found: /nonexistent"),
        (["finetune", "--base", "{checkpoint}", "--task", "missing.jsonl", "--no-progress"], "missing.jsonl"),
        (["evaluate", "{checkpoint}", "--tasks", "poetry"], "unknown task 'poetry'"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("{checkpoint}", str(tiny_checkpoint)) for a in argv]) == 2
    assert message in capsys.readouterr().err
