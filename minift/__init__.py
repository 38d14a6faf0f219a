"""minift: learn how large language models are fine-tuned, by running the code.

The pieces, in the order data flows through them:

    records -> templates -> tokenizer -> batches -> model (+ PEFT) -> loss -> optimizer -> evaluation

    from minift import load_model, finetune, FinetuneConfig, LoraConfig
    model, tokenizer = load_model()                 # the built-in tiny base model
    result = finetune(FinetuneConfig(task="reviews", method="lora", peft=LoraConfig(rank=8)))
"""

__version__ = "0.1.0"

from minift.adapters import load_adapter, load_trainable, save_adapter, save_trainable, saved_sizes
from minift.checkpoint import BUILTIN_BASE, load_gpt2, load_model, save_gpt2, save_model
from minift.data import (
    TASKS,
    Batches,
    CorpusConfig,
    MixtureBatches,
    TokenizedExample,
    collate,
    few_shot_prompt,
    generate_corpus,
    get_task,
    load_records,
    split_records,
    tokenize_examples,
)
from minift.compare import CompareConfig, compare
from minift.evaluate import EvalResult, evaluate, evaluate_task
from minift.experiments import ExperimentConfig
from minift.finetune import FinetuneConfig, default_train_config, finetune
from minift.generate import generate
from minift.ledger import Prediction, RunSpec
from minift.ledger import predict as predict_memory
from minift.lora import (
    LoRALinear,
    active_adapter,
    adapter_names,
    apply_lora,
    delete_adapter,
    disable_adapters,
    merge_adapter,
    merge_and_unload,
    set_adapter,
    unload,
    unmerge_adapter,
)
from minift.memory import measure as measure_memory
from minift.metrics import exact_match, rouge_l
from minift.model import GPT, GPTConfig, KVCache
from minift.peft import (
    LoraConfig,
    PromptTuningConfig,
    PromptTuningModel,
    SelectiveConfig,
    apply_peft,
    format_trainable_parameters,
    trainable_parameters,
)
from minift.pretrain import PretrainConfig, pretrain
from minift.tasks_data import TaskData, load_task_data
from minift.templates import ALPACA_FORMAT, ALPACA_TEMPLATE, InstructionFormat, PromptTemplate, TemplateLibrary
from minift.tokenizer import Tokenizer
from minift.train import TrainConfig, TrainingDiverged, train

__all__ = [
    "ALPACA_FORMAT", "ALPACA_TEMPLATE", "BUILTIN_BASE", "Batches", "CompareConfig", "CorpusConfig", "EvalResult",
    "ExperimentConfig", "FinetuneConfig", "GPT", "GPTConfig", "InstructionFormat", "KVCache", "LoRALinear",
    "LoraConfig", "MixtureBatches", "Prediction", "PretrainConfig", "PromptTemplate", "PromptTuningConfig",
    "PromptTuningModel", "RunSpec", "SelectiveConfig", "TASKS", "TaskData", "TemplateLibrary", "TokenizedExample",
    "Tokenizer", "TrainConfig", "TrainingDiverged", "__version__", "active_adapter", "adapter_names", "apply_lora",
    "apply_peft", "collate", "compare", "default_train_config", "delete_adapter", "disable_adapters", "evaluate",
    "evaluate_task", "exact_match", "few_shot_prompt", "finetune", "format_trainable_parameters", "generate",
    "generate_corpus", "get_task", "load_adapter", "load_gpt2", "load_model", "load_records", "load_task_data",
    "load_trainable", "measure_memory", "merge_adapter", "merge_and_unload", "predict_memory", "pretrain", "rouge_l",
    "save_adapter", "save_gpt2", "save_model", "save_trainable", "saved_sizes", "set_adapter", "split_records",
    "tokenize_examples", "train", "trainable_parameters", "unload", "unmerge_adapter",
]
