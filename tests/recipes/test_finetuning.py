"""End-to-end fine-tuning: every method, built-in tasks and your own files, saved artefacts that reload."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minift.peft import LoraConfig, PromptTuningConfig, SelectiveConfig, load_trainable
from minift.model import load_model
from minift.evaluation import evaluate
from minift.recipes import FinetuneConfig, default_train_config, finetune
from minift.data import load_task_data
from minift.training import read_metrics


def _config(tmp_path, checkpoint, **overrides):
    train = default_train_config(overrides.get("method", "full"), out_dir=str(tmp_path / "run"), max_steps=4,
                                 batch_size=8, warmup_steps=1, eval_every=2, progress=False)
    return FinetuneConfig(**{"task": "reviews", "base": str(checkpoint), "n_train": 24, "n_val": 8, "n_test": 16,
                             "train": train, **overrides})


@pytest.mark.parametrize(
    "method, peft",
    [("full", None), ("lora", LoraConfig(rank=4, targets=("c_attn", "c_fc"))), ("prompt-tuning", PromptTuningConfig(num_virtual_tokens=5)),
     ("selective", SelectiveConfig(train="bias"))],
)
def test_every_method_trains_saves_and_reloads_to_the_reported_accuracy(tiny_checkpoint, tmp_path, method, peft):
    record = finetune(_config(tmp_path, tiny_checkpoint, method=method, peft=peft))
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == record
    assert record["steps"] == 4 and record["n_test"] == 16 and 0.0 <= record["test_accuracy"] <= 1.0
    model, tokenizer = load_model(record["artefact"] if method == "full" else tiny_checkpoint)
    if method != "full":
        assert 0 < record["trainable_parameters"] < record["total_parameters"]
        model = load_trainable(model, record["artefact"])
    else:
        assert record["trainable_parameters"] == record["total_parameters"]
    test = load_task_data("reviews", tokenizer, model.config.block_size, n_val=0, n_test=16).test
    # the saved artefact reproduces the reported test loss (same weights, same examples)
    assert evaluate(model, test, tokenizer.pad_id).loss == pytest.approx(record["tests"]["reviews"]["loss"], rel=1e-5)


def test_summaries_report_the_rouge_of_the_saved_model(tiny_checkpoint, tmp_path):
    from minift.evaluation import rouge_scores

    record = finetune(_config(tmp_path, tiny_checkpoint, task="summarize"))
    test = record["tests"]["summarize"]
    model, tokenizer = load_model(record["artefact"])
    examples = load_task_data("summarize", tokenizer, model.config.block_size, n_train=24, n_val=8, n_test=16).test
    assert test["rouge_l"] == pytest.approx(rouge_scores(model, tokenizer, examples), abs=1e-9)  # same weights, same greedy text
    # 4 steps from a random model match no summary exactly, so their mean ROUGE-L cannot be 1
    assert test["accuracy"] == 0.0 and test["rouge_l"] < 1.0


def test_multi_task_mixes_the_tasks_and_reports_each(tiny_checkpoint, tmp_path):
    record = finetune(_config(tmp_path, tiny_checkpoint, task=("reviews", "qa", "arithmetic")))
    assert record["task"] == "reviews+qa+arithmetic" and set(record["tests"]) == {"reviews", "qa", "arithmetic"}
    assert (record["n_train"], record["n_val"], record["n_test"]) == (72, 24, 48)
    assert record["test_accuracy"] == pytest.approx(sum(t["accuracy"] for t in record["tests"].values()) / 3)


def test_an_alpaca_jsonl_file(tiny_checkpoint, tmp_path):
    rows = [{"instruction": "Name the colour.", "input": f"The lamp {i} is red.", "output": "red"} for i in range(30)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = finetune(_config(tmp_path, tiny_checkpoint, task=str(path), n_train=None, n_val=None, n_test=None))
    assert (record["task"], record["n_train"], record["n_val"], record["n_test"]) == ("mine", 24, 3, 3)


def test_a_csv_of_reviews_with_a_user_template(tiny_checkpoint, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"Review {i}: it is {'good' if i % 2 else 'bad'}.,{'positive' if i % 2 else 'negative'}\n" for i in range(20)))
    library = tmp_path / "templates.json"
    library.write_text(json.dumps({"name": "sentiment", "templates": [
        {"name": "a", "prompt": "Is this review positive or negative?\n{{text}}", "completion": "{{label}}"},
        {"name": "b", "prompt": "Sentiment of: {{text}}", "completion": "{{label}}"}]}))
    record = finetune(_config(tmp_path, tiny_checkpoint, task=str(path), templates=str(library), n_train=None, n_val=None, n_test=None))
    assert record["n_train"] == 16


def test_bad_configurations(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        FinetuneConfig(method="adapter")
    with pytest.raises(ValueError, match="method 'lora' needs a LoraConfig"):
        FinetuneConfig(method="lora", peft=PromptTuningConfig())
    with pytest.raises(ValueError, match="full fine-tuning takes no PEFT configuration"):
        FinetuneConfig(method="full", peft=LoraConfig())
    with pytest.raises(ValueError, match="5000 train examples asked, but the train split holds 1399"):
        finetune(_config(tmp_path, tiny_checkpoint, n_train=5000))


def test_overwrite_replaces_the_whole_run_and_a_failed_one_leaves_the_earlier_run_whole(tmp_path, tiny_checkpoint):
    import dataclasses

    from minift.training import TrainingDiverged

    def run(method, **train):
        config = _config(tmp_path, tiny_checkpoint, method=method, n_train=8, n_val=4, n_test=4)
        config.train = dataclasses.replace(config.train, **{"max_steps": 1, "eval_every": 1, "overwrite": True, **train})
        return finetune(config)

    out = tmp_path / "run"
    run("full")
    full_result = (out / "result.json").read_text()
    with pytest.raises(TrainingDiverged):  # a LoRA run over it that fails: the full run is untouched
        run("lora", lr=1e9, warmup_steps=0, grad_clip=None, max_steps=3)
    assert (out / "result.json").read_text() == full_result and (out / "model").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging directory left beside it
    record = run("lora")
    # the LoRA run replaced the whole directory: no model/ of the full run beside the new adapter/
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "best", "curves.png", "metrics.jsonl", "result.json", "snapshots"]
    assert record["artefact"] == str(out / "adapter") and json.loads((out / "result.json").read_text())["method"] == "lora"


@pytest.mark.slow
def test_under_torchrun_two_fsdp_ranks_behave_as_one_run_and_save_a_model_one_process_loads(tiny_checkpoint, tmp_path):
    """`torchrun --nproc_per_node 2 -m minift.cli finetune --strategy fsdp`: rank 0 alone prints, evaluates the
    test set and writes the results; the sharded weights are gathered into a normal model directory, which
    reproduces the reported test loss in one process."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    argv = ["finetune", "--base", str(tiny_checkpoint), "--task", "reviews", "--method", "full", "--strategy", "fsdp",
            "--n-train", "24", "--n-val", "8", "--n-test", "16", "--steps", "4", "--batch-size", "8", "--warmup-steps", "1",
            "--eval-every", "2", "--out", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "minift.cli", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # one run's output, once: not one copy per rank
    assert sum(line.startswith("step 2: val loss") for line in lines) == 1, done.stdout
    assert sum(line.startswith("test accuracy on reviews") for line in lines) == 1, done.stdout
    record = json.loads((out / "result.json").read_text())
    assert record["steps"] == 4 and record["config"]["train"]["strategy"] == "fsdp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not list(out.glob(".*.tmp"))  # no temporary left
    model, tokenizer = load_model(out / "model")
    test = load_task_data("reviews", tokenizer, model.config.block_size, n_val=0, n_test=16).test
    # fp32, the same weights and examples in one process: the loss the two ranks reported, to rounding
    assert evaluate(model, test, tokenizer.pad_id).loss == pytest.approx(record["tests"]["reviews"]["loss"], rel=1e-5)
    base = load_model(tiny_checkpoint)[0]
    assert evaluate(base, test, tokenizer.pad_id).loss != pytest.approx(record["tests"]["reviews"]["loss"], rel=1e-3)  # it trained


def test_the_saved_model_is_the_best_validation_step_not_the_last(tiny_checkpoint, tmp_path):
    """Early stopping with patience 1 ends one evaluation after the best, so the last step is not the best one:
    the saved model must hold the best step's weights, and re-evaluated it gives the recorded best validation loss."""
    import dataclasses

    config = _config(tmp_path, tiny_checkpoint, n_train=24, n_val=8, n_test=8)
    # lr 0.03: large enough that the validation loss rises again within a few steps of its minimum
    config.train = dataclasses.replace(config.train, max_steps=30, eval_every=1, select_by="loss", lr=3e-2,
                                       early_stopping_patience=1)
    record = finetune(config)
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert record["best_step"] < record["steps"] == evals[-1]["step"]  # the run this test needs
    assert evals[-1]["loss"] > record["val_loss"] == min(r["loss"] for r in evals)
    model, tokenizer = load_model(record["artefact"])
    validation = load_task_data("reviews", tokenizer, model.config.block_size, n_train=24, n_val=8, n_test=8).validation
    # the same weights and examples as the best evaluation: its loss to fp32 rounding, not the last step's
    assert evaluate(model, validation, tokenizer.pad_id).loss == pytest.approx(record["val_loss"], rel=1e-5)
