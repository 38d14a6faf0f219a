"""The training loop, as the textbook writes it:

    for each step:
        for each micro-batch:  forward -> cross-entropy of the completion tokens -> backward
        clip the gradient norm -> optimizer step -> learning-rate schedule
        every `eval_every` steps: validation loss and accuracy, snapshot, best model, early stopping

Nothing here knows which model or PEFT method it trains: the optimizer sees the parameters that
require grad, and snapshots hold exactly those (the full model, or only an adapter).

The loss is normalised by the number of completion tokens in the whole optimizer step (all
micro-batches, all ranks), not averaged per micro-batch: with completions of different lengths a
mean of means would weight tokens of short completions more, and gradient accumulation would no
longer equal one big batch.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

import minift.training.distributed as dist
from minift._files import claim_outputs
from minift.data import IGNORE_INDEX, TokenizedExample, shifted_targets
from minift.evaluation import evaluate
from minift.training.config import TrainConfig
from minift.training.log import MetricsLog, plot_curves
from minift.training.loss import CompletionLoss, scored_rows
from minift.training.optim import build_optimizer
from minift.training.sharding import gather, parallelize, shard_optimizer
from minift.training.snapshot import (
    Snapshot,
    has_snapshot,
    load_snapshot,
    load_trainable_tensors,
    save_snapshot,
    save_trainable_tensors,
)


RUN_FILES = ("metrics.jsonl", "curves.png", "snapshots", "best")  # what a run writes into out_dir


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best: dict | None  # validation metrics at best_step
    final_train_loss: float
    wall_time_s: float
    tokens_per_s: float
    stopped_early: bool
    out_dir: str
    history: list[dict] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; caught before the optimizer stepped, so the
    weights and every snapshot are still finite."""


