"""Fused cross-entropy: the loss and its gradient in one pass, the gradient written over the logits.

The math. For one row of logits x (length V) and its label y,

    loss = -log softmax(x)[y] = lse(x) - x[y],        lse(x) = log sum_j exp(x[j])

and, since d lse / d x[j] = exp(x[j] - lse) = softmax(x)[j],

    d loss / d x[j] = softmax(x)[j] - [j == y]        (softmax minus one-hot).

With reduction "mean" the batch loss is (1 / n_valid) * sum of the valid rows' losses, so each
valid row's gradient is (softmax - onehot) / n_valid; a row whose label is `ignore_index` adds
nothing, so its loss and gradient are zero. The gradient needs only x and lse, both known at the
end of the forward pass, so we compute it there and never keep a softmax: the kernel writes it
over the logits buffer, and the backward pass only multiplies it by grad_output (skipped when that
is 1, as it is when the loss is the last op). The row scale s = scale / n_valid ("mean") or scale
("sum", "none") is folded into the forward write because it is known then: one pass over [N, V]
memory saved in the backward. A training loop that normalises by the token count of a whole step
(all micro-batches, all ranks) passes that factor as `scale` and calls backward() on the result.

fp16 is the exception: (softmax - onehot) * s with s = 1/8192 flushes every probability below
6e-8 / s = 5e-4 to zero (fp16's smallest subnormal is 6e-8) before a GradScaler's factor, which
arrives as grad_output, could lift it. For fp16 the forward writes (softmax - onehot), which lies in
[-1, 1], and the backward multiplies by s * grad_output in fp32, rounding once: one more pass,
bf16 and fp32 (fp32's exponent range) never need it.

lse is computed "online" in one read of the row (Milakov & Gimelshein 2018, "Online normalizer
calculation for softmax", algorithm 3): keep a running max m and a running sum d of exp(x - m);
when a block raises the max to m', rescale d by exp(m - m'). Then lse = m + log d.

Cost per logit (the kernel is memory-bound): reads 2 (the lse pass, the gradient pass), writes 1;
about 10 FLOPs (max, two subtractions, two exps, sum, compare, scale). Worked example, N = 8192
tokens, V = 50257 (GPT-2), bf16: the logits are 8192 * 50257 * 2 B = 823 MB; read twice and written
once that is 2.47 GB of traffic, ~0.74 ms at an H100 SXM's 3.35 TB/s, with no extra [N, V] buffer.
PyTorch's eager F.cross_entropy keeps the log-softmax ([N, V], another 823 MB) from forward to
backward, allocates two more [N, V] tensors in backward (the gradients of the log-softmax and of
the logits) and makes about seven passes over [N, V] memory.
"""

from __future__ import annotations

import contextlib

import torch

from ._backend import select_backend

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton (macOS, Windows): only the PyTorch reference runs
    triton = None

REDUCTIONS = ("mean", "sum", "none")

