"""NF4: QLoRA's 4-bit NormalFloat storage of a frozen weight, with double-quantised scales.

The code values (Dettmers et al. 2023, "QLoRA", sec. 3, "4-bit NormalFloat Quantization"). Pretrained
weights are roughly zero-mean normal, so the 16 levels are quantiles of N(0, 1), each bin holding the
same probability mass. An exact zero is wanted (padding, zero weights), so the levels are asymmetric:
8 quantiles for the positive half and 7 for the negative half, the zero shared, then scaled to [-1, 1]:

    q_i = Phi^-1(p_i),   p in linspace(1 - delta, 1/2, 9)[:-1] (positive)  and  linspace(1 - delta, 1/2, 8)[:-1]
    (negated: the negative half),  delta = (1/30 + 1/32) / 2,  codes = {q} / max|q|   (16 values, one 0)

where delta keeps Phi^-1 finite at the ends (the paper's offset, 0.9677 = 1 - delta).

Block-wise absmax (sec. 3, eq. 1): the flattened weight is cut into blocks of 64; each block b keeps
its absmax s_b, and each element w the index of the code nearest to w / s_b (4 bits; two per byte,
the first element of a pair in the high nibble). Dequantised: w' = codes[index] * s_b.

Double quantisation (sec. 3, "Double Quantization"): the scales s_b themselves cost 32 / 64 = 0.5
bit per weight, so they are quantised too: subtract their mean mu (they are all positive; centring
makes symmetric quantisation use all 256 levels), cut them into groups of 256, and store each as
int8 round((s_b - mu) * f_g) clamped to [-128, 127], with f_g = 128 / absmax_g |s - mu| per group
(one fp32 per group). Dequantised: s_b' = q_b / f_g + mu. We quantise the scales linearly (int8),
as torchao's NF4Tensor does; bitsandbytes and the paper use an 8-bit float map instead.

Bits per weight: 4 (the code) + 8 / 64 (its block's int8 scale) + 32 / (64 * 256) (the group's
factor) = 4.127, plus one fp32 mean per tensor. Worked example, GPT-2 small's c_fc (768 x 3072 =
2,359,296 weights): 1,179,648 B of codes + 36,864 B of scales + 576 B of factors = 1.217 MB, against
9.437 MB in fp32 (7.76x smaller).

Dequantisation cost per weight (memory-bound, the kernel's speed is its bytes): read 0.5 B of code
plus 1/64 B of scale (the factor and the 16 codes stay in cache), write 4 B (fp32) or 2 B (bf16);
2 FLOPs (a division for the block's scale, shared by the block's 64 weights, and the multiplication).
So a layer's forward reads ~8x fewer weight bytes from memory than an fp32 weight, and writes one
transient full-precision copy of the weight, which the matmul reads and then drops.

The linear layer (`nf4_linear`): y = x W'^T with W' dequantised in the forward and again in the
backward, so no full-precision W' lives between the two. W is frozen, so the backward gives only
dL/dx = dL/dy W' (no weight gradient); LoRA's trainable A, B sit beside it (minift.peft.qlora).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ._backend import interpreter_enabled, select_backend

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton (macOS, Windows): only the PyTorch reference runs
    triton = None

BLOCK = 64  # weights per absmax scale (QLoRA sec. 3)
SCALE_BLOCK = 256  # scales per double-quantisation factor (QLoRA sec. 3)
DELTA = (1 / 30 + 1 / 32) / 2  # QLoRA sec. 3: the offset that keeps Phi^-1 finite at the extreme quantiles


def normal_float_codes(bits: int = 4) -> torch.Tensor:
    """The 2**bits NormalFloat code values in [-1, 1], ascending, with an exact 0 (module docstring), fp32."""
    half = 2 ** (bits - 1)
    positive = torch.special.ndtri(torch.linspace(1 - DELTA, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(1 - DELTA, 0.5, half, dtype=torch.float64)[:-1])
    codes = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (codes / codes.abs().max()).float()


NF4_CODES = normal_float_codes(4)  # (16,) fp32: -1.0, -0.6962, ..., 0.0, 0.0796, ..., 0.7230, 1.0


@dataclass(frozen=True)
class NF4Weight:
    """A weight in NF4 with double-quantised scales (module docstring).

    packed: (numel / 2,) uint8, two code indices per byte, the first in the high nibble.
    scales: (numel / BLOCK,) int8, each block's absmax, quantised.
    factors: (ceil(numel / BLOCK / SCALE_BLOCK),) fp32, each group's quantisation factor f_g.
    mean: () fp32, the mean mu of the absmax scales.
    shape: the weight's shape.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    factors: torch.Tensor
    mean: torch.Tensor
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.factors, self.mean))

    @property
    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes / self.numel


