"""Peak memory of one training step against the number of trainable parameters, minift beside transformers + peft.

    python -m benchmarks.memory_vs_params            # the full sweep (an hour or more on 2 CPU cores)
    python -m benchmarks.memory_vs_params --quick    # tiny preset + a few GPT-2 small rows, minutes
    python -m benchmarks.memory_vs_params --sizes gpt2-medium --tag gpt2-medium   # one size, its own files
    python -m benchmarks.memory_vs_params --sizes gpt2 --labels "QLoRA r=8 c_attn" --tag qlora   # some rows only

What is measured. A step is minift.training's: forward and loss (minift.training's default on the device:
minift.kernels.cross_entropy's reference on CPU, the fused linear cross-entropy on CUDA, unless a row names
another), backward, clip the gradient norm to 1,
optimizer step, zero_grad(set_to_none=True); its peak is taken over two steps (the first creates the
optimizer state). Every configuration runs in a fresh process (minift.memory.measure_in_subprocess)
after a warm-up step of a tiny model of the same kind; "peak above the built model" is the peak
minus the memory right after the model, optimizer and batch exist. On CPU that is resident memory
(VmHWM); on GPU the CUDA allocator's max_memory_allocated. The ledger's categories (weights,
gradients, optimizer state, activations saved for backward, loss buffers) are counted on a third,
instrumented step, for minift and the peer alike (minift.memory.measure_step).

The peer: transformers' GPT2LMHeadModel built from the same configuration (random weights, dropout 0,
SDPA attention, tied head), with peft's LoRA (fan_in_fan_out for GPT-2's Conv1D) or prompt tuning, or
the same selected parameters; torch.optim.AdamW with the same two parameter groups
(minift.training.build_optimizer); the loss from `model(input_ids, labels=labels).loss`, the output
object dropped before backward as transformers' Trainer does; the same batch and labels. With
activation checkpointing, gradient_checkpointing_enable(use_reentrant=False).

Labels: "lm" scores every token (a language-modelling step: the worst case for the logits);
"last-k" scores only the last k tokens of each row (an instruction-style batch): minift then computes
the output head on those rows only, the peer computes logits for every position anyway.

CPU allocators: glibc's malloc keeps freed memory, which adds slack to a peak, and MKL keeps its GEMM
buffers. Predicted is judged against measured under MALLOC_MMAP_THRESHOLD_=65536 and
MKL_DISABLE_FAST_MM=1 (minift.memory.TRACKING_ENV: resident memory follows the live tensors and the
BLAS's workspace while a product runs); the default allocators' figures are reported beside them for
a subset, minift and peer always under the same setting.

Predicted: the ledger (minift.memory.predict) with the BLAS workspace of the output head's products
measured by minift.memory.measure_gemm_workspace (its own fresh process); the error of the tensors
alone (no workspace) is reported beside it. Results: benchmarks/results/memory_vs_params_<device>[_quick].{json,csv} and three PNGs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import torch

from benchmarks.common import RESULTS, device_name, device_slug, write_results
from minift._plots import pyplot, save_figure
from minift.memory import CATEGORIES, DTYPES, LABELS, RunSpec, StepParts, measure_gemm_workspace, measure_step, model_config, predict
from minift.memory.probes import measure_with
from minift.peft import LoraConfig, PromptTuningConfig, SelectiveConfig, selected_parameters
from minift.training import TrainConfig, build_optimizer, default_loss

BATCH, SEQ = 4, 256
C_ATTN_RANKS = (1, 4, 8, 16, 64, 256)
ALL_LINEAR_RANKS = (1, 8, 64, 256)
SWEEP = ((1, 128), (2, 256), (4, 256), (4, 512), (8, 512))  # (batch, sequence): 128 to 4096 tokens
INSTRUCTION_K = 32  # tokens scored per row in the instruction-style rows
# the targets (issue 7): peak above the built model, minift / peer, GPT-2 small, 4 x 256, fp32, CPU
TARGETS = {"full": 0.8, "LoRA r=8 c_attn": 0.7, "LoRA r=8 c_attn, fused-linear + checkpointing": 0.4}


# ----------------------------------------------------------------------------------------------
# The peer: transformers + peft


def build_peer_step(spec: RunSpec, tiny: bool = False) -> StepParts:
    """The same step as minift.memory.build_minift_step, in transformers + peft (see the module docstring)."""
    import peft  # the peer is needed for its rows only: an optional dependency (the test extra)
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, B, T, k = spec.model, spec.batch_size, spec.seq_len, spec.completion_tokens
    if tiny:
        cfg = dataclasses.replace(cfg, vocab_size=256, n_embd=64, n_head=2)
        B, T, k = 1, 16, k and min(k, 15)
    torch.manual_seed(0)
    hf_config = GPT2Config(attn_implementation="sdpa", vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                           n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           layer_norm_epsilon=cfg.layer_norm_eps, tie_word_embeddings=True,
                           bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    model = GPT2LMHeadModel(hf_config).to(DTYPES[spec.dtype]).to(spec.device)
    if spec.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if isinstance(spec.peft, LoraConfig):
        targets = spec.peft.targets if isinstance(spec.peft.targets, str) else list(spec.peft.targets)
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=spec.peft.rank, lora_alpha=spec.peft.alpha, target_modules=targets, lora_dropout=0.0,
            fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM"))
    elif isinstance(spec.peft, PromptTuningConfig):
        model = peft.get_peft_model(model, peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=spec.peft.num_virtual_tokens, prompt_tuning_init="RANDOM"))
    elif isinstance(spec.peft, SelectiveConfig):
        chosen = set(selected_parameters(model, spec.peft.train))  # GPT-2's names are the same in both
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
    model.train()
    defaults = TrainConfig()
    optimizer = build_optimizer(model, "adamw", defaults.lr, defaults.betas, defaults.weight_decay)  # torch AdamW, the same two groups
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=spec.device)
    labels = ids.clone()
    if k is not None:
        labels[:, : T - k] = -100

    def forward() -> torch.Tensor:
        return model(input_ids=ids, labels=labels).loss  # the output (and its logits) is dropped here

    return StepParts(model, optimizer, forward)


def measure_minift(spec: RunSpec, tracking_malloc: bool = True) -> dict:
    return measure_with("minift.memory.step", "_measure_spec", {"spec": spec.to_dict()}, tracking_malloc)


def _measure_peer(spec: dict, steps: int = 2) -> dict:
    """Subprocess entry point for the peer."""
    import transformers

    transformers.logging.set_verbosity_error()
    run = RunSpec.from_dict(spec)
    return measure_step(functools.partial(build_peer_step, run), run.device, steps)


def measure_peer(spec: RunSpec, tracking_malloc: bool = True) -> dict:
    return measure_with("benchmarks.memory_vs_params", "_measure_peer", {"spec": spec.to_dict()}, tracking_malloc)


# ----------------------------------------------------------------------------------------------
# The configurations


@dataclasses.dataclass(frozen=True)
class Config:
    family: str  # one line in the plot
    label: str  # the method as the table names it; minift and peer rows with the same label are compared
    spec: RunSpec
    peer: bool = True  # also measure transformers + peft
    default_allocator: bool = False  # also measure under the default allocators (glibc, MKL)
    sweep: bool = False  # part of the batch x sequence sweep


def configs(sizes: list[str], quick: bool, device: str) -> list[Config]:
    """The sweep: every method at every size (GPT-2 medium: a few), the batch x sequence sweep at the
    key size (GPT-2 small; the tiny preset with --quick), and the default allocators on a subset."""
    out = []
    key_size = "tiny-m" if quick else "gpt2"
    for size in sizes:
        run = functools.partial(RunSpec, model_config(size), batch_size=BATCH, seq_len=SEQ, device=device,
                                loss=default_loss(device))
        key, medium = size == key_size, size not in ("tiny-m", "gpt2")
        c_attn = C_ATTN_RANKS if key and not quick else (1, 8, 64)
        all_linear = ALL_LINEAR_RANKS if key and not quick else (8,)
        if medium:  # GPT-2 medium: a few points, as memory allows (24 GiB, shared)
            c_attn, all_linear = (8,), ()
        fused = "LoRA r=8 c_attn, fused-linear + checkpointing"
        out.append(Config("full", "full", run(), default_allocator=key))
        if key:  # the same step with eager F.cross_entropy: what the default fused loss saves
            out.append(Config("full, variants", "full, torch loss", run(loss="torch"), peer=False))
        out.append(Config("full (fused AdamW + fused-linear CE)", "full, fused", run(optimizer="fused-adamw", loss="fused-linear"),
                          peer=False))
        # quantised: the moments in 8 bits (Dettmers et al. 2022), the frozen base in NF4 (QLoRA); without a
        # peer row (the peer's step is transformers + peft, which quantise through bitsandbytes)
        out.append(Config("full + 8-bit AdamW", "full, adamw8bit", run(optimizer="adamw8bit"), peer=False))
        for r in c_attn:
            out.append(Config("LoRA c_attn", f"LoRA r={r} c_attn", run(LoraConfig(rank=r)), default_allocator=key and r == 8))
        out.append(Config("QLoRA c_attn", "QLoRA r=8 c_attn", run(LoraConfig(rank=8, quantize="nf4")), peer=False))
        for r in all_linear:
            out.append(Config("LoRA all-linear", f"LoRA r={r} all-linear", run(LoraConfig(rank=r, targets="all-linear"))))
        if not medium:
            out.append(Config("prompt tuning", "prompt tuning (20 tokens)", run(PromptTuningConfig(20))))
        out.append(Config("selective", "selective (last 2 blocks)", run(SelectiveConfig("last-2-blocks"))))
        out.append(Config("LoRA c_attn, fused-linear + checkpointing", fused,
                          run(LoraConfig(rank=8), loss="fused-linear", activation_checkpointing=True),
                          peer=not medium, default_allocator=key))
        if not key:
            continue
        # what each part of that saving is worth, and instruction-style batches
        out.append(Config("LoRA c_attn, variants", "LoRA r=8 c_attn, fused-linear", run(LoraConfig(rank=8), loss="fused-linear"), peer=False))
        out.append(Config("LoRA c_attn, variants", "LoRA r=8 c_attn, checkpointing", run(LoraConfig(rank=8), activation_checkpointing=True)))
        for label, peft in (("full", None), ("LoRA r=8 c_attn", LoraConfig(rank=8))):
            out.append(Config("instruction-style", f"{label}, last {INSTRUCTION_K} tokens scored", run(peft, completion_tokens=INSTRUCTION_K)))
        for B, T in SWEEP:
            if (B, T) == (BATCH, SEQ):
                continue  # measured above
            sweep = functools.partial(RunSpec, model_config(size), batch_size=B, seq_len=T, device=device,
                                      loss=default_loss(device))
            out.append(Config("sweep", "full", sweep(), peer=False, sweep=True))
            out.append(Config("sweep", "LoRA r=8 c_attn", sweep(LoraConfig(rank=8)), peer=False, sweep=True))
            out.append(Config("sweep", fused, sweep(LoraConfig(rank=8), loss="fused-linear", activation_checkpointing=True),
                              peer=False, sweep=True))
    return out


def select(cfgs: list[Config], labels: list[str] | None) -> list[Config]:
    """The configurations with one of `labels` (all of them for None); an unknown label is an error."""
    if labels is None:
        return cfgs
    unknown = set(labels) - {c.label for c in cfgs}
    if unknown:
        raise ValueError(f"no configuration labelled {sorted(unknown)}; labels: {sorted({c.label for c in cfgs})}")
    return [c for c in cfgs if c.label in labels]


def _row(config: Config, impl: str, measured: dict, prediction=None, tensors_only=None) -> dict:
    """One measured run as a table row; `prediction` (with the BLAS workspace) and `tensors_only` for minift's."""
    spec = config.spec
    row = dict(model=_size_name(spec), impl=impl, label=config.label, family=config.family, method=spec.method,
               rank=getattr(spec.peft, "rank", None), optimizer=spec.optimizer if impl == "minift" else "adamw",
               loss=spec.loss if impl == "minift" else "torch (transformers)",
               checkpointing=spec.activation_checkpointing, batch=spec.batch_size, seq=spec.seq_len,
               labels="lm" if spec.completion_tokens is None else f"last-{spec.completion_tokens}",
               allocator=measured["allocator"], trainable_params=measured["trainable_params"],
               total_params=measured["total_params"], built_mib=measured["built"] / 2**20,
               peak_mib=measured["peak"] / 2**20, peak_above_model_mib=(measured["peak"] - measured["built"]) / 2**20)
    row.update({f"{phase}_peak_mib": b / 2**20 for phase, b in measured["phases"].items()})
    row.update({f"measured_{c}_mib": b / 2**20 for c, b in measured["categories"].items()})
    if prediction is not None:
        peak = prediction.peak
        weights = prediction.sizes["weights_frozen"] + prediction.sizes["weights_trainable"]
        row.update(predicted_peak_mib=peak.total / 2**20, predicted_above_model_mib=(peak.total - weights) / 2**20,
                   predicted_error_pct=100 * (peak.total - measured["peak"]) / measured["peak"], predicted_moment=peak.name)
        row.update({f"predicted_{c}_mib": b / 2**20 for c, b in peak.bytes.items()})
    if tensors_only is not None:
        peak = tensors_only.peak.total
        row.update(predicted_tensors_peak_mib=peak / 2**20,
                   predicted_tensors_error_pct=100 * (peak - measured["peak"]) / measured["peak"])
    return row


