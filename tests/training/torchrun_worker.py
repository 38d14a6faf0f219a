"""Run by tests/training/test_distributed.py under torchrun: train from files the test wrote, save the weights.

argv: a directory with config.json ({"model": GPTConfig fields, "pad_id", "runs": [{"name", "train":
TrainConfig fields, "lora": LoraConfig fields or null, "exit_at_draw": k or null}]}), init.safetensors
(initial weights) and examples.json (tokenized examples). The runs train one after the other in one
process group; after each, every rank gathers the weights and rank 0 writes NAME.safetensors there, and NAME.json: the parameters' elements each rank holds, and the optimizer state's
elements each rank held after its steps.
"exit_at_draw": every rank dies (os._exit, no cleanup) when it draws its k-th batch: a kill mid-run.
"stop_at_draw": every rank raises there instead and goes on with the next run, leaving that run's files
as a kill would (a second "kill" in one launch: only the files reach the run that resumes it).
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import register_optimizer_step_post_hook

import minift.training.distributed as dist
from minift.data import Batches, TokenizedExample
from minift.model import GPT, GPTConfig
from minift.peft import LoraConfig, apply_peft
from minift.training import TrainConfig, train
from minift.training.sharding import gather


class Stopped(Exception):
    """Raised by DiesAt(hard=False): a run stopped mid-way that the same launch then resumes."""


class DiesAt(Batches):
    """Batches that kill the process (or raise Stopped) when the k-th batch is drawn (k counts from the run's start)."""

    def __init__(self, *args, draw: int, hard: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.draw, self.drawn, self.hard = draw, 0, hard

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.draw:
            if self.hard:
                os._exit(17)
            raise Stopped
        return super().__next__()


HELD = []  # elements of optimizer state held by the optimizer that stepped, after each step of this run
register_optimizer_step_post_hook(
    lambda optimizer, args, kwargs: HELD.append(sum((t.to_local() if isinstance(t, DTensor) else t).numel() for s in optimizer.state.values() if isinstance(s, dict)
                                                    for t in s.values() if torch.is_tensor(t) and t.dim() > 0)))


def main(directory: Path) -> None:
    spec = json.loads((directory / "config.json").read_text())
    examples = [TokenizedExample(**e) for e in json.loads((directory / "examples.json").read_text())]
    for run in spec["runs"]:
        model = GPT(GPTConfig(**spec["model"]))
        model.load_state_dict(load_file(directory / "init.safetensors"), strict=False)  # strict=False: the tied head
        if run.get("lora"):
            torch.manual_seed(0)  # the adapter's random init: the same on every rank and in the test
            model = apply_peft(model, LoraConfig(**run["lora"]))
        config = TrainConfig(**run["train"])
        args = (examples, config.batch_size, spec["pad_id"])
        draw = run.get("exit_at_draw") or run.get("stop_at_draw")
        batches = DiesAt(*args, seed=config.seed, draw=draw, hard="exit_at_draw" in run) if draw else Batches(*args, seed=config.seed)
        val = examples[:8] if run.get("validate") else []
        HELD.clear()
        try:
            train(model, batches, val, spec["pad_id"], config)
        except Stopped:
            continue
        weights = {k: gather(v).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        local = dist.all_gather_object(sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters()))
        state = dist.all_gather_object(max(HELD))  # ZeroRedundancyOptimizer steps its local optimizer: both hooked
        if dist.rank() == 0:
            save_file(weights, directory / f"{run['name']}.safetensors")
            (directory / f"{run['name']}.json").write_text(json.dumps({"numel_by_rank": local, "state_numel_by_rank": state}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
