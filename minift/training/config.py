"""The configuration of a training run: one dataclass, whose fields are also the command line's options."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minift.training.loss import LOSSES, default_loss
from minift.training.optim import OPTIMIZERS, default_optimizer, learning_rate
from minift.training.sharding import get_strategy

SELECTIONS = ("accuracy", "loss")  # what TrainConfig.select_by may say
# What a step with a NaN or infinite loss or gradient does, caught before the optimizer steps: "stop"
# raises TrainingDiverged (the weights and every snapshot stay finite); "skip" drops that step's update,
# as mixed-precision loss scaling does with an overflowing step (Micikevicius et al. 2018).
NONFINITE = ("stop", "skip")


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"  # where metrics.jsonl, curves.png, snapshots/ and best/ go
    max_steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step, over all micro-batches and ranks
    micro_batch_size: int | None = None  # sequences per forward pass on one rank (None: the whole share)
    lr: float = 1e-3  # peak learning rate
    min_lr: float | None = None  # the cosine decays from lr to min_lr (None: lr / 10)
    warmup_steps: int = 20  # linear warmup from 0: early Adam updates are noisy (Goyal et al. 2017)
    weight_decay: float = 0.01  # decoupled (AdamW); only matrices decay, not biases or norms
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None: no clipping
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (raise; snapshots stay good) or skip the update
    optimizer: str = "auto"  # adamw, fused-adamw, adamw8bit or sgd; auto: fused-adamw on CUDA, adamw on CPU
    loss: str = "auto"  # torch, fused or fused-linear; auto: fused-linear on CUDA, fused on CPU
    eval_every: int = 50  # steps between evaluations (and snapshots); the last step is always evaluated
    eval_batch_size: int = 32  # sequences per forward pass of evaluation
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    # the best checkpoint: "accuracy" (exact match of whole completions, then loss), or "loss" alone with
    # perplexity in the log (pretraining: no 512-token block is ever predicted whole, accuracy means nothing)
    select_by: str = "accuracy"
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~33% more compute
    autocast: bool = True  # bf16 autocast on CUDA (no effect on CPU, which trains in fp32)
    tf32: bool = True  # on CUDA, fp32 matrix products in TF32 (10-bit mantissa; ~8x faster from Ampere on)
    seed: int = 0  # data order, initialisation and dropout
    resume: bool = False  # continue from out_dir's latest snapshot if there is one
    overwrite: bool = False  # start afresh in an out_dir that holds an earlier run (deleting it)
    progress: bool = True  # show a progress bar
    device: str = "auto"  # auto: cuda when available, else cpu
    # under torchrun: ddp (every rank a replica), zero1 (DDP, the optimizer state partitioned), zero2 or zero3
    # (FSDP2 shards gradients and optimizer state, and zero3 the weights between uses; fsdp = zero3);
    # one process trains the same either way
    strategy: str = "ddp"

    def __post_init__(self):
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1:
            raise ValueError("batch_size, max_steps and eval_every must be >= 1")
        if not self.lr >= 0 or (self.min_lr is not None and not self.min_lr >= 0):  # `not >=`: NaN is refused too
            raise ValueError(f"lr and min_lr must be >= 0, got lr {self.lr}, min_lr {self.min_lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or (self.grad_clip is not None and not self.grad_clip > 0):
            raise ValueError(f"warmup_steps and weight_decay must be >= 0 and grad_clip > 0 (or None), got "
                             f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}")
        if self.on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE}, got {self.on_nonfinite!r}")
        if self.loss not in ("auto", *LOSSES):
            raise ValueError(f"loss must be 'auto' or one of {LOSSES}, got {self.loss!r}")
        if self.select_by not in SELECTIONS:
            raise ValueError(f"select_by must be one of {SELECTIONS}, got {self.select_by!r}")
        if self.optimizer not in ("auto", *OPTIMIZERS):
            raise ValueError(f"optimizer must be 'auto' or one of {OPTIMIZERS}, got {self.optimizer!r}")
        get_strategy(self.strategy)  # an unknown one is refused, naming the choices
        if self.optimizer == "fused-adamw" and get_strategy(self.strategy).fsdp:
            raise ValueError("FusedAdamW updates plain tensors, FSDP2's are sharded (DTensors): use optimizer adamw or sgd")
        self.betas = tuple(self.betas)  # a JSON round trip gives a list

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): warmup, then cosine to min_lr."""
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        return learning_rate(step, self.lr, min_lr, self.warmup_steps, self.max_steps)

    def resolve(self) -> tuple[torch.device, str, str]:
        """The device, loss and optimizer this configuration means on this machine."""
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device)
        loss = self.loss if self.loss != "auto" else default_loss(device)
        optimizer = self.optimizer if self.optimizer != "auto" else default_optimizer(device)
        if optimizer == "fused-adamw" and get_strategy(self.strategy).fsdp:
            optimizer = "adamw"  # "auto" under FSDP2: FusedAdamW needs plain tensors
        return device, loss, optimizer
