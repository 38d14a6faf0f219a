"""Instruction fine-tuning, end to end: base model -> method -> data -> training loop -> test accuracy.

    result = finetune(FinetuneConfig(task="reviews", method="lora", peft=LoraConfig(rank=8)))

loads the base model (the built-in tiny one, or any GPT-2 checkpoint directory), prepares it for the
method (full fine-tuning trains every weight; the PEFT methods freeze the base and add or select a
few parameters), trains on the task's training split with validation during training, then
evaluates the best checkpoint on the test split. It writes into `out_dir`:

    model/ or adapter/   the instruct model (full) or only the trained part (PEFT)
    result.json          configuration, parameter counts, sizes, accuracies, timings
    metrics.jsonl, curves.png, snapshots/, best/   from the training loop

With `overwrite`, the new run is written beside the earlier one and replaces it whole when it has
finished (`minift._files.run_directory`): a run that fails leaves the earlier one as it was. Under
torchrun every rank trains; rank 0 alone evaluates the test set and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import minift.training.distributed as dist
from minift._files import run_directory, write_json
from minift.data import Batches, MixtureBatches, load_task_data
from minift.evaluation import evaluate, rouge_scores
from minift.model import load_model, save_model
from minift.peft import METHODS, PeftConfig, apply_peft, check_method, quantized_bits, save_trainable, trainable_parameters
from minift.training import RUN_FILES, TrainConfig, gathered_state_dict, is_sharded, train

# Peak learning rates per method for the tiny base model on the built-in tasks, picked from short
# trial runs (`--lr` overrides them): few trainable parameters tolerate, and need, larger steps.
DEFAULT_LR = {"full": 1e-3, "lora": 3e-3, "qlora": 3e-3, "prompt-tuning": 3e-2, "selective": 2e-3}
assert set(DEFAULT_LR) == set(METHODS), "a learning rate for every method"


@dataclass
class FinetuneConfig:
    task: str | tuple[str, ...] = "reviews"  # a built-in task (reviews, arithmetic, qa, summarize) or a .jsonl/.json/.csv file; several: multi-task
    templates: str | None = None  # for a file: a template-library JSON (default: Alpaca instruction/input/output)
    method: str = "full"  # full, lora, qlora, prompt-tuning or selective
    peft: PeftConfig | None = None  # None: the method's defaults
    base: str | None = None  # a base checkpoint directory; None: the built-in tiny base model
    n_train: int | str | None = None  # training examples, a number or all (None: 800 for a built-in task, all of a file's 80%)
    n_val: int | str | None = None  # validation examples, a number or all (None: 100 for a built-in task, all of a file's 10%)
    n_test: int | str | None = None  # test examples, a number or all (None: 400 for a built-in task, all of a file's 10%)
    max_length: int | None = None  # None: the model's context length
    truncation: str = "error"  # a too-long example: error, or left (cut the prompt from the left)
    seed: int = 0  # the split, the templates' choice, the data order and the initialisation
    train: TrainConfig | None = None  # None: default_train_config(method), writing to runs/finetune-TASK-METHOD

    def __post_init__(self):
        self.peft = check_method(self.method, self.peft)
        if not isinstance(self.task, str):  # a list (JSON, the command line); one task is a plain name
            self.task = self.task[0] if len(self.task) == 1 else tuple(self.task)
        if self.train is None:
            tasks = [self.task] if isinstance(self.task, str) else list(self.task)
            out = f"runs/finetune-{'+'.join(Path(t).stem for t in tasks)}-{self.method}"
            self.train = default_train_config(self.method, out_dir=out, seed=self.seed)


def default_train_config(method: str, **overrides) -> TrainConfig:
    """The training configuration minift uses for a method unless told otherwise: its peak learning rate."""
    if method not in DEFAULT_LR:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return TrainConfig(**{"lr": DEFAULT_LR[method], **overrides})


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune, evaluate on the test split(s), save; return the record also written to result.json.

    With several tasks (multi-task instruction tuning) every batch mixes the tasks in proportion to
    their training sets (`MixtureBatches`), validation pools all tasks, and the test accuracy is
    reported per task and as the mean over tasks.
    """
    t0 = time.perf_counter()
    t = config.train
    dist.setup()  # under torchrun: rank 0 alone claims the directory, evaluates and writes the results
    main = dist.rank() == 0
    with run_directory(t.out_dir, ("model", "adapter", "result.json", *RUN_FILES), t.overwrite, t.resume,
                       resumable=True, claim=main) as work:
        dist.barrier()  # the directory exists before any rank writes into it
        record = _finetune(config, work, t0)
        dist.barrier()  # every rank is done with the directory before rank 0 swaps it into place
    return dist.all_gather_object(record)[0]  # rank 0's record, on every rank


