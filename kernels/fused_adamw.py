"""Fused AdamW: parameter, first and second moment updated together in one pass over memory.

The math, for one parameter tensor at step t (Kingma & Ba 2015, "Adam", Algorithm 1, with the
weight decay decoupled from the gradient as in Loshchilov & Hutter 2019, "Decoupled Weight Decay
Regularization", Algorithm 2; the same order of operations as `torch.optim.AdamW`):

    p = p * (1 - lr * wd)                         decoupled weight decay: the decay never enters m, v
    m = beta1 * m + (1 - beta1) * g               first moment (written as torch's lerp: m + (1-beta1)(g-m))
    v = beta2 * v + (1 - beta2) * g * g           second moment
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)     bias-corrected step

The step count t is kept per parameter, so the two bias corrections are scalars per tensor,
computed on the host in float64 as torch does.

Cost per fp32 element: read p, g, m, v (16 B) and write p, m, v (12 B): 28 B, and ~14 FLOPs
(decay 1, m 3, v 4, denominator 3 counting sqrt and division as one each, update 3). At 0.5
FLOP/B the kernel is memory-bound by a factor of ~40 on an H100, so its speed is its bytes.
Worked example, GPT-2 small (124,439,808 parameters, fp32): 124.4M * 28 B = 3.48 GB per step,
~1.04 ms at an H100 SXM's 3.35 TB/s. An unfused AdamW (torch's foreach path: mul_, lerp_, mul_,
addcmul_, sqrt, div_, add_, addcdiv_) makes eight passes and moves ~80 B per element, ~2.9x more.
bf16/fp16 parameters move half the bytes (14 B per element); the math is fp32 inside the kernel.

The design: one launch for many tensors, each read where it lives. The kernel gets a table of
addresses (for every parameter: its p, g, m and v) and a table of blocks (for every program: which
tensor and which block of it), like torch's multi_tensor_apply (block_to_tensor, block_to_chunk)
and Triton's grouped-GEMM tutorial (08-grouped-gemm.py, a device tensor of pointers). We chose
this over flat buffers (all parameters viewed into one contiguous buffer per group) because:
- gradients are fresh tensors every step (zero_grad(set_to_none=True) is torch's default), so a
  flat buffer needs them gathered first: a copy of 8 B per element, 28 -> 36 B (+29%);
- flat parameters mean replacing each `p.data` with a view of the buffer behind the user's back,
  and `load_state_dict` replaces the moment tensors, so the views would have to be rebuilt;
- the state stays exactly torch.optim.AdamW's (one `exp_avg`, `exp_avg_sq`, `step` per parameter),
  so a state_dict saved by either optimizer loads into the other unchanged.
What it costs instead, per step and per (group, device, dtype): a host-built table of 5 int64 and
2 fp32 per tensor (~7 KB for GPT-2's 148 tensors) copied to the GPU asynchronously from pinned
memory; the block table (8 B per block of 1024 elements, ~1 MB for GPT-2, 0.03% of the step's bytes)
is built once per set of tensor sizes and cached. No parameter, gradient or moment is ever copied.
Tensors whose addresses are all 16-byte aligned (every fresh CUDA allocation) get 128-bit accesses;
any others, e.g. views at an odd offset, go in a second launch that makes no such promise, so one
misaligned tensor does not slow the rest.

Moments are kept in the parameter's dtype, as torch.optim.AdamW keeps them (so state_dicts stay
interchangeable): fp32 for fp32 parameters; for bf16/fp16 parameters m and v are bf16/fp16 in
memory and fp32 inside the kernel (rounded once per step, where torch rounds after every op).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import torch

from ._backend import BACKENDS, interpreter_enabled, select_backend

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton (macOS, Windows): only the PyTorch reference runs
    triton = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if triton is not None:
    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def _tensor_ptr(row_ptr, col, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        """The address in column `col` of a row of the address table, as a pointer to DTYPE."""
        ptr = tl.load(row_ptr + col).to(tl.pointer_type(DTYPE))
        if ALIGNED:
            # A pointer loaded from memory carries no alignment; the launcher checked that every address
            # is a multiple of 16 B, and saying so lets the compiler use 128-bit loads and stores.
            ptr = tl.multiple_of(ptr, 16)
        return ptr

    @triton.jit
    def _adamw_block(
        p_ptrs, g_ptrs, m_ptrs, v_ptrs, mask, decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt
    ):
        """One block of elements: read p, g, m, v; write p, m, v. fp32 math whatever the storage dtype."""
        p = tl.load(p_ptrs, mask=mask).to(tl.float32)
        g = tl.load(g_ptrs, mask=mask).to(tl.float32)
        m = tl.load(m_ptrs, mask=mask).to(tl.float32)
        v = tl.load(v_ptrs, mask=mask).to(tl.float32)
        p = p * decay  # decoupled weight decay (Loshchilov & Hutter 2019)
        m = m + one_minus_beta1 * (g - m)  # = beta1 m + (1 - beta1) g, as torch's lerp_
        v = v * beta2 + one_minus_beta2 * g * g
        # div_rn/sqrt_rn: IEEE-rounded like torch's ops (Triton's default "/" and sqrt are approximate on GPU).
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p - tl.div_rn(step_size * m, denom)
        tl.store(p_ptrs, p.to(p_ptrs.dtype.element_ty), mask=mask)
        tl.store(m_ptrs, m.to(m_ptrs.dtype.element_ty), mask=mask)
        tl.store(v_ptrs, v.to(v_ptrs.dtype.element_ty), mask=mask)

    @triton.jit
    def _adamw_kernel(
        tensors_ptr,  # (n_tensors, 5) int64: addresses of p, g, m, v, then numel
        scalars_ptr,  # (n_tensors, 2) fp32: step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
        blocks_ptr,  # (n_blocks, 2) int32: the tensor and the block within it that each program updates
        decay,  # 1 - lr * weight_decay
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        eps,
        DTYPE: tl.constexpr,  # p, g, m, v all have this dtype
        ALIGNED: tl.constexpr,  # every address is a multiple of 16 B
        BLOCK_SIZE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        tensor = tl.load(blocks_ptr + 2 * pid)
        block = tl.load(blocks_ptr + 2 * pid + 1)
        row_ptr = tensors_ptr + 5 * tensor
        p_ptr = _tensor_ptr(row_ptr, 0, DTYPE, ALIGNED)
        g_ptr = _tensor_ptr(row_ptr, 1, DTYPE, ALIGNED)
        m_ptr = _tensor_ptr(row_ptr, 2, DTYPE, ALIGNED)
        v_ptr = _tensor_ptr(row_ptr, 3, DTYPE, ALIGNED)
        numel = tl.load(row_ptr + 4)
        step_size = tl.load(scalars_ptr + 2 * tensor)
        bc2_sqrt = tl.load(scalars_ptr + 2 * tensor + 1)
        start = block.to(tl.int64) * BLOCK_SIZE  # int64: a tensor may pass 2**31 elements
        offs = start + tl.arange(0, BLOCK_SIZE)
        args = (decay, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt)
        # numel comes from memory, so its divisibility is unknown and a mask `offs < numel` would force
        # one-element accesses; only the last block of each tensor needs the mask.
        if start + BLOCK_SIZE <= numel:
            _adamw_block(p_ptr + offs, g_ptr + offs, m_ptr + offs, v_ptr + offs, None, *args)
        else:
            _adamw_block(p_ptr + offs, g_ptr + offs, m_ptr + offs, v_ptr + offs, offs < numel, *args)


def _adamw_torch(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """PyTorch reference, in place: the kernel's math with torch's ops, one tensor at a time.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: same-length lists; tensors i share shape and dtype.
        steps: each parameter's step count t, already incremented for this step.
        lr, beta1, beta2, eps, weight_decay: the parameter group's hyperparameters.
    """
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        # fp32 math: .float() is the tensor itself for fp32 (updated in place), a copy for bf16/fp16.
        p32, g32, m32, v32 = p.float(), g.float(), m.float(), v.float()
        p32.mul_(1 - lr * weight_decay)
        m32.lerp_(g32, 1 - beta1)
        v32.mul_(beta2).addcmul_(g32, g32, value=1 - beta2)
        denom = v32.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)  # one temporary of p's size
        p32.addcdiv_(m32, denom, value=-lr / (1 - beta1**step))
        for t, t32 in ((p, p32), (m, m32), (v, v32)):
            if t32 is not t:
                t.copy_(t32)  # round back to bf16/fp16


# 1024 elements per program, 8 warps: 4 fp32 per thread per tensor, one 128-bit access each. The
# program then needs ~45 registers a thread (38-45 compiled for sm_80/sm_90 by Triton 3.7 and 3.9, no
# spills: tests/kernels/test_aot_compile.py), so 5 programs (62% of an SM's 2048 threads) are resident to
# hide HBM latency; 4096 elements needed 128 (Triton 3.9) to 188 (3.7) registers: 1-2 programs an SM.
# Not yet timed on a GPU (benchmarks/gpu_suite.py measures it).
BLOCK_SIZE = 1024
NUM_WARPS = 8


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host-built table to `device` without making the host wait for the GPU."""
    if device.type != "cuda":
        return table
    # From pinned memory the copy is asynchronous; torch's caching host allocator keeps the pinned
    # buffer alive until the copy has run, so the temporary may be dropped at once.
    return table.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=16)