def _size_name(spec: RunSpec) -> str:
    m = spec.model
    for name in ("tiny-m", "gpt2", "gpt2-medium", "gpt2-large"):
        if dataclasses.asdict(model_config(name)) == dataclasses.asdict(m):
            return name
    return f"L{m.n_layer}-C{m.n_embd}"


def run_all(cfgs: list[Config], peers: bool, log=print) -> list[dict]:
    rows = []
    for i, config in enumerate(cfgs):
        allocators = (True, False) if config.default_allocator and config.spec.device == "cpu" else (True,)
        for tracking in allocators:
            t0 = time.perf_counter()
            line = f"[{i + 1}/{len(cfgs)}] {_size_name(config.spec):<12} {config.label:<48}"
            try:
                measured = measure_minift(config.spec, tracking_malloc=tracking)
                prediction = predict(config.spec, measure_gemm_workspace(config.spec))
                rows.append(_row(config, "minift", measured, prediction, predict(config.spec)) | {"sweep": config.sweep})
                line += f" minift peak {rows[-1]['peak_mib']:8.1f} MiB (predicted {rows[-1]['predicted_error_pct']:+.1f}%)"
                if config.peer and peers:
                    measured = measure_peer(config.spec, tracking_malloc=tracking)
                    rows.append(_row(config, "transformers+peft", measured) | {"sweep": config.sweep})
                    line += f", peer {rows[-1]['peak_mib']:8.1f} MiB"
            except RuntimeError as error:  # one configuration failing (e.g. out of memory) does not end the sweep
                line += " FAILED: " + str(error).strip().splitlines()[-1]
            log(f"{line}  [{'tracking' if tracking else 'default'} malloc, {time.perf_counter() - t0:.0f} s]")
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    """ratio_vs_peer: minift's peak above the built model / the peer's, same size, batch, labels and allocator.

    A minift row with fused losses or checkpointing is compared with the peer's plain row of the
    same method (the peer has no fused losses) and, where there is one, with the peer's
    checkpointed row (ratio_vs_peer_checkpointed).
    """
    peers = {(r["model"], r["label"], r["batch"], r["seq"], r["labels"], r["allocator"]): r
             for r in rows if r["impl"] != "minift"}
    for r in rows:
        if r["impl"] != "minift":
            continue
        base = r["label"]
        for variant in (", fused", ", checkpointing", ", torch loss"):
            base = base.split(variant)[0]
        where = (r["model"], r["batch"], r["seq"], r["labels"], r["allocator"])
        plain = peers.get((where[0], base, *where[1:]))
        if plain is not None:
            r["ratio_vs_peer"] = r["peak_above_model_mib"] / plain["peak_above_model_mib"]
            r["peer_label"] = plain["label"]
        same = peers.get((where[0], r["label"], *where[1:]))
        if same is not None and same is not plain and r["checkpointing"]:
            r["ratio_vs_peer_checkpointed"] = r["peak_above_model_mib"] / same["peak_above_model_mib"]