@dataclass(eq=False)
class _Run:
    """What the loop carries from step to step: the parts of the run and where it stands."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_module: nn.Module
    batches: object
    config: TrainConfig
    out: Path
    log: MetricsLog
    device: torch.device
    share: int  # rows of each global batch this rank trains on
    micro: int  # rows per forward pass
    step: int = 0
    best: dict | None = None  # the best validation record so far
    since_best: int = 0  # evaluations since it
    grad_norm: float = 0.0  # of the last step, before clipping


def _trim(batch: dict, rows: slice) -> dict:
    """Rows of a batch, without the columns that are padding in all of them."""
    part = {k: v[rows] for k, v in batch.items()}
    T = int(part["attention_mask"].sum(1).max())
    return {k: v[:, :T] for k, v in part.items()}


def train(
    model: nn.Module,
    train_batches,
    val_examples: list[TokenizedExample],
    pad_id: int,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """Train `model` on a stream of batches; evaluate on `val_examples` every `eval_every` steps.

    Args:
        model: a GPT (or a PEFT-wrapped one): `hidden_states(...)`, `lm_head`, `forward(...)`.
        train_batches: an endless iterator of collated batches of `config.batch_size` rows with
            `state_dict()` / `load_state_dict()` (minift.data.Batches or MixtureBatches). Under
            torchrun every rank draws the same global batch and trains on its own rows.
        val_examples: tokenized validation examples (may be empty: no evaluation).
        pad_id: the padding id of the tokenizer.
        optimizer: a ready optimizer; by default one is built from `config.optimizer`.

    Returns:
        A TrainResult; the best weights by validation accuracy (then loss) are in out_dir/best,
        loaded back into `model` before returning. Metrics are in out_dir/metrics.jsonl and the
        curves in out_dir/curves.png.

    Raises:
        TrainingDiverged: the loss or the gradient became NaN or infinite, with `on_nonfinite="stop"`
            (with "skip" that step's update is dropped and the run goes on).
    """
    run = _start(model, train_batches, optimizer, config)
    t_start, tokens_seen, stopped_early, train_loss = time.perf_counter(), 0, False, float("nan")
    bar = tqdm(total=config.max_steps, initial=run.step, disable=not config.progress or dist.rank() != 0, desc="train")
    try:
        while run.step < config.max_steps:
            t0 = time.perf_counter()
            train_loss, tokens = _train_step(run)
            tokens_seen += tokens
            dt = time.perf_counter() - t0
            run.log.write({"step": run.step, "kind": "train", "loss": train_loss,
                           "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": run.grad_norm, "tokens": tokens,
                           "tokens_per_s": tokens / dt, "epoch": getattr(train_batches, "epoch", None)})
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens / dt:,.0f}")
            if val_examples and (run.step % config.eval_every == 0 or run.step == config.max_steps):
                if _evaluate(run, val_examples, pad_id, bar.write if dist.rank() == 0 else lambda _: None):  # rank 0 prints
                    stopped_early = True
                    break
    finally:
        bar.close()
    wall = time.perf_counter() - t_start
    if run.best is not None:
        load_trainable_tensors(model, run.out / "best", run.device)
    history = run.log.read()
    if dist.rank() == 0:
        plot_curves(history, run.out / "curves.png")
    return TrainResult(run.step, run.best and run.best["step"], run.best, train_loss, wall, tokens_seen / wall,
                       stopped_early, str(run.out), history)


def _start(model: nn.Module, batches, optimizer: torch.optim.Optimizer | None, config: TrainConfig) -> _Run:
    """Join the ranks, check the batch split, prepare out_dir, build the optimizer; resume if asked."""
    dist.setup()
    device, loss_name, optimizer_name = config.resolve()
    rank, world = dist.rank(), dist.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} ranks")
    share = config.batch_size // world
    micro = config.micro_batch_size or share
    if share % micro:
        raise ValueError(f"each rank's {share} rows do not split into micro-batches of {micro}")
    out = Path(config.out_dir)
    # --resume before any snapshot was written (a run killed early): nothing to continue, so start clean
    fresh = config.resume and not has_snapshot(out)
    if rank == 0:
        if fresh:
            print(f"resume: no snapshot in {out / 'snapshots'} yet; starting from step 0 (earlier metrics dropped)",
                  file=sys.stderr)
        claim_outputs(out, RUN_FILES, config.overwrite or fresh, config.resume and not fresh, resumable=True)
    torch.manual_seed(config.seed + rank)  # dropout streams differ by rank, reproducibly

    model.to(device)
    _allow_tf32(device, config.tf32)
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = config.activation_checkpointing
    model.train()
    if optimizer is not None and config.strategy != "ddp" and world > 1:
        raise ValueError(f"strategy {config.strategy!r} shards the parameters or the optimizer state: let train build the optimizer")
    loss_module = parallelize(model, CompletionLoss(model, loss_name), config.strategy, device)  # DDP or FSDP2
    optimizer = optimizer or shard_optimizer(  # zero1: a ZeroRedundancyOptimizer of the same class
        build_optimizer(model, optimizer_name, config.lr, config.betas, config.weight_decay), config.strategy)
    run = _Run(model, optimizer, loss_module, batches, config, out,
               MetricsLog(out / "metrics.jsonl", enabled=rank == 0), device, share, micro)
    if config.resume and (snap := load_snapshot(out, asdict(config), model, optimizer, batches, device)) is not None:
        run.step, run.best, run.since_best = snap.step, snap.best, snap.since_best
        run.log.truncate_after(run.step)
    return run


def _train_step(run: _Run) -> tuple[float, int]:
    """One optimizer step over this rank's rows of the next global batch: (train loss, tokens in the batch)."""
    config, world = run.config, dist.world_size()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.autocast and run.device.type == "cuda")
    for group in run.optimizer.param_groups:
        group["lr"] = config.learning_rate(run.step)
    rank = dist.rank()
    mine = _trim(next(run.batches), slice(rank * run.share, (rank + 1) * run.share))
    # every rank needs the step's global token count to normalise its share of the loss
    n_total = dist.all_reduce_sum(int((shifted_targets(mine["labels"]) != IGNORE_INDEX).sum()))
    # DDP averages gradients over ranks; multiplying by world makes it their sum, so the gradient is
    # d(sum of token losses)/d(theta) / n_total, exactly the global mean. The loss folds this scale into
    # the gradient it writes in forward (training/loss.py), so backward has nothing to rescale.
    scale = world / max(n_total, 1)
    loss_sum = torch.zeros((), device=run.device)  # summed on the device: no host sync per micro-batch
    for start in range(0, run.share, run.micro):
        part = _trim(mine, slice(start, start + run.micro))
        rows = scored_rows(part["labels"])  # on the host, where it costs no sync
        part = {k: v.to(run.device) for k, v in part.items()}
        with dist.no_sync_unless(run.loss_module, last=start + run.micro == run.share), autocast:
            loss, _ = run.loss_module(part["input_ids"], part["labels"], part["attention_mask"], scale=scale,
                                      rows=rows.to(run.device))
        loss.backward()
        loss_sum += loss.detach()
    train_loss = dist.all_reduce_sum(float(loss_sum)) / world  # the step's one read of the device
    run.grad_norm = _clip(run.model, config.grad_clip)
    # Checked before the optimizer steps: one NaN gradient would make every weight NaN (AdamW's moments
    # spread it), and a NaN can sit in the gradient while the loss is still finite. After DDP's all-reduce
    # every rank sees the same loss and norm, so all ranks decide alike.
    finite = math.isfinite(train_loss) and math.isfinite(run.grad_norm)
    if finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not finite and config.on_nonfinite == "stop":
        raise TrainingDiverged(
            f"the training loss is {train_loss} and the gradient norm {run.grad_norm} at step {run.step + 1}; "
            f"stopped before the optimizer stepped, so the weights and the last snapshot (in {run.out / 'snapshots'}, "
            "if one was written) are finite. Lower --lr, or pass --on-nonfinite skip to drop such steps"
        )
    if not finite:
        warnings.warn(f"step {run.step + 1}: non-finite loss or gradient; its update was skipped (on_nonfinite='skip')")
    run.step += 1
    return train_loss, dist.all_reduce_sum(int(mine["attention_mask"].sum()))