def _block_table(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(tensor index, block index) for every program, (n_blocks, 2) int32 on `device`.

    Depends only on the tensors' sizes, so it is built once and reused every step.
    """
    n_blocks = torch.tensor([triton.cdiv(n, BLOCK_SIZE) for n in numels])
    tensor_index = torch.repeat_interleave(torch.arange(len(numels)), n_blocks)
    block_index = torch.cat([torch.arange(n) for n in n_blocks.tolist()])
    return _to_device(torch.stack([tensor_index, block_index], dim=1).to(torch.int32), device)


def _adamw_triton(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Launch the kernel once for all the tensors: same contract as `_adamw_torch`, plus all tensors
    contiguous, on one device, of one dtype in SUPPORTED_DTYPES.

    Raises:
        ValueError: a tensor is not contiguous (the kernel walks each one as a flat array).
        RuntimeError: CUDA tensors under TRITON_INTERPRET=1 (the interpreter reads host memory only).
    """
    device = params[0].device
    if device.type == "cuda" and interpreter_enabled():
        raise RuntimeError("FusedAdamW's Triton kernel cannot run on CUDA tensors with TRITON_INTERPRET=1")
    launches = {True: ([], []), False: ([], [])}  # by alignment: (address rows, scalar rows)
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if not (p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
            raise ValueError("FusedAdamW's Triton kernel needs contiguous parameters and gradients; use backend='torch'")
        row = [p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel()]
        rows, scalars = launches[all(addr % 16 == 0 for addr in row[:4])]
        rows.append(row)
        scalars.append([lr / (1 - beta1**step), math.sqrt(1 - beta2**step)])  # float64 here, fp32 in the kernel
    for aligned, (rows, scalars) in launches.items():
        if not rows:
            continue
        blocks = _block_table(tuple(row[4] for row in rows), device)
        # Triton launches on the current CUDA device, which need not be the parameters' device.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            _adamw_kernel[(len(blocks),)](
                _to_device(torch.tensor(rows, dtype=torch.int64), device),
                _to_device(torch.tensor(scalars, dtype=torch.float32), device),
                blocks,
                1 - lr * weight_decay,
                1 - beta1,
                beta2,
                1 - beta2,
                eps,
                DTYPE=_TL_DTYPES[params[0].dtype],
                ALIGNED=aligned,
                BLOCK_SIZE=BLOCK_SIZE,
                num_warps=NUM_WARPS,
                enable_fp_fusion=True,  # FMAs, as nvcc compiles torch's fused AdamW; explicit: Triton 3.10 turns the default off
            )
    for p in params:
        # Triton's writes are invisible to autograd; bump the version as torch's in-place ops do, so a
        # backward that saved a parameter before this step raises instead of using the new values.
        torch.autograd.graph.increment_version(p)


_ADAMW_STEPS: dict[str, Callable[..., None]] = {"triton": _adamw_triton, "torch": _adamw_torch}
# Flags of torch.optim.AdamW this optimizer does not implement; True for any of them raises.
_UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable")


def _check_supported(group: dict) -> None:
    for flag in _UNSUPPORTED_FLAGS:
        if group.get(flag):
            raise ValueError(f"FusedAdamW does not support {flag}=True; use torch.optim.AdamW for it")


def check_adamw_arguments(lr, betas: tuple[float, float], eps: float, weight_decay: float, backend: str | None) -> None:
    """Raise ValueError, with torch.optim.AdamW's messages, for a hyperparameter out of range or an unknown backend."""
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"Invalid beta parameters: {betas}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be None, 'triton' or 'torch', got {backend!r}")


def closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss a `step(closure)` returns: the closure re-evaluated with gradients on (under step's no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class FusedAdamW(torch.optim.Optimizer):
    """AdamW whose step updates parameter, first and second moment in one pass (see the module docstring).

    A drop-in for `torch.optim.AdamW`: the same constructor, parameter groups (each with its own
    lr, betas, eps, weight_decay; a scheduler's change to group["lr"] applies at the next step),
    parameters without a gradient skipped, and the same state (`step`, a 0-dim float tensor on the
    CPU, `exp_avg`, `exp_avg_sq` in the parameter's dtype) and group keys, so a state_dict saved by
    either optimizer loads into the other.

    Args:
        params: parameters or parameter groups (dicts), as for any torch optimizer; fp32, bf16 or fp16.
        lr, betas, eps, weight_decay: as torch.optim.AdamW (weight decay is decoupled).
        amsgrad, maximize, capturable, differentiable: accepted for compatibility; only False works.
        foreach, fused: accepted and stored in the groups like torch's; this optimizer is always fused.
        backend: None (by device: CUDA -> Triton, CPU -> PyTorch reference, or Triton's interpreter
            under TRITON_INTERPRET=1), "triton" or "torch" (force one).

    Raises:
        ValueError: a hyperparameter out of range, an unknown backend, or an unsupported flag set to True
            (also from `step`, for a flag a loaded state_dict set, or a non-contiguous tensor on Triton).
        RuntimeError (from `step`): a sparse gradient.
        TypeError (from `step`): a parameter dtype outside fp32, bf16, fp16.
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
    ) -> None:
        check_adamw_arguments(lr, betas, eps, weight_decay, backend)
        self.backend = backend  # an attribute, not a group key: load_state_dict replaces the groups
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,  # what torch.optim.AdamW stores, so its groups and ours match
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_supported(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW step for every parameter that has a gradient; returns the closure's loss, if any."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            _check_supported(group)  # again: a loaded state_dict may have set a flag
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FusedAdamW does not support sparse gradients; use torch.optim.SparseAdam")
                if p.dtype not in SUPPORTED_DTYPES:
                    raise TypeError(f"FusedAdamW supports fp32, bf16 and fp16 parameters, got {p.dtype}")
                state = self.state[p]
                if not state:  # lazy initialisation, as torch.optim.AdamW
                    state["step"] = torch.tensor(0.0)  # the default dtype, on the CPU: torch's layout
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for params in buckets.values():  # one launch per device and dtype
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        states = [self.state[p] for p in params]
        step_tensors = [state["step"] for state in states]
        torch._foreach_add_(step_tensors, 1.0)  # one call for all the counters, as torch.optim's AdamW does
        beta1, beta2 = group["betas"]
        backend = select_backend(params[0], self.backend)
        _ADAMW_STEPS[backend](
            params,
            [p.grad for p in params],
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            torch.stack(step_tensors).tolist(),
            lr=float(group["lr"]),  # float(): torch also allows a 1-element tensor lr
            beta1=float(beta1),
            beta2=float(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )
