"""Instruction data: the generated world, built-in tasks, the pretraining corpus, templates, your own
files, splits, tokenisation with prompt masking, batches and few-shot prompts.

    records  = get_task("reviews").generate(1000, seed=0)           # or load_records("mine.jsonl")
    splits   = split_records(records, (0.8, 0.1, 0.1), seed=0, label_field="stars")
    examples = get_task("reviews").templates.render(splits.train, seed=0)
    train    = tokenize_examples(tokenizer, examples, max_length=256)
    batches  = Batches(train, batch_size=16, pad_id=tokenizer.pad_id, seed=0)

or all of it for one run: `load_task_data("reviews", tokenizer, max_length=512)` (a built-in task at its
default sizes, or a file of your own split 80/10/10 and used whole; `OWN_DATA_EXAMPLE` shows one).
"""

# records: the generated world, its tasks and corpus, your own files
from minift.data.world import WORLD, World
from minift.data.tasks import TASKS, Task, get_task
from minift.data.corpus import CorpusConfig, generate_corpus
from minift.data.loaders import DataFileError, FileRecord, is_data_file, load_alpaca, load_csv, load_json, load_jsonl, load_records
from minift.data.splits import Splits, split_records

# templates: records -> prompt/completion pairs
from minift.data.templates import (
    ALPACA_FORMAT,
    ALPACA_TEMPLATE,
    Example,
    InstructionFormat,
    PromptTemplate,
    TemplateError,
    TemplateLibrary,
    normalize,
)

# tokens: prompt masking, the label shift, packing; batches; few-shot prompts
from minift.data.tokenized import (
    IGNORE_INDEX,
    TRUNCATIONS,
    ContextLengthError,
    LengthStats,
    TokenizedExample,
    length_stats,
    pack,
    shifted_targets,
    tokenize_example,
    tokenize_examples,
)
from minift.data.batches import Batches, ExampleOrder, MixtureBatches, collate, sequential_batches
from minift.data.icl import FewShotPrompt, choose_shots, few_shot_prompt, few_shot_text, max_shots

# one run's data: a task as tokenized splits
from minift.data.task_data import OWN_DATA_EXAMPLE, TaskData, load_task_data

__all__ = [
    "ALPACA_FORMAT", "ALPACA_TEMPLATE", "IGNORE_INDEX", "OWN_DATA_EXAMPLE", "TASKS", "TRUNCATIONS", "WORLD",
    "Batches", "ContextLengthError", "CorpusConfig", "DataFileError", "Example", "FileRecord", "ExampleOrder", "FewShotPrompt",
    "InstructionFormat", "LengthStats", "MixtureBatches", "PromptTemplate", "Splits", "Task", "TaskData",
    "TemplateError", "TemplateLibrary", "TokenizedExample", "World",
    "choose_shots", "collate", "few_shot_prompt", "few_shot_text", "max_shots", "generate_corpus", "get_task", "is_data_file",
    "length_stats", "load_alpaca", "load_csv", "load_json", "load_jsonl", "load_records", "load_task_data", "normalize", "pack",
    "sequential_batches", "shifted_targets", "split_records", "tokenize_example", "tokenize_examples",
]
