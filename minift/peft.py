"""Parameter-efficient fine-tuning: one entry point over three families, and the trainable-parameter count.

- Reparametrisation: LoRA (`minift.lora`), a low-rank update beside frozen linear layers.
- Selective: train a chosen subset of the existing parameters and freeze the rest: the last k
  blocks, the biases only (BitFit, Ben Zaken et al. 2022), or the LayerNorms.
- Additive, soft prompts: prompt tuning (Lester et al. 2021) learns `num_virtual_tokens` embedding
  vectors that are put before every input; the model itself is frozen.

`apply_peft(model, config)` applies the method a config dataclass describes and returns the model to
train (the same object for LoRA and selective, a `PromptTuningModel` wrapping it for prompt tuning).
`minift.adapters.save_trainable`/`load_trainable` save and load the trained part of any of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from minift.lora import apply_lora
from minift.model import GPT, KVCache


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor shared by two modules (tied weights) counts once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() yields a shared tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def format_trainable_parameters(model: nn.Module) -> str:
    """'trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364' (PEFT's wording)."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


# ----------------------------------------------------------------------------------------------
# Configurations: what the CLI's --method flags build


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8  # Hu et al. 2021, table 6: r as low as 1-8 on W_q, W_v already matches r = 64
    alpha: float = 16.0  # scaling alpha / rank = 2; keeping alpha fixed lets r change without retuning the lr
    targets: str | tuple[str, ...] = ("c_attn",)  # GPT-2's fused q, k, v projection
    dropout: float = 0.0
    rslora: bool = False  # scale by alpha / sqrt(rank) (Kalajdzievski 2023)
    adapter_name: str = "default"


@dataclass(frozen=True)
class PromptTuningConfig:
    num_virtual_tokens: int = 20  # Lester et al. 2021, fig. 3(a): beyond ~20 tokens the gains are marginal
    # "vocab": embeddings of tokens drawn uniformly from the vocabulary (PEFT's SAMPLE_VOCAB; Lester et
    #   al. fig. 3(b): starting from real token embeddings beats random init, most for small models);
    # "text": embeddings of `init_token_ids` (the caller tokenizes, e.g. "Answer the question:"),
    #   repeated or cut to length as PEFT's TEXT init does;
    # "random": normal with the std of the token-embedding matrix, so the virtual tokens have the scale
    #   of real ones (PEFT's RANDOM draws N(0, 1), far larger than GPT-2's embeddings).
    init: str = "vocab"
    init_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SelectiveConfig:
    # "last-K-blocks", "bias", "layernorm", or several joined by "+" ("bias+layernorm")
    train: str = "last-2-blocks"


def apply_peft(model: GPT, config: LoraConfig | PromptTuningConfig | SelectiveConfig) -> nn.Module:
    """Prepare `model` for parameter-efficient fine-tuning as `config` says; only the method's parameters train.

    Returns the model to train and evaluate: `model` itself (modified in place) for LoRA and
    selective, a new `PromptTuningModel` wrapping it for prompt tuning.
    """
    if isinstance(config, LoraConfig):
        c = config
        return apply_lora(model, c.rank, c.alpha, c.targets, c.dropout, c.rslora, c.adapter_name)
    if isinstance(config, PromptTuningConfig):
        return PromptTuningModel(model, config.num_virtual_tokens, config.init, config.init_token_ids)
    if isinstance(config, SelectiveConfig):
        return apply_selective(model, config.train)
    raise TypeError(
        f"apply_peft takes a LoraConfig, PromptTuningConfig or SelectiveConfig, got {type(config).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Selective fine-tuning


def selected_parameters(model: GPT, train: str) -> list[str]:
    """The names of the parameters `train` selects (see SelectiveConfig), in model order.

    - "last-K-blocks": every parameter of the last K transformer blocks, K * (12 C^2 + 13 C) with
      biases; embeddings, ln_f and the (tied) head stay frozen.
    - "bias": every bias vector, the linear layers' and the LayerNorms' (BitFit), L * 11 C + C.
    - "layernorm": the LayerNorms' scale and shift, ln_1, ln_2 in each block and ln_f: 4 L C + 2 C.

    Raises:
        ValueError: an unknown part, K outside 1..n_layer, a selection that is empty (biases of a
            model built with bias=False).
    """
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for part in train.split("+"):
        if m := re.fullmatch(r"last-(\d+)-blocks?", part):
            k, n_layer = int(m.group(1)), model.config.n_layer
            if not 1 <= k <= n_layer:
                raise ValueError(f"{part!r}: the model has {n_layer} blocks; choose K in 1..{n_layer}")
            prefixes = tuple(f"transformer.h.{i}." for i in range(n_layer - k, n_layer))
            chosen |= {n for n in names if n.startswith(prefixes)}
        elif part == "bias":
            chosen |= {n for n in names if n.endswith(".bias")}
        elif part == "layernorm":
            chosen |= {n for n in names if re.search(r"(^|\.)ln_(1|2|f)\.", n)}
        else:
            raise ValueError(
                f"unknown selective part {part!r} in {train!r}; use 'last-K-blocks', 'bias', 'layernorm', joined by '+'"
            )
    if not chosen:
        raise ValueError(f"{train!r} selects no parameter of this model (built with bias={model.config.bias})")
    return [n for n in names if n in chosen]


def apply_selective(model: GPT, train: str) -> GPT:
    """Freeze every parameter except those `train` selects; returns the same model."""
    chosen = set(selected_parameters(model, train))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return model


# ----------------------------------------------------------------------------------------------
# Prompt tuning


class PromptTuningModel(nn.Module):
    """A frozen GPT with `num_virtual_tokens` trainable embeddings put before every input (Lester et al. 2021).

    It offers the GPT interface the training loop, the evaluator and `minift.generate` use:
    `forward`/`hidden_states` with GPT's arguments, returning positions aligned with the input
    (the virtual positions are computed and then dropped), `lm_head`, `config`, `generate`,
    `num_parameters` and `activation_checkpointing`. The wrapped model is frozen (requires_grad=False).

    The virtual tokens take the first `num_virtual_tokens` positions of the context, so
    `config.block_size` here is the base model's minus that number (the base model's own config is
    `base_model.config`). With a KV cache the virtual tokens are put in front on the first call,
    when the cache is empty, and stay in the cache for the following steps.

    Parameters: `prompt_embeddings` (num_virtual_tokens, n_embd), in the token embedding's dtype.
    """

    def __init__(
        self, base_model: GPT, num_virtual_tokens: int = 20, init: str = "vocab", init_token_ids: Sequence[int] = ()
    ):
        super().__init__()
        n, block_size = num_virtual_tokens, base_model.config.block_size
        if not (isinstance(n, int) and 0 < n < block_size):
            raise ValueError(
                f"num_virtual_tokens must be in 1..{block_size - 1} (the context holds {block_size}), got {n!r}"
            )
        self.base_model = base_model
        self.base_model.requires_grad_(False)
        self.init = init  # recorded in the saved config
        wte = base_model.transformer.wte.weight.detach()  # (vocab_size, n_embd)
        self.prompt_embeddings = nn.Parameter(_initial_prompt(wte, n, init, init_token_ids))  # (n, n_embd)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt_embeddings.size(0)

    @property
    def config(self):
        # the context that is left for real tokens: generate() and data pipelines read block_size from here
        base = self.base_model.config
        return dataclasses.replace(base, block_size=base.block_size - self.num_virtual_tokens)

    @property
    def lm_head(self) -> nn.Linear:
        return self.base_model.lm_head

    @property
    def activation_checkpointing(self) -> bool:
        return self.base_model.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, on: bool):
        self.base_model.activation_checkpointing = on

    def num_parameters(self, by_component: bool = False) -> int | dict[str, int]:
        """As `GPT.num_parameters`, the soft prompt counted under "other"."""
        counts = self.base_model.num_parameters(by_component=True)
        counts["other"] += self.prompt_embeddings.numel()
        return counts if by_component else sum(counts.values())

    def hidden_states(self, input_ids=None, attention_mask=None, kv_cache: KVCache | None = None, input_embeds=None):
        """Final hidden states (B, T, n_embd) of the input's positions; arguments as in `GPT.hidden_states`.

        `attention_mask`, if given, covers the real tokens only (B, T_past + T); the virtual tokens
        are always attended to. With `kv_cache`, T_past counts real tokens, and the cache's own
        length counts the virtual ones too.

        Raises:
            ValueError: as GPT.hidden_states, and a sequence that does not fit in the context left
                after the virtual tokens.
        """
        n = self.num_virtual_tokens
        first = kv_cache is None or kv_cache.length == 0  # the virtual tokens are not in the cache yet
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids and input_embeds")
        if input_ids is not None:
            V = self.base_model.config.vocab_size
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= V):
                raise ValueError(f"token ids must be in [0, {V}), got values in [{input_ids.min()}, {input_ids.max()}]")
            input_embeds = self.base_model.transformer.wte(input_ids)  # (B, T, C)
        B, T, _ = input_embeds.shape
        past = 0 if first else kv_cache.length - n  # real tokens already cached
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the context left for tokens: {self.config.block_size} = "
                f"{self.base_model.config.block_size} positions minus {n} virtual tokens of prompt tuning"
            )
        if attention_mask is not None:
            ones = torch.ones(B, n, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, n + T_past + T): always see the prompt
        if first:
            prompt = self.prompt_embeddings.to(input_embeds.dtype).expand(B, n, -1)  # (B, n, C)
            input_embeds = torch.cat([prompt, input_embeds], dim=1)  # (B, n + T, C)
        h = self.base_model.hidden_states(attention_mask=attention_mask, kv_cache=kv_cache, input_embeds=input_embeds)
        return h[:, n:] if first else h  # (B, T, C): drop the virtual positions

    def forward(self, input_ids=None, attention_mask=None, kv_cache: KVCache | None = None, input_embeds=None):
        """Logits (B, T, vocab_size) for the input's positions; see `hidden_states`."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, kv_cache, input_embeds))

    def generate(self, prompts, max_new_tokens: int, **kwargs) -> list[list[int]]:
        """Continue each prompt; see `minift.generate.generate`."""
        from minift.generate import generate

        return generate(self, prompts, max_new_tokens, **kwargs)


def _initial_prompt(wte: torch.Tensor, n: int, init: str, init_token_ids: Sequence[int]) -> torch.Tensor:
    """(n, C) starting values of the soft prompt, from the token-embedding matrix wte (V, C)."""
    V = wte.size(0)
    if init == "random":
        return torch.randn(n, wte.size(1), dtype=wte.dtype, device=wte.device) * wte.float().std().to(wte.dtype)
    if init == "vocab":
        return wte[torch.randint(0, V, (n,), device=wte.device)].clone()
    if init == "text":
        ids = list(init_token_ids)
        if not ids or min(ids) < 0 or max(ids) >= V:
            raise ValueError(
                f"init='text' needs init_token_ids, token ids in [0, {V}) (the tokenized init text); got {ids[:10]}"
            )
        ids = (ids * (n // len(ids) + 1))[:n]  # repeat a short text, cut a long one (as PEFT's TEXT init)
        return wte[torch.tensor(ids, device=wte.device)].clone()
    raise ValueError(f"unknown prompt init {init!r}; choose 'vocab', 'text' or 'random'")