# ----------------------------------------------------------------------------------------------
# Table and plots


def table(rows: list[dict], allocator: str) -> str:
    head = (f"{'model':<12}{'method':<48}{'impl':<19}{'trainable':>12}{'predicted':>11}{'measured':>10}{'error':>8}"
            f"{'tensors':>9}{'above model':>13}{'vs peer':>9}")
    lines = [f"peak of the step, MiB ({allocator}); above model = peak - (model + optimizer + batch built); "
             f"error: the ledger with the measured BLAS workspace, tensors: without it", head]
    for r in rows:
        if r["allocator"] != allocator:
            continue
        predicted = f"{r['predicted_peak_mib']:>11.1f}" if "predicted_peak_mib" in r else f"{'-':>11}"
        error = f"{r['predicted_error_pct']:>+7.1f}%" if "predicted_error_pct" in r else f"{'':>8}"
        error += f"{r['predicted_tensors_error_pct']:>+8.1f}%" if "predicted_tensors_error_pct" in r else f"{'':>9}"
        ratio = f"{r['ratio_vs_peer']:>8.2f}x" if "ratio_vs_peer" in r else f"{'':>9}"
        if "ratio_vs_peer_checkpointed" in r:
            ratio += f" ({r['ratio_vs_peer_checkpointed']:.2f}x vs checkpointed peer)"
        label = r["label"] + ("" if (r["batch"], r["seq"]) == (BATCH, SEQ) else f" [{r['batch']}x{r['seq']}]")
        lines.append(f"{r['model']:<12}{label:<48}{r['impl']:<19}{r['trainable_params']:>12,}{predicted}"
                     f"{r['peak_mib']:>10.1f}{error}{r['peak_above_model_mib']:>13.1f}{ratio}")
    return "\n".join(lines)


def targets_report(rows: list[dict]) -> list[str]:
    lines = []
    judged = [r for r in rows if "predicted_error_pct" in r and r["allocator"].startswith("tracking")]
    if judged:
        worst = max(abs(r["predicted_error_pct"]) for r in judged)
        tensors = max((abs(r["predicted_tensors_error_pct"]) for r in judged if "predicted_tensors_error_pct" in r), default=None)
        lines.append(f"predicted vs measured peak (tracking malloc), {len(judged)} runs: worst |error| {worst:.1f}% "
                     f"-> target 10%: {'met' if worst <= 10 else 'NOT met'}"
                     + ("" if tensors is None else f" (tensors alone, without the BLAS workspace: {tensors:.1f}%)"))
    for r in rows:
        if (r["impl"] == "minift" and r["model"] == "gpt2" and r["label"] in TARGETS and (r["batch"], r["seq"]) == (BATCH, SEQ)
                and r["labels"] == "lm" and "ratio_vs_peer" in r):
            limit = TARGETS[r["label"]]
            lines.append(f"GPT-2 small {r['label']} ({r['allocator']}): {r['ratio_vs_peer']:.2f}x the peer's peak above "
                         f"the model (target <= {limit}x: {'met' if r['ratio_vs_peer'] <= limit else 'NOT met'})")
    return lines


