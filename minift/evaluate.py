"""Evaluation: loss and exact-match accuracy of completions, in one forward pass per batch.

Exact match of a greedy completion equals "every completion token, end-of-text included, is the
argmax of the model's prediction at its position under teacher forcing". Greedy decoding picks the
argmax at each step; as long as every pick equals the reference token, the decoder's input equals
the teacher-forced input, so the two agree token for token; at the first wrong token both say
"wrong". So accuracy needs no generation loop: one forward pass scores every completion of a
batch (tests/test_evaluate.py checks the equivalence against `generate`).

Token-level exact match is slightly stricter than text-level: a model that spells the right text
with other tokens (rare with a BPE trained on the domain) counts as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minift.data import IGNORE_INDEX, TokenizedExample, choose_shots, few_shot_prompt, sequential_batches
from minift.metrics import rouge_l
from minift.tasks_data import load_task_data
from minift.templates import Example


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per completion token (nats)
    accuracy: float  # share of examples whose whole completion is the greedy argmax
    n_examples: int
    n_tokens: int  # completion tokens scored, end-of-text included
    correct: list[bool]  # per example, in order: was the whole completion the argmax?


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets for each position: the logits at t predict labels[t + 1]; the last position predicts nothing.

    (B, T) -> (B, T) with IGNORE_INDEX in the last column.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@torch.no_grad()
def evaluate(model, examples: Sequence[TokenizedExample], pad_id: int, batch_size: int = 32) -> EvalResult:
    """Loss and exact-match accuracy of `model` on tokenized examples (teacher forcing)."""
    if not examples:
        raise ValueError("cannot evaluate on an empty list of examples")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, n_tokens, correct = 0.0, 0, []
    for batch in sequential_batches(examples, batch_size, pad_id):
        ids = batch["input_ids"].to(device)
        targets = shifted_targets(batch["labels"].to(device))  # (B, T)
        logits = model(ids).float()  # (B, T, V); right padding needs no mask (see train.CompletionLoss)
        scored = targets != IGNORE_INDEX
        loss_sum += F.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        n_tokens += int(scored.sum())
        token_right = (logits.argmax(-1) == targets) | ~scored  # unscored positions never fail a row
        correct += token_right.all(dim=1).tolist()
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
        out += model.generate(prompts, min(longest + 1, room), stop_tokens=[eot_id])
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


def few_shot_examples(tokenizer, queries: Sequence[Example], pool: Sequence[Example], shots: int, max_length: int,
                      seed: int = 0, score_end: bool = True) -> tuple[list[TokenizedExample], float]:
    """Each query as a k-shot prompt (shots drawn from `pool` per query) + its completion, tokenized.

    With `score_end=False` the end-of-text after the answer is not scored (see `evaluate_task`).
    Returns the examples and the mean number of context tokens the shots take.
    """
    examples, shot_tokens = [], 0
    for i, query in enumerate(queries):
        prompt = few_shot_prompt(tokenizer, query, choose_shots(pool, shots, seed=seed * 1_000_003 + i), max_length)
        target = prompt.completion_ids if score_end else prompt.answer_ids
        labels = [IGNORE_INDEX] * len(prompt.input_ids) + target
        examples.append(TokenizedExample(prompt.input_ids + target, labels, len(prompt.input_ids), 0))
        shot_tokens += prompt.n_shot_tokens
    return examples, shot_tokens / max(len(queries), 1)


def evaluate_task(model, tokenizer, task: str, n: int = 400, shots: int = 0, seed: int = 0, batch_size: int = 16,
                  score_end: bool = True) -> dict:
    """Accuracy of `model` on the test split of a built-in task, zero-shot or with `shots` examples.

    The test split is the one fine-tuning runs are scored on (minift.tasks_data: a fixed pool per
    task and seed); shots come from the task's training split, never from the test split.

    score_end: also require end-of-text right after the answer. An instruction-tuned model learned
    to stop there; a base model never did (in its corpus, end-of-text separates documents), so for
    base models under few-shot prompting pass False: the answer tokens alone are scored.
    """
    data = load_task_data(task, tokenizer, model.config.block_size, n_val=0, n_test=n, seed=seed, tokenize=("test",))
    examples, shot_tokens = data.test, 0.0
    if shots or not score_end:
        examples, shot_tokens = few_shot_examples(tokenizer, data.rendered["test"], data.rendered["train"], shots,
                                                  model.config.block_size, seed, score_end)
    result = evaluate(model, examples, tokenizer.pad_id, batch_size)
    record = {"task": task, "shots": shots, "n": result.n_examples, "n_tokens": result.n_tokens,
              "accuracy": result.accuracy, "loss": result.loss,
              "chance_accuracy": data.chance_accuracy, "shot_tokens": shot_tokens,
              "shot_fraction": shot_tokens / model.config.block_size, "score_end": score_end}
    if "rouge_l" in data.metrics:
        record["rouge_l"] = rouge_scores(model, tokenizer, examples, batch_size)
    return record
