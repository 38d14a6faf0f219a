"""Prompt tuning (Lester et al. 2021): learn `num_virtual_tokens` embedding vectors put before every input.

An additive method: the model itself is frozen, and the only trained numbers are the soft prompt,
(num_virtual_tokens, n_embd). The virtual tokens have no token ids, so they enter the model as
embeddings (`GPT.hidden_states(input_embeds=...)`), and they take positions of the context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn as nn

from minift.model import GPT, KVCache, check_context
from minift.peft.config import PROMPT_INITS


class PromptTuningModel(nn.Module):
    """A frozen GPT with `num_virtual_tokens` trainable embeddings put before every input (Lester et al. 2021).

    It offers the GPT interface the training loop, the evaluator and `minift.model.generate` use:
    `forward`/`hidden_states` with GPT's arguments, returning positions aligned with the input
    (the virtual positions are computed and then dropped), `lm_head`, `config`, `num_parameters`
    and `activation_checkpointing`. The wrapped model is frozen (requires_grad=False).

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
    def context_note(self) -> str:
        """How the context-length errors explain the shorter context."""
        return (f" (what {self.num_virtual_tokens} virtual tokens of prompt tuning leave of "
                f"{self.base_model.config.block_size} positions)")

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
        check_context(f"sequence of {past + T} tokens", past + T, self.config.block_size, self.context_note)
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
    raise ValueError(f"unknown prompt init {init!r}; choose from {PROMPT_INITS}")
