"""The subcommands: each a parser (`_add_NAME`) and a thin runner (`run_NAME`) over one library function."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

from tqdm.auto import tqdm

import minift.training.distributed as dist
from minift.cli.options import add_options, add_peft_options, add_signature_options, given, peft_config, peft_configs
from minift.data import ALPACA_FORMAT, OWN_DATA_EXAMPLE, TASKS
from minift.evaluation import evaluate_task
from minift.memory import RunSpec, format_ledger, measure, measure_gemm_workspace, measure_ranks, model_config, predict
from minift.model import generate, load_model
from minift.peft import METHODS, load_trainable
from minift.recipes import (
    DEFAULT_LR,
    EXPERIMENTS,
    CompareConfig,
    ExperimentConfig,
    FinetuneConfig,
    PretrainConfig,
    compare,
    finetune,
    format_rows,
    pretrain,
    run_experiments,
)
from minift.training import TrainConfig


def _load(checkpoint, adapter):
    model, tokenizer = load_model(checkpoint)
    if adapter:
        model = load_trainable(model, adapter)
    return model.eval(), tokenizer


def _add_generate(sub):
    p = sub.add_parser("generate", help="continue a prompt with a model (formatted as an instruction unless --raw)")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to the checkpoint")
    p.add_argument("--prompt", required=True, help="the instruction (and its input)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as it is, without the instruction format")
    add_signature_options(p.add_argument_group("decoding"), generate, "generate", skip=("stop_tokens", "use_cache"))
    p.set_defaults(run=run_generate)


def run_generate(args) -> None:
    model, tokenizer = _load(args.checkpoint, args.adapter)
    text = args.prompt if args.raw else ALPACA_FORMAT.format_prompt(args.prompt)
    options = {"max_new_tokens": inspect.signature(generate).parameters["max_new_tokens"].default, **given(args, "generate")}
    room = model.config.block_size - len(tokenizer.encode(text))
    if room >= 1:  # a prompt that fits gets fewer new tokens; one that does not is generate's truncation's case
        options["max_new_tokens"] = min(options["max_new_tokens"], room)
    ids = generate(model, [tokenizer.encode(text)], stop_tokens=[tokenizer.eot_id], **options)[0]
    if ids and ids[-1] == tokenizer.eot_id:
        ids = ids[:-1]
    print(tokenizer.decode(ids))


def _add_pretrain(sub):
    p = sub.add_parser("pretrain", help="train the tokenizer and the tiny base model on the built-in corpus")
    add_options(p, PretrainConfig, "pretrain", skip=("train",))
    add_options(p.add_argument_group("training"), TrainConfig, "train", defaults=PretrainConfig().train,
                skip=("out_dir", "seed", "overwrite", "resume"))
    p.set_defaults(run=run_pretrain)


def run_pretrain(args) -> None:
    config = PretrainConfig(**given(args, "pretrain"))
    config.train = dataclasses.replace(config.train, **given(args, "train"))
    _, _, record = pretrain(config)
    if dist.rank() != 0:  # under torchrun every rank has the same record: one prints it
        return
    print(json.dumps({k: record[k] for k in ("parameters", "corpus", "steps", "final_train_loss", "val_loss", "train_time_s")}, indent=2))
    print(f"base model written to {config.out}")


def _add_finetune(sub):
    p = sub.add_parser("finetune", help="instruction fine-tuning on one task, then test accuracy",
                       description="Fine-tune a base model on one task (built-in or your JSONL/JSON/CSV) with full "
                       "fine-tuning or a PEFT method; prints validation accuracy while training and test accuracy at the end. "
                       "Data parallel on several processes: torchrun --nproc_per_node N -m minift.cli finetune ... "
                       "(--batch-size is the global batch, split over the ranks; rank 0 alone prints, evaluates and writes).",
                       epilog=OWN_DATA_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, FinetuneConfig, "finetune", skip=("train", "peft"))
    lr = ", ".join(f"{m} {r:g}" for m, r in DEFAULT_LR.items())
    add_options(p.add_argument_group("training"), TrainConfig, "train", skip=("seed",),
                shown={"lr": f"per method: {lr}", "out_dir": "runs/finetune-TASK-METHOD"})
    add_peft_options(p)
    p.set_defaults(run=run_finetune)


def finetune_config(args) -> FinetuneConfig:
    """The FinetuneConfig the finetune options describe."""
    options = given(args, "finetune")
    config = FinetuneConfig(**options, peft=peft_config(args, options.get("method", FinetuneConfig.method)))
    config.train = dataclasses.replace(config.train, **given(args, "train"))
    return config


def run_finetune(args) -> None:
    config = finetune_config(args)
    record = finetune(config)
    if dist.rank() != 0:  # under torchrun every rank has the same record: one prints it
        return
    print(f"{record['task']} / {record['method']}: "
          f"trainable params: {record['trainable_parameters']:,} || all params: {record['total_parameters']:,} || "
          f"trainable%: {record['trainable_percent']:.4f}")
    print(f"validation accuracy {record['val_accuracy']:.3f} (best at step {record['best_step']}); "
          f"{record['train_time_s']:.0f} s of training")
    for task, test in record["tests"].items():
        rouge = f", ROUGE-L {test['rouge_l']:.3f}" if "rouge_l" in test else ""
        print(f"test accuracy on {task}: {test['accuracy']:.3f} ({test['n']} examples){rouge}")
    print(f"saved {record['artefact']} ({sum(record['artefact_bytes'].values()):,} bytes) and {config.train.out_dir}/result.json")


# The command shows a progress bar (--no-progress hides it); evaluate_task, called from code, does not.
EVALUATE_DEFAULTS = {"progress": True}


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="exact-match accuracy (and ROUGE-L) of a model on built-in tasks or your files")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to the checkpoint")
    p.add_argument("--tasks", nargs="+", default=list(TASKS),
                   help=f"built-in tasks or .jsonl/.json/.csv files to score (default: {' '.join(TASKS)})")
    add_signature_options(p.add_argument_group("scoring"), evaluate_task, "evaluate", defaults=EVALUATE_DEFAULTS)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> None:
    model, tokenizer = _load(args.checkpoint, args.adapter)
    print(f"{'task':<12}{'shots':>6}{'accuracy':>10}{'chance':>8}{'ROUGE-L':>9}{'context used by shots':>24}")
    for task in args.tasks:
        r = evaluate_task(model, tokenizer, task, **{**EVALUATE_DEFAULTS, **given(args, "evaluate")})
        rouge = f"{r['rouge_l']:.3f}" if "rouge_l" in r else "-"
        chance = "-" if r["chance_accuracy"] is None else f"{r['chance_accuracy']:.3f}"  # unknown for a file
        print(f"{task:<12}{r['shots']:>6}{r['accuracy']:>10.3f}{chance:>8}{rouge:>9}{r['shot_fraction']:>23.1%}")


def _add_memory(sub):
    p = sub.add_parser("memory", help="the memory ledger of a training step, predicted and measured",
                       description="Where every byte of one training step goes: weights, gradients, optimizer state, "
                       "activations saved for backward, logits and loss buffers, transients; predicted from the "
                       "configuration (plus the BLAS's matrix-product workspace, measured by replaying the output "
                       "head's products) and measured in a fresh process (peak resident memory on CPU, the CUDA "
                       "allocator's peak on GPU).")
    p.add_argument("--model", default="gpt2", help="a preset (tiny, gpt2, gpt2-medium, ...; random weights), a checkpoint directory or a config.json (default: gpt2)")
    p.add_argument("--method", default=FinetuneConfig.method, choices=METHODS, help=f"(default: {FinetuneConfig.method})")
    add_options(p, RunSpec, "spec", skip=("model", "peft", "optimizer", "loss", "device", "checkpoint"))
    # the step's optimizer, loss and device are a training run's: the same knobs and defaults as training
    add_options(p.add_argument_group("the training run"), TrainConfig, "train",
                skip=[f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("optimizer", "loss", "device")])
    p.add_argument("--default-malloc", action="store_true",
                   help="measure under glibc's default allocator (default: MALLOC_MMAP_THRESHOLD_=65536, RSS follows live bytes)")
    p.add_argument("--predict-only", action="store_true", help="print the prediction from the configuration alone (no step, no workspace probe)")
    p.add_argument("--explain", action="store_true", help="also list every saved tensor the prediction counts")
    p.add_argument("--json", action="store_true", help="print predicted and measured figures as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="say which measurement runs (they take a minute or two at GPT-2 sizes) (default: True)")
    add_peft_options(p)
    p.set_defaults(run=run_memory)


def run_memory(args) -> None:
    device, loss, optimizer = TrainConfig(**given(args, "train")).resolve()
    spec = RunSpec(model_config(args.model), peft_config(args, args.method), optimizer=optimizer, loss=loss,
                   device=device.type, checkpoint=str(Path(args.model).resolve()) if Path(args.model).is_dir() else None,
                   **given(args, "spec"))
    # several ranks: each measured under torchrun on this machine (minift.memory.ranked)
    measure_run = measure_ranks if spec.ranks > 1 else measure
    # --predict-only is arithmetic alone; a measured run also measures the BLAS workspace (minift.memory.ledger)
    with tqdm(total=0 if args.predict_only else 2, disable=not args.progress or args.predict_only, leave=False) as bar:
        bar.set_description("measuring the step in a fresh process")
        measured = None if args.predict_only else measure_run(spec, tracking_malloc=not args.default_malloc)
        bar.update(1)
        bar.set_description("replaying the head's products for the BLAS workspace")
        prediction = predict(spec, None if args.predict_only else measure_gemm_workspace(spec))
        bar.update(1)
    if args.json:
        print(json.dumps({"spec": spec.to_dict(), "predicted": {"sizes": prediction.sizes, "peak": prediction.peak.total,
                          "phases": prediction.phase_peaks(), "moments": [dataclasses.asdict(m) for m in prediction.moments],
                          "gemm_workspace": prediction.gemm_workspace},
                          "measured": measured}, indent=2))
        return
    print(format_ledger(prediction, measured))
    if args.explain:
        print("\nsaved for backward (predicted, per storage):")
        for label, nbytes in prediction.activation_terms + prediction.loss_terms:
            print(f"  {label:<56}{nbytes:>14,} B")


def _add_experiment(sub):
    p = sub.add_parser("experiment", help="the course's experiments: in-context learning, training examples, forgetting",
                       description="Run the course's experiments and write tables (CSV, JSON) and plots (PNG).")
    p.add_argument("names", nargs="*", default=["all"], choices=[*EXPERIMENTS, "all"], metavar="NAME",
                   help=f"which experiments: {', '.join(EXPERIMENTS)} or all (default)")
    p.add_argument("--preset", default="full", choices=("full", "fast"),
                   help="full: the README's numbers; fast: seconds, a smoke test (default: full)")
    add_options(p, ExperimentConfig, "experiment", skip=("lora",))
    p.set_defaults(run=run_experiment)


def run_experiment(args) -> None:
    names = list(EXPERIMENTS) if "all" in args.names else args.names
    config = ExperimentConfig.preset(args.preset, **given(args, "experiment"))
    run_experiments(names, config)
    print(f"tables and plots written to {config.out}")


def _add_compare(sub):
    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs prompt tuning on one task, in one table",
                       description="Fine-tune the same base model on one task with each method, then print trainable "
                       "parameters, file size, predicted and measured peak memory, time per step and accuracy side by "
                       "side; writes compare.csv, compare.json and compare.png.")
    add_options(p, CompareConfig, "compare", skip=("lora", "prompt_tuning", "selective"))
    add_peft_options(p)
    p.set_defaults(run=run_compare)


def run_compare(args) -> None:
    peft = peft_configs(args)
    config = CompareConfig(**given(args, "compare"), lora=peft["lora"], prompt_tuning=peft["prompt-tuning"],
                           selective=peft["selective"])
    rows = compare(config)
    print()
    print(format_rows(rows))
    print(f"\nchance accuracy on {config.task}: {rows[0]['chance']:.3f}")
    print(f"wrote {config.out}/compare.csv, compare.json, compare.png and each method's run under {config.out}/METHOD/")


# Every subcommand's parser, in the order `minift --help` lists them.
PARSERS = (_add_generate, _add_pretrain, _add_finetune, _add_evaluate, _add_memory, _add_compare, _add_experiment)
