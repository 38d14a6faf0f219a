"""Fused linear + cross-entropy: the LM head and the loss without ever holding the [N, V] logits.

`linear_cross_entropy(hidden, weight, labels, bias)` equals
`cross_entropy(hidden @ weight.T + bias, labels)`, but walks the N tokens in chunks of C rows
sized by a byte budget (`chunk_bytes`). For each chunk, with g the fused cross-entropy's gradient
written over the chunk's logits (kernels/fused_cross_entropy.py):

    logits_c      = h_c @ W.T + b           (C, V)   the only [*, V] buffer, reused by every chunk
    g_c           = d loss / d logits_c     (C, V)   written over logits_c by the fused kernel
    grad_hidden_c = g_c @ W                 (C, H)   chain rule through logits = h W^T + b
    grad_W       += g_c.T @ h_c             (V, H)   accumulated in place (addmm_), no (V, H) temporary
    grad_b       += g_c.sum(0)              (V,)

so all gradients exist when the forward pass ends; they are kept, and the backward pass only
multiplies them by grad_output (skipped when that is 1). An input that does not need a gradient
costs nothing: a frozen (e.g. LoRA) head gets no (V, H) gradient buffer and no g.T @ h product.
With reduction "none" grad_output weights each row before the sums over rows in grad_W and grad_b,
so it cannot be applied afterwards; that path keeps the inputs and recomputes chunk by chunk in
backward (one more h @ W.T).

The two backends share this loop and the matmuls (cuBLAS on GPU, oneDNN/MKL on CPU); they differ
only in the per-chunk cross-entropy: the Triton kernel or the PyTorch reference.

Cost. FLOPs: 2NHV for the logits, 2NHV for grad_hidden, 2NHV for grad_W: 6NHV, the same as
eager's forward + backward. Memory beyond inputs and gradients: one logits chunk of at most
`chunk_bytes` (plus, in the reference with bf16/fp16, a 32 MiB fp32 working copy). Worked
example, N = 8192 tokens, H = 768, V = 50257 (GPT-2 small), bf16: eager materialises 823 MB of
logits and an 823 MB gradient of them (plus fp32 upcasts in a typical loss); here the [*, V]
memory is one 64 MiB chunk of 667 rows, 13 chunks in all, and the work is 6 * 8192 * 768 * 50257
= 1.90 TFLOP, at best about 2 ms at an H100's ~990 TFLOP/s dense bf16 peak.
"""

from __future__ import annotations

import torch

from ._backend import select_backend
from .fused_cross_entropy import REDUCTIONS, _check_labels, _CROSS_ENTROPY_ROWS, _reduce_loss, _row_scale

