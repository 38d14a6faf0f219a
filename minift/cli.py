"""The `minift` command: one subcommand per stage, each a thin layer over the library functions.

    minift generate [CHECKPOINT] --prompt "Summarize ..."      a completion from a model
    minift pretrain --out DIR                                   the tiny base model from the built-in corpus
    minift finetune --task reviews --method lora --rank 8       instruction fine-tuning, then test accuracy
    minift evaluate [CHECKPOINT] --tasks reviews qa --shots 3   accuracy per task (--answer-only for a base model)
    minift memory --model gpt2 --method lora --rank 8           the memory ledger, predicted and measured
    minift compare                                              full vs LoRA vs prompt tuning in one table
    minift experiment forgetting                                the course's experiments

Every subcommand's options are built from the configuration dataclasses (`--help` lists them).
"""

from __future__ import annotations

import argparse
import json
import sys

import minift


def _add_generate(sub):
    p = sub.add_parser("generate", help="continue a prompt with a model (formatted as an instruction unless --raw)")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to the checkpoint")
    p.add_argument("--prompt", required=True, help="the instruction (and its input)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as it is, without the instruction format")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.set_defaults(run=run_generate)


def run_generate(args) -> None:
    from minift.templates import ALPACA_FORMAT

    model, tokenizer = _load(args.checkpoint, args.adapter)
    text = args.prompt if args.raw else ALPACA_FORMAT.format_prompt(args.prompt)
    room = model.config.block_size - len(tokenizer.encode(text))
    ids = model.generate([tokenizer.encode(text)], min(args.max_new_tokens, room), temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, stop_tokens=[tokenizer.eot_id], seed=args.seed)[0]
    if ids and ids[-1] == tokenizer.eot_id:
        ids = ids[:-1]
    print(tokenizer.decode(ids))


def _load(checkpoint, adapter):
    from minift.adapters import load_trainable
    from minift.checkpoint import load_model

    model, tokenizer = load_model(checkpoint)
    if adapter:
        model = load_trainable(model, adapter)
    return model.eval(), tokenizer


def _add_pretrain(sub):
    from minift.pretrain import PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="train the tokenizer and the tiny base model on the built-in corpus")
    p.add_argument("--out", default=d.out, help="where to write config.json, model.safetensors, tokenizer.json, pretrain.json")
    p.add_argument("--n-documents", type=int, default=d.n_documents, help="documents of the generated corpus")
    p.add_argument("--steps", type=int, default=d.train.max_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(run=run_pretrain)


def run_pretrain(args) -> None:
    from pathlib import Path

    from minift.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(out=args.out, n_documents=args.n_documents, seed=args.seed)
    config.train.max_steps = args.steps
    config.train.out_dir = str(Path(args.out) / "train")
    _, _, record = pretrain(config)
    print(json.dumps({k: record[k] for k in ("parameters", "corpus", "steps", "final_train_loss", "val_loss", "train_time_s")}, indent=2))
    print(f"base model written to {args.out}")


def _add_train_options(p, method_default: str = "full"):
    """Options of TrainConfig, shared by finetune and compare."""
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=150, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    g.add_argument("--micro-batch-size", type=int, help="sequences per forward pass (gradient accumulation)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: per method, see finetune.DEFAULT_LR)")
    g.add_argument("--warmup-steps", type=int, default=15)
    g.add_argument("--eval-every", type=int, default=25)
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE", help="evaluations without improvement before stopping")
    g.add_argument("--loss", default="auto", choices=("auto", "torch", "fused", "fused-linear"))
    g.add_argument("--optimizer", default="auto", choices=("auto", "adamw", "fused-adamw", "sgd"))
    g.add_argument("--activation-checkpointing", action="store_true")
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true")


def _add_method_options(p):
    g = p.add_argument_group("method")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    g.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha/r)")
    g.add_argument("--targets", nargs="+", default=["c_attn"],
                   help="LoRA target modules: names or suffixes (c_attn attn.c_proj c_fc mlp.c_proj), or all-linear")
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r)")
    g.add_argument("--virtual-tokens", type=int, default=20, help="prompt tuning: soft-prompt length")
    g.add_argument("--train", dest="selective", default="last-2-blocks",
                   help="selective: last-K-blocks, bias (BitFit), layernorm, or several joined by +")


def peft_config(method: str, args):
    """The PEFT configuration the method options describe (None for full fine-tuning)."""
    from minift.peft import LoraConfig, PromptTuningConfig, SelectiveConfig

    if method == "lora":
        targets = "all-linear" if args.targets == ["all-linear"] else tuple(args.targets)
        return LoraConfig(rank=args.rank, alpha=args.alpha, targets=targets, dropout=args.lora_dropout, rslora=args.rslora)
    if method == "prompt-tuning":
        return PromptTuningConfig(num_virtual_tokens=args.virtual_tokens)
    if method == "selective":
        return SelectiveConfig(train=args.selective)
    return None