if triton is not None:

    @triton.jit
    def _cross_entropy_kernel(
        logits_ptr,  # (N, V), overwritten with the gradient
        stride_logits_row,
        labels_ptr,  # (N,) integer
        stride_labels,  # a 1-D view may be strided (labels[::2], a column of a (B, T) tensor)
        scale_ptr,  # (N,) fp32: what each valid row's gradient is multiplied by
        stride_scale,  # 0 when one scale serves every row
        loss_ptr,  # (N,) fp32, output
        V,
        ignore_index,
        BLOCK_V: tl.constexpr,
    ):
        # One program per row; int64 because row * stride passes 2**31 for, e.g., 32k tokens x 128k vocab.
        row = tl.program_id(0).to(tl.int64)
        logits_ptr += row * stride_logits_row
        label = tl.load(labels_ptr + row * stride_labels)
        # A label outside [0, V) is never read through: its row gets a NaN loss (the caller checks labels
        # where that is free, on the host; on a GPU the check would cost a device sync per call).
        label_ok = (label >= 0) & (label < V)
        if label == ignore_index:
            # An ignored row costs one write, not three passes: zero gradient, zero loss.
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                tl.store(logits_ptr + offs, tl.zeros((BLOCK_V,), dtype=logits_ptr.dtype.element_ty), mask=offs < V)
            tl.store(loss_ptr + row, 0.0)
        else:
            # Read x[y] before the gradient pass overwrites it; the block-wide reductions of the first
            # pass synchronise all warps, so no warp can have started overwriting the row yet.
            x_label = tl.load(logits_ptr + label, mask=label_ok, other=float("nan")).to(tl.float32)
            # Pass 1, online log-sum-exp: running max m and running sum d of exp(x - m).
            m = float("-inf")
            d = 0.0
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                x = tl.load(logits_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)  # fp32 accumulation
                m_new = tl.maximum(m, tl.max(x, axis=0))
                d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)  # rescale the old sum to the new max
                m = m_new
            lse = m + tl.log(d)
            tl.store(loss_ptr + row, lse - x_label)
            # Pass 2: gradient = (softmax - onehot) * scale, written over the logits (no softmax buffer).
            scale = tl.load(scale_ptr + row * stride_scale)
            for start in range(0, V, BLOCK_V):
                offs = start + tl.arange(0, BLOCK_V)
                x = tl.load(logits_ptr + offs, mask=offs < V, other=0.0).to(tl.float32)
                grad = tl.exp(x - lse)
                grad = tl.where(offs == label, grad - 1.0, grad)
                tl.store(logits_ptr + offs, (grad * scale).to(logits_ptr.dtype.element_ty), mask=offs < V)


# The reference's fp32 working copy of bf16/fp16 logits is made this many bytes at a time.
REFERENCE_CHUNK_BYTES = 32 * 2**20


