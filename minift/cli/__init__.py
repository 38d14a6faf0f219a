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
Under torchrun (`torchrun --nproc_per_node N -m minift.cli finetune ...`, data parallel: each rank trains
on its share of every batch) every rank runs the command; rank 0 alone prints, evaluates the test set and
writes the results.
The options are built in `options.py`, the subcommands in `commands.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from importlib.metadata import version

from minift.cli.commands import PARSERS, finetune_config
from minift.training import TrainingDiverged

__all__ = ["build_parser", "finetune_config", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description="Learn how LLMs are fine-tuned, by running the code.",
                                     epilog="Several processes (data parallel): torchrun --nproc_per_node N -m minift.cli "
                                     "finetune ...; rank 0 alone prints, evaluates and writes the results.")
    parser.add_argument("--version", action="version", version=f"minift {version('minift')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every rank runs the command; rank 0 alone prints (errors still reach stderr).
    quiet = int(os.environ.get("RANK", "0")) != 0
    try:
        with open(os.devnull, "w") if quiet else contextlib.nullcontext(sys.stdout) as out, contextlib.redirect_stdout(out):
            args.run(args)
    # Every failure the command can meet (bad input, an unreadable or corrupt file, permissions, a full
    # disk, a diverged run) is one line naming what is wrong and exit code 2, not a traceback.
    except (ValueError, KeyError, OSError, TrainingDiverged) as error:
        print(f"minift {args.command}: error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    return 0


