"""Evaluation: loss and exact-match accuracy of completions, in one forward pass per batch.

Exact match of a greedy completion equals "every completion token, end-of-text included, is the
argmax of the model's prediction at its position under teacher forcing". Greedy decoding picks the
argmax at each step; as long as every pick equals the reference token, the decoder's input equals
the teacher-forced input, so the two agree token for token; at the first wrong token both say
"wrong". So accuracy needs no generation loop: one forward pass scores every completion of a
batch (tests/evaluation/test_accuracy.py checks the equivalence against `generate`).

Token-level exact match is slightly stricter than text-level: a model that spells the right text
with other tokens (rare with a BPE trained on the domain) counts as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minift.data import IGNORE_INDEX, TokenizedExample, sequential_batches, shifted_targets
from minift.evaluation.metrics import rouge_l
from minift.model import generate


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per completion token (nats)
    accuracy: float  # share of examples whose whole completion is the greedy argmax
    n_examples: int
    n_tokens: int  # completion tokens scored, end-of-text included
    correct: list[bool]  # per example, in order: was the whole completion the argmax?


@torch.no_grad()
def evaluate(model, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 32,
             progress: bool = False) -> EvalResult:
    """Loss and exact-match accuracy of `model` on tokenized examples (teacher forcing); `progress` shows a bar."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, n_tokens, correct = 0.0, 0, []
    bar = tqdm(total=len(examples), desc="evaluate", unit="ex", disable=not progress, leave=False)
    for batch in sequential_batches(examples, batch_size, pad_id):
        bar.update(len(batch["input_ids"]))
        ids = batch["input_ids"].to(device)
        targets = shifted_targets(batch["labels"].to(device))  # (B, T)
        logits = model(ids).float()  # (B, T, V); right padding needs no mask (see training.loss.CompletionLoss)
        scored = targets != IGNORE_INDEX
        loss_sum += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        n_tokens += int(scored.sum())
        token_right = (logits.argmax(-1) == targets) | ~scored  # unscored positions never fail a row
        correct += token_right.all(dim=1).tolist()
    bar.close()
    model.train(was_training)
    return EvalResult(loss_sum / max(n_tokens, 1), sum(correct) / len(examples), len(examples), n_tokens, correct)


@torch.no_grad()
def greedy_completions(model, examples: Sequence[TokenizedExample], eot_id: int, batch_size: int = 32) -> list[list[int]]:
    """Greedy-decode each example's completion from its prompt ids (up to end-of-text, kept)."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [e.input_ids[: e.n_prompt_tokens] for e in chunk]
        longest = max(e.n_completion_tokens for e in chunk)
        # one token beyond the longest reference: enough to see whether a row stops where it should
        room = model.config.block_size - max(map(len, prompts))
        out += generate(model, prompts, min(longest + 1, room), stop_tokens=[eot_id])
    return out


def rouge_scores(model, tokenizer, examples: Sequence[TokenizedExample], batch_size: int = 32) -> float:
    """Mean ROUGE-L F-measure of greedy completions against the references (for summaries)."""
    generated = greedy_completions(model, examples, tokenizer.eot_id, batch_size)
    scores = []
    strip = lambda ids: ids[:-1] if ids and ids[-1] == tokenizer.eot_id else ids
    for e, ids in zip(examples, generated):
        reference, prediction = strip(e.input_ids[e.n_prompt_tokens :]), strip(ids)
        scores.append(rouge_l(tokenizer.decode(prediction), tokenizer.decode(reference)))
    return sum(scores) / len(scores)
