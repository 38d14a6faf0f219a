"""The data of one fine-tuning run: a task (built-in, or a file of your own) as tokenized splits.

Built-in tasks draw one fixed pool of records per (task, seed) and split it once, so the test set
is the same whichever number of training examples a run uses: the first `n_train` records of the
training pool. Experiments that vary the training size are then compared on one test set.

A file of your own is split 80/10/10 (`FILE_FRACTIONS`) and, by default, used whole: a 300-record
file gives 240 training, 30 validation and 30 test examples. A built-in task's default sizes are
`BUILTIN_SIZES`; a size of "all" takes the whole split of either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from minift.data.loaders import ALPACA_FIELDS, is_data_file, load_records
from minift.data.splits import split_records
from minift.data.tasks import get_task
from minift.data.templates import ALPACA_TEMPLATE, Example, TemplateLibrary
from minift.data.tokenized import TokenizedExample, length_stats, tokenize_examples
from minift.tokenizer import Tokenizer

POOL_SIZE = 2000  # records drawn per built-in task
POOL_FRACTIONS = (0.7, 0.1, 0.2)  # -> about 1400 train, 200 validation, 400 test (stratified rounding)
# A built-in task's examples per split unless told otherwise: enough to learn the task on a laptop CPU,
# a test set of 400 (a binomial standard error of at most 2.5 points), a quick validation.
BUILTIN_SIZES = {"train": 800, "validation": 100, "test": 400}
FILE_FRACTIONS = (0.8, 0.1, 0.1)  # a file's train / validation / test split
ALL = "all"  # the size that takes a whole split

# The one worked example of your own data: `minift finetune --help` prints it and the README quotes it
# (tests/test_readme.py runs it on a file of 300 records, as written).
OWN_DATA_EXAMPLE = r"""Your own data: a file of records and, unless its fields are Alpaca's instruction, input and
output, a templates file saying how a record becomes a prompt and its completion.

my.jsonl holds one JSON object per line (a .json file: one JSON array of such objects, the layout of
Alpaca's alpaca_data.json; a .csv file: a header row, then one record per row):

    {"question": "What colour is the sky on a clear day?", "answer": "blue"}
    {"question": "How many legs does a spider have?", "answer": "eight"}

my_templates.json lists one or more wordings ("templates"), each a name, a prompt and a completion;
{{field}} stands for the record's field, and the seed picks one wording per record:

    {"name": "my-task", "templates": [
      {"name": "ask", "prompt": "Answer the question.\n\n{{question}}", "completion": "{{answer}}"},
      {"name": "short", "prompt": "Q: {{question}}", "completion": "{{answer}}"}
    ]}

Train a LoRA adapter on it, then score the adapter on the file's test split:

    minift finetune --task my.jsonl --templates my_templates.json --method lora --steps 12
    minift evaluate --adapter runs/finetune-my-lora/adapter --tasks my.jsonl --templates my_templates.json

The file is split 80/10/10 by the seed and used whole: 300 records give 240 training, 30 validation
and 30 test examples (--n-train, --n-val and --n-test take a number or all). Without --templates every
record needs the fields instruction, input and output. An error in a record names its file and line.
"""


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
    n_train: int | str | None = None,
    n_val: int | str | None = None,
    n_test: int | str | None = None,
    seed: int = 0,
    templates: str | None = None,
    truncation: str = "error",
    tokenize: tuple[str, ...] = ("train", "validation", "test"),
) -> TaskData:
    """Tokenized train/validation/test examples of a built-in task or of a JSONL/CSV file.

    Args:
        task: a built-in task name (see `minift.data.TASKS`), or the path of a .jsonl, .json or .csv file.
        n_train, n_val, n_test: how many examples of each split to keep: a number, or "all" (the
            whole split); None: the default, `BUILTIN_SIZES` for a built-in task, all for a file.
        templates: for a file, a template-library JSON file; None means the Alpaca template, for
            files with `instruction`, `input` and `output` fields.
        truncation: "error" or "left" (see `minift.data.tokenize_example`).
        tokenize: the splits to tokenize; the others are only rendered (e.g. a pool of few-shot examples).

    Raises:
        ValueError: more examples asked than the split holds (the message gives the sizes), a size
            that is neither a number nor "all", or templates for a built-in task.
    """
    if is_data_file(task) or Path(task).is_file():  # a file of another type: load_records says which types load
        library = TemplateLibrary.from_json(templates) if templates else TemplateLibrary("alpaca", (ALPACA_TEMPLATE,))
        records = load_records(task, required_fields=() if templates else ALPACA_FIELDS)
        splits = split_records(records, FILE_FRACTIONS, seed=seed)
        name, metrics, chance, defaults = Path(task).stem, ("exact_match",), None, dict.fromkeys(BUILTIN_SIZES, ALL)
    else:
        if templates:
            raise ValueError(f"templates ({templates}) are for a data file; the built-in task {task!r} has its own")
        spec = get_task(task)
        library = spec.templates
        splits = split_records(spec.generate(POOL_SIZE, seed), POOL_FRACTIONS, seed=seed, label_field=spec.label_field)
        name, metrics, chance, defaults = task, spec.metrics, spec.chance_accuracy, BUILTIN_SIZES

    rendered = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        records = getattr(splits, split)
        n = defaults[split] if n is None else n
        if n == ALL:
            n = len(records)
        if not isinstance(n, int):
            raise ValueError(f"{name}: the number of {split} examples must be a number or {ALL!r}, got {n!r}")
        if n < 0 or (split == "train" and n == 0):
            raise ValueError(f"{name}: {n} {split} examples asked; ask for at least {1 if split == 'train' else 0}")
        if n > len(records):
            raise ValueError(f"{name}: {n} {split} examples asked, but the {split} split holds {len(records)} "
                             f"(of {sum(splits.sizes.values())} records); ask for {ALL!r} to use the whole split")
        rendered[split] = library.render(records[:n], seed=seed)
    tokenized = {split: tokenize_examples(tokenizer, examples, max_length, truncation) if split in tokenize else []
                 for split, examples in rendered.items()}
    return TaskData(name, tokenized["train"], tokenized["validation"], tokenized["test"], metrics, chance, rendered)
