"""Instruction data: the generated world, built-in tasks, the pretraining corpus, your own files,
splits, tokenisation with prompt masking, batches and few-shot prompts.

    records  = get_task("reviews").generate(1000, seed=0)           # or load_records("mine.jsonl")
    splits   = split_records(records, (0.8, 0.1, 0.1), seed=0, label_field="stars")
    examples = get_task("reviews").templates.render(splits.train, seed=0)
    train    = tokenize_examples(tokenizer, examples, max_length=256)
    batches  = Batches(train, batch_size=16, pad_id=tokenizer.pad_id, seed=0)
"""

from minift.data.corpus import CorpusConfig, generate_corpus
from minift.data.dataset import (
    IGNORE_INDEX,
    Batches,
    ContextLengthError,
    ExampleOrder,
    LengthStats,
    MixtureBatches,
    TokenizedExample,
    collate,
    length_stats,
    sequential_batches,
    tokenize_example,
    tokenize_examples,
)
from minift.data.icl import FewShotPrompt, choose_shots, few_shot_prompt, few_shot_text
from minift.data.loaders import DataFileError, load_alpaca, load_csv, load_jsonl, load_records
from minift.data.splits import Splits, split_records
from minift.data.tasks import TASKS, Task, get_task
from minift.data.world import WORLD, World

__all__ = [
    "IGNORE_INDEX", "TASKS", "WORLD",
    "Batches", "ContextLengthError", "CorpusConfig", "DataFileError", "ExampleOrder", "FewShotPrompt",
    "LengthStats", "MixtureBatches", "Splits", "Task", "TokenizedExample", "World",
    "choose_shots", "collate", "few_shot_prompt", "few_shot_text", "generate_corpus", "get_task",
    "length_stats", "load_alpaca", "load_csv", "load_jsonl", "load_records", "sequential_batches",
    "split_records", "tokenize_example", "tokenize_examples",
]
