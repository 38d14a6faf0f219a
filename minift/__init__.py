"""minift: learn how large language models are fine-tuned, by running the code.

The pieces, in the order data flows through them (each stage is a subpackage; docs/architecture.md):

    records -> templates -> tokenizer -> batches -> model (+ PEFT) -> loss -> optimizer -> evaluation
    data       data         tokenizer    data       model, peft        training             evaluation
                                                                        (kernels)            memory, recipes

    from minift import load_model, finetune, FinetuneConfig, LoraConfig
    model, tokenizer = load_model()                 # the built-in tiny base model
    result = finetune(FinetuneConfig(task="reviews", method="lora", peft=LoraConfig(rank=8)))
"""

__version__ = "0.1.0"

# the tokenizer and the model
from minift.tokenizer import Tokenizer
from minift.model import BASE_MODELS, BUILTIN_BASE, DEFAULT_BASE, GPT, TINY_SIZES, GPTConfig, KVCache, generate, load_gpt2, load_model, save_gpt2, save_model

# data: records, templates, tokens, batches, few-shot prompts
from minift.data import (
    ALPACA_FORMAT,
    ALPACA_TEMPLATE,
    TASKS,
    Batches,
    CorpusConfig,
    InstructionFormat,
    MixtureBatches,
    PromptTemplate,
    TaskData,
    TemplateLibrary,
    TokenizedExample,
    collate,
    few_shot_prompt,
    generate_corpus,
    get_task,
    load_records,
    load_task_data,
    split_records,
    tokenize_examples,
)

# parameter-efficient fine-tuning
from minift.peft import (
    METHODS,
    LoRALinear,
    LoraConfig,
    PromptTuningConfig,
    PromptTuningModel,
    SelectiveConfig,
    active_adapter,
    adapter_names,
    apply_lora,
    apply_peft,
    delete_adapter,
    disable_adapters,
    format_trainable_parameters,
    load_adapter,
    load_trainable,
    merge_adapter,
    merge_and_unload,
    save_adapter,
    save_trainable,
    saved_sizes,
    set_adapter,
    trainable_parameters,
    unload,
    unmerge_adapter,
)

# evaluation
from minift.evaluation import EvalResult, evaluate, evaluate_task, exact_match, rouge_l

# training
from minift.training import LOSSES, OPTIMIZERS, TrainConfig, TrainingDiverged, train

# the memory ledger
from minift.memory import Prediction, RunSpec, format_ledger
from minift.memory import measure as measure_memory
from minift.memory import predict as predict_memory

# recipes
from minift.recipes import (
    CompareConfig,
    ExperimentConfig,
    FinetuneConfig,
    PretrainConfig,
    compare,
    default_train_config,
    finetune,
    pretrain,
    run_experiments,
)

__all__ = [
    "ALPACA_FORMAT", "ALPACA_TEMPLATE", "BASE_MODELS", "BUILTIN_BASE", "DEFAULT_BASE", "LOSSES", "METHODS", "OPTIMIZERS", "TASKS", "TINY_SIZES",
    "Batches", "CompareConfig", "CorpusConfig", "EvalResult", "ExperimentConfig", "FinetuneConfig", "GPT",
    "GPTConfig", "InstructionFormat", "KVCache", "LoRALinear", "LoraConfig", "MixtureBatches", "Prediction",
    "PretrainConfig", "PromptTemplate", "PromptTuningConfig", "PromptTuningModel", "RunSpec", "SelectiveConfig",
    "TaskData", "TemplateLibrary", "TokenizedExample", "Tokenizer", "TrainConfig", "TrainingDiverged",
    "__version__", "active_adapter", "adapter_names", "apply_lora", "apply_peft", "collate", "compare",
    "default_train_config", "delete_adapter", "disable_adapters", "evaluate", "evaluate_task", "exact_match",
    "few_shot_prompt", "finetune", "format_ledger", "format_trainable_parameters", "generate", "generate_corpus",
    "get_task", "load_adapter", "load_gpt2", "load_model", "load_records", "load_task_data", "load_trainable",
    "measure_memory", "merge_adapter", "merge_and_unload", "predict_memory", "pretrain", "rouge_l",
    "run_experiments", "save_adapter", "save_gpt2", "save_model", "save_trainable", "saved_sizes", "set_adapter",
    "split_records", "tokenize_examples", "train", "trainable_parameters", "unload", "unmerge_adapter",
]
