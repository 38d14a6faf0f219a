"""Fused linear + cross-entropy: the LM head and the loss without ever holding the [N, V] logits.

`linear_cross_entropy(hidden, weight, labels, bias)` equals
`cross_entropy(hidden @ weight.T + bias, labels)`, but walks the N tokens in chunks of C rows
(`chunk_rows`, below). For each chunk, with g the fused cross-entropy's gradient (times the row
scale, see kernels/fused_cross_entropy.py) written over the chunk's logits:

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
only in the per-chunk cross-entropy: the Triton kernel or the PyTorch reference. Under autocast the
inputs are cast to the autocast dtype first: autocast rewrites F.linear, but not the mm(out=) and
addmm_ this loop uses, so without the cast a bf16-autocast step would run the head's 6NHV FLOPs in
fp32. fp16 keeps its row scale for backward (the fused cross-entropy's docstring says why) and so
accumulates grad_W in fp32 (4 more bytes per head weight, fp16 only: unscaled it could pass 65504).

The chunk size. Each chunk reads W twice (the logits product and grad_hidden's) and reads and writes
grad_W once (addmm_): 4 V H b bytes for b-byte elements, so k chunks move 4 k V H b bytes beside the
GEMMs' 6 N H V FLOPs. On a device that does F FLOP/s from B bytes/s, that traffic takes at most a
fraction r of the GEMM time when each chunk has at least

    C_min = 4 b (F / B) / (6 r)  rows.

A GPU's tensor cores do ~300 FLOP per byte of HBM (H100 SXM: 989 TFLOP/s bf16 dense / 3.35 TB/s;
A100: 312 / 2.0 = 156), half that for fp32 in TF32; with r = 1/4 that is C_min = 1600 rows for bf16
and for fp32 alike. So `chunk_rows` takes the larger of C_min (GPU only; a CPU's ~10 FLOP/B gives
tens of rows, below any budget) and the rows that fit the memory budget, 64 MiB of logits on a CPU
(measured: benchmarks/results/bench_cross_entropy_*) and 256 MiB on a GPU, then spreads N evenly over
the chunks that needs. Worked example, N = 8192: GPT-2 small's head (V 50257, H 768) in bf16 gets 4
chunks of 2048 rows (206 MB of logits; W traffic 1.2 GB, ~19% of the GEMM time on an H100); LLaMA-3's
(V 128256, H 4096) gets 5 chunks of 1639 rows (420 MB, against 2.1 GB of whole logits; W traffic
21 GB, ~24%), where a fixed 64 MiB would make 32 chunks and ~134 GB.

Cost. FLOPs: 2NHV for the logits, 2NHV for grad_hidden, 2NHV for grad_W: 6NHV, the same as
eager's forward + backward. Memory beyond inputs and gradients: one logits chunk of at most
`chunk_bytes` (plus, in the reference with bf16/fp16, a 32 MiB fp32 working copy). Worked
example, N = 8192 tokens, H = 768, V = 50257 (GPT-2 small), bf16: eager materialises 823 MB of
logits and an 823 MB gradient of them (plus fp32 upcasts in a typical loss); here the [*, V]
memory is one 64 MiB chunk of 667 rows, 13 chunks in all, and the work is 6 * 8192 * 768 * 50257
= 1.90 TFLOP, at best about 2 ms at an H100's ~990 TFLOP/s dense bf16 peak.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ._backend import select_backend
from .fused_cross_entropy import (
    REDUCTIONS,
    _check_labels,
    _CROSS_ENTROPY_ROWS,
    _folded_scale,
    _reduce_loss,
    _row_scale,
    _scale_gradients,
)

# The memory budget for one chunk of logits, by device type (see "The chunk size" above). CPU: measured
# forward + backward at 8192 x 768 x 50257 fp32 on 2 cores (benchmarks/bench_cross_entropy.py): 64 MiB
# gave 256 MB peak above the inputs, 128 MiB 324 MB, 32 MiB 223 MB, neither measurably faster.
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}
# FLOP per byte of a GPU's HBM (tensor cores, by element size; fp32 runs in TF32) and the share r of the
# GEMM time the weight traffic may take: C_min = 4 b (F / B) / (6 r).
_GPU_FLOP_PER_BYTE = {2: 300, 4: 150}
_WEIGHT_TRAFFIC_SHARE = 1 / 4


def chunk_rows(N: int, V: int, itemsize: int, device_type: str, chunk_bytes: int | None = None) -> int:
    """Rows per chunk: as few chunks as the memory budget allows, but (on a GPU) none below C_min rows;
    N spread evenly over them, so no chunk makes a short GEMM.

    Args:
        N, V: rows (tokens) and vocabulary size; itemsize: bytes per logit.
        device_type: "cuda" or anything else (the CPU's budget, no floor).
        chunk_bytes: the memory budget for one chunk of logits (default: CHUNK_BYTES by device type).
    """
    budget = chunk_bytes if chunk_bytes is not None else CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"])
    chunks = max(1, math.ceil(N / max(1, budget // (V * itemsize))))  # as few as the budget allows
    if device_type == "cuda" and chunk_bytes is None:
        flop_per_byte = _GPU_FLOP_PER_BYTE.get(itemsize, _GPU_FLOP_PER_BYTE[4])
        floor = math.ceil(4 * itemsize * flop_per_byte / (6 * _WEIGHT_TRAFFIC_SHARE))  # C_min
        chunks = min(chunks, max(1, N // floor))  # every chunk at least C_min rows, past the budget if need be
    return max(1, math.ceil(N / chunks))  # the same rows in every chunk: no short last GEMM


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

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) int64. grad_W is fp32 for fp16 inputs.
    """
    N, H = hidden.shape
    V = weight.shape[0]
    need_hidden, need_weight, need_bias = needs
    cross_entropy_rows = _CROSS_ENTROPY_ROWS[backend]
    loss = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H), every row written once
    # grad_W is accumulated in the weight's dtype, rounded once per chunk (the GEMM itself
    # accumulates in fp32): an fp32 (V, H) accumulator would cost 2 more bytes per weight in bf16.
    # fp16's unscaled gradient could overflow there, so fp16 accumulates in fp32 (module docstring).
    wide = weight.dtype == torch.float16
    grad_weight = torch.zeros_like(weight, dtype=torch.float32 if wide else None) if need_weight else None  # (V, H)
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
        if need_weight and wide:
            grad_weight += torch.mm(logits.t(), h)  # (V, C) @ (C, H), a chunk's sum: well inside fp16
        elif need_weight:
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
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, scale, chunk_rows, backend, needs):
        # hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) int64
        ctx.reduction, ctx.ignore_index, ctx.chunk_rows, ctx.backend = reduction, ignore_index, chunk_rows, backend
        ctx.needs, ctx.dtypes = needs, (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        scale = _row_scale(labels, ignore_index, reduction, scale)
        written, ctx.deferred = _folded_scale(scale, hidden.dtype)
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, labels)
            needs = (False, False, False)  # the loss only; backward recomputes
        loss, grads = _linear_cross_entropy_chunks(
            hidden, weight, bias, labels, written.expand(len(labels)), ignore_index, chunk_rows, backend, needs
        )
        ctx.grads = grads  # all None for "none"
        return _reduce_loss(loss, scale, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.reduction == "none":
            hidden, weight, bias, labels = ctx.saved_tensors
            row_scale = grad_output.float() * (1.0 if ctx.deferred is None else ctx.deferred)
            _, grads = _linear_cross_entropy_chunks(
                hidden, weight, bias, labels, row_scale.contiguous(), ctx.ignore_index, ctx.chunk_rows,
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
            _scale_gradients(grads, grad_output, ctx.deferred, per_row=False)
        grads = [g if g is None or g.dtype == dtype else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return *grads, None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    chunk_bytes: int | None = None,
    scale: float = 1.0,
    check_labels: bool | None = None,
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
        chunk_bytes: budget for one chunk of logits; None: by device, with a floor of rows on a GPU
            (`chunk_rows` and the module docstring). Given, rows per chunk = chunk_bytes // (V * itemsize),
            at least 1. Smaller saves memory, larger makes bigger (faster) matmuls.
        scale: a factor the loss is multiplied by, folded into the gradients made in forward.
        check_labels: as for `cross_entropy`: None checks labels on the CPU only (free there).

    Returns:
        fp32 loss times `scale`: a scalar, or labels' shape for reduction "none". Gradients have their
        inputs' dtypes. Under autocast the products run in the autocast dtype.

    Raises:
        ValueError: unknown reduction, mismatched shapes or dtypes, or a label outside [0, V) that
            is not `ignore_index` (the message names the value, its row and V).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    device_type = hidden.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        # What autocast does for F.linear, done here because it skips mm(out=) and addmm_ (docstring).
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
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
    _check_labels(flat_labels, V, ignore_index, check_labels)
    flat_hidden = hidden.reshape(-1, H).contiguous()  # (N, H); row slices must be contiguous for out=
    needs = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    rows = chunk_rows(len(flat_labels), V, hidden.element_size(), device_type, chunk_bytes)
    backend = select_backend(hidden, backend)
    with torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else contextlib.nullcontext():
        loss = LinearCrossEntropyFunction.apply(
            flat_hidden, weight, bias, flat_labels, ignore_index, reduction, scale, rows, backend, needs
        )
    return loss.view(labels.shape) if reduction == "none" else loss
