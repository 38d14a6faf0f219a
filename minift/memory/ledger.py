"""The memory ledger, predicted: where every byte of a training step goes, from the configuration alone.

A training step (minift.training's loop) is: forward, loss, backward, gradient clipping, optimizer step,
zero_grad(set_to_none=True). What it holds, by category (Hugging Face's "model memory anatomy" uses
the same split; the byte counts below are ours, checked op by op against PyTorch 2.13 on CPU):

- weights: every parameter, frozen or trainable: numel * itemsize (4 B in fp32, 2 B in bf16). QLoRA's
  NF4 weights are frozen and cost their packed codes, int8 scales, fp32 factors and mean (~4.127 bits
  per weight, minift.kernels.nf4); each NF4 layer's op dequantises its weight (out * in * s) as a
  transient, in the forward and again in the backward: the last block's largest is at its moment.
- gradients: one per trainable parameter, same dtype, alive from its backward to zero_grad.
- optimizer state: AdamW keeps two moments per trainable parameter (2 * numel * itemsize) and a
  4-byte step counter per tensor; 8-bit AdamW (minift.kernels.adamw8bit) two 1-byte codes per
  parameter and two fp32 absmaxes per block of 2048; SGD with momentum one buffer. Created by the first step.
- activations: the tensors autograd saves in the forward pass for the backward pass. They are
  counted per op (`minift.memory.activations`) and checked exactly against `torch.autograd.graph.saved_tensors_hooks`.
- logits and loss buffers: what the loss holds from forward to backward, and its peak on the way.
- transients: memory that lives only for a moment: the loss's backward, a block's backward working
  set, a recomputed block (activation checkpointing), the dense gradient of the embedding, the
  optimizer's temporaries. They decide the peak, so each is a named term.

Shapes: B batch, T sequence (T' = T + n_virtual with prompt tuning), C width, V vocabulary, L layers,
nh heads, r LoRA rank, s bytes per element of the model's dtype, N scored tokens (B (T - 1) when
every token is scored; B k when only the last k of each row are).

The loss (minift.training.CompletionLoss) gathers the N scored rows of the final hidden states (index_select
saves the (N,) int64 index) and then:
- torch: logits (N, V) -> .float() -> log-softmax. The log-softmax (N V 4 B) is saved; its backward
  briefly holds it, its incoming gradient and its result: 3 N V 4 bytes at the start of backward.
- fused: minift.kernels.cross_entropy writes the gradient over the logits in the forward pass: N V s held.
- fused-linear: the logits never exist whole; one chunk of them (`chunk_rows`), and the gradients of the
  hidden rows (N C s) and of the head (V C s, when it trains) are computed in the forward pass.

Under a parallel strategy (`RunSpec.strategy` over `RunSpec.ranks`) every figure is one rank's: its
share of the weights, gradients and optimizer state, and its communication buffers (DDP's gradient
buckets, FSDP2's all-gathered weights and reduce-scatter buffers), as `minift.memory.ranks` derives them
after ZeRO (Rajbhandari et al. 2020); the activations are those of the rank's own batch_size rows.

The peak is the largest of a few moments of the second step (the first has no optimizer state
yet); `Prediction.moments` lists them, each with its bytes by category.

One thing a step holds is not a tensor: the BLAS library's workspace. While a matrix product runs,
MKL (like every GotoBLAS-style library: Goto and van de Geijn 2008, "Anatomy of High-Performance
Matrix Multiplication") copies panels of its operands into packed per-thread buffers and frees them
when it returns. For the output head, whose weight is the largest matrix of the model (V x C), that
is a few MiB (benchmarks/results/ has the measured figures). Its size is the library's choice (its blocking, the thread count), not the configuration's, so `predict` takes it
as measured: `minift.memory.workspace.measure_gemm_workspace` replays the head's products (`HeadMatmuls`) in a
fresh process. Without it (the default) the ledger is the tensors alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

import minift.kernels.adamw8bit as adamw8bit
from minift.kernels.fused_cross_entropy import REFERENCE_CHUNK_BYTES
from minift.kernels.fused_linear_cross_entropy import chunk_rows
from minift.memory.activations import Storage, Walk, block_backward_bytes
from minift.memory.ranks import rank_state
from minift.memory.spec import DTYPES, RunSpec, meta_model
from minift.peft import nf4_layers

CATEGORIES = ("weights_frozen", "weights_trainable", "gradients", "optimizer_state", "activations", "loss",
              "communication", "workspace", "transient")
LABELS = {
    "weights_frozen": "weights, frozen",
    "weights_trainable": "weights, trainable",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations saved for backward",
    "loss": "logits and loss buffers",
    "communication": "communication buffers",
    "workspace": "BLAS workspace (measured)",
    "transient": "transient",
}


@dataclass
class Moment:
    """The live bytes at one instant of the step, by category; the peak is the largest moment."""

    name: str
    phase: str  # "forward" | "backward" | "optimizer"
    bytes: dict[str, int]
    transient: str = ""  # what the transient bytes are

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True)
class HeadMatmuls:
    """The output head's matrix products in one step: what `minift.memory.workspace.measure_gemm_workspace` replays.

    Without the fused-linear loss: logits = h W^T at the moment "forward: output head"; d(h) =
    d(logits) W and d(W) = d(logits)^T h at "backward: output head". With it
    (minift.kernels.linear_cross_entropy) all three run chunk by chunk at "forward: loss", `rows` at a time.
    """

    rows: int  # rows of h per product: the N scored tokens, or one chunk of them
    n_embd: int
    vocab_size: int
    dtype: str
    weight_grad: bool  # d(W) is computed: the head's weight trains
    input_grad: bool  # d(h) is computed: something below the head trains
    fused_linear: bool


@dataclass
class Prediction:
    spec: RunSpec
    trainable_params: int
    total_params: int
    sizes: dict[str, int]  # full size of each category (transient and workspace: the ones at the peak)
    activation_terms: list[tuple[str, int]]  # (label, bytes) of every saved storage
    loss_terms: list[tuple[str, int]]
    head_matmuls: HeadMatmuls
    gemm_workspace: dict[str, int] | None  # as given to `predict`; None: the tensors alone
    moments: list[Moment] = field(default_factory=list)

    @property
    def peak(self) -> Moment:
        return max(self.moments, key=lambda m: m.total)

    def phase_peaks(self) -> dict[str, int]:
        peaks: dict[str, int] = {}
        for m in self.moments:
            peaks[m.phase] = max(peaks.get(m.phase, 0), m.total)
        return peaks


@dataclass
class _Loss:
    """What the loss holds and moves, by moment (see the module docstring for each loss)."""

    held: list[tuple[str, int]]  # from its forward to its backward: (label, bytes)
    forward: int  # transient at its forward peak, beyond `held`
    backward: int  # transient at its backward peak, beyond `held`
    head_held: int  # what is still held when the output head's backward runs
    head: int  # transient then: d(logits), d(hidden rows)
    head_forward_held: int = 0  # held while the head's product makes the logits (not with fused-linear)
    head_forward: int = 0  # transient then: final hidden states, scored rows and targets, the logits


def _fused_linear_chunk_rows(spec: RunSpec) -> int:
    """Rows per chunk of minift.kernels.linear_cross_entropy for this step: the kernel's own choice."""
    return chunk_rows(spec.scored_tokens, spec.model.vocab_size, spec.itemsize, spec.device)


