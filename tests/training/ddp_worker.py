"""Run by tests/test_distributed.py under torchrun: train from files the test wrote, save the weights.

argv: a directory with config.json (GPTConfig and TrainConfig fields), init.safetensors (initial
weights) and examples.json (tokenized examples); rank 0 writes final.safetensors there.
"""

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

import minift.training.distributed as dist
from minift.data import Batches, TokenizedExample
from minift.model import GPT, GPTConfig
from minift.training import TrainConfig, train


def main(directory: Path) -> None:
    spec = json.loads((directory / "config.json").read_text())
    model = GPT(GPTConfig(**spec["model"]))
    model.load_state_dict(load_file(directory / "init.safetensors"), strict=False)  # strict=False: the tied head
    examples = [TokenizedExample(**e) for e in json.loads((directory / "examples.json").read_text())]
    config = TrainConfig(**spec["train"])
    train(model, Batches(examples, config.batch_size, spec["pad_id"], seed=config.seed), [], spec["pad_id"], config)
    if dist.rank() == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, directory / "final.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
