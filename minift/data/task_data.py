"""The data of one fine-tuning run: a task (built-in, or a file of your own) as tokenized splits.

Built-in tasks draw one fixed pool of records per (task, seed) and split it once, so the test set
is the same whichever number of training examples a run uses: the first `n_train` records of the
training pool. Experiments that vary the training size are then compared on one test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minift.data.loaders import ALPACA_FIELDS, load_records
from minift.data.splits import split_records
from minift.data.tasks import get_task
from minift.data.templates import ALPACA_TEMPLATE, Example, TemplateLibrary
from minift.data.tokenized import TokenizedExample, length_stats, tokenize_examples
from minift.tokenizer import Tokenizer

POOL_SIZE = 2000  # records drawn per built-in task
POOL_FRACTIONS = (0.7, 0.1, 0.2)  # -> about 1400 train, 200 validation, 400 test (stratified rounding)


@dataclass
class TaskData:
    name: str
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    test: list[TokenizedExample]
    metrics: tuple[str, ...]  # what evaluation reports besides loss and exact match
    chance_accuracy: float | None  # exact match of a uniform guess, where it is known
    rendered: dict[str, list[Example]]  # the same examples as text, by split (for few-shot prompts)

    def describe(self) -> str:
        stats = length_stats(self.train)
        return (
            f"{self.name}: train {len(self.train)}, validation {len(self.validation)}, test {len(self.test)}; "
            f"prompt tokens mean {stats.prompt_mean:.0f} (max {stats.prompt_max}), "
            f"completion tokens mean {stats.completion_mean:.1f} (max {stats.completion_max})"
        )


def load_task_data(
    task: str,
    tokenizer: Tokenizer,
    max_length: int,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    templates: str | None = None,
    truncation: str = "error",
    tokenize: tuple[str, ...] = ("train", "validation", "test"),
) -> TaskData:
    """Tokenized train/validation/test examples of a built-in task or of a JSONL/CSV file.

    Args:
        task: a built-in task name (see `minift.data.TASKS`), or the path of a .jsonl/.csv file.
        n_train, n_val, n_test: how many examples of each split to keep (None: all of the split).
        templates: for a file, a template-library JSON file; None means the Alpaca template, for
            files with `instruction`, `input` and `output` fields.
        truncation: "error" or "left" (see `minift.data.tokenize_example`).
        tokenize: the splits to tokenize; the others are only rendered (e.g. a pool of few-shot examples).

    Raises:
        ValueError: more examples asked than the split holds (the message gives the sizes).
    """
    if Path(task).suffix in (".jsonl", ".json", ".csv"):
        library = TemplateLibrary.from_json(templates) if templates else TemplateLibrary("alpaca", (ALPACA_TEMPLATE,))
        records = load_records(task, required_fields=() if templates else ALPACA_FIELDS)
        splits = split_records(records, (0.8, 0.1, 0.1), seed=seed)
        name, metrics, chance = Path(task).stem, ("exact_match",), None
    else:
        spec = get_task(task)
        library = spec.templates
        splits = split_records(spec.generate(POOL_SIZE, seed), POOL_FRACTIONS, seed=seed, label_field=spec.label_field)
        name, metrics, chance = task, spec.metrics, spec.chance_accuracy

    rendered = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        records = getattr(splits, split)
        if (n is not None and n < 0) or (split == "train" and n == 0):
            raise ValueError(f"{name}: {n} {split} examples asked; ask for at least {1 if split == 'train' else 0}")
        if n is not None and n > len(records):
            raise ValueError(f"{name}: {n} {split} examples asked, but the {split} split holds {len(records)}")
        rendered[split] = library.render(records if n is None else records[:n], seed=seed)
    tokenized = {split: tokenize_examples(tokenizer, examples, max_length, truncation) if split in tokenize else []
                 for split, examples in rendered.items()}
    return TaskData(name, tokenized["train"], tokenized["validation"], tokenized["test"], metrics, chance, rendered)