COLORS = {"full": "C0", "full (fused AdamW + fused-linear CE)": "C5", "LoRA c_attn": "C1", "LoRA all-linear": "C2",
          "prompt tuning": "C3", "selective": "C4", "LoRA c_attn, fused-linear + checkpointing": "C6",
          "full + 8-bit AdamW": "C7", "QLoRA c_attn": "C8"}


def plot_params(rows: list[dict], path) -> None:
    plt = pyplot()
    main = [r for r in rows if r["allocator"].startswith("tracking") and not r["sweep"] and r["labels"] == "lm"
            and r["family"] in COLORS]
    sizes = list(dict.fromkeys(r["model"] for r in main))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes) + 3.4, 4.4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for family, color in COLORS.items():
            for impl, style in (("minift", "o-"), ("transformers+peft", "x--")):
                pts = sorted((r["trainable_params"], r["peak_mib"] / 1024) for r in main
                             if r["model"] == size and r["family"] == family and r["impl"] == impl)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{family} ({impl})" if size == sizes[0] else None,
                            alpha=1.0 if impl == "minift" else 0.6)
        ax.set(xscale="log", xlabel="trainable parameters", ylabel="peak memory of a step (GiB)",
               title=f"{size}: batch {BATCH} x {SEQ} tokens, fp32")
        ax.grid(alpha=0.3)
    fig.legend(loc="center right", fontsize=7, frameon=False)
    save_figure(fig, path, rect=(0, 0, 1 - 3.3 / fig.get_figwidth(), 1))


