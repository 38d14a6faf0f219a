"""Data parallelism under torchrun on 2 CPU processes (gloo): DDP, ZeRO-1 and FSDP2 (zero2, zero3) train exactly
what 1 process trains with the same global batch, and a sharded run killed mid-way resumes exactly."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import minift.training.distributed as dist
from minift.data import Batches
from minift.model import GPT, GPTConfig
from minift.peft import LoraConfig, apply_peft
from minift.training import TrainConfig, read_metrics, train
from minift.training.snapshot import load_trainable_tensors

WORKER = Path(__file__).parent / "torchrun_worker.py"
# SGD: the update is linear in the gradient, so rounding in the all-reduce stays rounding.
# (AdamW divides by sqrt(v) ~ |g|, which turns rounding of near-zero gradients into visible differences.)
TRAIN = dict(max_steps=4, batch_size=8, micro_batch_size=2, lr=3e-2, warmup_steps=1, eval_every=4, optimizer="sgd",
             progress=False)


def _model_config(tokenizer) -> GPTConfig:
    return GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32)


def _torchrun(directory: Path, model: GPT, tokenizer, examples, runs: list[dict], check=True):
    """Write the worker's inputs into `directory` (once) and run its `runs` on 2 ranks (--standalone: a free port)."""
    if not (directory / "init.safetensors").exists():
        directory.mkdir(exist_ok=True)
        save_file({k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}, directory / "init.safetensors")
        (directory / "examples.json").write_text(json.dumps([dataclasses.asdict(e) for e in examples]))
    (directory / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model.config), "pad_id": tokenizer.pad_id,
                                                       "runs": runs}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(directory)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    return done


def _single(model: GPT, examples, tokenizer, out: Path, **overrides) -> GPT:
    config = TrainConfig(**{**TRAIN, **overrides}, out_dir=str(out))
    train(model, Batches(examples, config.batch_size, tokenizer.pad_id, seed=0), [], tokenizer.pad_id, config)
    return model


def _assert_same_weights(saved: dict, model: GPT, **tolerance):
    state = model.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(value, state[key], **tolerance, msg=key)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(tiny_tokenizer, qa_examples, tmp_path):
    torch.manual_seed(0)
    model = GPT(_model_config(tiny_tokenizer))
    examples = qa_examples[0]  # completions of different lengths: each rank holds a different token count
    _torchrun(tmp_path / "ddp", model, tiny_tokenizer, examples, [{"name": "final", "train": {**TRAIN, "out_dir": str(tmp_path / "ddp" / "run")}}])
    _single(model, examples, tiny_tokenizer, tmp_path / "single")
    ddp = load_file(tmp_path / "ddp" / "final.safetensors")
    # the gradient is summed over ranks in another order than over rows: fp32 rounding only
    _assert_same_weights(ddp, model, rtol=1e-5, atol=1e-6)
    changed = sum(not torch.equal(ddp[k], v) for k, v in load_file(tmp_path / "ddp" / "init.safetensors").items())
    assert changed == len(ddp)  # it trained