def train_config(method: str, args, out_dir: str, **extra):
    from minift.finetune import default_train_config

    overrides = dict(out_dir=out_dir, max_steps=args.steps, batch_size=args.batch_size,
                     micro_batch_size=args.micro_batch_size, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                     early_stopping_patience=args.early_stopping, loss=args.loss, optimizer=args.optimizer,
                     activation_checkpointing=args.activation_checkpointing, device=args.device, seed=args.seed,
                     progress=not args.no_progress, **extra)
    if args.lr is not None:
        overrides.update(lr=args.lr, min_lr=args.lr / 10)
    return default_train_config(method, **overrides)


def _add_finetune(sub):
    from minift.finetune import METHODS

    p = sub.add_parser("finetune", help="instruction fine-tuning on one task, then test accuracy",
                       description="Fine-tune a base model on one task (built-in or your JSONL/CSV) with full "
                       "fine-tuning or a PEFT method; prints validation accuracy while training and test accuracy at the end.")
    p.add_argument("--task", nargs="+", default=["reviews"],
                   help="built-in task (reviews, arithmetic, qa, summarize) or a .jsonl/.csv file; several: multi-task")
    p.add_argument("--templates", help="for a file: a template-library JSON (default: Alpaca instruction/input/output)")
    p.add_argument("--method", default="full", choices=METHODS)
    p.add_argument("--base", help="base checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--truncation", default="error", choices=("error", "left"))
    p.add_argument("--out", help="output directory (default: runs/finetune-TASK-METHOD)")
    p.add_argument("--resume", action="store_true", help="continue from the output directory's latest snapshot")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an output directory that holds a run")
    _add_method_options(p)
    _add_train_options(p)
    p.set_defaults(run=run_finetune)


def run_finetune(args) -> None:
    from pathlib import Path

    from minift.finetune import FinetuneConfig, finetune

    out = args.out or f"runs/finetune-{'+'.join(Path(t).stem for t in args.task)}-{args.method}"
    config = FinetuneConfig(
        task=args.task[0] if len(args.task) == 1 else tuple(args.task), templates=args.templates, method=args.method, peft=peft_config(args.method, args),
        base=args.base, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, truncation=args.truncation,
        seed=args.seed, train=train_config(args.method, args, out, resume=args.resume, overwrite=args.overwrite),
    )
    record = finetune(config)
    print(f"{record['task']} / {record['method']}: "
          f"trainable params: {record['trainable_parameters']:,} || all params: {record['total_parameters']:,} || "
          f"trainable%: {record['trainable_percent']:.4f}")
    print(f"validation accuracy {record['val_accuracy']:.3f} (best at step {record['best_step']}); "
          f"{record['train_time_s']:.0f} s of training")
    for task, test in record["tests"].items():
        rouge = f", ROUGE-L {test['rouge_l']:.3f}" if "rouge_l" in test else ""
        print(f"test accuracy on {task}: {test['accuracy']:.3f} ({test['n']} examples){rouge}")
    print(f"saved {record['artefact']} ({sum(record['artefact_bytes'].values()):,} bytes) and {out}/result.json")


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="exact-match accuracy (and ROUGE-L) of a model on built-in tasks")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply to the checkpoint")
    p.add_argument("--tasks", nargs="+", default=["reviews", "arithmetic", "qa", "summarize"])
    p.add_argument("--n", type=int, default=400, help="test examples per task")
    p.add_argument("--shots", type=int, default=0, help="in-context examples before each query (0: zero-shot)")
    p.add_argument("--answer-only", action="store_true",
                   help="score the answer tokens only, not the end-of-text after them: for a base model, which "
                   "never learned to stop (an instruction-tuned model must stop, and is scored on it by default)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> None:
    from minift.evaluate import evaluate_task

    model, tokenizer = _load(args.checkpoint, args.adapter)
    print(f"{'task':<12}{'shots':>6}{'accuracy':>10}{'chance':>8}{'ROUGE-L':>9}{'context used by shots':>24}")
    for task in args.tasks:
        r = evaluate_task(model, tokenizer, task, n=args.n, shots=args.shots, seed=args.seed, score_end=not args.answer_only)
        rouge = f"{r['rouge_l']:.3f}" if "rouge_l" in r else "-"
        print(f"{task:<12}{args.shots:>6}{r['accuracy']:>10.3f}{r['chance_accuracy']:>8.3f}{rouge:>9}{r['shot_fraction']:>23.1%}")


def _add_memory(sub):
    from minift.finetune import METHODS
    from minift.ledger import DTYPES

    p = sub.add_parser("memory", help="the memory ledger of a training step, predicted and measured",
                       description="Where every byte of one training step goes: weights, gradients, optimizer state, "
                       "activations saved for backward, logits and loss buffers, transients; predicted from the "
                       "configuration (plus the BLAS's matrix-product workspace, measured by replaying the output "
                       "head's products) and measured in a fresh process (peak resident memory on CPU, the CUDA "
                       "allocator's peak on GPU).")
    p.add_argument("--model", default="gpt2", help="a preset (tiny, gpt2, gpt2-medium, ...; random weights) or a checkpoint directory")
    p.add_argument("--method", default="full", choices=METHODS)
    p.add_argument("--optimizer", default="auto", choices=("auto", "adamw", "fused-adamw", "sgd"),
                   help="auto: fused-adamw on CUDA, adamw on CPU (as training)")
    p.add_argument("--loss", default="auto", choices=("auto", "torch", "fused", "fused-linear"),
                   help="auto: fused-linear on CUDA, fused on CPU (as training)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--completion-tokens", type=int, metavar="K",
                   help="score only the last K tokens of each row (an instruction batch); default: every token")
    p.add_argument("--device", default="auto")
    p.add_argument("--default-malloc", action="store_true",
                   help="measure under glibc's default allocator (default: MALLOC_MMAP_THRESHOLD_=65536, RSS follows live bytes)")
    p.add_argument("--predict-only", action="store_true", help="print the prediction from the configuration alone (no step, no workspace probe)")
    p.add_argument("--explain", action="store_true", help="also list every saved tensor the prediction counts")
    p.add_argument("--json", action="store_true", help="print predicted and measured figures as JSON")
    _add_method_options(p)
    p.set_defaults(run=run_memory)


def run_memory(args) -> None:
    import dataclasses
    from pathlib import Path

    import torch

    from minift.ledger import RunSpec, model_config, predict
    from minift.memory import format_ledger, measure, measure_gemm_workspace
    from minift.train import default_loss, default_optimizer

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    spec = RunSpec(
        model_config(args.model), peft_config(args.method, args),
        optimizer=args.optimizer if args.optimizer != "auto" else default_optimizer(device),
        loss=args.loss if args.loss != "auto" else default_loss(device),
        dtype=args.dtype, batch_size=args.batch, seq_len=args.seq, completion_tokens=args.completion_tokens,
        activation_checkpointing=args.activation_checkpointing, device=device,
        checkpoint=str(Path(args.model).resolve()) if Path(args.model).is_dir() else None,
    )
    # --predict-only is arithmetic alone; a measured run also measures the BLAS workspace (minift.ledger)
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
    from minift.experiments import EXPERIMENTS

    p = sub.add_parser("experiment", help="the course's experiments: in-context learning, training examples, forgetting",
                       description="Run the course's experiments and write tables (CSV, JSON) and plots (PNG).")
    p.add_argument("names", nargs="*", default=["all"], choices=[*EXPERIMENTS, "all"], metavar="NAME",
                   help=f"which experiments: {', '.join(EXPERIMENTS)} or all (default)")
    p.add_argument("--preset", default="full", choices=("full", "fast"), help="full: ~15 min on 2 cores; fast: seconds")
    p.add_argument("--base", help="base checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--out", default="runs/experiments")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_experiment)