# 64 MiB of logits per chunk: the GEMMs of a chunk stay large (667 rows of a 50257 vocabulary in
# bf16, 333 in fp32), and the chunk is small beside the [V, H] gradient of a tied head (154 MB for
# GPT-2 small in fp32). Measured forward + backward at 8192 x 768 x 50257 fp32 on 2 CPU cores
# (benchmarks/bench_cross_entropy.py): 256 MB peak above the inputs, 0.70x PyTorch's chunked
# path; 128 MiB gave 324 MB (0.88x) and 32 MiB 223 MB, neither measurably faster.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def _linear_cross_entropy_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    scale: torch.Tensor,
    ignore_index: int,
    chunk_rows: int,
    backend: str,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The chunk loop: per-row losses (N,) fp32 and the gradients of (hidden, weight, bias), each
    scaled row by row by `scale` (N,), or None where `needs` says it is not wanted.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) int64.
    """
    N, H = hidden.shape
    V = weight.shape[0]
    need_hidden, need_weight, need_bias = needs
    cross_entropy_rows = _CROSS_ENTROPY_ROWS[backend]
    loss = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H), every row written once
    # grad_W is accumulated in the weight's dtype, rounded once per chunk (the GEMM itself
    # accumulates in fp32): an fp32 (V, H) accumulator would cost 2 more bytes per weight in bf16.
    grad_weight = torch.zeros_like(weight) if need_weight else None  # (V, H)
    grad_bias = torch.zeros(V, dtype=torch.float32, device=hidden.device) if need_bias else None  # small: fp32
    logits_buffer = torch.empty(min(chunk_rows, N), V, dtype=hidden.dtype, device=hidden.device)
    for start in range(0, N, chunk_rows):
        end = min(start + chunk_rows, N)
        h = hidden[start:end]  # (C, H)
        logits = logits_buffer[: end - start]  # (C, V); the last chunk may be shorter
        # out=: every chunk reuses one buffer instead of allocating (and page-faulting) a fresh one.
        if bias is None:
            torch.mm(h, weight.t(), out=logits)
        else:
            torch.addmm(bias, h, weight.t(), out=logits)
        # The fused cross-entropy writes d loss / d logits (already scaled) over `logits`.
        loss[start:end] = cross_entropy_rows(logits, labels[start:end], scale[start:end], ignore_index)
        if need_hidden:
            torch.mm(logits, weight, out=grad_hidden[start:end])  # (C, V) @ (V, H)
        if need_weight:
            grad_weight.addmm_(logits.t(), h)  # (V, C) @ (C, H), in place
        if need_bias:
            grad_bias += logits.sum(dim=0, dtype=torch.float32)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return loss, [grad_hidden, grad_weight, grad_bias]


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Forward computes the loss and all gradients chunk by chunk; backward only scales them
    (reduction "none": backward recomputes, see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, chunk_rows, backend, needs):
        # hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) int64
        ctx.reduction, ctx.ignore_index, ctx.chunk_rows, ctx.backend = reduction, ignore_index, chunk_rows, backend
        ctx.needs = needs
        scale = _row_scale(labels, ignore_index, reduction)
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, labels)
            needs = (False, False, False)  # the loss only; backward recomputes
        loss, grads = _linear_cross_entropy_chunks(
            hidden, weight, bias, labels, scale.expand(len(labels)), ignore_index, chunk_rows, backend, needs
        )
        ctx.grads = grads  # all None for "none"
        return _reduce_loss(loss, scale, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.reduction == "none":
            hidden, weight, bias, labels = ctx.saved_tensors
            _, grads = _linear_cross_entropy_chunks(
                hidden, weight, bias, labels, grad_output.float().contiguous(), ctx.ignore_index, ctx.chunk_rows,
                ctx.backend, ctx.needs,
            )
        else:
            grads = ctx.grads
            if grads is None:
                raise RuntimeError(
                    "linear_cross_entropy: backward ran twice; the gradients are scaled in place, "
                    "so retain_graph is not supported"
                )
            ctx.grads = None  # hand over the only references: autograd may then use them without a copy
            if grad_output.item() != 1.0:  # one sync; skips a pass over grad_W when the loss is last
                for grad in grads:
                    if grad is not None:
                        grad.mul_(grad_output)  # in fp32, rounded once to the grad's dtype
        return *grads, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """`cross_entropy(hidden @ weight.T + bias, labels)` without materialising the logits.

    Gradients of hidden, weight and bias are computed during the forward pass for the inputs that
    require grad (under `torch.no_grad()` none are), and backward runs once (no `retain_graph`).

    Args:
        hidden: (N, H) or (B, T, H), fp32, bf16 or fp16.
        weight: (V, H), the head (e.g. the tied token embedding), hidden's dtype.
        labels: (N,) or (B, T), integer class indices in [0, V) or `ignore_index`.
        bias: (V,) or None, hidden's dtype.
        ignore_index: label whose rows get zero loss and zero gradient.
        reduction: "mean" (over non-ignored rows; 0 when all are ignored), "sum" or "none".
        backend: None (by device, see kernels/_backend.py), "triton" or "torch" for the per-chunk
            cross-entropy.
        chunk_bytes: budget for one chunk of logits; rows per chunk = chunk_bytes // (V * itemsize),
            at least 1. Smaller saves memory, larger makes bigger (faster) matmuls.

    Returns:
        fp32 loss: a scalar, or labels' shape for reduction "none". Gradients have their inputs' dtypes.

    Raises:
        ValueError: unknown reduction, mismatched shapes or dtypes, or a label outside [0, V) that
            is not `ignore_index` (the message names the value, its row and V).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    V, H = weight.shape
    if hidden.shape[-1] != H or labels.shape != hidden.shape[:-1] or (bias is not None and bias.shape != (V,)):
        raise ValueError(
            f"expected hidden (..., H), weight (V, H), labels (...), bias (V,); got hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}, labels {tuple(labels.shape)}, "
            f"bias {None if bias is None else tuple(bias.shape)}"
        )
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(
            f"hidden, weight and bias must share a dtype, got {hidden.dtype}, {weight.dtype}, "
            f"{None if bias is None else bias.dtype}"
        )
    flat_labels = labels.reshape(-1).long()  # (N,)
    _check_labels(flat_labels, V, ignore_index)
    flat_hidden = hidden.reshape(-1, H).contiguous()  # (N, H); row slices must be contiguous for out=
    needs = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    chunk_rows = max(1, chunk_bytes // (V * hidden.element_size()))
    backend = select_backend(hidden, backend)
    loss = LinearCrossEntropyFunction.apply(
        flat_hidden, weight, bias, flat_labels, ignore_index, reduction, chunk_rows, backend, needs
    )
    return loss.view(labels.shape) if reduction == "none" else loss
