"""What autograd saves in a GPT forward pass, walked op by op on the meta model: the ledger's activations.

What autograd saves, op by op (CPU, dropout 0; `Walk` below applies these rules):
- Embedding: the ids (8 B each) if the table trains. Dropout with p = 0 saves nothing.
- LayerNorm: its input, and mean and rstd (B, T, 1 each, in the input's dtype on CPU), whenever its
  output needs a gradient (the input does, or its own weight or bias trains).
- Linear: its input only if its *weight* trains (the weight gradient is grad^T @ input); a frozen
  weight needs nothing saved for the input gradient but the weight itself, a parameter (an NF4 weight,
  QLoRA, saves its own packed buffers and is dequantised again in the backward). A LoRA branch
  saves the input again for A (the same storage) and the (B, T, r) bottleneck for B.
- scaled_dot_product_attention (CPU flash kernel, is_causal): q, k, v (views of c_attn's output,
  one 3 C storage), the output (B, T, C: c_proj's input is the same storage) and the logsumexp
  (B, nh, T) in fp32. No T x T attention matrix is kept.
- GELU (tanh): its input (B, T, 4 C). Residual additions and views save nothing.
Per block with every weight trainable this is s B T (16 C + 4) + 4 B nh T bytes: x, LN out, qkv (3),
attention out, x_mid, LN out, c_fc out (4), GELU out (4). Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models", eq. 2) count 34 s b h + 5 a s^2 b bytes in
16-bit with dropout masks and the attention matrix; with no dropout and flash attention that is our
16 C elements, 2 bytes each. LoRA on c_attn drops the inputs of every frozen linear layer:
s B T (11 C + r + 4) + 4 B nh T; in block 0, where nothing upstream needs a gradient, ln_1 saves
nothing: s B T (10 C + r + 2) + 4 B nh T.

Activation checkpointing keeps only each block's input (s B T' C per block) and recomputes one
block at a time in the backward pass; that block's saved tensors are a transient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from minift.peft import LoRALinear, NF4Linear


@dataclass(eq=False)  # identity matters: two saves of one storage count once
class Storage:
    nbytes: int
    grad: bool  # requires grad


class Walk:
    """Follows a GPT forward pass op by op and records the storages autograd saves, with a label each.

    `saved` maps each saved storage to its label; a storage saved by two ops (q, k, v and c_attn's
    output; SDPA's output and c_proj's input) counts once, as it does in memory.
    """

    def __init__(self, s: int, stats_s: int):
        self.s, self.stats_s = s, stats_s  # bytes per activation element, per LayerNorm mean/rstd element
        self.saved: dict[Storage, str] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.saved)

    def save(self, t: Storage, label: str) -> None:
        self.saved.setdefault(t, label)

    def layer_norm(self, x: Storage, ln: nn.LayerNorm, rows: int, label: str) -> Storage:
        trains = any(p.requires_grad for p in ln.parameters())
        if x.grad or trains:  # one backward formula for input, weight and bias: all three are saved
            self.save(x, f"{label} input")
            self.save(Storage(rows * self.stats_s, False), f"{label} mean")
            self.save(Storage(rows * self.stats_s, False), f"{label} rstd")
        return Storage(x.nbytes, x.grad or trains)

    def linear(self, x: Storage, module: nn.Module, rows: int, label: str) -> Storage:
        base = module.base if isinstance(module, LoRALinear) else module
        weight_trains = not isinstance(base, NF4Linear) and base.weight.requires_grad  # an NF4 weight is frozen
        if weight_trains:
            self.save(x, f"{label} input")  # for the weight gradient: grad^T @ x
        trains = weight_trains or (base.bias is not None and base.bias.requires_grad)
        y = Storage(rows * base.out_features * self.s, x.grad or trains)
        if isinstance(module, LoRALinear) and module.active in module.specs and not module.disabled:
            A, B = module.lora_A[module.active], module.lora_B[module.active]
            if A.requires_grad:
                self.save(x, f"{label} input")  # the same storage as above: counted once
            h = Storage(rows * A.shape[0] * self.s, x.grad or A.requires_grad)  # (B, T, r)
            if B.requires_grad:
                self.save(h, f"{label} LoRA bottleneck (B, T, r)")
            y = Storage(y.nbytes, y.grad or h.grad or B.requires_grad)  # base(x) + scaling * B A x: a new tensor
        return y

    def block(self, x: Storage, blk: nn.Module, B: int, T: int, C: int, nh: int, i: int) -> Storage:
        rows = B * T
        a = self.layer_norm(x, blk.ln_1, rows, f"h.{i}.ln_1")
        qkv = self.linear(a, blk.attn.c_attn, rows, f"h.{i}.attn.c_attn")
        y = Storage(rows * C * self.s, qkv.grad)  # SDPA output, (B, nh, T, hs) over a (B, T, C) storage
        if qkv.grad:
            self.save(qkv, f"h.{i} q, k, v")
            self.save(y, f"h.{i} attention output")
            self.save(Storage(B * nh * T * 4, False), f"h.{i} attention logsumexp (fp32)")
        o = self.linear(y, blk.attn.c_proj, rows, f"h.{i}.attn.c_proj")
        x = Storage(x.nbytes, x.grad or o.grad)  # x + attn(ln_1(x))
        b = self.layer_norm(x, blk.ln_2, rows, f"h.{i}.ln_2")
        u = self.linear(b, blk.mlp.c_fc, rows, f"h.{i}.mlp.c_fc")
        if u.grad:
            self.save(u, f"h.{i} GELU input")
        g = Storage(u.nbytes, u.grad)
        m = self.linear(g, blk.mlp.c_proj, rows, f"h.{i}.mlp.c_proj")
        return Storage(x.nbytes, x.grad or m.grad)


def block_backward_bytes(walk: Walk, rows: int, C: int) -> int:
    """Bytes a block's backward holds beyond its saved tensors and gradients, at its worst moment.

    The MLP backward comes first: the block's output gradient dx (rows x C) stays alive, mlp.c_proj's
    backward writes d(GELU out) (4 C), then GELU's backward writes d(c_fc out) (4 C) while its input
    is still alive: 9 C per row. Where mlp.c_proj saved the GELU output (its weight trains), that
    4 C is freed before GELU's backward runs: 5 C per row. The attention backward holds less.
    """
    gelu_out_saved = any(t for t, label in walk.saved.items() if label.endswith("mlp.c_proj input"))
    return rows * C * walk.s * (5 if gelu_out_saved else 9)