def plot_ledger(rows: list[dict], path, size: str) -> None:
    plt = pyplot()

    ours = [r for r in rows if r["impl"] == "minift" and r["model"] == size and r["allocator"].startswith("tracking")
            and not r["sweep"] and r["labels"] == "lm" and (r["rank"] in (None, 8))]
    peers = {r["label"]: r for r in rows if r["impl"] != "minift" and r["model"] == size
             and r["allocator"].startswith("tracking") and r["labels"] == "lm" and not r["sweep"]}
    fig, ax = plt.subplots(figsize=(max(7, 1.15 * len(ours)), 4.8))
    x = range(len(ours))
    bottom = [0.0] * len(ours)
    for i, c in enumerate(CATEGORIES):
        heights = [r.get(f"predicted_{c}_mib", 0) / 1024 for r in ours]
        ax.bar(x, heights, bottom=bottom, color=f"C{i}", label=LABELS[c] + (" (at the peak)" if c == "transient" else ""))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.plot(x, [r["peak_mib"] / 1024 for r in ours], "ko", label="minift, measured peak")
    peer_x = [i for i, r in enumerate(ours) if r["label"] in peers]
    ax.plot(peer_x, [peers[ours[i]["label"]]["peak_mib"] / 1024 for i in peer_x], "rx", markersize=9,
            label="transformers + peft, measured peak")
    ax.set_xticks(list(x), [r["label"].replace(", ", ",\n").replace(" (", "\n(") for r in ours], fontsize=7)
    ax.set(ylabel="GiB", title=f"The ledger at the predicted peak: {size}, batch {BATCH} x {SEQ}, fp32")
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def plot_sweep(rows: list[dict], path, size: str, device: str) -> None:
    plt = pyplot()
    fused = "LoRA r=8 c_attn, fused-linear + checkpointing"
    kinds = {"full": None, "LoRA r=8 c_attn": LoraConfig(rank=8), fused: LoraConfig(rank=8)}
    shapes = sorted({(B, T) for B, T in SWEEP} | {(BATCH, SEQ), (8, 1024), (16, 1024)}, key=lambda bt: bt[0] * bt[1])
    shapes = [(B, T) for B, T in shapes if T <= model_config(size).block_size]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    predicted = {}
    for (label, peft), color in zip(kinds.items(), ("C0", "C1", "C6")):
        extra = dict(loss="fused-linear", activation_checkpointing=True) if label == fused else dict(loss=default_loss(device))
        preds = [predict(RunSpec(model_config(size), peft, batch_size=B, seq_len=T, device=device, **extra)) for B, T in shapes]
        tokens = [B * T for B, T in shapes]
        predicted[label] = [p.peak.total for p in preds]
        ax.plot(tokens, [b / 2**30 for b in predicted[label]], "-", color=color, label=f"{label} (predicted)")
        pts = sorted((r["batch"] * r["seq"], r["peak_mib"] / 1024) for r in rows if r["impl"] == "minift" and r["model"] == size
                     and r["label"] == label and r["labels"] == "lm" and r["allocator"].startswith("tracking"))
        if pts:
            ax.plot(*zip(*pts), "o", color=color, label=f"{label} (measured)")
        if label != "full":
            ax2.plot(tokens, [a / b for a, b in zip(predicted[label], predicted["full"])], "-", color=color,
                     label=f"{label} / full, peak")
            share = [(p.peak.bytes["activations"] + p.peak.bytes["loss"] + p.peak.bytes["transient"]) / p.peak.total for p in preds]
            ax2.plot(tokens, share, ":", color=color, label=f"{label}: share of its peak in activations, loss, transients")
    ax.set(xscale="log", yscale="log", xlabel="tokens per batch (batch x sequence)", ylabel="peak (GiB)",
           title=f"{size}, fp32: peak of a step, predicted (lines) and measured (dots)")
    ax2.set(xscale="log", xlabel="tokens per batch", ylim=(0, 1.05), title="what LoRA still saves against full fine-tuning")
    for a in (ax, ax2):
        a.set_xticks(tokens, [f"{t:,}" for t in tokens], fontsize=7)
        a.minorticks_off()
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper left" if a is ax else "lower right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset and a few GPT-2 small rows")
    parser.add_argument("--sizes", nargs="+", help="model presets (default: tiny gpt2 gpt2-medium; quick: tiny)")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers + peft")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--labels", nargs="+", help="measure only the configurations with these labels (with --tag)")
    parser.add_argument("--tag", help="appended to the result files' names, e.g. for a sweep of some sizes only")
    args = parser.parse_args(argv)
    sizes = args.sizes or (["tiny-m"] if args.quick else ["tiny-m", "gpt2", "gpt2-medium"])
    cfgs = select(configs(sizes, args.quick, args.device), args.labels)
    print(f"{len(cfgs)} configurations on {device_name(args.device)}", flush=True)
    t0 = time.perf_counter()
    rows = run_all(cfgs, not args.no_peer, log=lambda line: print(line, flush=True))
    allocators = list(dict.fromkeys(r["allocator"] for r in rows))
    for allocator in allocators:
        print("\n" + table(rows, allocator))
    report = targets_report(rows)
    print("\n" + "\n".join(report))
    name = f"memory_vs_params_{device_slug(args.device)}" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    meta = dict(device=device_name(args.device), torch=torch.__version__, command=" ".join(["python -m benchmarks.memory_vs_params", *(argv or sys.argv[1:])]),
                batch=BATCH, seq=SEQ, wall_s=time.perf_counter() - t0, targets=report)
    try:
        import peft
        import transformers

        meta.update(transformers=transformers.__version__, peft=peft.__version__)
    except ImportError:  # the peers are optional (the test extra); the minift rows stand alone
        pass
    json_path, csv_path = write_results(name, rows, meta)
    key = "tiny-m" if args.quick else ("gpt2" if "gpt2" in sizes else sizes[0])
    pngs = [RESULTS / f"{name}.png", RESULTS / f"{name.replace('memory_vs_params', 'memory_ledger')}.png",
            RESULTS / f"{name.replace('memory_vs_params', 'memory_batch_seq')}.png"]
    plot_params(rows, pngs[0])
    plot_ledger(rows, pngs[1], key)
    plot_sweep(rows, pngs[2], key, args.device)
    print(f"\nwrote {json_path}, {csv_path}, " + ", ".join(str(p) for p in pngs))


if __name__ == "__main__":
    main()
