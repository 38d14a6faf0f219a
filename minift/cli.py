"""The `minift` command: one subcommand per stage, each a thin layer over the library functions.

    minift generate [CHECKPOINT] --prompt "Summarize ..."      a completion from a model
    minift pretrain --out DIR                                   the tiny base model from the built-in corpus
    minift finetune --task reviews --method lora --rank 8       instruction fine-tuning, then test accuracy
    minift evaluate [CHECKPOINT] --tasks reviews qa --shots 3   accuracy per task (--no-score-end for a base model)
    minift memory --model gpt2 --method lora --rank 8           the memory ledger, predicted and measured
    minift compare                                              full vs LoRA vs prompt tuning in one table
    minift experiment forgetting                                the course's experiments

The options are generated from the configuration dataclasses (`TrainConfig`, `FinetuneConfig`,
`LoraConfig`, ...) and the library functions' signatures: each field is a flag with the field's type,
its default and, as help, the comment beside it (tyro reads dataclasses the same way). An option left
out keeps the dataclass's default, so `minift finetune` and `finetune(FinetuneConfig())` train alike.
Under torchrun (`torchrun --nproc_per_node N -m minift.cli finetune ...`) every rank runs the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from importlib.metadata import version
from pathlib import Path

from minift.data import ALPACA_FORMAT, TASKS, TRUNCATIONS
from minift.evaluation import evaluate_task
from minift.memory import DTYPES, RunSpec, format_ledger, measure, measure_gemm_workspace, model_config, predict
from minift.model import generate, load_model
from minift.peft import METHODS, PEFT_CONFIGS, PROMPT_INITS, LoraConfig, PromptTuningConfig, SelectiveConfig, load_trainable
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
from minift.training import LOSSES, OPTIMIZERS, SELECTIONS, TrainConfig

# The one list of every choice, by field name: flags with these names accept only these values.
CHOICES = {
    "method": METHODS, "methods": METHODS, "loss": ("auto", *LOSSES), "optimizer": ("auto", *OPTIMIZERS),
    "truncation": TRUNCATIONS, "dtype": tuple(DTYPES), "init": PROMPT_INITS, "select_by": SELECTIONS,
}
# Flag names that differ from the field's: shorter forms kept from earlier versions, and names that would
# otherwise be ambiguous on a command line that mixes several dataclasses.
FLAGS = {
    (TrainConfig, "out_dir"): ["--out"], (TrainConfig, "max_steps"): ["--steps", "--max-steps"],
    (TrainConfig, "early_stopping_patience"): ["--early-stopping"],
    (LoraConfig, "dropout"): ["--lora-dropout"], (LoraConfig, "adapter_name"): ["--adapter-name"],
    (PromptTuningConfig, "num_virtual_tokens"): ["--virtual-tokens", "--num-virtual-tokens"],
    (PromptTuningConfig, "init"): ["--prompt-init"], (SelectiveConfig, "train"): ["--train"],
    (RunSpec, "batch_size"): ["--batch", "--batch-size"], (RunSpec, "seq_len"): ["--seq", "--seq-len"],
}
PEFT_OPTION_SKIP = {PromptTuningConfig: ("init_token_ids",)}  # token ids come from a tokenizer, not a flag


# ----------------------------------------------------------------------------------------------
# Options from dataclasses and signatures


def field_comments(cls) -> dict[str, str]:
    """The comment beside each field of a dataclass, or else the comment lines just above it, by field name."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen install): options without help
        return {}
    comments, name, above = {}, None, []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[1] == 4 and name is None:
            above.append(tok.string.lstrip("# ").strip())  # a comment line of the class body
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string  # the first name of a class-body line: a field, if a ':' follows
            if above:
                comments[name] = " ".join(above)
        elif tok.type == tokenize.COMMENT and name:
            comments[name] = tok.string.lstrip("# ").strip()  # beside the field: it wins
        elif tok.type == tokenize.NEWLINE:
            name, above = None, []
        elif tok.type == tokenize.NL and name is not None:
            name = None
    return comments