def _cross_entropy_torch(
    logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """PyTorch reference with the kernel's contract: returns the per-row loss (N,) in fp32 and
    overwrites `logits` (N, V) with the gradient, (softmax - onehot) * scale, zero on ignored rows.

    fp32 logits are worked on in place, all rows at once; bf16/fp16 logits need an fp32 working
    copy, so they are processed in chunks of rows that keep the copy small.
    """
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    rows = max(1, N if logits.dtype == torch.float32 else REFERENCE_CHUNK_BYTES // (V * 4))
    for start in range(0, N, rows):
        x = logits[start : start + rows]  # (C, V) view
        y = labels[start : start + rows]
        s = scale[start : start + rows]
        valid = y != ignore_index
        in_range = (y >= 0) & (y < V)  # as the kernel: an out-of-range label gives a NaN loss, not a bad read
        y_safe = torch.where(valid & in_range, y, 0)  # ignored rows index column 0, then get zeroed
        # Five passes over the chunk (read, read-write, read-write, read, read-write), all in place:
        xf = x.float()  # (C, V) fp32; the same storage when x is fp32
        m = xf.amax(dim=1, keepdim=True)  # (C, 1)
        x_label = xf.gather(1, y_safe[:, None])  # (C, 1), read before xf is overwritten
        xf.sub_(m).exp_()  # exp(x - max), no [C, V] temporary
        d = xf.sum(dim=1, keepdim=True)  # (C, 1)
        row_loss = torch.where(in_range, (m + d.log() - x_label).squeeze(1), float("nan"))
        loss[start : start + rows] = torch.where(valid, row_loss, 0.0)
        xf.mul_(s[:, None] / d)  # softmax * scale: the division and the scaling in one pass
        xf[torch.arange(len(y), device=xf.device), y_safe] -= torch.where(in_range, s, 0.0)  # minus onehot * scale
        xf.index_fill_(0, (~valid).nonzero().squeeze(1), 0.0)  # writes the ignored rows only
        if xf is not x:
            x.copy_(xf)  # back to bf16/fp16
    return loss


# A program holds one block of its row in registers, 16 values per thread: 16384 with 32 warps
# (50257 -> 4 blocks) compiles for sm_80 and sm_90 without register spills, where 32768 spills
# (tests/kernels/test_aot_compile.py). Not yet timed on a GPU.
_MAX_BLOCK_V = 16384
_VALUES_PER_THREAD = 16


def launch_config(V: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) of the kernel for rows of V logits: one block of the row per loop trip."""
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    return block_v, min(32, max(1, block_v // (32 * _VALUES_PER_THREAD)))  # 32 threads a warp


def _cross_entropy_triton(
    logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Launch the kernel: same contract as `_cross_entropy_torch`."""
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    block_v, num_warps = launch_config(V)
    # Triton launches on the current CUDA device's stream: make it the logits' device (cuda:1 while cuda:0
    # is current would otherwise read the wrong device's memory).
    guard = torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext()
    if N > 0:
        with guard:
            _cross_entropy_kernel[(N,)](  # one program per row
                logits,
                logits.stride(0),
                labels,
                labels.stride(0),
                scale,
                scale.stride(0),
                loss,
                V,
                ignore_index,
                BLOCK_V=block_v,
                num_warps=num_warps,
            )
    return loss


_CROSS_ENTROPY_ROWS = {"triton": _cross_entropy_triton, "torch": _cross_entropy_torch}


def _check_labels(labels: torch.Tensor, V: int, ignore_index: int, check: bool | None) -> None:
    """Raise ValueError for a label outside [0, V) that is not `ignore_index` (labels flattened, (N,)).

    check: True always checks, False never, None checks labels on the CPU only: there it is free,
    on a GPU it is a device sync per call (the host waits for the forward pass to reach the loss).
    Unchecked, a bad label gives its row a NaN loss; nothing reads outside the row.
    """
    if check is False or (check is None and labels.device.type != "cpu"):
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"label {int(labels[row])} at row {row} is outside [0, {V}) (vocabulary size {V}) "
            f"and is not ignore_index={ignore_index}"
        )


def _row_scale(labels: torch.Tensor, ignore_index: int, reduction: str, scale: float) -> torch.Tensor:
    """d(returned loss) / d(loss of a valid row), a 0-dim fp32 tensor: scale / n_valid for "mean", else scale.

    An all-ignored batch divides by 1, not 0: its loss is 0 and its gradient zero, never NaN.
    """
    if reduction == "mean":
        n_valid = (labels != ignore_index).sum().clamp(min=1)
        return scale / n_valid.float()
    return torch.full((), scale, dtype=torch.float32, device=labels.device)


def _folded_scale(scale: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the row scale the forward writes into the gradient, the factor left for backward or None).

    fp16 keeps the whole scale for backward (see the module docstring): its gradient is written unscaled.
    """
    if dtype == torch.float16:
        return torch.ones_like(scale), scale
    return scale, None


def _reduce_loss(loss: torch.Tensor, scale: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-row losses (N,) fp32 -> the loss asked for: a scalar, or the (N,) losses for "none"."""
    if reduction == "none":
        return loss * scale
    return loss.sum() * scale  # scale is `scale` / n_valid for "mean", `scale` for "sum"


def _scale_gradients(grads, grad_output: torch.Tensor, deferred: torch.Tensor | None, per_row: bool) -> None:
    """Multiply the gradients made in forward by grad_output (and an fp16 run's deferred scale), in place.

    The product is taken in fp32 and rounded once to each gradient's dtype. When nothing is deferred
    and grad_output is 1 (the loss is the last op) nothing is done: that costs one read of grad_output
    (a device sync on a GPU) and saves a read and a write of every gradient.
    """
    factor = grad_output if deferred is None else grad_output * deferred
    if per_row:  # reduction "none": one factor per row of the first gradient
        grads[0].mul_(factor.reshape(-1, 1))
        return
    if deferred is None and factor.item() == 1.0:
        return
    for grad in grads:
        if grad is not None:
            grad.mul_(factor)


class CrossEntropyFunction(torch.autograd.Function):
    """Forward computes loss and gradient (over the logits); backward only scales the gradient."""

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, reduction, scale, inplace, backend):
        # logits (N, V), labels (N,) int64. detach: an alias sharing storage and version counter,
        # so writing the gradient neither builds a graph nor trips the leaf-in-place check.
        logits = logits.detach() if inplace else logits.detach().clone()
        scale = _row_scale(labels, ignore_index, reduction, scale)
        written, ctx.deferred = _folded_scale(scale, logits.dtype)
        loss = _CROSS_ENTROPY_ROWS[backend](logits, labels, written.expand(len(labels)), ignore_index)
        # Triton's writes are invisible to autograd; bumping the version makes any op that saved these
        # logits for its own backward (e.g. a softcap's tanh) raise instead of using the gradient.
        torch.autograd.graph.increment_version(logits)
        ctx.grad_logits = logits  # the gradient, (N, V); an attribute, not save_for_backward: see backward
        ctx.reduction = reduction
        return _reduce_loss(loss, scale, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.grad_logits
        if grad is None:
            raise RuntimeError(
                "cross_entropy: backward ran twice; the gradient is scaled in place, so retain_graph is not supported"
            )
        ctx.grad_logits = None  # hand over the only reference: autograd may then use it without a copy
        _scale_gradients([grad], grad_output, ctx.deferred, per_row=ctx.reduction == "none")
        return grad, None, None, None, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
    inplace: bool = True,
    scale: float = 1.0,
    check_labels: bool | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits against integer labels, like `torch.nn.functional.cross_entropy`.

    By default the logits' memory is reused: the forward pass overwrites `logits` with the gradient
    of the loss (so no [N, V] softmax is kept), and the backward pass scales it in place. Do not
    read `logits` after the call; pass `inplace=False` to keep them (the op then works on a copy,
    costing one more [N, V] buffer). Logits that cannot be viewed as (N, V) rows of unit stride are
    copied first, and then left as they were. Backward runs once (no `retain_graph`). The math
    (gradient derivation, bytes and FLOPs with a worked example) is in the module docstring.

    Args:
        logits: (N, V) or (B, T, V), fp32, bf16 or fp16; the last dimension is the vocabulary.
        labels: (N,) or (B, T), integer class indices in [0, V) or `ignore_index`.
        ignore_index: label whose rows get zero loss and zero gradient.
        reduction: "mean" (over non-ignored rows; 0 when all are ignored), "sum" or "none".
        backend: None (by device, see kernels/_backend.py), "triton" or "torch".
        inplace: overwrite `logits` with the gradient (True) or work on a copy (False).
        scale: a factor the loss is multiplied by, folded into the gradient written in forward (e.g. a
            training step's 1 / tokens: then backward has nothing left to scale).
        check_labels: raise for a label outside [0, V): None (default) where it is free, labels on the
            CPU; True also on a GPU (one device sync); False never (a bad label's row loss is NaN).

    Returns:
        fp32 loss times `scale`: a scalar, or labels' shape for reduction "none". The gradient w.r.t. `logits`
        has the logits' dtype (fp32 accumulation inside).

    Raises:
        ValueError: unknown reduction, labels' shape not logits' shape without V, or a label outside
            [0, V) that is not `ignore_index` (the message names the value, its row and V).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(logits.shape)}")
    V = logits.shape[-1]
    flat_labels = labels.reshape(-1).long()  # (N,)
    _check_labels(flat_labels, V, ignore_index, check_labels)
    flat_logits = logits.reshape(-1, V)  # (N, V), a view when logits are contiguous
    if flat_logits.stride(-1) != 1:
        flat_logits = flat_logits.contiguous()  # the kernel walks a row with unit stride
    backend = select_backend(logits, backend)
    loss = CrossEntropyFunction.apply(flat_logits, flat_labels, ignore_index, reduction, scale, inplace, backend)
    return loss.view(labels.shape) if reduction == "none" else loss
