"""8-bit AdamW: the two moments stored in 8 bits with block-wise dynamic quantisation (Dettmers et al. 2022).

The update is AdamW's (kernels/fused_adamw.py has the math: decoupled weight decay, bias-corrected
moments), computed in fp32. What changes is how m and v are stored between steps ("8-bit Optimizers
via Block-wise Quantization", Dettmers, Lewis, Shleifer, Zettlemoyer 2022, sec. 2):

- block-wise: each tensor is cut into blocks of 2048 elements (the paper's block size); a block keeps
  its absmax N_b in fp32 and each element the 8-bit index of the code nearest to x / N_b. An outlier
  then costs precision in its own block only.
- dynamic quantisation (the paper's "dynamic tree quantisation", Dettmers 2016): a code's bits are a
  sign, then E zero bits (the decimal exponent: magnitude 10^-E), a 1 marking where the exponent
  ends, and the remaining F bits a linear fraction: 2^F bins over [0.1, 1], the code at a bin's
  middle. E = 0..6, so the codes reach from 10^-7 to 1 with most precision near 1 (64 bins over
  [0.1, 1]); plus 0 and 1. m is signed; v >= 0 uses the sign bit as one more fraction bit (the
  paper's unsigned map for the second state): twice the bins. `dynamic_map(signed)` builds both.

One step, per block, in one pass (the kernel): read p, g and the two 8-bit codes with their absmaxes;
dequantise m = code_m[q_m] * N_m and v = code_v[q_v] * N_v; AdamW's update in fp32 (the parameter is
updated from the fp32 m and v); then the block's new absmaxes and the nearest codes by binary search
over the 255 midpoints of each sorted map (8 comparisons); write p, q_m, q_v, N_m, N_v.

Memory: 2 B per parameter of state plus 8 B per 2048 (the two absmaxes), against AdamW's 8 B in fp32:
GPT-2 small (124.4M parameters) keeps 249 MB of moments instead of 995 MB. Every tensor is quantised,
however small (bitsandbytes keeps tensors under 4096 elements in 32 bits), so the state is exactly
that. Traffic per fp32 element: read p, g (8 B) and the codes (2 B), write p and codes (6 B): 16 B,
against fused AdamW's 28 B; ~30 FLOPs (AdamW's 14, two dequantisations, two divisions by the absmax,
16 comparisons of the binary searches) and the block's two max-reductions: still memory-bound.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from ._backend import interpreter_enabled, select_backend
from .fused_adamw import check_adamw_arguments, closure_loss

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton (macOS, Windows): only the PyTorch reference runs
    triton = None

BLOCK = 2048  # elements per absmax (Dettmers et al. 2022, sec. 2.1)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
QUANTIZED_STATE = ("exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax")


def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256 dynamic-tree code values in [-1, 1] (signed) or [0, 1] (unsigned), ascending, fp32."""
    values = [0.0, 1.0]
    for exponent in range(7):  # E zero bits after the sign: magnitude 10^-E
        fraction_bits = 6 - exponent + (0 if signed else 1)
        edges = torch.linspace(0.1, 1.0, 2**fraction_bits + 1, dtype=torch.float64)
        middles = (edges[:-1] + edges[1:]) / 2 * 10.0**-exponent
        values += middles.tolist() + ((-middles).tolist() if signed else [])
    assert len(values) == 256
    return torch.tensor(sorted(values), dtype=torch.float32)


SIGNED_MAP, UNSIGNED_MAP = dynamic_map(True), dynamic_map(False)


def _midpoints(codes: torch.Tensor) -> torch.Tensor:
    return (codes[1:] + codes[:-1]) / 2  # (255,): x goes to code i when midpoints[i-1] < x <= midpoints[i]


