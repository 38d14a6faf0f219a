"""What the memory ledger accounts for: one training step, described by its configuration alone.

A `RunSpec` names the model (a GPTConfig), the PEFT method, the optimizer, the loss, the dtype and the
batch's shape. `minift.memory.ledger.predict` turns it into bytes; `minift.memory.step.measure` runs the
same step in a fresh process. `meta_model` builds its model on the meta device: every shape and
requires_grad flag, and no memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from minift._files import read_json
from minift.model import GPT, GPTConfig, config_from_hf
from minift.peft import PEFT_CONFIGS, LoraConfig, PeftConfig, PromptTuningConfig, SelectiveConfig, apply_peft, method_of
from minift.training import LOSSES, OPTIMIZERS, STRATEGIES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# pure: weights, gradients and optimizer state in the model's dtype (how minift trains); mixed: ZeRO's
# mixed-precision accounting, 16-bit weights and gradients plus fp32 master weights and moments
PRECISIONS = ("pure", "mixed")


@dataclass(frozen=True)
class RunSpec:
    """One training step to account for: the inputs of the ledger, predicted and measured."""

    model: GPTConfig
    peft: PeftConfig | None = None  # None: full fine-tuning
    optimizer: str = "adamw"  # "adamw" (torch.optim.AdamW) | "fused-adamw" (kernels.FusedAdamW) | "adamw8bit" | "sgd"
    loss: str = "torch"  # "torch" | "fused" | "fused-linear", as minift.training.CompletionLoss
    dtype: str = "float32"  # the model's parameters and activations; no autocast
    batch_size: int = 4
    seq_len: int = 256
    completion_tokens: int | None = None  # None: every token scored (language modelling); k: the last k of each row
    activation_checkpointing: bool = False
    device: str = "cpu"
    checkpoint: str | None = None  # a GPT-2 checkpoint directory to load; None: random weights
    strategy: str = "ddp"  # how the ranks share the model's state: ddp (replicas), zero1, zero2, zero3 (fsdp)
    ranks: int = 1  # data-parallel ranks; the ledger is one rank's, whose micro-batch is batch_size rows
    precision: str = "pure"  # pure: all in dtype; mixed: 16-bit dtype plus fp32 master weights and moments (ZeRO's K = 12)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS or self.loss not in LOSSES or self.dtype not in DTYPES:
            raise ValueError(f"optimizer in {OPTIMIZERS}, loss in {LOSSES}, dtype in {tuple(DTYPES)}; "
                             f"got {self.optimizer!r}, {self.loss!r}, {self.dtype!r}")
        if self.strategy not in STRATEGIES or self.precision not in PRECISIONS or self.ranks < 1:
            raise ValueError(f"strategy in {tuple(STRATEGIES)}, precision in {PRECISIONS}, ranks >= 1; "
                             f"got {self.strategy!r}, {self.precision!r}, {self.ranks}")
        if self.precision == "mixed" and self.itemsize != 2:
            raise ValueError(f"precision 'mixed' keeps 16-bit weights and gradients: use dtype bfloat16 or float16, not {self.dtype}")
        if self.batch_size < 1 or not 2 <= self.seq_len + self.n_virtual <= self.model.block_size:
            raise ValueError(f"need batch >= 1 and 2 <= seq (+ virtual tokens) <= {self.model.block_size}, "
                             f"got batch {self.batch_size}, seq {self.seq_len}")
        if self.completion_tokens is not None and not 1 <= self.completion_tokens < self.seq_len:
            raise ValueError(f"completion_tokens must be in 1..{self.seq_len - 1}, got {self.completion_tokens}")
        if self.model.dropout or getattr(self.peft, "dropout", 0.0):
            raise ValueError("the ledger models dropout 0 only (dropout > 0 saves masks and leaves SDPA's flash path)")

    @property
    def method(self) -> str:
        return method_of(self.peft)

    @property
    def n_virtual(self) -> int:
        return self.peft.num_virtual_tokens if isinstance(self.peft, PromptTuningConfig) else 0

    @property
    def scored_tokens(self) -> int:
        """N: rows that reach the output head. Position t predicts token t + 1, so a row of T has T - 1."""
        return self.batch_size * (self.completion_tokens or self.seq_len - 1)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    def describe(self) -> str:
        method = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (NF4 base)", "prompt-tuning": "prompt tuning", "selective": "selective"}[self.method]
        if isinstance(self.peft, LoraConfig):
            targets = self.peft.targets if isinstance(self.peft.targets, str) else "+".join(self.peft.targets)
            method += f" r={self.peft.rank} on {targets}"
        elif isinstance(self.peft, PromptTuningConfig):
            method += f" ({self.peft.num_virtual_tokens} virtual tokens)"
        elif isinstance(self.peft, SelectiveConfig):
            method += f" ({self.peft.train})"
        scored = "every token scored" if self.completion_tokens is None else f"last {self.completion_tokens} tokens of each row scored"
        return (f"{method}, {self.optimizer}, {self.loss} loss, {self.dtype}"
                f"{' with fp32 master weights and moments (mixed precision)' if self.precision == 'mixed' else ''}"
                f"{', activation checkpointing' if self.activation_checkpointing else ''}, "
                f"batch {self.batch_size} x {self.seq_len} tokens ({scored}: N = {self.scored_tokens:,}), {self.device}"
                + (f", {self.strategy} over {self.ranks} ranks (one rank's bytes)" if self.ranks > 1 else ""))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = dataclasses.asdict(self.model)
        d["peft"] = None if self.peft is None else {"method": self.method, **dataclasses.asdict(self.peft)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        d = dict(d)
        d["model"] = GPTConfig(**d["model"])
        if d.get("peft") is not None:
            p = dict(d["peft"])
            d["peft"] = PEFT_CONFIGS[p.pop("method")](**p)  # the configs turn JSON's lists back into tuples
        return cls(**d)


def model_config(name_or_dir: str) -> GPTConfig:
    """A preset's config ("tiny-m", "gpt2", ...), a checkpoint directory's or a config.json's, with dropout 0."""
    path = Path(name_or_dir)
    if path.is_dir() or path.suffix == ".json":
        file = path / "config.json" if path.is_dir() else path
        config = config_from_hf(read_json(file), str(file))
        return dataclasses.replace(config, dropout=0.0)
    return GPTConfig.from_name(name_or_dir, dropout=0.0)


def meta_model(spec: RunSpec) -> nn.Module:
    """The model of `spec` on the meta device: every shape and requires_grad flag, no memory.

    The method is applied by minift's own code (apply_peft), so the ledger counts exactly the
    parameters a run trains; the bytes are then arithmetic on those shapes.
    """
    with torch.device("meta"):
        model = GPT(spec.model).to(DTYPES[spec.dtype])
        return model if spec.peft is None else apply_peft(model, spec.peft)
