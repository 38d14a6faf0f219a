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

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from minift import distributed as dist
from minift.data import IGNORE_INDEX, TokenizedExample
from minift.evaluate import evaluate, shifted_targets
from minift.files import atomic_write
from minift.snapshot import (
    Snapshot,
    load_snapshot,
    load_trainable_tensors,
    save_snapshot,
    save_trainable_tensors,
)

LOSSES = ("torch", "fused", "fused-linear")
OPTIMIZERS = ("adamw", "fused-adamw", "sgd")


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    max_steps: int = 200  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step, over all micro-batches and ranks
    micro_batch_size: int | None = None  # sequences per forward pass on one rank (None: the whole share)
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine decays from lr to min_lr
    warmup_steps: int = 20  # linear warmup from 0: early Adam updates are noisy (Goyal et al. 2017)
    weight_decay: float = 0.01  # decoupled (AdamW); only matrices decay, not biases or norms
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None: no clipping
    optimizer: str = "auto"  # "adamw" | "fused-adamw" | "sgd"; auto: fused-adamw on CUDA, adamw on CPU
    loss: str = "auto"  # "torch" | "fused" | "fused-linear"; auto: fused-linear on CUDA, fused on CPU
    eval_every: int = 50  # steps between evaluations (and snapshots); the last step is always evaluated
    eval_batch_size: int = 32
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    activation_checkpointing: bool = False
    autocast: bool = True  # bf16 autocast on CUDA (no effect on CPU, which trains in fp32)
    seed: int = 0
    resume: bool = False  # continue from out_dir's latest snapshot if there is one
    overwrite: bool = False  # start afresh in an out_dir that holds an earlier run (deleting it)
    progress: bool = True
    device: str = "auto"

    def __post_init__(self):
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 1:
            raise ValueError("batch_size, max_steps and eval_every must be >= 1")
        if self.loss not in ("auto", *LOSSES):
            raise ValueError(f"loss must be 'auto' or one of {LOSSES}, got {self.loss!r}")
        if self.optimizer not in ("auto", *OPTIMIZERS):
            raise ValueError(f"optimizer must be 'auto' or one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.betas = tuple(self.betas)  # a JSON round trip gives a list


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
    """The loss became NaN or infinite; the last good snapshot is left as it was."""


def default_loss(device: torch.device) -> str:
    """The loss "auto" means on `device`.

    CUDA: "fused-linear", the [tokens, vocabulary] logits never exist whole (Triton kernels). CPU:
    "fused", kernels.cross_entropy's PyTorch reference: the same logits as F.cross_entropy, with the
    gradient written over them in the forward pass, so no log-softmax is kept for backward and no
    [tokens, vocabulary] gradient is allocated (2 of eager's 3 such buffers gone; measured on 2 cores
    at GPT-2 small, batch 4 x 256: a 9% faster step, benchmarks/memory_vs_params.py for the bytes).
    """
    return "fused-linear" if torch.device(device).type == "cuda" else "fused"


def default_optimizer(device: torch.device) -> str:
    """The optimizer "auto" means on `device`: the Triton FusedAdamW on CUDA, torch.optim.AdamW on CPU
    (where FusedAdamW would run its PyTorch reference, no faster than torch's foreach AdamW)."""
    return "fused-adamw" if torch.device(device).type == "cuda" else "adamw"


def resolve(config: TrainConfig) -> tuple[torch.device, str, str]:
    """The device, loss and optimizer a config means on this machine."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device)
    loss = config.loss if config.loss != "auto" else default_loss(device)
    optimizer = config.optimizer if config.optimizer != "auto" else default_optimizer(device)
    return device, loss, optimizer


def build_optimizer(model: nn.Module, name: str, config: TrainConfig) -> torch.optim.Optimizer:
    """An optimizer over the parameters that require grad; weight decay on matrices only.

    Biases and LayerNorm gains are not decayed (a decayed gain shrinks activations for no gain in
    generalisation), as in GPT-2 / nanoGPT's configure_optimizers.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    if name == "fused-adamw":
        from kernels import FusedAdamW

        return FusedAdamW(groups, lr=config.lr, betas=config.betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps` (Loshchilov & Hutter 2017)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


class CompletionLoss(nn.Module):
    """Summed cross-entropy of the completion tokens of a batch, and how many there were.

    Only completion tokens are scored, so only their hidden states go through the output head:
    the logits are (completion tokens, V), not (B*T, V). With "fused-linear" even those never exist
    whole (kernels.linear_cross_entropy works in chunks).
    """

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, input_ids, labels, attention_mask):
        # Batches are right-padded, so under causal attention no real token ever sees a pad: the
        # mask changes nothing we score, and without it SDPA takes its fast causal path.
        hidden = self.model.hidden_states(input_ids)  # (B, T, C)
        targets = shifted_targets(labels)  # (B, T)
        scored = targets != IGNORE_INDEX
        h, t = hidden[scored], targets[scored]  # (N, C), (N,)
        weight = self.model.lm_head.weight  # (V, C)
        if self.loss == "fused-linear":
            from kernels import linear_cross_entropy

            loss = linear_cross_entropy(h, weight, t, reduction="sum")
        elif self.loss == "fused":
            from kernels import cross_entropy

            loss = cross_entropy(self.model.lm_head(h), t, reduction="sum")
        else:
            loss = F.cross_entropy(self.model.lm_head(h).float(), t, reduction="sum")
        return loss, t.numel()


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
        TrainingDiverged: the loss became NaN or infinite.
    """
    dist.setup()
    device, loss_name, optimizer_name = resolve(config)
    rank, world = dist.rank(), dist.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} ranks")
    share = config.batch_size // world  # rows of each global batch this rank trains on
    micro = config.micro_batch_size or share
    if share % micro:
        raise ValueError(f"each rank's {share} rows do not split into micro-batches of {micro}")
    out = Path(config.out_dir)
    if rank == 0:
        _prepare_out_dir(out, config)
    torch.manual_seed(config.seed + rank)  # dropout streams differ by rank, reproducibly

    model.to(device)
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = config.activation_checkpointing
    model.train()
    optimizer = optimizer or build_optimizer(model, optimizer_name, config)
    loss_module = dist.wrap(CompletionLoss(model, loss_name), device)
    log = MetricsLog(out / "metrics.jsonl", enabled=rank == 0)

    step, best, since_best = 0, None, 0
    if config.resume and (snap := load_snapshot(out, asdict(config), model, optimizer, train_batches, device)) is not None:
        step, best, since_best = snap.step, snap.best, snap.since_best
        log.truncate_after(step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.autocast and device.type == "cuda")

    t_start, tokens_seen, stopped_early, train_loss = time.perf_counter(), 0, False, float("nan")
    bar = tqdm(total=config.max_steps, initial=step, disable=not config.progress or rank != 0, desc="train")
    while step < config.max_steps:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = next(train_batches)
        mine = _trim(batch, slice(rank * share, (rank + 1) * share))
        # every rank needs the step's global token count to normalise its share of the loss
        n_total = dist.all_reduce_sum(int((shifted_targets(mine["labels"]) != IGNORE_INDEX).sum()))
        loss_sum = 0.0
        for start in range(0, share, micro):
            part = {k: v.to(device) for k, v in _trim(mine, slice(start, start + micro)).items()}
            with dist.no_sync_unless(loss_module, last=start + micro == share), autocast:
                loss, _ = loss_module(part["input_ids"], part["labels"], part["attention_mask"])
            # DDP averages gradients over ranks; multiplying by world makes it their sum, so the
            # gradient is d(sum of token losses)/d(theta) / n_total, exactly the global mean.
            (loss * world / max(n_total, 1)).backward()
            loss_sum += loss.item()
        train_loss = dist.all_reduce_sum(loss_sum) / max(n_total, 1)
        if not math.isfinite(train_loss):
            bar.close()
            raise TrainingDiverged(
                f"the training loss is {train_loss} at step {step + 1}; stopped without saving. "
                f"The last good snapshot (if any) is intact in {out / 'snapshots'}"
            )
        grad_norm = _clip(model, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens = dist.all_reduce_sum(int(mine["attention_mask"].sum()))
        tokens_seen += tokens
        dt = time.perf_counter() - t0
        log.write({"step": step, "kind": "train", "loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                   "grad_norm": grad_norm, "tokens": tokens, "tokens_per_s": tokens / dt, "epoch": getattr(train_batches, "epoch", None)})
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens / dt:,.0f}")

        if val_examples and (step % config.eval_every == 0 or step == config.max_steps):
            result = evaluate(model, val_examples, pad_id, config.eval_batch_size)
            improved = best is None or (result.accuracy, -result.loss) > (best["accuracy"], -best["loss"])
            record = {"step": step, "kind": "eval", "loss": result.loss, "accuracy": result.accuracy, "n": result.n_examples}
            log.write(record)
            bar.write(f"step {step}: val loss {result.loss:.4f}, val accuracy {result.accuracy:.3f}")
            if improved:
                best, since_best = record, 0
                if rank == 0:
                    save_trainable_tensors(model, out / "best")
            else:
                since_best += 1
            save_snapshot(out, Snapshot(step, best, since_best, asdict(config)), model, optimizer, train_batches)
            dist.barrier()
            if config.early_stopping_patience is not None and since_best >= config.early_stopping_patience:
                bar.write(f"early stopping: no improvement in {since_best} evaluations")
                stopped_early = True
                break
    bar.close()
    wall = time.perf_counter() - t_start
    if best is not None:
        load_trainable_tensors(model, out / "best", device)
    history = log.read()
    if rank == 0:
        plot_curves(history, out / "curves.png")
    return TrainResult(step, best and best["step"], best, train_loss, wall, tokens_seen / wall, stopped_early, str(out), history)


def _prepare_out_dir(out: Path, config: TrainConfig) -> None:
    """Create out_dir; refuse to mix a new run into an earlier one's files unless told what to do."""
    earlier = [p for p in (out / "metrics.jsonl", out / "snapshots", out / "best") if p.exists()]
    if earlier and not config.resume:
        if not config.overwrite:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(p.name for p in earlier)}); "
                "resume it (resume=True, --resume), start afresh (overwrite=True, --overwrite), or choose another out_dir"
            )
        for p in earlier:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _clip(model: nn.Module, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
    return float(nn.utils.clip_grad_norm_(params, max_norm))


class MetricsLog:
    """metrics.jsonl: one JSON object per training step and per evaluation."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites them, so they must not appear twice."""
        if self.enabled and self.path.is_file():
            kept = [json.dumps(r) for r in self.read() if r["step"] <= step]
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, validation loss and validation accuracy against the step, as a PNG."""
    from minift.plots import pyplot, save_figure

    plt = pyplot()
    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.7)
    ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation")
    ax_loss.set(xlabel="step", ylabel="loss per completion token (nats)", yscale="log", title="Loss")
    ax_loss.legend()
    ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", color="C2")
    ax_acc.set(xlabel="step", ylabel="exact match", ylim=(-0.02, 1.02), title="Validation accuracy")
    save_figure(fig, path, dpi=110)

