"""From rendered examples to token ids: tokenisation with prompt masking, the label shift, and packing.

The one canonical tokenisation of an example is

    input_ids = encode(format_prompt(prompt)) + encode(completion) + [eot]
    labels    = [-100] * len(prompt ids)       + encode(completion) + [eot]

Prompt and completion are encoded separately and concatenated, so the label boundary is exact; the
instruction format's response prefix ends with a newline, so these ids equal those of the joined
text (see `InstructionFormat`). At evaluation a model is fed the prompt ids and scored on the
completion ids and end-of-text: the same ids it was trained on.

Labels are aligned with the inputs (the Hugging Face convention): `labels[t]` is `input_ids[t]` or
-100, and the loss shifts them, scoring the logits at position t against `labels[t + 1]`. -100 on
prompt and padding tokens makes the loss the cross-entropy of the completion alone; end-of-text is
trained, so a model learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minift.data.templates import ALPACA_FORMAT, Example, InstructionFormat
from minift.tokenizer import TRUNCATIONS, Tokenizer

IGNORE_INDEX = -100  # the label of a token that is not scored (torch's cross_entropy default ignore_index)

class ContextLengthError(ValueError):
    """An example that does not fit the context window."""


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]  # prompt ids + completion ids + [eot]
    labels: list[int]  # IGNORE_INDEX on the prompt, then the completion ids and eot
    n_prompt_tokens: int  # prompt tokens kept
    n_truncated: int  # prompt tokens cut from the left to fit max_length

    @property
    def n_completion_tokens(self) -> int:
        """Trained tokens: the completion and its end-of-text."""
        return len(self.input_ids) - self.n_prompt_tokens


def tokenize_example(
    tokenizer: Tokenizer,
    prompt: str,
    completion: str,
    max_length: int,
    truncation: str = "error",
    name: str = "example",
) -> TokenizedExample:
    """Tokenize one (prompt already in the instruction format, completion) pair.

    Args:
        max_length: the context length; input_ids never exceed it.
        truncation: "error" raises when the example is too long; "left" cuts prompt tokens from
            the left (the start of the instruction goes first) and counts them in `n_truncated`.
            The completion is never cut.
        name: how errors name the example.

    Raises:
        ContextLengthError: the completion and end-of-text, plus one prompt token to predict its
            first token from, exceed max_length (whatever `truncation`); or the example is too
            long and truncation is "error". The message gives the token counts.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    prompt_ids = tokenizer.encode(prompt)
    completion_ids = tokenizer.encode(completion) + [tokenizer.eot_id]
    if not prompt_ids:
        raise ContextLengthError(f"{name}: the prompt is empty; the first completion token needs a prompt token before it")
    if len(completion_ids) + 1 > max_length:
        raise ContextLengthError(
            f"{name}: the completion takes {len(completion_ids)} tokens with end-of-text and needs one prompt token "
            f"before it, but max_length is {max_length}: it cannot fit the context"
        )
    excess = len(prompt_ids) + len(completion_ids) - max_length
    if excess > 0:
        if truncation == "error":
            raise ContextLengthError(
                f"{name}: {len(prompt_ids)} prompt + {len(completion_ids)} completion tokens (with end-of-text) = "
                f"{len(prompt_ids) + len(completion_ids)} > max_length {max_length}; "
                f"truncation='left' would cut {excess} prompt tokens"
            )
        prompt_ids = prompt_ids[excess:]
    return TokenizedExample(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        n_prompt_tokens=len(prompt_ids),
        n_truncated=max(excess, 0),
    )


def tokenize_examples(
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    max_length: int,
    truncation: str = "error",
    fmt: InstructionFormat = ALPACA_FORMAT,
) -> list[TokenizedExample]:
    """Tokenize rendered examples with the instruction format applied to each prompt (see `tokenize_example`)."""
    return [
        tokenize_example(tokenizer, fmt.format_prompt(ex.prompt), ex.completion, max_length, truncation,
                         name=f"record {ex.record!r} (template {ex.template!r})")
        for ex in examples
    ]


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of tokenized examples; completions include their end-of-text token."""

    n: int
    prompt_mean: float
    prompt_max: int
    completion_mean: float
    completion_max: int
    n_truncated_examples: int
    n_truncated_tokens: int


def length_stats(examples: Sequence[TokenizedExample]) -> LengthStats:
    prompts = [e.n_prompt_tokens for e in examples]
    completions = [e.n_completion_tokens for e in examples]
    truncated = [e.n_truncated for e in examples if e.n_truncated]
    return LengthStats(len(examples), float(np.mean(prompts)), max(prompts), float(np.mean(completions)),
                       max(completions), len(truncated), sum(truncated))


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets for each position: the logits at t predict labels[t + 1]; the last position predicts nothing.

    (B, T) -> (B, T) with IGNORE_INDEX in the last column.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def pack(tokenizer: Tokenizer, documents: Sequence[str], block_size: int) -> list[TokenizedExample]:
    """Pretraining examples: concatenate documents, each followed by end-of-text, and cut the stream into full blocks.

    The tail shorter than a block is dropped (less than one block of a multi-MB corpus).
    """
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(documents)):
        stream += ids + [tokenizer.eot_id]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    # n_prompt_tokens = 0: every token is a target (the first one has no context to predict it from,
    # so the loss scores block_size - 1 tokens per block)
    return [TokenizedExample(block, list(block), 0, 0) for block in blocks]
