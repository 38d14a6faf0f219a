"""The `minift` command: the subcommands run the library functions and bad input exits 2 with a message."""

import argparse
import dataclasses
import functools
import inspect
import json
import subprocess
import sys

import pytest

import minift
from minift.cli import main
from minift.data import ALPACA_FORMAT
from minift.model import generate, load_model
from minift.peft import LoraConfig
from minift.recipes import DEFAULT_LR, FinetuneConfig
from minift.training import TrainConfig


def test_version():
    out = subprocess.run([sys.executable, "-m", "minift.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"minift {minift.__version__}"


def test_generate_formats_the_prompt_and_decodes_greedily(tiny_checkpoint, capsys):
    assert main(["generate", str(tiny_checkpoint), "--prompt", "Rate this review: great lamp", "--max-new-tokens", "8"]) == 0
    model, tokenizer = load_model(tiny_checkpoint)
    ids = generate(model, [tokenizer.encode(ALPACA_FORMAT.format_prompt("Rate this review: great lamp"))], 8,
                         stop_tokens=[tokenizer.eot_id])[0]
    expected = tokenizer.decode(ids[:-1] if ids[-1] == tokenizer.eot_id else ids)
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_finetune_then_evaluate_the_adapter(tiny_checkpoint, tmp_path, capsys, method):
    out = tmp_path / "run"
    code = main(["finetune", "--task", "reviews", "--method", method, "--rank", "2", "--base", str(tiny_checkpoint),
                 "--n-train", "16", "--n-val", "8", "--n-test", "8", "--steps", "2", "--batch-size", "8",
                 "--eval-every", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"reviews / {method}: trainable params: 512 || all params:" in printed  # 2 layers x r 2 x (32 + 96)
    record = json.loads((out / "result.json").read_text())
    assert record["config"]["peft"]["quantize"] == (None if method == "lora" else "nf4")
    assert (record["base_bits_per_parameter"] is None) == (method == "lora")
    assert "test accuracy" in printed and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["evaluate", str(tiny_checkpoint), "--adapter", str(out / "adapter"), "--tasks", "reviews", "--n", "8"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["task", "shots", "accuracy"] and table[1].split()[:2] == ["reviews", "0"]


def test_few_shot_evaluation_reports_the_context_it_spends(tiny_checkpoint, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--tasks", "reviews", "--n", "4", "--shots", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:2] == ["reviews", "1"] and float(row[-1].rstrip("%")) > 10  # one shot takes over 10% of 256 tokens


def test_no_score_end_turns_off_scoring_the_end_of_text(tiny_checkpoint, monkeypatch):
    import minift.cli.commands as cli

    real, seen = cli.evaluate_task, []

    @functools.wraps(real)  # the same signature: the command's options are read from it
    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()  # an option left out is evaluate_task's own default
        seen.append(bound.arguments["score_end"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "evaluate_task", spy)
    for flag in ([], ["--no-score-end"]):
        assert main(["evaluate", str(tiny_checkpoint), "--tasks", "qa", "--n", "4", "--shots", "1", *flag]) == 0
    assert seen == [True, False]


# --- the options are the dataclasses' fields: no flag means the dataclass's default ---------------------------


def test_no_options_build_the_python_defaults():
    from minift.cli import build_parser, finetune_config

    parse = build_parser().parse_args
    assert finetune_config(parse(["finetune"])) == FinetuneConfig()
    assert finetune_config(parse(["finetune", "--method", "lora"])) == FinetuneConfig(method="lora")
    assert finetune_config(parse(["finetune", "--method", "lora"])).train.lr == DEFAULT_LR["lora"]
    # qlora shares LoRA's flags; the method quantises the base
    assert finetune_config(parse(["finetune", "--method", "qlora", "--rank", "2"])).peft == LoraConfig(rank=2, quantize="nf4")


def test_every_field_is_an_option_and_reaches_the_config():
    from minift.cli import build_parser, finetune_config

    argv = ["finetune", "--task", "qa", "arithmetic", "--method", "lora", "--n-train", "none", "--seed", "3",
            "--steps", "7", "--lr", "0.5", "--betas", "0.8", "0.9", "--grad-clip", "none", "--no-progress",
            "--rank", "2", "--targets", "c_attn", "c_fc", "--rslora", "--out", "elsewhere"]
    config = finetune_config(build_parser().parse_args(argv))
    assert config.task == ("qa", "arithmetic") and config.n_train is None and config.seed == 3
    assert (config.train.max_steps, config.train.lr, config.train.betas, config.train.grad_clip) == (7, 0.5, (0.8, 0.9), None)
    assert config.train.progress is False and config.train.seed == 3 and config.train.out_dir == "elsewhere"
    assert config.peft == LoraConfig(rank=2, targets=("c_attn", "c_fc"), rslora=True)
    help_text = build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    for cls, skipped in ((FinetuneConfig, {"train", "peft"}), (TrainConfig, {"seed"}), (LoraConfig, set())):
        for f in dataclasses.fields(cls):
            if f.name not in skipped:
                assert f.name.replace("_", "-") in help_text or f.name in {"out_dir", "max_steps", "early_stopping_patience",
                                                                           "dropout"}, f"{cls.__name__}.{f.name} has no flag"


def test_options_of_another_method_are_refused(capsys):
    assert main(["finetune", "--method", "full", "--rank", "4"]) == 2
    assert "are for --method lora" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "/nonexistent", "--prompt", "x"], "checkpoint directory not found: /nonexistent"),
        (["finetune", "--base", "{checkpoint}", "--task", "missing.jsonl", "--no-progress"], "missing.jsonl"),
        (["evaluate", "{checkpoint}", "--tasks", "poetry"], "unknown task 'poetry'"),
        # a prompt longer than the context: refused with the lengths (the default), not an empty completion
        (["generate", "{checkpoint}", "--raw", "--prompt", "word " * 600], "new tokens exceeds the context length 256"),
        (["generate", "{checkpoint}", "--raw", "--prompt", "word " * 600, "--max-new-tokens", "300", "--truncation", "left"],
         "ask for fewer new tokens"),
        (["finetune", "--base", "{checkpoint}", "--n-train", "0", "--no-progress"], "reviews: 0 train examples asked"),
        (["generate", "{broken}", "--prompt", "x"], "broken/config.json: not valid JSON"),
        (["memory", "--model", "{broken}", "--predict-only"], "broken/config.json: not valid JSON"),
        (["pretrain", "--out", "{checkpoint}", "--n-documents", "4", "--steps", "1"], "already holds config.json, model.safetensors"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gpt2",')
    assert main([a.replace("{checkpoint}", str(tiny_checkpoint)).replace("{broken}", str(broken)) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_a_long_prompt_is_cut_from_the_left_when_asked(tiny_checkpoint, capsys):
    with pytest.warns(UserWarning, match="cut from the left to its last 196"):
        assert main(["generate", str(tiny_checkpoint), "--raw", "--prompt", "word " * 600, "--truncation", "left"]) == 0
    assert capsys.readouterr().out.strip()  # a completion of the prompt's end


def test_every_option_has_help_and_shows_its_default():
    from minift.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and action.default is argparse.SUPPRESS:
                text = action.help.replace("%%", "%")
                assert "(default: " in text and not text.startswith("(default"), f"{name} {action.option_strings}: {text!r}"


def test_pretrain_and_compare_refuse_an_earlier_run_and_overwrite_replaces_it(tiny_checkpoint, tmp_path, capsys):
    compare = ["compare", "--task", "reviews", "--base", str(tiny_checkpoint), "--out", str(tmp_path / "cmp"),
               "--methods", "lora", "--steps", "1", "--n-train", "8", "--n-val", "4", "--n-test", "4", "--batch-size", "4",
               "--eval-every", "1", "--base-shots", "0", "--no-measure", "--no-progress"]
    assert main(compare) == 0
    capsys.readouterr()
    assert main(compare) == 2
    assert "already holds compare.json, compare.csv, compare.png, lora" in capsys.readouterr().err
    assert main(compare + ["--overwrite"]) == 0
    capsys.readouterr()
    # a comparison that fails under --overwrite leaves the earlier one whole (the new one is staged beside it)
    before = (tmp_path / "cmp" / "compare.json").read_text()
    assert main(compare + ["--overwrite", "--n-train", "100000"]) == 2
    assert (tmp_path / "cmp" / "compare.json").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]
    capsys.readouterr()
    pretrain = ["pretrain", "--out", str(tmp_path / "base"), "--n-documents", "30", "--vocab-size", "300",
                "--block-size", "64", "--steps", "1", "--batch-size", "2", "--eval-every", "1", "--no-progress"]
    assert main(pretrain) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "val accuracy" not in printed  # the metrics that mean something for pretraining
    assert main(pretrain) == 2
    assert "already holds config.json, model.safetensors, tokenizer.json, pretrain.json, train" in capsys.readouterr().err
    assert main(pretrain + ["--overwrite"]) == 0
    before = (tmp_path / "base" / "pretrain.json").read_text()
    assert main(pretrain + ["--overwrite", "--val-fraction", "1.0"]) == 2  # every block held out: fails after the corpus is made
    assert (tmp_path / "base" / "pretrain.json").read_text() == before and (tmp_path / "base" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cmp"]  # no staging directory left beside them


@pytest.mark.parametrize("flag, shown", [([], True), (["--no-progress"], False)])
def test_evaluate_shows_progress_unless_told_not_to(tiny_checkpoint, capsys, flag, shown):
    assert main(["evaluate", str(tiny_checkpoint), "--tasks", "reviews", "--n", "4", *flag]) == 0
    assert ("evaluate:   0%|          | 0/4" in capsys.readouterr().err) == shown  # a bar over the 4 test examples


def test_sizes_take_a_number_or_all():
    from minift.cli import build_parser, finetune_config

    config = finetune_config(build_parser().parse_args(["finetune", "--n-train", "all", "--n-val", "5", "--n-test", "none"]))
    assert (config.n_train, config.n_val, config.n_test) == ("all", 5, None)
