"""One training step, measured: live bytes by category, and the peak of each phase in a fresh process.

`minift.memory.ledger.predict` says where the bytes should go; `measure(spec)` runs the same step
(`build_minift_step`: the model, the PEFT method, minift.training's optimizer and CompletionLoss, a
random batch) in a fresh process after a warm-up step of a tiny model, so that code pages, thread
pools and library caches are already resident when the baseline is read (`minift.memory.probes`).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from minift.data import IGNORE_INDEX, shifted_targets
from minift.memory.probes import PeakProbe, _trim_heap, measure_with
from minift.memory.saved import SavedTensorMeter, function_held_tensors, optimizer_state_tensors, storage_bytes, storage_ptrs
from minift.memory.spec import DTYPES, RunSpec
from minift.model import GPT, load_gpt2
from minift.peft import apply_peft, nf4_layers
from minift.training import CompletionLoss, TrainConfig, build_optimizer, parallelize, shard_optimizer


@dataclass
class StepParts:
    """What a training step needs; `forward()` returns the loss to call backward on.

    The step (minift.training's loop, one micro-batch): forward and loss, backward, clip the gradient
    norm, optimizer step, zero_grad(set_to_none=True).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[], torch.Tensor]
    grad_clip: float | None = 1.0
    boundary: str = "ln_f"  # the module whose end separates the model's activations from the loss's


def _clip_and_step(parts: StepParts) -> None:
    params = [p for p in parts.model.parameters() if p.grad is not None]
    if parts.grad_clip is not None:
        nn.utils.clip_grad_norm_(params, parts.grad_clip)  # as minift.training.loop._clip
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)


def run_step(parts: StepParts, probe: PeakProbe | None = None) -> dict[str, int]:
    """One step; with a probe, the peak of each phase (forward, backward, optimizer) above its baseline."""
    peaks = {}
    for phase in ("forward", "backward", "optimizer"):
        if probe is not None:
            probe.reset()
        if phase == "forward":
            loss = parts.forward()
        elif phase == "backward":
            loss.backward()
            del loss
        else:
            _clip_and_step(parts)
        if probe is not None:
            peaks[phase] = probe.peak()
    return peaks


def measure_categories(parts: StepParts) -> dict[str, int]:
    """Live bytes by category over one instrumented step: weights (frozen, trainable), gradients,
    optimizer state, activations saved for backward and the loss's buffers (see the module docstring).

    The optimizer state is counted after the step, so a first step counts the state it creates.
    """
    params = list(parts.model.parameters())
    meter = SavedTensorMeter(parts.model, parts.boundary)
    with meter:
        loss = parts.forward()
    saved = meter.alive()
    hooked = [t for ts in meter.alive_tensors().values() for t in ts]
    saved["loss"] += storage_bytes(function_held_tensors(loss), meter.exclude | storage_ptrs(hooked))
    del hooked, meter
    loss.backward()
    del loss
    gradients = storage_bytes(p.grad for p in params if p.grad is not None)
    if parts.grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], parts.grad_clip)
    parts.optimizer.step()
    state = storage_bytes(optimizer_state_tensors(parts.optimizer))
    parts.optimizer.zero_grad(set_to_none=True)
    return dict(
        # frozen: parameters and buffers (QLoRA's NF4 codes and scales are buffers)
        weights_frozen=storage_bytes([*(p for p in params if not p.requires_grad), *parts.model.buffers()]),
        weights_trainable=storage_bytes(p for p in params if p.requires_grad),
        gradients=gradients, optimizer_state=state, activations=saved["activations"], loss=saved["loss"],
    )


