"""One rank's bytes under a parallel strategy: ZeRO's model-state arithmetic, tensor by tensor.

Rajbhandari et al. 2020 ("ZeRO", section 3 and Figure 1) count the model states of mixed-precision
Adam per parameter: 2 bytes of fp16/bf16 weights, 2 of gradients and K = 12 of optimizer state (the fp32
master weights and the two fp32 moments). With Psi parameters on N data-parallel ranks, one rank holds

    DDP              (2 + 2 + K) Psi            7.5B parameters, N = 64:   120 GB
    ZeRO-1  P_os     (2 + 2) Psi + K Psi / N                               31.4 GB
    ZeRO-2  P_os+g   2 Psi + (2 + K) Psi / N                               16.6 GB
    ZeRO-3  P_os+g+p (2 + 2 + K) Psi / N                                    1.9 GB

`precision="pure"` (what minift trains) keeps everything in the model's dtype of s bytes: weights s,
gradients s, AdamW's moments 2 s (SGD's momentum s) per trainable element. A shard is what FSDP2 keeps
(minift.training.sharding.shard_numel: dim 0 chunked, padded to a multiple of N), so the figures are
exact per tensor rather than Psi / N. zero1's ZeroRedundancyOptimizer splits whole tensors instead (the
largest first, each to the rank with the fewest elements): the same total, and one rank holds up to half
the largest tensor's state more than Psi / N (nothing more on the tiny preset, whose split is even).

Activations do not shrink with N: every rank runs the forward and backward of its own rows. What
sharding adds is communication buffers, per rank:
- ddp, zero1: DistributedDataParallel's gradient buckets, a flat copy of every trainable gradient
  (gradient_as_bucket_view=False, its default), allocated when the model is wrapped.
- zero2 (FSDP2, reshard_after_forward=False): the weights a step computes with are whole (booked as
  weights, as ZeRO-2 counts them); the rank's shard they are all-gathered from stays allocated beside
  them; backward's reduce-scatter of one unit's gradient needs the unsharded gradient and the flat copy
  it is reduced from: 2 x the largest unit's trainable bytes.
- zero3 (reshard_after_forward=True): the root unit (embeddings, final norm, tied head: FSDP2 does not
  reshard the root after forward) and two blocks' gathered weights (the one running and the one
  prefetched), plus the reduce-scatter buffers as for zero2.
With N = 1 no wrapper is built (minift.training trains one process plainly): no buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

import minift.kernels.adamw8bit as adamw8bit
from minift.memory.spec import RunSpec
from minift.peft import nf4_layers
from minift.training import STRATEGIES, shard_numel


@dataclass
class RankState:
    """What one rank holds by category, and its communication buffers by phase of the step."""

    weights: tuple[int, int]  # (frozen, trainable) bytes while forward and backward run
    weights_at_optimizer: tuple[int, int]  # while the optimizer steps (zero2 has resharded them by then)
    optimizer_state: int
    communication: dict[str, int]  # "forward" | "backward" | "optimizer" -> bytes
    grad_bytes: Callable[[list[nn.Parameter]], int]  # the gradients of these parameters on this rank
    optimizer_numel: Callable[[nn.Parameter], int]  # elements of a parameter's optimizer state on this rank


def _units(gpt: nn.Module, model: nn.Module) -> list[list[nn.Parameter]]:
    """FSDP2's units as minift.training.sharding makes them: one per block, then the root (the rest)."""
    blocks = [list(b.parameters()) for b in gpt.transformer.h]
    in_blocks = {id(p) for ps in blocks for p in ps}
    return blocks + [[p for p in model.parameters() if id(p) not in in_blocks]]


def rank_state(spec: RunSpec, model: nn.Module, gpt: nn.Module) -> RankState:
    """One rank's model states and communication buffers for `model` (spec's, on the meta device)."""
    plan, N = STRATEGIES[spec.strategy], spec.ranks
    params = list(model.parameters())  # a tied tensor appears once
    size = lambda p, sharded: (shard_numel(p.shape, N) if sharded and N > 1 else p.numel()) * p.element_size()
    held = lambda ps, sharded: sum(size(p, sharded) for p in ps)
    frozen, trainable = [p for p in params if not p.requires_grad], [p for p in params if p.requires_grad]

    # per trainable element: AdamW's two moments or SGD's momentum, in the model's dtype; mixed
    # precision keeps them in fp32 beside an fp32 master copy of the weights (ZeRO's K = 12 for Adam)
    moments = 1 if spec.optimizer == "sgd" else 2
    per_element = 4 * (moments + 1) if spec.precision == "mixed" else moments * spec.itemsize
    optimizer_numel = lambda p: shard_numel(p.shape, N) if plan.optimizer_state and N > 1 else p.numel()
    steps = 0 if spec.optimizer == "sgd" else 4 * len(trainable)  # AdamW's 0-dim fp32 step per tensor
    optimizer_state = sum(optimizer_numel(p) for p in trainable) * per_element + steps
    if spec.optimizer == "adamw8bit":  # two 1-byte codes per element and fp32 absmaxes per block (kernels/adamw8bit.py)
        optimizer_state = sum(adamw8bit.state_nbytes(optimizer_numel(p)) for p in trainable)

    # QLoRA's NF4 codes and scales are buffers, not parameters: every rank holds them whole
    nf4 = sum(layer.weight.nbytes for layer in nf4_layers(model).values())
    weights = (held(frozen, plan.parameters) + nf4, held(trainable, plan.parameters))
    shards = (held(frozen, True), held(trainable, True))
    comm = {"forward": 0, "backward": 0, "optimizer": 0}
    if N > 1 and not plan.fsdp:
        comm = dict.fromkeys(comm, held(trainable, False))  # DDP's buckets live as long as the wrapper
    elif N > 1:
        units = _units(gpt, model)
        reduce_scatter = 2 * max(held([p for p in u if p.requires_grad], False) for u in units)
        if plan.parameters:
            blocks = sorted((held(u, False) for u in units[:-1]), reverse=True)
            gathered = held(units[-1], False) + sum(blocks[:2])
        else:
            gathered = sum(shards)  # the shards the whole weights were gathered from
        comm = {"forward": gathered, "backward": gathered + reduce_scatter, "optimizer": 0}
    resharded = (shards[0] + nf4, shards[1])
    return RankState(weights, resharded if N > 1 and plan.fsdp else weights, optimizer_state, comm,
                     grad_bytes=lambda ps: held(ps, plan.gradients), optimizer_numel=optimizer_numel)
