r"""In-context learning: zero-, one- and few-shot prompts, and what they cost in context.

Layout: the shots are complete examples, formatted prompt and completion, each followed by a blank
line; the query follows as a formatted prompt alone:

    ### Instruction:\n<shot 1 prompt>\n\n### Response:\n<shot 1 completion>\n\n
    ### Instruction:\n<shot 2 prompt>\n\n### Response:\n<shot 2 completion>\n\n
    ### Instruction:\n<query prompt>\n\n### Response:\n

Why a blank line and not end-of-text: in pretraining, end-of-text separates unrelated documents, so
a base model learns to ignore what comes before it, which would hide the shots. Blank lines keep
them in one document, like the corpus's quiz sheets (items of one kind, one after another).

The query's completion is still `completion ids + [eot]` (what a fine-tuned model must produce).
A base model that follows the shots answers and then writes a blank line, not end-of-text: score
it on `answer_ids` (the completion without end-of-text) to measure its answers.

The ids are those of the whole text; the query's formatted prompt starts a new pre-token after
the blank line (`InstructionFormat` checks that its prefix does not start with whitespace), so its
ids end the sequence exactly as in zero-shot prompting.
Shots are not free: each takes tokens of the context window, which `FewShotPrompt` counts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from minift.data.templates import ALPACA_FORMAT, Example, InstructionFormat
from minift.data.tokenized import ContextLengthError
from minift.tokenizer import Tokenizer

SHOT_SEPARATOR = "\n\n"  # after each shot's completion


@dataclass(frozen=True)
class FewShotPrompt:
    input_ids: list[int]  # the shots, then the query's formatted prompt
    completion_ids: list[int]  # the query's completion and end-of-text: what a fine-tuned model must produce
    n_shots: int
    n_shot_tokens: int  # context tokens the shots take
    n_query_tokens: int  # the query's formatted prompt
    max_length: int

    @property
    def answer_ids(self) -> list[int]:
        """The completion without end-of-text (a base model ends its answer with a blank line instead)."""
        return self.completion_ids[:-1]

    @property
    def n_tokens(self) -> int:
        """Prompt and completion together: what must fit in max_length."""
        return len(self.input_ids) + len(self.completion_ids)

    @property
    def shot_fraction(self) -> float:
        """The share of the context window the shots take."""
        return self.n_shot_tokens / self.max_length

    def __str__(self) -> str:
        return (f"{self.n_shots}-shot: shots {self.n_shot_tokens} tokens ({self.shot_fraction:.0%} of {self.max_length}), "
                f"query {self.n_query_tokens}, completion {len(self.completion_ids)}")


def choose_shots(examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k distinct examples (from the training split), fixed by `seed`."""
    if not 0 <= k <= len(examples):
        raise ValueError(f"cannot choose {k} shots from {len(examples)} examples")
    return [examples[i] for i in random.Random(f"shots:{seed}").sample(range(len(examples)), k)]


def max_shots(tokenizer: Tokenizer, queries: Sequence[Example], pool: Sequence[Example], max_length: int,
              fmt: InstructionFormat = ALPACA_FORMAT) -> int:
    """The most shots from `pool` that every query's prompt fits in `max_length`, whichever shots are drawn.

    A shot's ids do not depend on its neighbours (each starts after a newline, where the
    pre-tokenizer starts a new pre-token), so k shots take at most k times the longest one.
    """
    longest_shot = max(len(tokenizer.encode(fmt.format_prompt(s.prompt) + s.completion + SHOT_SEPARATOR)) for s in pool)
    longest_query = max(len(tokenizer.encode(fmt.format_prompt(q.prompt))) + len(tokenizer.encode(q.completion)) + 1
                        for q in queries)  # + end-of-text
    return min(len(pool), max(0, (max_length - longest_query) // longest_shot))


def few_shot_prompt(
    tokenizer: Tokenizer,
    query: Example,
    shots: Sequence[Example],
    max_length: int,
    fmt: InstructionFormat = ALPACA_FORMAT,
) -> FewShotPrompt:
    """The ids of a k-shot prompt for `query` (k = len(shots); 0 is zero-shot), with its token counts.

    Raises:
        ContextLengthError: shots, query prompt and completion exceed max_length; the message
            gives each part's tokens.
    """
    input_ids = tokenizer.encode(few_shot_text(query, shots, fmt))
    query_ids = tokenizer.encode(fmt.format_prompt(query.prompt))
    n_shot_tokens = len(input_ids) - len(query_ids)  # the query's ids end input_ids (see InstructionFormat)
    completion_ids = tokenizer.encode(query.completion) + [tokenizer.eot_id]
    prompt = FewShotPrompt(input_ids, completion_ids, len(shots), n_shot_tokens, len(query_ids), max_length)
    if prompt.n_tokens > max_length:
        raise ContextLengthError(
            f"{len(shots)}-shot prompt for record {query.record!r}: shots {n_shot_tokens} + query {len(query_ids)} + "
            f"completion {len(completion_ids)} (with end-of-text) = {prompt.n_tokens} tokens > max_length {max_length}"
        )
    return prompt


def few_shot_text(query: Example, shots: Sequence[Example], fmt: InstructionFormat = ALPACA_FORMAT) -> str:
    """The text of a k-shot prompt (see the module docstring for the layout)."""
    return "".join(fmt.format_prompt(s.prompt) + s.completion + SHOT_SEPARATOR for s in shots) + fmt.format_prompt(query.prompt)
