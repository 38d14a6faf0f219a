"""Data parallelism: 2 CPU processes under torchrun (gloo) train exactly what 1 process trains."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minift.data import Batches
from minift.model import GPT, GPTConfig
from minift.training import TrainConfig, train


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(tiny_tokenizer, qa_examples, tmp_path):
    model_config = GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(model_config)
    examples = qa_examples[0]  # completions of different lengths: each rank holds a different token count
    # SGD: the update is linear in the gradient, so rounding in the all-reduce stays rounding.
    # (AdamW divides by sqrt(v) ~ |g|, which turns rounding of near-zero gradients into visible differences.)
    train_config = dict(max_steps=4, batch_size=8, micro_batch_size=2, lr=3e-2, warmup_steps=1, eval_every=4,
                        optimizer="sgd", progress=False)

    (tmp_path / "ddp").mkdir()
    save_file({k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}, tmp_path / "ddp" / "init.safetensors")
    (tmp_path / "ddp" / "examples.json").write_text(json.dumps([dataclasses.asdict(e) for e in examples]))
    (tmp_path / "ddp" / "config.json").write_text(json.dumps({
        "model": dataclasses.asdict(model_config), "pad_id": tiny_tokenizer.pad_id,
        "train": {**train_config, "out_dir": str(tmp_path / "ddp" / "run")},
    }))
    worker = Path(__file__).parent / "ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    str(worker), str(tmp_path / "ddp")], check=True, env=env, capture_output=True, timeout=300)

    config = TrainConfig(**train_config, out_dir=str(tmp_path / "single"))
    train(model, Batches(examples, 8, tiny_tokenizer.pad_id, seed=0), [], tiny_tokenizer.pad_id, config)
    ddp = load_file(tmp_path / "ddp" / "final.safetensors")
    for key, value in ddp.items():
        # the gradient is summed over ranks in another order than over rows: fp32 rounding only
        torch.testing.assert_close(value, model.state_dict()[key], rtol=1e-5, atol=1e-6)
    changed = sum(not torch.equal(ddp[k], v) for k, v in load_file(tmp_path / "ddp" / "init.safetensors").items())
    assert changed == len(ddp)  # it trained
