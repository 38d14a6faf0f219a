"""Text generation: one token at a time, with a KV cache, for a batch of prompts of any lengths.

Each step turns the logits of the last position into the next token:
- greedy (temperature 0): the argmax;
- sampling: divide the logits by the temperature, keep the top-k tokens and/or the smallest set
  whose probability reaches top-p (nucleus sampling, Holtzman et al. 2020), then draw.

Prompts of different lengths are left-padded into one batch, so every row's next token sits in the
last column; the attention mask hides the padding and positions count from each row's first real
token, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from minift.model.gpt import GPT, KVCache, check_context
from minift.tokenizer import TRUNCATIONS


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int = 60,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    truncation: str = "error",
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens.

    Args:
        model: the GPT (put in eval mode for the duration of the call).
        prompts: a list of token-id lists (lengths may differ), or a (B, T) tensor.
        max_new_tokens: the most tokens to add to each prompt.
        temperature: 0 for greedy decoding; > 0 to sample from softmax(logits / temperature).
        top_k: sample only among the k most likely tokens.
        top_p: sample only among the smallest set of tokens whose probability sums to >= top_p.
        stop_tokens: a row ends after producing one of these (it is included in the output).
        seed: seeds a private random generator, so sampling is reproducible and leaves the
            global RNG untouched.
        use_cache: keep keys and values of past positions (fast); False recomputes the whole
            sequence every step (slow, and the reference the cache is tested against).
        truncation: a prompt too long for the context with max_new_tokens after it: "error"
            refuses it, naming the lengths; "left" cuts its first tokens, with a warning.

    Returns:
        For each prompt, the list of new token ids (ending with a stop token if one was produced).

    Raises:
        ValueError: an empty prompt, bad sampling options, or (truncation "error") prompt +
            max_new_tokens longer than the model's context.
    """
    rows = [list(map(int, p)) for p in (prompts.tolist() if torch.is_tensor(prompts) else prompts)]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"bad sampling options: temperature={temperature}, top_k={top_k}, top_p={top_p}")
    # Prompt tuning (minift.peft.prompt_tuning.PromptTuningModel) puts soft-prompt vectors before every prompt: they
    # take cache positions too, and that model's config.block_size is the context left for tokens.
    n_virtual = getattr(model, "num_virtual_tokens", 0)
    rows = _fit_context(rows, max_new_tokens, model.config.block_size, truncation, getattr(model, "context_note", ""))
    longest = max(map(len, rows))
    device = next(model.parameters()).device
    B = len(rows)
    ids = torch.zeros(B, longest, dtype=torch.long, device=device)  # left padding (pad id 0 is never seen)
    mask = torch.zeros(B, longest, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        ids[b, longest - len(r) :] = torch.tensor(r, device=device)
        mask[b, longest - len(r) :] = 1
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(B)]

    was_training = model.training
    model.eval()
    cache_len = n_virtual + longest + max_new_tokens
    cache = KVCache(model.config, B, cache_len, device, next(model.parameters()).dtype) if use_cache else None
    step_input = ids  # the first step reads the whole prompt; later steps one token
    for _ in range(max_new_tokens):
        logits = model(step_input if use_cache else ids, attention_mask=mask, kv_cache=cache)[:, -1, :]
        next_token = _choose(logits.float(), temperature, top_k, top_p, generator)  # (B,)
        for b in range(B):
            if not done[b]:
                out[b].append(int(next_token[b]))
        done |= torch.isin(next_token, stops)
        if done.all():
            break
        ids = torch.cat([ids, next_token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
        step_input = next_token[:, None]
    model.train(was_training)
    return out


def _fit_context(rows: list[list[int]], max_new_tokens: int, block_size: int, truncation: str,
                 note: str) -> list[list[int]]:
    """The prompts, each short enough that max_new_tokens fit after it (see `generate`'s truncation)."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    keep = block_size - max_new_tokens  # prompt tokens that leave room for every new token
    longest = max(map(len, rows))
    if longest <= keep:
        return rows
    what = f"prompt of {longest} tokens + {max_new_tokens} new tokens"
    if truncation == "error" or keep < 1:
        hint = f"; truncation='left' would cut the prompt to its last {keep} tokens" if keep >= 1 else "; ask for fewer new tokens"
        check_context(what, longest + max_new_tokens, block_size, note + hint)
    warnings.warn(f"prompt of {longest} tokens cut from the left to its last {keep}: {what} would exceed the context "
                  f"length {block_size}{note}", stacklevel=3)
    return [r[-keep:] for r in rows]


def _choose(logits, temperature, top_k, top_p, generator):
    """The next token for each row of (B, V) fp32 logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