def _evaluate(run: _Run, val_examples: list[TokenizedExample], pad_id: int, write) -> bool:
    """Validate, keep the best weights, write a snapshot; True when early stopping says stop."""
    config = run.config
    result = evaluate(run.model, val_examples, pad_id, config.eval_batch_size)
    record = {"step": run.step, "kind": "eval", "loss": result.loss, "accuracy": result.accuracy, "n": result.n_examples}
    if config.select_by == "loss":
        improved = run.best is None or result.loss < run.best["loss"]
        write(f"step {run.step}: val loss {result.loss:.4f}, perplexity {math.exp(min(result.loss, 700)):.2f}")
    else:
        improved = run.best is None or (result.accuracy, -result.loss) > (run.best["accuracy"], -run.best["loss"])
        write(f"step {run.step}: val loss {result.loss:.4f}, val accuracy {result.accuracy:.3f}")
    run.log.write(record)
    if improved:
        run.best, run.since_best = record, 0
        save_trainable_tensors(run.model, run.out / "best")  # every rank: sharded tensors are gathered
    else:
        run.since_best += 1
    save_snapshot(run.out, Snapshot(run.step, run.best, run.since_best, asdict(config)), run.model, run.optimizer,
                  run.batches)
    dist.barrier()
    if config.early_stopping_patience is not None and run.since_best >= config.early_stopping_patience:
        write(f"early stopping: no improvement in {run.since_best} evaluations")
        return True
    return False


def _allow_tf32(device: torch.device, enabled: bool) -> None:
    """On CUDA, let fp32 matrix products and convolutions run in TF32 (a 10-bit mantissa: Ampere and later
    do them ~8x faster than fp32); on other devices there is nothing to set."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _clip(model: nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(gather(nn.utils.get_total_norm([p.grad for p in params]))) if params else 0.0
    return float(gather(nn.utils.clip_grad_norm_(params, max_norm)))  # a sharded gradient's norm is a DTensor
