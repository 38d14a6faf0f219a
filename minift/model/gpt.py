"""A minimal GPT-2: configuration, attention, MLP, block, then the model, read top to bottom.

The architecture is GPT-2's (Radford et al. 2019): learned position embeddings, pre-norm blocks
(LayerNorm before attention and before the MLP), GELU with the tanh approximation, weight tying
between the token embedding and the output head. Modules keep GPT-2's own names
(`transformer.h.0.attn.c_attn`, ...), so Hugging Face checkpoints load key for key and PEFT adapters
name our modules directly. This module imports nothing from the rest of minift: checkpoint loading and
saving (`minift.model.pretrained`) and generation with a KV cache (`minift.model.decoding`) import it,
never the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# name -> (n_layer, n_head, n_embd); all four GPT-2 sizes share vocab 50257 and context 1024.
GPT2_SIZES = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
# The family of base models minift pretrains on its built-in corpus with one recipe, spanning about
# 20x in parameters (0.15M, 1.0M, 3.0M with the corpus's 1404-token vocabulary), so that what changes
# with model size (in-context learning, examples needed) can be measured; the 2-core pretraining
# time of the largest bounds the top of the range.
TINY_SIZES = {
    "tiny-s": (2, 2, 48),
    "tiny-m": (4, 4, 128),
    "tiny-l": (6, 6, 192),
}


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # context length: the number of learned position embeddings
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # GPT-2 pretrained with 0.1; 0 is the usual choice for short fine-tunes
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 (False is not loadable by transformers)
    tie_weights: bool = True  # lm_head shares the token embedding matrix (GPT-2 does)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, field) <= 0:
                raise ValueError(f"GPTConfig.{field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides) -> GPTConfig:
        """A named preset: one of GPT2_SIZES ("gpt2", ...) or TINY_SIZES ("tiny-s", "tiny-m", "tiny-l").

        The tiny sizes are the laptop models minift pretrains itself: a 2048-token BPE vocabulary
        trained on the built-in corpus and a 512-token context, at three depths and widths.
        """
        if name in TINY_SIZES:
            n_layer, n_head, n_embd = TINY_SIZES[name]
            preset = dict(vocab_size=2048, block_size=512, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        elif name in GPT2_SIZES:
            n_layer, n_head, n_embd = GPT2_SIZES[name]
            preset = dict(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        else:
            raise ValueError(f"unknown model preset {name!r}; choose from {[*TINY_SIZES, *GPT2_SIZES]}")
        return cls(**{**preset, **overrides})


def check_context(what: str, n_tokens: int, block_size: int, note: str = "") -> None:
    """The one context-length check of minift: `n_tokens` positions must fit in `block_size`.

    Raises:
        ValueError: "{what} exceeds the context length {block_size}{note}", naming both lengths.
    """
    if n_tokens > block_size:
        raise ValueError(f"{what} exceeds the context length {block_size}{note}")


class KVCache:
    """Keys and values of the positions already seen, for every layer, allocated once.

    Generation adds one token per step; without a cache each step recomputes attention over the
    whole sequence (O(T^2) work per step). With it, a step computes q, k, v for the new token only
    and attends to the stored keys and values. Shape per layer: (B, n_head, max_len, head_dim).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far (the same for every layer once a forward ends)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the cached positions; return all keys and values so far."""
        end = self.length + k.size(2)
        if end > self.keys.size(3):
            raise ValueError(f"KV cache holds {self.keys.size(3)} positions; {end} were needed")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # one matmul makes queries, keys and values for all heads (GPT-2's layout: q | k | v)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, kv_cache: KVCache | None = None, layer: int = 0):
        """x: (B, T, C). mask: None (plain causal) or bool (B, 1, T, T_keys), True = may attend."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, T_past + T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 uses the tanh approximation of GELU (Hendrycks & Gimpel 2016, eq. 3: "gelu_new")
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class _ThreadInvariantLayerNorm(torch.autograd.Function):
    """LayerNorm whose weight and bias gradients are the same for any number of CPU threads.

    y = (x - mean) * rstd * weight + bias, over the last dimension; for rows i of x (M, C):

        dweight_j = sum_i dy_ij * xhat_ij        dbias_j = sum_i dy_ij        (xhat = (x - mean) * rstd)

    torch's CPU kernel sums those M rows in one partial sum per thread and then adds the partial
    sums, so the rounding, and with it a full fine-tune's numbers, changes with the thread count.
    Here the input's gradient is still torch's own (one row at a time, independent of the threads)
    and the two column sums are `Tensor.sum(0)`, which splits the C columns, never the M rows,
    between threads. The forward is torch's, and it saves what torch's saves: x, mean and rstd.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.native_layer_norm_backward(dy, x, x.shape[-1:], mean, rstd, weight, bias,
                                                           [True, False, False])[0]
        rows = dy.reshape(-1, dy.size(-1))  # (M, C)
        dweight = dbias = None
        if ctx.needs_input_grad[1]:
            xhat = (x.reshape(rows.shape) - mean.reshape(-1, 1)) * rstd.reshape(-1, 1)  # (M, C)
            dweight = (rows * xhat).sum(0)
        if bias is not None and ctx.needs_input_grad[2]:
            dbias = rows.sum(0)
        return dx, dweight, dbias, None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and names), whose trained weight and bias get thread-count-independent
    gradients on CPU (`_ThreadInvariantLayerNorm`); elsewhere, and when they are frozen, torch's own op."""

    def forward(self, x):
        trains = any(p.requires_grad for p in (self.weight, self.bias) if p is not None)
        if x.device.type == "cpu" and trains and torch.is_grad_enabled():
            return _ThreadInvariantLayerNorm.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, kv_cache, layer)  # pre-norm residual blocks (GPT-2, sec. 2.3)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one matrix, two uses (Press & Wolf 2017)
        # Recompute each block's activations in the backward pass instead of storing them
        # (Chen et al. 2016): memory O(layers) -> O(1) blocks of activations, ~33% more compute.
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2 paper, sec. 2.3: scale the init of residual projections by 1/sqrt(N), N = residual
        # layers (two per block), so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids=None, attention_mask=None, kv_cache: KVCache | None = None, input_embeds=None):
        """The final hidden states, after ln_f and before the head.

        Args:
            input_ids: (B, T) long token ids.
            attention_mask: None, or (B, T_past + T) with 1 for real tokens and 0 for padding. With
                left padding (batched generation), positions count from each row's first real token.
            kv_cache: a KVCache holding T_past earlier positions; it is extended by T.
            input_embeds: (B, T, n_embd) token embeddings to use instead of `input_ids` (soft
                prompts are embeddings with no token id); position embeddings are still added.

        Returns:
            (B, T, n_embd) tensor.

        Raises:
            ValueError: ids outside the vocabulary, a sequence longer than the context, a mask of
                the wrong shape.
        """
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids and input_embeds")
        past = kv_cache.length if kv_cache is not None else 0
        if input_ids is not None:
            self._check_input(input_ids)
            input_embeds = self.transformer.wte(input_ids)  # (B, T, C)
        B, T, _ = input_embeds.shape
        self._check_length(past, T)
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        pos, mask = _positions_and_mask(B, T, past, attention_mask, input_embeds.device)
        x = self.transformer.drop(input_embeds + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, input_ids=None, attention_mask=None, kv_cache: KVCache | None = None, input_embeds=None):
        """Logits (B, T, vocab_size) for every position; arguments as in `hidden_states`."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, kv_cache, input_embeds))

    def _check_length(self, past: int, T: int):
        check_context(f"sequence of {past + T} tokens ({past} cached + {T} new)", past + T, self.config.block_size)

    def _check_input(self, input_ids):
        if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        # Reading ids on a GPU would make the host wait for the device on every forward (and every generated
        # token); there the embedding's own bounds check (a device-side assert) stands in for this one.
        if input_ids.device.type != "cpu":
            return
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= self.config.vocab_size)][0].item()
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")

    def num_parameters(self, by_component: bool = False) -> int | dict[str, int]:
        """Number of parameters, tied weights counted once.

        With by_component=True, a dict over embeddings (wte, wpe), attention, mlp, norms, head (0
        when tied) and other (anything added later, e.g. adapters).
        """
        counts = dict(embeddings=0, attention=0, mlp=0, norms=0, head=0, other=0)
        for name, p in self.named_parameters():  # named_parameters yields a shared tensor once
            counts[_component(name)] += p.numel()
        return counts if by_component else sum(counts.values())


def _component(name: str) -> str:
    if ".lora_" in name:
        return "other"  # LoRA adapters live inside attention/MLP modules but are not part of GPT-2
    if name.startswith(("transformer.wte", "transformer.wpe")):
        return "embeddings"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if ".ln_" in name:
        return "norms"
    if name.startswith("lm_head"):
        return "head"
    return "other"


def _positions_and_mask(B: int, T: int, past: int, attention_mask, device):
    """Position ids (B or 1, T) and the attention mask for SDPA (None means plain causal).

    Without padding or cache, SDPA's `is_causal` is used (fastest). Otherwise we build a boolean
    mask (B, 1, T, past + T): query i (absolute position past + i) may see key j if j <= past + i
    and key j is not padding. A query that is itself padding would then see no key at all and
    softmax would give NaN; we let every query see itself, and padded outputs are never used.
    """
    if attention_mask is None:
        pos = torch.arange(past, past + T, device=device).unsqueeze(0)  # (1, T)
        if past == 0:
            return pos, None
        keep = torch.ones(B, past + T, dtype=torch.bool, device=device)
    else:
        keep = attention_mask.bool()
        # count only real tokens, so a left-padded row starts at position 0 like an unpadded one
        pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
    q_abs = torch.arange(past, past + T, device=device).view(T, 1)
    k_abs = torch.arange(past + T, device=device).view(1, past + T)
    causal = k_abs <= q_abs  # (T, past + T)
    mask = (causal & keep[:, None, :]) | (k_abs == q_abs)  # (B, T, past + T)
    return pos, mask.unsqueeze(1)  # (B, 1, T, past + T)