def nf4_nbytes(numel: int) -> int:
    """The bytes `quantize_nf4` stores for a weight of `numel` elements (codes, scales, factors, mean)."""
    n_blocks = numel // BLOCK
    return numel // 2 + n_blocks + 4 * -(-n_blocks // SCALE_BLOCK) + 4


def _double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n_blocks,) fp32 absmax -> int8 scales, fp32 factors per group of SCALE_BLOCK, fp32 mean."""
    mean = absmax.mean()
    centred = absmax - mean
    n_groups = -(-centred.numel() // SCALE_BLOCK)
    # A last, partial group is padded with zeros (= the mean), which leaves its absmax unchanged.
    groups = torch.nn.functional.pad(centred, (0, n_groups * SCALE_BLOCK - centred.numel())).view(n_groups, SCALE_BLOCK)
    group_absmax = groups.abs().amax(dim=1)
    # 256 / (2 absmax) as torchao writes it; a group of equal scales (absmax 0) stores zeros with factor 1.
    factors = torch.where(group_absmax > 0, 256 / (2 * group_absmax), torch.ones_like(group_absmax))
    scales = (groups * factors[:, None]).round().clamp(-128, 127).flatten()[: centred.numel()]
    return scales.to(torch.int8), factors, mean


def quantize_nf4(weight: torch.Tensor) -> NF4Weight:
    """Quantise `weight` (any shape, numel a multiple of 64 and of 2; fp32, bf16 or fp16) to NF4.

    The index of the code nearest to w / absmax (ties to the lower code, as torch's argmin). Quantisation
    runs once, when a model is loaded for QLoRA, so it is PyTorch only.

    Raises:
        ValueError: numel is not a multiple of BLOCK, or the weight is not floating point.
    """
    if not weight.is_floating_point():
        raise ValueError(f"quantize_nf4 takes a floating-point weight, got {weight.dtype}")
    if weight.numel() == 0 or weight.numel() % BLOCK:
        raise ValueError(f"quantize_nf4 needs a weight whose numel is a positive multiple of {BLOCK}, got shape {tuple(weight.shape)}")
    blocks = weight.detach().float().reshape(-1, BLOCK)  # (n_blocks, 64)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]  # an all-zero block stays 0
    codes = NF4_CODES.to(weight.device)
    index = torch.empty(scaled.numel(), dtype=torch.uint8, device=weight.device)
    flat = scaled.flatten()
    for start in range(0, flat.numel(), 2**20):  # in chunks: the (chunk, 16) distance matrix stays small
        chunk = flat[start : start + 2**20]
        index[start : start + chunk.numel()] = (chunk[:, None] - codes).abs().argmin(dim=1).to(torch.uint8)
    packed = index[0::2] << 4 | index[1::2]
    scales, factors, mean = _double_quantize(absmax)
    return NF4Weight(packed, scales, factors, mean, tuple(weight.shape))


if triton is not None:

    @triton.jit
    def _nf4_dequantize_kernel(
        packed_ptr,  # (n_bytes,) uint8: two codes per byte, the first in the high nibble
        scales_ptr,  # (n_bytes / (BLOCK / 2),) int8
        factors_ptr,  # (n_groups,) fp32
        mean_ptr,  # () fp32
        codes_ptr,  # (16,) fp32: NF4_CODES
        out_ptr,  # (2 * n_bytes,) fp32, bf16 or fp16, output
        n_bytes,
        BLOCK_BYTES: tl.constexpr,  # bytes per program
        QBLOCK: tl.constexpr,  # weights per absmax scale (64)
        SCALE_BLOCK: tl.constexpr,  # scales per factor (256)
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK_BYTES + tl.arange(0, BLOCK_BYTES)
        mask = offs < n_bytes
        byte = tl.load(packed_ptr + offs, mask=mask, other=0).to(tl.int32)
        # QBLOCK is even, so both weights of a byte lie in one block: one scale per byte
        block = offs // (QBLOCK // 2)
        q = tl.load(scales_ptr + block, mask=mask, other=0).to(tl.float32)
        factor = tl.load(factors_ptr + block // SCALE_BLOCK, mask=mask, other=1.0)
        scale = tl.div_rn(q, factor) + tl.load(mean_ptr)  # s' = q / f + mu, IEEE-rounded as torch's division
        # the 16 codes: a gather from a 64-byte table that stays in L1
        high = tl.load(codes_ptr + (byte >> 4), mask=mask, other=0.0) * scale
        low = tl.load(codes_ptr + (byte & 15), mask=mask, other=0.0) * scale
        out_dtype = out_ptr.dtype.element_ty
        tl.store(out_ptr + 2 * offs, high.to(out_dtype), mask=mask)
        tl.store(out_ptr + 2 * offs + 1, low.to(out_dtype), mask=mask)


def _dequantize_torch(weight: NF4Weight, dtype: torch.dtype) -> torch.Tensor:
    """PyTorch reference: the kernel's math with torch's ops, in fp32, rounded to `dtype` once."""
    n_groups = weight.factors.numel()
    q = torch.nn.functional.pad(weight.scales.float(), (0, n_groups * SCALE_BLOCK - weight.scales.numel()))
    scales = ((q.view(n_groups, SCALE_BLOCK) / weight.factors[:, None]).flatten()[: weight.scales.numel()] + weight.mean)
    codes = NF4_CODES.to(weight.packed.device)
    index = torch.stack([weight.packed >> 4, weight.packed & 15], dim=1).flatten().long()  # (numel,)
    values = codes[index].view(-1, BLOCK) * scales[:, None]  # (n_blocks, 64)
    return values.to(dtype).view(weight.shape)


def dequantize_launch_config(numel: int) -> dict:
    """Grid, bytes per program and warps for dequantising `numel` weights.

    1024 bytes (2048 weights, 32 blocks of 64) per program, 4 warps: 8 bytes in, 16 values out per
    thread, enough bytes in flight per SM for a streaming kernel; not yet tuned on a GPU.
    """
    block_bytes = 1024
    return {"grid": (triton.cdiv(numel // 2, block_bytes),), "BLOCK_BYTES": block_bytes, "num_warps": 4}


def _dequantize_triton(weight: NF4Weight, dtype: torch.dtype) -> torch.Tensor:
    """Launch the dequantisation kernel: same contract as `_dequantize_torch`."""
    device = weight.packed.device
    if device.type == "cuda" and interpreter_enabled():
        raise RuntimeError("the NF4 Triton kernel cannot run on CUDA tensors with TRITON_INTERPRET=1")
    out = torch.empty(weight.shape, dtype=dtype, device=device)
    config = dequantize_launch_config(weight.numel)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _nf4_dequantize_kernel[config["grid"]](
            weight.packed, weight.scales, weight.factors, weight.mean, NF4_CODES.to(device), out,
            weight.packed.numel(),
            BLOCK_BYTES=config["BLOCK_BYTES"], QBLOCK=BLOCK, SCALE_BLOCK=SCALE_BLOCK, num_warps=config["num_warps"],
        )
    return out


_DEQUANTIZE = {"triton": _dequantize_triton, "torch": _dequantize_torch}


def dequantize_nf4(weight: NF4Weight, dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """The full-precision weight `weight` stands for, of shape `weight.shape` and dtype `dtype`.

    backend: None (by device: CUDA -> Triton, CPU -> PyTorch, or Triton's interpreter under
    TRITON_INTERPRET=1), "triton" or "torch".
    """
    return _DEQUANTIZE[select_backend(weight.packed, backend)](weight, dtype)


class NF4LinearFunction(torch.autograd.Function):
    """y = x W'^T with W' = dequantize_nf4(W); the backward dequantises again and returns dL/dx only.

    Saved for the backward: nothing but the NF4 tensors the layer already holds, so a layer's
    activation memory is that of a linear layer minus its weight, and W' is a transient of each op.
    """

    @staticmethod
    def forward(ctx, x, packed, scales, factors, mean, shape, backend):
        ctx.save_for_backward(packed, scales, factors, mean)  # the layer's own buffers: no new memory
        ctx.shape, ctx.backend = shape, backend
        return x @ dequantize_nf4(NF4Weight(packed, scales, factors, mean, shape), x.dtype, backend).t()  # W' dies here

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = NF4Weight(*ctx.saved_tensors, ctx.shape)
            grad_x = grad_y @ dequantize_nf4(weight, grad_y.dtype, ctx.backend)  # dL/dx = dL/dy W'
        return grad_x, None, None, None, None, None, None


def nf4_linear(x: torch.Tensor, weight: NF4Weight, bias: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """x (..., in) -> (..., out) through a frozen NF4 weight of shape (out, in), plus an optional bias."""
    y = NF4LinearFunction.apply(x, weight.packed, weight.scales, weight.factors, weight.mean, weight.shape, backend)
    return y if bias is None else y + bias