def run_experiment(args) -> None:
    from minift.experiments import EXPERIMENTS, ExperimentConfig, run

    names = list(EXPERIMENTS) if "all" in args.names else args.names
    run(names, ExperimentConfig.preset(args.preset, base=args.base, out=args.out, seed=args.seed))
    print(f"tables and plots written to {args.out}")


def _add_compare(sub):
    from minift.finetune import METHODS

    p = sub.add_parser("compare", help="full fine-tuning vs LoRA vs prompt tuning on one task, in one table",
                       description="Fine-tune the same base model on one task with each method, then print trainable "
                       "parameters, file size, predicted and measured peak memory, time per step and accuracy side by "
                       "side; writes compare.csv, compare.json and compare.png.")
    p.add_argument("--task", default="arithmetic", help="built-in task (reviews, arithmetic, qa, summarize)")
    p.add_argument("--methods", nargs="+", default=["full", "lora", "prompt-tuning"], choices=METHODS)
    p.add_argument("--base", help="base checkpoint directory (default: the built-in tiny base model)")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per method")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--base-shots", type=int, default=3, help="solved examples in the base model's prompts (its row)")
    p.add_argument("--no-measure", action="store_true", help="skip measuring each method's peak in a fresh process")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    _add_method_options(p)
    p.set_defaults(run=run_compare)


def run_compare(args) -> None:
    from minift.compare import CompareConfig, compare, format_rows

    config = CompareConfig(task=args.task, methods=tuple(args.methods), base=args.base, out=args.out, steps=args.steps,
                           batch_size=args.batch_size, n_train=args.n_train, n_test=args.n_test,
                           base_shots=args.base_shots, lora=peft_config("lora", args), prompt_tuning=peft_config("prompt-tuning", args),
                           selective=peft_config("selective", args), measure=not args.no_measure,
                           progress=not args.no_progress, seed=args.seed)
    rows = compare(config)
    print()
    print(format_rows(rows))
    print(f"\nchance accuracy on {args.task}: {rows[0]['chance']:.3f}")
    print(f"wrote {args.out}/compare.csv, compare.json, compare.png and each method's run under {args.out}/METHOD/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description="Learn how LLMs are fine-tuned, by running the code.")
    parser.add_argument("--version", action="version", version=f"minift {minift.__version__}")
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