@pytest.mark.slow
def test_sharded_ranks_equal_one_process_and_resume_exactly_after_a_kill(tiny_tokenizer, qa_examples, tmp_path):
    torch.manual_seed(0)
    init = GPT(_model_config(tiny_tokenizer))
    examples, d = qa_examples[0], tmp_path / "fsdp"
    run = lambda name, **t: {"name": name, "train": {**TRAIN, **t, "out_dir": str(d / name)}}  # noqa: E731
    # resumable runs: AdamW (its moments must come back too), a snapshot at step 2, killed at the 4th draw
    adamw = dict(optimizer="adamw", lr=1e-2, eval_every=2, strategy="zero3")
    # zero1 (DDP + ZeroRedundancyOptimizer) too: it stops at the same draw by raising (one launch, one os._exit)
    zero1 = {**adamw, "strategy": "zero1"}
    runs = [run("zero3", strategy="zero3"), {**run("lora-zero2", strategy="zero2"), "lora": {"rank": 4}},
            run("zero1", strategy="zero1"), {**run("whole-zero1", **zero1), "validate": True},
            {**run("killed-zero1", **zero1), "validate": True, "stop_at_draw": 4},
            {**run("whole", **adamw), "validate": True}, {**run("killed", **adamw), "validate": True, "exit_at_draw": 4}]
    killed = _torchrun(d, init, tiny_tokenizer, examples, runs, check=False)
    for name in ("killed", "killed-zero1"):
        assert killed.returncode != 0 and (d / name / "snapshots" / "step-0000002").is_dir(), killed.stderr[-2000:]
        assert [r["step"] for r in read_metrics(d / name / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]
    _torchrun(d, init, tiny_tokenizer, examples, [{**r, "train": {**r["train"], "resume": True}, "exit_at_draw": None,
                                                   "stop_at_draw": None} for r in (runs[6], runs[4])])

    # zero3, full fine-tuning, zero2 over a LoRA model whose frozen base is sharded too, and zero1: as one
    # process, to fp32 rounding (the ranks' gradients are summed in another order than one process its rows;
    # zero1's broadcast of each rank's updated parameters is exact)
    for name, peft in [("zero3", None), ("lora-zero2", LoraConfig(rank=4)), ("zero1", None)]:
        model = GPT(_model_config(tiny_tokenizer))
        model.load_state_dict(init.state_dict())
        if peft is not None:
            torch.manual_seed(0)  # the adapter's init, as the worker draws it
            model = apply_peft(model, peft)
        _single(model, examples, tiny_tokenizer, tmp_path / f"single-{name}")
        _assert_same_weights(load_file(d / f"{name}.safetensors"), model, rtol=1e-5, atol=1e-6)
        numel, rows = sum(p.numel() for p in model.parameters()), sum(p[0].numel() if p.dim() else 1 for p in model.parameters())
        held = json.loads((d / f"{name}.json").read_text())
        if name == "zero1":
            # whole weights on each rank; SGD's momentum (one element per weight) split into whole tensors, the
            # largest first to the emptier rank: the two parts add up to one process's, unequal by at most one tensor
            assert held["numel_by_rank"] == [numel, numel]
            assert sum(held["state_numel_by_rank"]) == numel
            assert max(held["state_numel_by_rank"]) <= numel / 2 + max(p.numel() for p in model.parameters()) / 2
            continue
        # each rank held its half of every tensor (dim 0 padded to even: at most one row more per tensor)
        for local in held["numel_by_rank"]:
            assert numel / 2 - rows <= local <= numel / 2 + rows
        losses = lambda path: [r["loss"] for r in read_metrics(path) if r["kind"] == "train"]  # noqa: E731
        torch.testing.assert_close(losses(d / name / "metrics.jsonl"), losses(tmp_path / f"single-{name}" / "metrics.jsonl"),
                                   rtol=1e-6, atol=0)  # the same float64 sums of fp32 token losses, to rounding

    # killed at step 3 and resumed from step 2's snapshot on 2 ranks: bit for bit the uninterrupted run
    # (zero1: AdamW's moments consolidated from both ranks' partitions into the snapshot, and split again)
    strip = lambda path: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(path)]  # noqa: E731
    for suffix in ("", "-zero1"):
        whole, resumed = load_file(d / f"whole{suffix}.safetensors"), load_file(d / f"killed{suffix}.safetensors")
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)
        assert strip(d / f"killed{suffix}" / "metrics.jsonl") == strip(d / f"whole{suffix}" / "metrics.jsonl")
    whole = load_file(d / "whole.safetensors")
    # the sharded ranks' best/ holds whole tensors: one process reads it back
    single = GPT(_model_config(tiny_tokenizer))
    load_trainable_tensors(single, d / "whole" / "best")
    _assert_same_weights(whole, single, rtol=0, atol=0)


def test_a_rank_count_that_does_not_divide_the_batch_is_refused(tiny_tokenizer, qa_examples, tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    model = GPT(_model_config(tiny_tokenizer))
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by the 3 ranks"):
        _single(model, qa_examples[0], tiny_tokenizer, tmp_path / "run", strategy="zero3")


def test_an_unknown_strategy_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"strategy must be one of \('ddp', 'zero1', 'zero2', 'zero3', 'fsdp'\), got 'zero4'"):
        TrainConfig(strategy="zero4")
