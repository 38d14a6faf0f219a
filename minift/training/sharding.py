"""Parallel strategies: which parts of the model's state each rank keeps whole and which it shards.

ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models") names three stages beyond plain data parallelism (DDP, every rank a full replica):

    stage 1 (P_os)        the optimizer state is split over the N ranks
    stage 2 (P_os+g)      ... and the gradients: each rank keeps the reduced gradient of its shard only
    stage 3 (P_os+g+p)    ... and the parameters: gathered one block at a time for forward and backward

PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every parameter on dim 0 (each rank a
`torch.chunk` of it, dim 0 padded to a multiple of N). With `reshard_after_forward=True` it frees a
block's gathered parameters after its forward and gathers them again for its backward (stage 3); with
False it keeps them from forward to the end of backward (stage 2's memory for the parameters, one
all-gather per step). Either way the gradient is reduce-scattered, so each rank keeps its shard of it.

Stage 1 alone (zero1) is DDP for the model plus PyTorch's `ZeroRedundancyOptimizer`: every rank keeps
whole weights and the whole all-reduced gradient, but the optimizer's parameters are split between
the ranks (whole tensors, the largest first, each to the rank holding the fewest elements so far); a
rank steps only its own, then broadcasts their new values to the others. FSDP2 has no optimizer-only mode.

`STRATEGIES` is the one list of strategies; the memory ledger (minift.memory) and the command line read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, distribute_tensor

import minift.training.distributed as dist


@dataclass(frozen=True)
class Strategy:
    """What one rank keeps a 1/N shard of (ZeRO's stages), and whether FSDP2 shards the model for it."""

    optimizer_state: bool
    gradients: bool
    parameters: bool
    fsdp: bool  # trained with FSDP2's fully_shard (False: DDP)

    @property
    def reshard_after_forward(self) -> bool:
        return self.parameters


STRATEGIES = {
    "ddp": Strategy(optimizer_state=False, gradients=False, parameters=False, fsdp=False),
    "zero1": Strategy(optimizer_state=True, gradients=False, parameters=False, fsdp=False),  # DDP + ZeroRedundancyOptimizer
    "zero2": Strategy(optimizer_state=True, gradients=True, parameters=False, fsdp=True),
    "zero3": Strategy(optimizer_state=True, gradients=True, parameters=True, fsdp=True),
    "fsdp": Strategy(optimizer_state=True, gradients=True, parameters=True, fsdp=True),  # FSDP's default: zero3
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]


def shard_numel(shape: torch.Size | tuple[int, ...], ranks: int) -> int:
    """Elements of one rank's shard of a tensor: FSDP2 chunks dim 0, padded to a multiple of `ranks`."""
    if not shape:
        return 1  # a 0-dim tensor is not split
    rows = -(-shape[0] // ranks)
    rest = 1
    for d in shape[1:]:
        rest *= d
    return rows * rest


def shard_model(model: nn.Module, strategy: Strategy, device: torch.device) -> nn.Module:
    """Shard `model` in place with FSDP2: each transformer block its own unit, the rest (embeddings,
    final norm, the tied head, a soft prompt) the root unit; returns the model.

    One unit per block is what lets ZeRO-3 hold a single block's gathered parameters at a time.
    Frozen parameters (a LoRA base) are sharded like trainable ones: they have no gradient and no
    optimizer state, but their bytes are the largest part of the model. On CUDA the gathered
    parameters are cast to bf16 for compute and gradients are reduced in fp32 (FSDP2's
    MixedPrecisionPolicy); the sharded parameters, and so the optimizer, stay fp32. On CPU: fp32.
    """
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    gpt = model.base_model if hasattr(model, "base_model") else model
    for block in gpt.transformer.h:
        fully_shard(block, reshard_after_forward=strategy.reshard_after_forward, mp_policy=policy)
    # the root's weights (the embeddings and the tied head) are used first in backward: kept gathered
    # from forward to backward under every strategy, as FSDP2 itself does for a root it chooses
    fully_shard(model, reshard_after_forward=False, mp_policy=policy)
    # the loss (minift.training.CompletionLoss) calls hidden_states, not forward: FSDP2 must gather the
    # root unit's weights (embeddings, final norm, the tied head) around that call too
    register_fsdp_forward_method(model, "hidden_states")
    return model


def parallelize(model: nn.Module, loss_module: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """Make `model` (trained through `loss_module`) data-parallel over torchrun's ranks; returns the
    module to call for the loss. One process: both as they are. DDP: the loss module wrapped. FSDP2:
    `model` sharded in place (build the optimizer after this call: its parameters are replaced)."""
    plan = get_strategy(strategy)
    if dist.world_size() == 1:
        return loss_module
    if not plan.fsdp:
        return dist.wrap(loss_module, device)
    shard_model(model, plan, device)
    return loss_module


def shard_optimizer(optimizer: torch.optim.Optimizer, strategy: str) -> torch.optim.Optimizer:
    """zero1 over several ranks: `optimizer` rebuilt as a ZeroRedundancyOptimizer of the same class over
    the same parameter groups (each group's dict carries every setting: lr, betas, weight decay), so
    each rank keeps the state of its partition only. Any other case: `optimizer` as it is.
    Call it before the first step: the state `optimizer` holds is not carried over."""
    plan = get_strategy(strategy)
    if dist.world_size() == 1 or plan.fsdp or not plan.optimizer_state:
        return optimizer
    return ZeroRedundancyOptimizer(optimizer.param_groups, type(optimizer))


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict | None:
    """The optimizer's whole state dict (call on every rank). A ZeroRedundancyOptimizer's is consolidated:
    every rank sends its partition's state to rank 0, which alone gets the dict (None on the others).
    Under FSDP2 its tensors are still this rank's shards: `gather` them (a collective)."""
    if not isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.state_dict()
    optimizer.consolidate_state_dict(to=0)
    return optimizer.state_dict() if dist.rank() == 0 else None


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gather(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a sharded DTensor: call it on all ranks)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def gathered_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every sharded tensor whole (a collective: call on every rank)."""
    return {k: gather(v) for k, v in model.state_dict().items()}


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` split as `like` is (this rank's shard of it, as a DTensor), or `whole` if `like` is not sharded."""
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements)