def measure_step(build: Callable[[bool], StepParts], device: str = "cpu", steps: int = 2, categories: bool = True) -> dict:
    """Measure a training step in this (fresh) process; see the module docstring for the method.

    Args:
        build: build(tiny) -> StepParts. build(True) makes a tiny model of the same kind for the
            warm-up; build(False) the real one (model, optimizer, batch).
        device: "cpu" or "cuda".
        steps: steps whose peaks are measured (the first allocates the optimizer state lazily).
        categories: also count the live bytes by category on one more step (not for sharded
            DTensor parameters, whose storages the saved-tensor meter does not read).

    Returns:
        A dict of bytes: "built" (the model, optimizer and batch, above the baseline taken before
        them), "after_steps" (the same, after the steps), "phases" (peak of each phase over the
        steps, above the baseline), "peak",
        "categories" (weights frozen/trainable, gradients, optimizer state, activations, loss: live
        bytes, counted on one more step), and "steps" (per-step phase peaks).
    """
    device = torch.device(device)
    warm = build(True)  # code pages, thread pools and caches become resident before the baseline
    run_step(warm, PeakProbe(device))
    if categories:
        measure_categories(warm)
    del warm
    gc.collect()
    _trim_heap()  # free heap pages left by the warm-up would otherwise absorb new allocations unseen
    probe = PeakProbe(device)
    parts = build(False)
    built = probe.now()
    per_step = [run_step(parts, probe) for _ in range(steps)]
    phases = {phase: max(step[phase] for step in per_step) for phase in per_step[0]}
    after = probe.now()  # the model, the optimizer state, and whatever the runtime kept

    counted = measure_categories(parts) if categories else {}  # one more step, instrumented; its peak is not used
    params = list(parts.model.parameters())
    return dict(device=str(device), built=built, after_steps=after, phases=phases, peak=max(phases.values()), steps=per_step,
                categories=counted, trainable_params=sum(p.numel() for p in params if p.requires_grad),
                total_params=sum(p.numel() for p in params) + sum(m.weight.numel for m in nf4_layers(parts.model).values()))


# ----------------------------------------------------------------------------------------------
# A minift run: build it, measure it in a fresh process, print its ledger


def build_minift_step(spec, tiny: bool = False) -> StepParts:
    """The training step of a `minift.ledger.RunSpec`: the model (preset with random weights, or a
    checkpoint), the PEFT method, minift.train's optimizer and CompletionLoss, a random batch.

    tiny=True: the same method, loss and optimizer on a 64-wide model with a 256-token vocabulary
    and 16-token rows (the warm-up of `measure_step`).
    """
    config, B, T, k = spec.model, spec.batch_size, spec.seq_len, spec.completion_tokens
    if tiny:
        config = dataclasses.replace(config, vocab_size=256, n_embd=64, n_head=2)
        B, T, k = 1, 16, k and min(k, 15)
    torch.manual_seed(0)
    device, dtype = torch.device(spec.device), DTYPES[spec.dtype]
    if spec.checkpoint and not tiny:
        model = load_gpt2(spec.checkpoint, dtype=dtype, dropout=0.0)
    else:
        model = GPT(config).to(dtype)
    model = (model if spec.peft is None else apply_peft(model, spec.peft)).to(device)
    model.activation_checkpointing = spec.activation_checkpointing
    model.train()
    # under torchrun (minift.memory.ranked): DDP, ZeRO-1 or FSDP2 exactly as training applies them, before the optimizer
    loss_module = parallelize(model, CompletionLoss(model, spec.loss), spec.strategy, device)
    defaults = TrainConfig()  # the optimizer's hyperparameters as a run's defaults set them
    optimizer = shard_optimizer(build_optimizer(model, spec.optimizer, defaults.lr, defaults.betas, defaults.weight_decay),
                                spec.strategy)  # zero1: each rank keeps its partition's state
    ids = torch.randint(0, config.vocab_size, (B, T), device=device)
    labels = ids.clone()
    if k is not None:
        labels[:, : T - k] = IGNORE_INDEX  # an instruction-style batch: only the completion (the last k tokens) is scored
    n = int((shifted_targets(labels) != IGNORE_INDEX).sum())

    def forward() -> torch.Tensor:
        # the token-mean, as minift.training normalises by the step's completion tokens (folded into the loss);
        # right-padded batches need no mask
        loss, _ = loss_module(ids, labels, None, scale=1 / n)
        return loss

    return StepParts(model, optimizer, forward)


def _measure_spec(spec: dict, steps: int = 2) -> dict:
    """Subprocess entry point: measure the RunSpec given as a dict."""
    run = RunSpec.from_dict(spec)
    return measure_step(functools.partial(build_minift_step, run), run.device, steps)


def measure(spec, tracking_malloc: bool = True, steps: int = 2) -> dict:
    """Measure `spec` (a minift.ledger.RunSpec) in a fresh process; returns `measure_step`'s dict.

    tracking_malloc: run under `TRACKING_ENV` (resident memory follows the live tensors), or under
    glibc's and MKL's defaults (what a plain run sees). No effect on the CUDA figures.
    """
    return measure_with("minift.memory.step", "_measure_spec", {"spec": spec.to_dict(), "steps": steps}, tracking_malloc)