def _converter(kind):
    """(argparse type, nargs) for a field's type hint: X, X | None, tuple[X, ...], str | tuple[str, ...]."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = type(None) in typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        inner, nargs = _converter(args[0])
        return (lambda text: None if text.lower() == "none" else inner(text)) if optional else inner, nargs
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # str | tuple[str, ...]: one value or several
        return str, "+"
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return item, "+" if typing.get_args(kind)[-1] is Ellipsis else len(typing.get_args(kind))
    return kind, None


def add_options(group, cls, key: str, defaults=None, skip=(), shown: dict | None = None) -> None:
    """Add one flag per field of dataclass `cls` to `group`, under dest "key.field"; left out = not given.

    defaults: the instance whose values `--help` shows (default: the fields' defaults); shown: the
    default to show instead, by field, where the command derives it.
    """
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flags = FLAGS.get((cls, f.name), ["--" + f.name.replace("_", "-")])
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = comments.get(f.name, "")
        default = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        default = (shown or {}).get(f.name, default)
        kwargs = dict(dest=f"{key}.{f.name}", default=argparse.SUPPRESS, help=_escape(f"{text} (default: {default})"))
        if hints[f.name] is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        convert, nargs = _converter(hints[f.name])
        choices = CHOICES.get(f.name)
        group.add_argument(*flags, type=convert, nargs=nargs, choices=choices, metavar=None if choices else f.name.upper(),
                           **kwargs)


def add_signature_options(group, fn, key: str, skip=()) -> None:
    """Add one flag per keyword parameter of `fn` that has a default; help from its docstring's Args."""
    doc = inspect.getdoc(fn) or ""
    helps = dict(re.findall(r"^\s{4}(\w+): (.+?)(?=\n\s{4}\w+:|\n\n|\Z)", doc, re.S | re.M))
    for name, param in inspect.signature(fn).parameters.items():
        if name in skip or param.default is inspect.Parameter.empty:
            continue
        kwargs = dict(dest=f"{key}.{name}", default=argparse.SUPPRESS,
                      help=_escape(f"{' '.join(helps.get(name, '').split())} (default: {param.default})"))
        flag = "--" + name.replace("_", "-")
        if isinstance(param.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            convert, _ = _converter(typing.get_type_hints(fn)[name])
            choices = CHOICES.get(name)
            group.add_argument(flag, type=convert, choices=choices, metavar=None if choices else name.upper(), **kwargs)


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


def given(args: argparse.Namespace, key: str) -> dict:
    """The options of group `key` that were given on the command line, as field -> value."""
    prefix = key + "."
    found = {name[len(prefix):]: value for name, value in vars(args).items() if name.startswith(prefix)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in found.items()}


def _add_peft_options(p) -> None:
    for method, cls in PEFT_CONFIGS.items():
        add_options(p.add_argument_group(f"{method} (with --method {method})"), cls, method, skip=PEFT_OPTION_SKIP.get(cls, ()))


def peft_configs(args) -> dict:
    """Each PEFT method's configuration: its dataclass with the options given for it."""
    return {method: cls(**given(args, method)) for method, cls in PEFT_CONFIGS.items()}


def _peft_config(args, method: str):
    """The configuration of the chosen method; options given for another method are an error."""
    stray = [m for m in PEFT_CONFIGS if m != method and given(args, m)]
    if stray:
        raise ValueError(f"options {sorted(given(args, stray[0]))} are for --method {stray[0]}, not {method}")
    return peft_configs(args)[method] if method in PEFT_CONFIGS else None


# ----------------------------------------------------------------------------------------------
# Subcommands


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
    print(json.dumps({k: record[k] for k in ("parameters", "corpus", "steps", "final_train_loss", "val_loss", "train_time_s")}, indent=2))
    print(f"base model written to {config.out}")


def _add_finetune(sub):
    p = sub.add_parser("finetune", help="instruction fine-tuning on one task, then test accuracy",
                       description="Fine-tune a base model on one task (built-in or your JSONL/CSV) with full "
                       "fine-tuning or a PEFT method; prints validation accuracy while training and test accuracy at the end.")
    add_options(p, FinetuneConfig, "finetune", skip=("train", "peft"))
    lr = ", ".join(f"{m} {r:g}" for m, r in DEFAULT_LR.items())
    add_options(p.add_argument_group("training"), TrainConfig, "train", skip=("seed",),
                shown={"lr": f"per method: {lr}", "out_dir": "runs/finetune-TASK-METHOD"})
    _add_peft_options(p)
    p.set_defaults(run=run_finetune)


def finetune_config(args) -> FinetuneConfig:
    """The FinetuneConfig the finetune options describe."""
    options = given(args, "finetune")
    config = FinetuneConfig(**options, peft=_peft_config(args, options.get("method", FinetuneConfig.method)))
    config.train = dataclasses.replace(config.train, **given(args, "train"))
    return config


def run_finetune(args) -> None:
    config = finetune_config(args)
    record = finetune(config)
    print(f"{record['task']} / {record['method']}: "
          f"trainable params: {record['trainable_parameters']:,} || all params: {record['total_parameters']:,} || "
          f"trainable%: {record['trainable_percent']:.4f}")
    print(f"validation accuracy {record['val_accuracy']:.3f} (best at step {record['best_step']}); "
          f"{record['train_time_s']:.0f} s of training")
    for task, test in record["tests"].items():
        rouge = f", ROUGE-L {test['rouge_l']:.3f}" if "rouge_l" in test else ""
        print(f"test accuracy on {task}: {test['accuracy']:.3f} ({test['n']} examples){rouge}")
    print(f"saved {record['artefact']} ({sum(record['artefact_bytes'].values()):,} bytes) and {config.train.out_dir}/result.json")


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="exact-match accuracy (and ROUGE-L) of a model on built-in tasks")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to the checkpoint")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"tasks to score (default: {' '.join(TASKS)})")
    add_signature_options(p.add_argument_group("scoring"), evaluate_task, "evaluate")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> None:
    model, tokenizer = _load(args.checkpoint, args.adapter)
    print(f"{'task':<12}{'shots':>6}{'accuracy':>10}{'chance':>8}{'ROUGE-L':>9}{'context used by shots':>24}")
    for task in args.tasks:
        r = evaluate_task(model, tokenizer, task, **given(args, "evaluate"))
        rouge = f"{r['rouge_l']:.3f}" if "rouge_l" in r else "-"
        print(f"{task:<12}{r['shots']:>6}{r['accuracy']:>10.3f}{r['chance_accuracy']:>8.3f}{rouge:>9}{r['shot_fraction']:>23.1%}")


def _add_memory(sub):
    p = sub.add_parser("memory", help="the memory ledger of a training step, predicted and measured",
                       description="Where every byte of one training step goes: weights, gradients, optimizer state, "
                       "activations saved for backward, logits and loss buffers, transients; predicted from the "
                       "configuration (plus the BLAS's matrix-product workspace, measured by replaying the output "
                       "head's products) and measured in a fresh process (peak resident memory on CPU, the CUDA "
                       "allocator's peak on GPU).")
    p.add_argument("--model", default="gpt2", help="a preset (tiny, gpt2, gpt2-medium, ...; random weights) or a checkpoint directory (default: gpt2)")
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
    _add_peft_options(p)
    p.set_defaults(run=run_memory)


def run_memory(args) -> None:
    device, loss, optimizer = TrainConfig(**given(args, "train")).resolve()
    spec = RunSpec(model_config(args.model), _peft_config(args, args.method), optimizer=optimizer, loss=loss,
                   device=device.type, checkpoint=str(Path(args.model).resolve()) if Path(args.model).is_dir() else None,
                   **given(args, "spec"))
    # --predict-only is arithmetic alone; a measured run also measures the BLAS workspace (minift.memory.ledger)
    prediction = predict(spec, None if args.predict_only else measure_gemm_workspace(spec))
    measured = None if args.predict_only else measure(spec, tracking_malloc=not args.default_malloc)
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
    _add_peft_options(p)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description="Learn how LLMs are fine-tuned, by running the code.")
    parser.add_argument("--version", action="version", version=f"minift {version('minift')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_generate, _add_pretrain, _add_finetune, _add_evaluate, _add_memory, _add_compare, _add_experiment):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as error:  # bad input: say what, not a traceback
        print(f"minift {args.command}: error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
