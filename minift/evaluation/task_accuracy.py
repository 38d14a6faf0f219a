"""Accuracy on the test split of a task, zero-shot or with solved examples in the prompt (in-context learning).

A fine-tuned model is scored on its instruction format alone (zero-shot); a base model, which never
saw that format, is prompted with `shots` solved examples first (`minift.data.few_shot_prompt`), the
shots drawn from the task's training split, never from the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

from minift.data import (ALPACA_FORMAT, IGNORE_INDEX, Example, InstructionFormat, TokenizedExample, choose_shots,
                         few_shot_prompt, load_task_data, max_shots)
from minift.evaluation.accuracy import evaluate, rouge_scores


def few_shot_examples(tokenizer, queries: Sequence[Example], pool: Sequence[Example], shots: int, max_length: int,
                      seed: int = 0, score_end: bool = True, fmt: InstructionFormat = ALPACA_FORMAT
                      ) -> tuple[list[TokenizedExample], float]:
    """Each query as a k-shot prompt (shots drawn from `pool` per query, laid out in `fmt`) + its completion, tokenized.

    With `score_end=False` the end-of-text after the answer is not scored (see `evaluate_task`).
    Returns the examples and the mean number of context tokens the shots take.
    """
    examples, shot_tokens = [], 0
    for i, query in enumerate(queries):
        prompt = few_shot_prompt(tokenizer, query, choose_shots(pool, shots, seed=seed * 1_000_003 + i), max_length, fmt)
        target = prompt.completion_ids if score_end else prompt.answer_ids
        labels = [IGNORE_INDEX] * len(prompt.input_ids) + target
        examples.append(TokenizedExample(prompt.input_ids + target, labels, len(prompt.input_ids), 0))
        shot_tokens += prompt.n_shot_tokens
    return examples, shot_tokens / max(len(queries), 1)


def evaluate_task(model, tokenizer, task: str, n: int | str | None = None, shots: int | str = 0, seed: int = 0,
                  batch_size: int = 16, score_end: bool = True, templates: str | None = None, progress: bool = False,
                  fmt: InstructionFormat = ALPACA_FORMAT, rouge: bool = True) -> dict:
    """Accuracy of `model` on the test split of a built-in task or a data file, zero-shot or with `shots` examples.

    The test split is the one fine-tuning runs are scored on (minift.data.task_data: a fixed pool per
    task and seed, or the file split 80/10/10 by the seed); shots come from the training split, never
    from the test split.

    Args:
        n: test examples, a number or all (None: 400 for a built-in task, all of a file's test split).
        shots: solved examples put before each query (in-context learning); "max": as many as fit
            every test prompt in the context (`minift.data.max_shots`; the record gives the number).
        seed: the split, the templates' choice and the shots.
        batch_size: sequences per forward pass.
        score_end: also require end-of-text right after the answer. An instruction-tuned model learned
            to stop there; a base model never did (in its corpus, end-of-text separates documents), so
            for base models under few-shot prompting pass False: the answer tokens alone are scored.
        templates: for a data file, its template-library JSON (None: the Alpaca fields).
        progress: show a progress bar over the test examples.
        fmt: the layout of few-shot prompts (the instruction format by default; another layout
            asks whether in-context ability needs the format the corpus's quiz sheets show).
        rouge: also score ROUGE-L of greedy generations where the task is scored so (summarize);
            the generation loop costs several times the teacher-forced pass.
    """
    data = load_task_data(task, tokenizer, model.config.block_size, n_train="all", n_val=0, n_test=n, seed=seed,
                          templates=templates, tokenize=("test",))
    examples, shot_tokens = data.test, 0.0
    if shots == "max":
        shots = max_shots(tokenizer, data.rendered["test"], data.rendered["train"], model.config.block_size, fmt)
    if shots or not score_end or fmt != ALPACA_FORMAT:
        examples, shot_tokens = few_shot_examples(tokenizer, data.rendered["test"], data.rendered["train"], shots,
                                                  model.config.block_size, seed, score_end, fmt)
    result = evaluate(model, examples, tokenizer.pad_id, batch_size, progress=progress)
    record = {"task": task, "shots": shots, "n": result.n_examples, "n_tokens": result.n_tokens,
              "accuracy": result.accuracy, "loss": result.loss,
              "chance_accuracy": data.chance_accuracy, "shot_tokens": shot_tokens,
              "shot_fraction": shot_tokens / model.config.block_size, "score_end": score_end}
    if rouge and "rouge_l" in data.metrics:
        record["rouge_l"] = rouge_scores(model, tokenizer, examples, batch_size)
    return record
