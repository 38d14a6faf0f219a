"""The optimizer of a fine-tuning run and its learning-rate schedule.

`OPTIMIZERS` is the one list of choices: "adamw" (torch.optim.AdamW, its fused kernel on CPU), "fused-adamw"
(minift.kernels.FusedAdamW: one Triton kernel per step on CUDA), "adamw8bit" (minift.kernels.AdamW8bit:
the moments in 8 bits, block-wise, Dettmers et al. 2022), "sgd" (with momentum 0.9);
`default_optimizer` is what "auto" means on a device.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from minift.kernels import AdamW8bit, FusedAdamW

OPTIMIZERS = ("adamw", "fused-adamw", "adamw8bit", "sgd")


def default_optimizer(device: torch.device | str) -> str:
    """The optimizer "auto" means on `device`: the Triton FusedAdamW on CUDA, torch.optim.AdamW on CPU
    (its fused CPU kernel; FusedAdamW would run its PyTorch reference there, which is slower)."""
    return "fused-adamw" if torch.device(device).type == "cuda" else "adamw"


def build_optimizer(model: nn.Module, name: str, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """An optimizer over the parameters that require grad; weight decay on matrices only.

    Biases and LayerNorm gains are not decayed (a decayed gain shrinks activations for no gain in
    generalisation), as in GPT-2 / nanoGPT's configure_optimizers.

    Raises:
        ValueError: an unknown optimizer, or a model with nothing to train.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        # On CPU torch's fused kernel reads and writes each tensor once, in place, where its default loop
        # makes a dozen passes and two temporaries ("torch fused" in benchmarks/results/bench_adamw_*);
        # the same AdamW to fp32 rounding, and transformers' Trainer's default. Elsewhere: torch's default.
        fused = True if all(p.device.type == "cpu" for p in params) else None
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    if name == "fused-adamw":
        return FusedAdamW(groups, lr=lr, betas=betas)
    if name == "adamw8bit":
        return AdamW8bit(groups, lr=lr, betas=betas)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def learning_rate(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (Loshchilov & Hutter 2017)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