def _finetune(config: FinetuneConfig, work: Path, t0: float) -> dict | None:
    """The run itself, writing into `work`; the record on rank 0, None on the other ranks."""
    torch.manual_seed(config.seed)  # the same initial adapter on every rank: FSDP2 shards each rank's own copy
    model, tokenizer = _model(config)
    # after apply_peft: prompt tuning's virtual tokens take part of the context
    tasks = [config.task] if isinstance(config.task, str) else list(config.task)
    data = {
        d.name: d
        for d in (load_task_data(t, tokenizer, config.max_length or model.config.block_size, config.n_train, config.n_val,
                                 config.n_test, config.seed, config.templates, config.truncation) for t in tasks)
    }
    trainable, total = trainable_parameters(model)
    if len(data) == 1:
        batches = Batches(next(iter(data.values())).train, config.train.batch_size, tokenizer.pad_id, seed=config.seed)
    else:
        sources = {name: d.train for name, d in data.items()}
        batches = MixtureBatches(sources, {name: len(ex) for name, ex in sources.items()}, config.train.batch_size,
                                 tokenizer.pad_id, seed=config.seed)
    validation = [e for d in data.values() for e in d.validation]
    result = train(model, batches, validation, tokenizer.pad_id, dataclasses.replace(config.train, out_dir=str(work)))
    if is_sharded(model):  # FSDP2 under torchrun: the trained weights, gathered (by every rank) into an unsharded copy
        state = gathered_state_dict(model)
        model = _model(config)[0]
        model.load_state_dict(state)
    if dist.rank() != 0:
        return None

    tests = {}
    for name, d in data.items():
        test = evaluate(model, d.test, tokenizer.pad_id, config.train.eval_batch_size)
        tests[name] = {"accuracy": test.accuracy, "loss": test.loss, "n": test.n_examples, "chance_accuracy": d.chance_accuracy}
        if "rouge_l" in d.metrics:
            tests[name]["rouge_l"] = rouge_scores(model, tokenizer, d.test, config.train.eval_batch_size)
    model.cpu()
    name = "model" if config.method == "full" else "adapter"
    if config.method == "full":
        save_model(model, tokenizer, work / name)
    else:
        save_trainable(model, work / name)
    sizes = {f.name: f.stat().st_size for f in sorted((work / name).iterdir())}
    record = {
        "task": "+".join(data),
        "method": config.method,
        "config": _jsonable(config),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total,
        "base_bits_per_parameter": quantized_bits(model) if config.method == "qlora" else None,  # NF4: ~4.127
        "artefact": str(Path(config.train.out_dir) / name),  # where it is once the run is in place
        "artefact_bytes": sizes,
        "n_train": sum(len(d.train) for d in data.values()),
        "n_val": len(validation),
        "n_test": sum(t["n"] for t in tests.values()),
        "steps": result.steps,
        "best_step": result.best_step,
        "val_accuracy": result.best["accuracy"] if result.best else None,
        "val_loss": result.best["loss"] if result.best else None,
        "test_accuracy": sum(t["accuracy"] for t in tests.values()) / len(tests),
        "tests": tests,
        "train_time_s": result.wall_time_s,
        "time_per_step_s": result.wall_time_s / max(result.steps, 1),
        "total_time_s": time.perf_counter() - t0,
    }
    write_json(work / "result.json", record)
    return record


def _model(config: FinetuneConfig):
    """The base model prepared for the method, and its tokenizer."""
    model, tokenizer = load_model(config.base)
    return (model if config.method == "full" else apply_peft(model, config.peft)), tokenizer


def _jsonable(config: FinetuneConfig) -> dict:
    """The configuration as result.json holds it (tuples become lists, as a JSON round trip gives them)."""
    d = asdict(config)
    d["peft"] = None if config.peft is None else {"type": type(config.peft).__name__, **dataclasses.asdict(config.peft)}
    return json.loads(json.dumps(d))