def _loss(spec: RunSpec, head_trains: bool, hidden_grad: bool) -> _Loss:
    B, C, V, s, N = spec.batch_size, spec.model.n_embd, spec.model.vocab_size, spec.itemsize, spec.scored_tokens
    hidden = B * (spec.seq_len + spec.n_virtual) * C * s  # ln_f's output, alive in the loss's frame
    rows_copy = N * C * s  # the gathered scored rows (N, C)
    mask = [("scored-row index (N,) int64", N * 8)] if hidden_grad else []  # saved by index_select
    if spec.loss == "fused-linear":
        rows = _fused_linear_chunk_rows(spec)
        chunk = min(rows, N) * V * s  # the one logits buffer every chunk reuses
        work = min(rows, N, max(1, REFERENCE_CHUNK_BYTES // (V * 4))) * V * 4 if s != 4 else 0
        held = mask + [("d(hidden rows) (N, C), computed in forward", rows_copy)]
        if head_trains:
            # fp16 accumulates it in fp32 (the kernel's docstring: its gradient is written unscaled)
            held.append(("d(head weight) (V, C), computed in forward", V * C * (4 if spec.dtype == "float16" else s)))
        # labels (N,) int64 and per-row losses (N,) fp32 beside the chunk; no head backward follows
        return _Loss(held, hidden + rows_copy + N * 12 + chunk + work, 0, sum(b for _, b in mask), rows_copy)
    saved_rows = [("head input: scored hidden rows (N, C)", rows_copy)] if head_trains else []
    gathered = 0 if head_trains else rows_copy  # alive in the loss's frame when nobody saves it
    before_head = sum(b for _, b in mask + saved_rows)
    head_forward = hidden + gathered + N * 8 + N * V * s  # the targets (N,) int64 are gathered with the rows
    if spec.loss == "torch":
        held = mask + saved_rows + [("log-softmax (N, V) fp32", N * V * 4), ("targets (N,) int64", N * 8), ("total weight", 4)]
        upcast = N * V * s if s != 4 else 0  # d(logits) rounded back to the model's dtype
        return _Loss(held,
                     forward=hidden + gathered + N * V * 4,  # the fp32 logits beside the log-softmax being written
                     backward=2 * N * V * 4,  # d(log-softmax) and d(logits) beside the saved log-softmax
                     head_held=before_head + N * 8 + 4,
                     head=max(N * V * 4 + upcast, N * V * s + rows_copy),
                     head_forward_held=before_head, head_forward=head_forward)
    held = mask + saved_rows + [("gradient written over the logits (N, V)", N * V * s)]
    work = min(N, max(1, REFERENCE_CHUNK_BYTES // (V * 4))) * V * 4 if s != 4 else 0  # fp32 rows of the reference
    return _Loss(held, forward=hidden + gathered + N * 12 + work, backward=0,
                 head_held=before_head, head=N * V * s + rows_copy,
                 head_forward_held=before_head, head_forward=head_forward)


def predict(spec: RunSpec, gemm_workspace: dict[str, int] | None = None) -> Prediction:
    """The ledger of one training step of `spec`: its tensors from the configuration alone (no memory is
    allocated), and the BLAS workspace as measured, if given.

    gemm_workspace: the BLAS workspace of the output head's products, by moment, as
    `minift.memory.workspace.measure_gemm_workspace(spec)` measures it; None: tensors only (see the module docstring).

    Raises:
        ValueError: `gemm_workspace` names a moment the step does not have.
    """
    model = meta_model(spec)
    gpt = model.base_model if isinstance(model, nn.Module) and hasattr(model, "base_model") else model
    cfg, s = spec.model, spec.itemsize
    B, T, C, nh, V = spec.batch_size, spec.seq_len, cfg.n_embd, cfg.n_head, cfg.vocab_size
    Tp, rows = T + spec.n_virtual, B * (T + spec.n_virtual)

    params = list(model.parameters())  # a tied tensor appears once
    trainable = [p for p in params if p.requires_grad]
    rank = rank_state(spec, model, gpt)  # one rank's share under spec.strategy (minift.memory.ranks)
    nbytes = rank.grad_bytes  # the gradients of some parameters, as this rank holds them
    grads = nbytes(trainable)
    # the dequantised weight of an NF4 layer lives for its op; in the last block's backward, the largest one
    dequantized = max((layer.weight.numel * s for layer in nf4_layers(gpt.transformer.h[-1]).values()), default=0)
    optimizer_temp, optimizer_label = _optimizer_temporaries(spec, trainable, rank.optimizer_numel)

    # ---- forward: what autograd saves
    stats_s = s if spec.device == "cpu" else 4  # LayerNorm mean/rstd: the input's dtype on CPU, fp32 on CUDA
    walk = Walk(s, stats_s)
    wte, wpe = gpt.transformer.wte.weight, gpt.transformer.wpe.weight
    if wte.requires_grad:
        walk.save(Storage(B * T * 8, False), "token ids (B, T) int64, for wte's gradient")
    if wpe.requires_grad:
        walk.save(Storage(Tp * 8, False), "positions (1, T) int64, for wpe's gradient")
    x = Storage(rows * C * s, wte.requires_grad or wpe.requires_grad or spec.n_virtual > 0)
    block_saved, block_work = [], []
    for i, blk in enumerate(gpt.transformer.h):
        inner = Walk(s, stats_s)
        out = inner.block(x, blk, B, Tp, C, nh, i)
        # recomputed in backward under checkpointing: the block's saved tensors less its input, which
        # the checkpoint holds already
        block_saved.append(inner.nbytes - (x.nbytes if x in inner.saved else 0))
        block_work.append(block_backward_bytes(inner, rows, C))
        if spec.activation_checkpointing:
            if out.grad:  # the checkpoint keeps the block's input; a block nothing needs is dropped whole
                walk.save(x, f"h.{i} input (kept by the checkpoint)")
        else:
            walk.saved.update(inner.saved)
        x = out
    hidden = walk.layer_norm(x, gpt.transformer.ln_f, rows, "ln_f")  # the head's input
    activations = walk.nbytes
    head_trains = gpt.lm_head.weight.requires_grad
    loss = _loss(spec, head_trains, hidden.grad)
    held = sum(b for _, b in loss.held)
    head_grad = nbytes([gpt.lm_head.weight]) if head_trains else 0
    ln_f_grads = nbytes([p for p in gpt.transformer.ln_f.parameters() if p.requires_grad])
    last_block_grads = nbytes([p for p in gpt.transformer.h[-1].parameters() if p.requires_grad])
    dx = rows * C * s  # the gradient flowing back through the residual stream, (B, T', C)
    recompute = block_saved[-1] if spec.activation_checkpointing else 0
    embedding_grad = V * C * s if wte.requires_grad else 0  # the lookup's dense (V, C) gradient, then added to wte.grad

    fixed = dict(weights_frozen=rank.weights[0], weights_trainable=rank.weights[1], optimizer_state=rank.optimizer_state)
    fixed_now = lambda phase: {**fixed, "communication": rank.communication[phase]}
    moments = [
        Moment("forward: loss", "forward", {**fixed_now("forward"), "activations": activations, "loss": held, "transient": loss.forward},
               "the loss's forward working set (final hidden states, logits or one chunk of them)"),
        Moment("backward: loss", "backward", {**fixed_now("backward"), "activations": activations, "loss": held, "transient": loss.backward},
               "the loss's backward buffers (d log-softmax, d logits)"),
        Moment("backward: output head", "backward",
               {**fixed_now("backward"), "activations": activations, "loss": loss.head_held, "gradients": head_grad, "transient": loss.head},
               "d(logits) and d(hidden rows) in the head's backward"),
        Moment("backward: last block", "backward",
               {**fixed_now("backward"), "activations": activations, "gradients": head_grad + ln_f_grads + last_block_grads,
                "transient": recompute + block_work[-1] + dx + dequantized},
               ("the recomputed block's saved tensors and " if recompute else "") + "the block's backward working set"
               + (" and a dequantised NF4 weight" if dequantized else "")),
        Moment("backward: embeddings", "backward", {**fixed_now("backward"), "gradients": grads, "transient": embedding_grad + dx},
               "the embedding lookup's dense gradient (V, C) and d(embeddings)" if embedding_grad else "d(embeddings)"),
        Moment("optimizer step", "optimizer",
               {**fixed_now("optimizer"), "weights_frozen": rank.weights_at_optimizer[0],
                "weights_trainable": rank.weights_at_optimizer[1], "gradients": grads, "transient": optimizer_temp},
               optimizer_label),
    ]
    if spec.loss != "fused-linear":  # the head's product, logits = h W^T, runs before the loss's own forward
        moments.insert(0, Moment("forward: output head", "forward",
                                 {**fixed_now("forward"), "activations": activations, "loss": loss.head_forward_held,
                                  "transient": loss.head_forward},
                                 "the logits being written, the final hidden states and the scored rows"))
    if spec.activation_checkpointing:
        moments.insert(0, Moment("forward: a checkpointed block", "forward",
                                 {**fixed_now("forward"), "activations": activations, "transient": 9 * dx},
                                 "one block's forward working set (GELU input and output, residual)"))
    workspace = gemm_workspace or {}
    unknown = set(workspace) - {m.name for m in moments}
    if unknown:
        raise ValueError(f"gemm_workspace names moments this step does not have: {sorted(unknown)}; "
                         f"its moments: {[m.name for m in moments]}")
    for m in moments:
        m.bytes = {c: m.bytes.get(c, 0) for c in CATEGORIES} | {"workspace": workspace.get(m.name, 0)}
    head_rows = min(_fused_linear_chunk_rows(spec), spec.scored_tokens) if spec.loss == "fused-linear" else spec.scored_tokens
    head = HeadMatmuls(head_rows, C, V, spec.dtype, weight_grad=head_trains, input_grad=hidden.grad,
                       fused_linear=spec.loss == "fused-linear")

    prediction = Prediction(
        spec=spec,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in params) + sum(layer.weight.numel for layer in nf4_layers(model).values()),
        sizes=dict(weights_frozen=rank.weights[0], weights_trainable=rank.weights[1], gradients=grads,
                   optimizer_state=rank.optimizer_state, activations=activations, loss=held,
                   communication=max(rank.communication.values()), workspace=0, transient=0),
        activation_terms=[(label, t.nbytes) for t, label in walk.saved.items()],
        loss_terms=loss.held,
        head_matmuls=head,
        gemm_workspace=gemm_workspace,
        moments=moments,
    )
    prediction.sizes["workspace"] = prediction.peak.bytes["workspace"]
    prediction.sizes["transient"] = prediction.peak.bytes["transient"]
    return prediction


def _optimizer_temporaries(spec: RunSpec, trainable: list[torch.Tensor], numel_of) -> tuple[int, str]:
    """Bytes the optimizer step allocates and frees again, and what they are.

    - torch.optim.AdamW: none on CPU, where minift.training.build_optimizer asks for torch's fused
      kernel (in place, one tensor at a time). On CUDA (foreach) sqrt runs over the whole group at
      once: the bytes of the largest parameter group.
    - kernels.FusedAdamW: none on CUDA (Triton, in place); its CPU reference holds one sqrt
      temporary (and fp32 copies of p, g, m, v for 16-bit parameters).
    - SGD with weight decay: `grad.add(param, alpha=wd)` is a new tensor: the largest decayed tensor
      on CPU, the whole decayed group with foreach on CUDA.

    Under a sharded optimizer (zero1 and up) each tensor is this rank's shard of it (`numel_of`);
    with mixed precision the optimizer's tensors are fp32.
    """
    numel = lambda ps: max((numel_of(p) for p in ps), default=0)
    s = 4 if spec.precision == "mixed" else DTYPES[spec.dtype].itemsize
    decayed = [p for p in trainable if p.dim() >= 2]  # minift.training.build_optimizer decays matrices only
    groups = [decayed, [p for p in trainable if p.dim() < 2]]
    on_cuda = spec.device != "cpu"
    if spec.optimizer == "adamw":
        if on_cuda:
            return max(sum(numel_of(p) for p in g) for g in groups) * s, "AdamW's foreach sqrt(v) over a parameter group"
        return 0, "none (torch's fused CPU kernel updates p, m, v in place)"
    if spec.optimizer == "adamw8bit":
        if on_cuda:
            return 0, "none (the Triton kernel dequantises, updates and requantises in place)"
        # the reference works one chunk of blocks at a time (kernels/adamw8bit.py); per element of the chunk
        # it holds fp32 p, g, m, v (16 B) and, at its worst line, three more 4-byte temporaries (the
        # update's denominator chain) or a 4-byte scaled copy and the int64 bucketize index: 28 B
        chunk = min(-(-numel(trainable) // adamw8bit.BLOCK) * adamw8bit.BLOCK, adamw8bit.REFERENCE_CHUNK)
        return 28 * chunk, "AdamW8bit reference's fp32 working copies of one chunk of blocks"
    if spec.optimizer == "fused-adamw":
        if on_cuda:
            return 0, "none (the Triton kernel updates p, m, v in place)"
        copies = 4 if s != 4 else 0  # fp32 working copies of p, g, m, v for bf16/fp16 tensors
        return (1 + copies) * numel(trainable) * 4, "FusedAdamW reference's sqrt(v) temporary (largest tensor)"
    if on_cuda:
        return sum(numel_of(p) for p in decayed) * s, "SGD's foreach weight-decayed gradients"
    return numel(decayed) * s, "SGD's weight-decayed gradient (largest decayed tensor)"