if triton is not None:

    @triton.jit
    def _nearest_code(x, midpoints_ptr):
        """Index of the code nearest to x: the number of midpoints below x, by binary search (8 steps)."""
        index = tl.zeros(x.shape, dtype=tl.int32)
        for k in tl.static_range(8):
            step = 128 >> k
            below = tl.load(midpoints_ptr + index + (step - 1)) < x
            index = tl.where(below, index + step, index)
        return index

    @triton.jit
    def _adamw8bit_kernel(
        p_ptr, g_ptr,  # (numel,) the parameter's dtype
        qm_ptr, qv_ptr,  # (numel,) uint8 codes of m and v
        nm_ptr, nv_ptr,  # (n_blocks,) fp32 absmax of m and v
        signed_ptr, unsigned_ptr,  # (256,) fp32 code values
        signed_mid_ptr, unsigned_mid_ptr,  # (255,) fp32 midpoints
        numel,
        decay,  # 1 - lr * weight_decay
        one_minus_beta1, beta2, one_minus_beta2, eps,
        step_size,  # lr / (1 - beta1^t)
        bc2_sqrt,  # sqrt(1 - beta2^t)
        BLOCK: tl.constexpr,  # one program per quantisation block
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # past the end: the codes of 0 (index 127 signed, 0 unsigned), so m = v = 0 there and the absmax ignores them
        qm = tl.load(qm_ptr + offs, mask=mask, other=127).to(tl.int32)
        qv = tl.load(qv_ptr + offs, mask=mask, other=0).to(tl.int32)
        m = tl.load(signed_ptr + qm) * tl.load(nm_ptr + pid)  # dequantise: code * block absmax
        v = tl.load(unsigned_ptr + qv) * tl.load(nv_ptr + pid)
        p = p * decay  # decoupled weight decay (Loshchilov & Hutter 2019)
        m = m + one_minus_beta1 * (g - m)
        v = v * beta2 + one_minus_beta2 * g * g
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p - tl.div_rn(step_size * m, denom)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
        # requantise: the block's new absmax, then the nearest code of x / absmax (an all-zero block: 0 / 1)
        nm = tl.max(tl.abs(m), axis=0)
        nv = tl.max(v, axis=0)
        qm = _nearest_code(tl.div_rn(m, tl.where(nm > 0, nm, 1.0)), signed_mid_ptr)
        qv = _nearest_code(tl.div_rn(v, tl.where(nv > 0, nv, 1.0)), unsigned_mid_ptr)
        tl.store(qm_ptr + offs, qm.to(tl.uint8), mask=mask)
        tl.store(qv_ptr + offs, qv.to(tl.uint8), mask=mask)
        tl.store(nm_ptr + pid, nm)
        tl.store(nv_ptr + pid, nv)


def _quantize(x: torch.Tensor, midpoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_blocks, BLOCK) fp32 -> uint8 nearest-code indices and fp32 block absmaxes."""
    absmax = x.abs().amax(dim=1)
    scaled = x / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    return torch.bucketize(scaled, midpoints).to(torch.uint8), absmax


# The reference works through a tensor 256 blocks at a time, so its fp32 and int64 temporaries stay near
# 20 MB however large the tensor (an embedding matrix of 38.6M elements would otherwise need ~1.5 GB).
REFERENCE_CHUNK = 256 * BLOCK


def _adamw8bit_torch(p, g, state, *, step, lr, beta1, beta2, eps, weight_decay) -> None:
    """PyTorch reference, in place on p and the state: the kernel's math, op for op, block by block."""
    flat_p, flat_g = p.view(-1), g.reshape(-1)
    codes = {key: state[key].view(-1) for key in ("exp_avg", "exp_avg_sq")}
    maps = SIGNED_MAP.to(p.device), UNSIGNED_MAP.to(p.device)
    midpoints = _midpoints(maps[0]), _midpoints(maps[1])
    step_size, bc2_sqrt = lr / (1 - beta1**step), math.sqrt(1 - beta2**step)
    for start in range(0, p.numel(), REFERENCE_CHUNK):
        n = min(REFERENCE_CHUNK, p.numel() - start)
        n_blocks, pad = -(-n // BLOCK), -n % BLOCK
        blocks = slice(start // BLOCK, start // BLOCK + n_blocks)
        flat = lambda t, value=0: torch.nn.functional.pad(t[start : start + n], (0, pad), value=value).view(n_blocks, BLOCK)
        p32, g32 = flat(flat_p).float(), flat(flat_g).float()
        m = maps[0][flat(codes["exp_avg"], 127).long()] * state["exp_avg_absmax"][blocks, None]
        v = maps[1][flat(codes["exp_avg_sq"]).long()] * state["exp_avg_sq_absmax"][blocks, None]
        p32 = p32 * (1 - lr * weight_decay)
        m = m + (1 - beta1) * (g32 - m)  # written out, not lerp_: the same rounding as the kernel
        v = v * beta2 + (1 - beta2) * g32 * g32
        p32 = p32 - step_size * m / (v.sqrt() / bc2_sqrt + eps)
        flat_p[start : start + n] = p32.flatten()[:n]
        for key, x, mids in (("exp_avg", m, midpoints[0]), ("exp_avg_sq", v, midpoints[1])):
            q, state[f"{key}_absmax"][blocks] = _quantize(x, mids)
            codes[key][start : start + n] = q.flatten()[:n]


def adamw8bit_launch_config(numel: int) -> dict:
    """Grid, block and warps for one tensor of `numel` elements: one program per quantisation block
    (the absmax is a reduction over the block, so the block is the paper's 2048), 8 warps: 8 elements
    per thread, 59-64 registers for sm_80/sm_90 with no spills (tests/kernels/test_aot_compile.py), where
    4 warps needed 96-112 (a quarter of an SM's threads resident). Not yet timed on a GPU."""
    return {"grid": (triton.cdiv(numel, BLOCK),), "BLOCK": BLOCK, "num_warps": 8}


def _adamw8bit_triton(p, g, state, *, step, lr, beta1, beta2, eps, weight_decay) -> None:
    """Launch the kernel on one tensor: same contract as `_adamw8bit_torch`, plus p and g contiguous."""
    device = p.device
    if device.type == "cuda" and interpreter_enabled():
        raise RuntimeError("AdamW8bit's Triton kernel cannot run on CUDA tensors with TRITON_INTERPRET=1")
    if not (p.is_contiguous() and g.is_contiguous()):
        raise ValueError("AdamW8bit's Triton kernel needs contiguous parameters and gradients; use backend='torch'")
    tables = [t.to(device) for t in (SIGNED_MAP, UNSIGNED_MAP, _midpoints(SIGNED_MAP), _midpoints(UNSIGNED_MAP))]
    config = adamw8bit_launch_config(p.numel())
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _adamw8bit_kernel[config["grid"]](
            p, g, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_absmax"], state["exp_avg_sq_absmax"], *tables,
            p.numel(), 1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, eps,
            lr / (1 - beta1**step), math.sqrt(1 - beta2**step),
            BLOCK=config["BLOCK"], num_warps=config["num_warps"],
        )
    torch.autograd.graph.increment_version(p)  # Triton's write is invisible to autograd (see fused_adamw.py)


_STEPS: dict[str, Callable[..., None]] = {"triton": _adamw8bit_triton, "torch": _adamw8bit_torch}


def state_nbytes(numel: int) -> int:
    """Bytes of AdamW8bit's state for a tensor of `numel` elements: two 8-bit codes each, two fp32
    absmaxes per block, and the 4-byte step."""
    return 2 * numel + 8 * -(-numel // BLOCK) + 4


class AdamW8bit(torch.optim.Optimizer):
    """AdamW with 8-bit block-wise quantised moments (see the module docstring).

    The constructor and parameter groups are torch.optim.AdamW's (lr, betas, eps, weight_decay, a
    scheduler's change to group["lr"] applies at the next step). State per parameter: `step` (a 0-dim
    fp32 CPU tensor, as torch), `exp_avg` and `exp_avg_sq` (uint8, the parameter's shape: code
    indices into SIGNED_MAP and UNSIGNED_MAP), `exp_avg_absmax` and `exp_avg_sq_absmax` (fp32, one
    per block of 2048). `state_dict` / `load_state_dict` keep those dtypes, so a resumed run continues
    bit for bit.

    Args:
        params: parameters or parameter groups; fp32, bf16 or fp16.
        lr, betas, eps, weight_decay: as torch.optim.AdamW (weight decay is decoupled).
        backend: None (by device), "triton" or "torch" (force one).

    Raises:
        ValueError: a hyperparameter out of range or an unknown backend (from `step`: a non-contiguous
            tensor on Triton); RuntimeError (from `step`): a sparse gradient; TypeError: a parameter
            dtype outside fp32, bf16, fp16.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, backend: str | None = None) -> None:
        check_adamw_arguments(lr, betas, eps, weight_decay, backend)
        self.backend = backend
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step for every parameter that has a gradient; returns the closure's loss, if any."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                if p.dtype not in SUPPORTED_DTYPES:
                    raise TypeError(f"AdamW8bit supports fp32, bf16 and fp16 parameters, got {p.dtype}")
                state = self.state[p]
                if not state:  # lazy, as torch.optim.AdamW; m = v = 0 is code 127 (signed) and 0 (unsigned)
                    n_blocks = -(-p.numel() // BLOCK)
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.full(p.shape, 127, dtype=torch.uint8, device=p.device)
                    state["exp_avg_absmax"] = torch.zeros(n_blocks, device=p.device)
                    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                    state["exp_avg_sq_absmax"] = torch.zeros(n_blocks, device=p.device)
                state["step"] += 1
                _STEPS[select_backend(p, self.backend)](
                    p, p.grad, state, step=float(state["step"]), lr=float(group["lr"]), beta1=float(beta1),
                    beta2=float(beta2), eps=group["eps"], weight_decay=group["weight_decay"],
                )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, except that the quantised state keeps its dtypes (torch casts every floating
        parameter's state to the parameter's dtype: uint8 codes would become floats, absmaxes bf16)."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for i, p in zip(ids, params):
            for key in QUANTIZED_STATE:
                if key in state_dict["state"].get(i, {}):
                    self.state[p][key] = state_dict["state"][i][key].to(p.device, copy=True)
