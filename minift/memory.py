"""The memory ledger, measured: the bytes a training step really holds, by category and at its peak.

`minift.ledger.predict` says where the bytes should go; this module measures the same run:

- weights, gradients and optimizer state from the live objects (unique storages, so a tied weight
  counts once);
- activations saved for backward exactly, through autograd's saved-tensor hooks
  (`torch.autograd.graph.saved_tensors_hooks`): every tensor an op saves passes through the pack
  hook; we keep a weak reference to it and, when the forward pass ends, add up the unique storages
  still alive that are not parameters. A forward hook on `ln_f` splits them into the model's
  activations and the loss's. Tensors a custom autograd Function keeps as attributes of its ctx
  (the fused losses do) are found by walking the graph;
- the real peak: on a GPU the CUDA caching allocator's own peak (`torch.cuda.max_memory_allocated`
  after `reset_peak_memory_stats`); on a CPU there is no allocator to ask, so we read the operating
  system's account of the process: resident memory (RSS) now, and its high-water mark (VmHWM)
  since the last reset. Linux resets the high-water mark when "5" is written to
  /proc/self/clear_refs (proc(5)), so a peak *above a baseline* can be taken inside one process.
  Each run happens in a fresh process (`measure_in_subprocess`), after a warm-up step of a tiny
  model, so that code pages, thread pools and library caches are already resident when the
  baseline is read.

glibc's malloc keeps freed memory for reuse instead of returning it, which inflates RSS peaks by
hundreds of MiB. With MALLOC_MMAP_THRESHOLD_=65536 in the environment every allocation above 64 KiB
gets its own mmap and is returned on free, so RSS follows the live bytes; `measure_in_subprocess`
sets it unless told otherwise. MKL's memory manager is a second cache of the same kind: it keeps
its GEMM buffers after a matmul (about 5 MiB for the tiny preset, 17 MiB for GPT-2 small, on 2
cores), which MKL_DISABLE_FAST_MM=1 turns off. The ledger is judged against measurements with both
settings (`TRACKING_ENV`), where resident memory is the live tensors and, while a matrix product
runs, the BLAS's workspace, which `measure_gemm_workspace` measures for the ledger; a run with
neither shows what a plain process holds, and `format_ledger` reports the difference after the steps
as "runtime caches".
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
# glibc reads this variable at process start; a value of 65536 bytes makes RSS track live memory.
TRACKING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
# ... and MKL returns its GEMM buffers after each call instead of caching them: RSS = live tensors.
TRACKING_ENV = {**TRACKING_MALLOC_ENV, "MKL_DISABLE_FAST_MM": "1"}


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in {_STATUS}")


def rss_bytes() -> int:
    """The process's resident memory now, in bytes (Linux)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The process's peak resident memory since start or the last `reset_peak_rss()`, in bytes."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0)."""
    _CLEAR_REFS.write_text("5")


def measure_in_subprocess(module: str, function: str, kwargs: dict, malloc_env: dict | None = None) -> dict:
    """Call `module.function(**kwargs)` in a fresh Python process and return the dict it returns.

    A fresh process has no memory left over from earlier work, so its peak is the peak of this one
    job. The function must return a JSON-serialisable dict (typically with its own measured bytes).

    Args:
        module, function: what to call, e.g. "benchmarks.bench_cross_entropy", "measure_one".
        kwargs: JSON-serialisable keyword arguments.
        malloc_env: extra environment; defaults to TRACKING_MALLOC_ENV. Pass {} for glibc's default.

    Raises:
        RuntimeError: the subprocess failed; its stderr is included.
    """
    env = {**os.environ, **(TRACKING_MALLOC_ENV if malloc_env is None else malloc_env)}
    code = (
        "import json, sys, importlib\n"
        f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
        "result = fn(**json.loads(sys.stdin.read()))\n"
        "print('\\n@@RESULT@@' + json.dumps(result))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(kwargs), capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module}.{function}({kwargs}) failed in a subprocess:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])


# ----------------------------------------------------------------------------------------------
# Counting live bytes


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] = frozenset()) -> int:
    """Bytes of the unique storages behind `tensors` (views of one storage count once), less `exclude`d ones.

    `exclude` holds storage data pointers (e.g. the parameters'), see `storage_ptrs`.
    """
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def storage_ptrs(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state (moments, momentum buffers, step counters)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward in a forward pass, by phase, exactly.

    Use as a context manager around the forward pass; then `alive()` gives, for each phase, the bytes
    of the unique storages that were saved in that phase and are still alive, parameters excluded.
    The phase starts as "activations" and becomes "loss" when `boundary` (the final LayerNorm) has
    run. The pack hook returns the tensor itself, so nothing about the run changes; it only keeps a
    weak reference. (A storage that an op saves but whose graph is dropped at once, such as the input
    of a checkpointed block that nothing needs, is dead by the end and not counted.)
    """

    def __init__(self, model: nn.Module, boundary: str = "ln_f"):
        self.exclude = storage_ptrs(model.parameters())
        self.phase = "activations"
        self.records: list[tuple[str, weakref.ref]] = []
        modules = [m for name, m in model.named_modules() if name.split(".")[-1] == boundary]
        if not modules:
            raise ValueError(f"the model has no module named {boundary!r} to split activations from the loss")
        self._boundary = modules[0]

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.records.append((self.phase, weakref.ref(t)))
        return t

    def _enter_loss(self, module, inputs, output) -> None:
        self.phase = "loss"

    def __enter__(self) -> SavedTensorMeter:
        self._handle = self._boundary.register_forward_hook(self._enter_loss)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._handle.remove()

    def alive_tensors(self) -> dict[str, list[torch.Tensor]]:
        by_phase: dict[str, list[torch.Tensor]] = {"activations": [], "loss": []}
        for phase, ref in self.records:
            if (t := ref()) is not None:
                by_phase[phase].append(t)
        return by_phase

    def alive(self) -> dict[str, int]:
        """Bytes saved and still alive, by phase; a storage saved in both phases counts in the first."""
        by_phase = self.alive_tensors()
        first = storage_bytes(by_phase["activations"], self.exclude)
        seen = self.exclude | storage_ptrs(by_phase["activations"])
        return {"activations": first, "loss": storage_bytes(by_phase["loss"], seen)}


def function_held_tensors(root: torch.Tensor) -> list[torch.Tensor]:
    """Tensors custom autograd Functions in `root`'s graph keep as ctx attributes (not save_for_backward).

    The fused losses keep the gradient they computed in the forward pass this way (kernels/); the
    saved-tensor hooks never see it.
    """
    found, stack, seen = [], [root.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            values = list(vars(node).values())
            while values:
                v = values.pop()
                if isinstance(v, torch.Tensor):
                    found.append(v)
                elif isinstance(v, (list, tuple)):
                    values.extend(v)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


# ----------------------------------------------------------------------------------------------
# Peaks: the CUDA allocator's, or the process's resident memory


class PeakProbe:
    """Memory now and its peak since `reset()`, in bytes above `baseline` (taken at construction).

    CUDA: the caching allocator's allocated bytes (`torch.cuda.memory_allocated`, peak from
    `max_memory_allocated` after `reset_peak_memory_stats`); the context and the allocator's cached
    but free blocks are not counted. CPU: the process's resident memory (Linux VmRSS / VmHWM).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.baseline = self.now()

    def now(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device) - self.baseline
        return rss_bytes() - self.baseline

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return peak_rss_bytes() - self.baseline


# ----------------------------------------------------------------------------------------------
# One training step, measured phase by phase


@dataclass
class StepParts:
    """What a training step needs; `forward()` returns the loss to call backward on.

    The step (minift.train's loop, one micro-batch): forward and loss, backward, clip the gradient
    norm, optimizer step, zero_grad(set_to_none=True).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[], torch.Tensor]
    grad_clip: float | None = 1.0
    boundary: str = "ln_f"  # the module whose end separates the model's activations from the loss's


def _clip_and_step(parts: StepParts) -> None:
    params = [p for p in parts.model.parameters() if p.grad is not None]
    if parts.grad_clip is not None:
        nn.utils.clip_grad_norm_(params, parts.grad_clip)  # as minift.train._clip
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)


def run_step(parts: StepParts, probe: PeakProbe | None = None) -> dict[str, int]:
    """One step; with a probe, the peak of each phase (forward, backward, optimizer) above its baseline."""
    peaks = {}
    for phase in ("forward", "backward", "optimizer"):
        if probe is not None:
            probe.reset()
        if phase == "forward":
            loss = parts.forward()
        elif phase == "backward":
            loss.backward()
            del loss
        else:
            _clip_and_step(parts)
        if probe is not None:
            peaks[phase] = probe.peak()
    return peaks


def measure_categories(parts: StepParts) -> dict[str, int]:
    """Live bytes by category over one instrumented step: weights (frozen, trainable), gradients,
    optimizer state, activations saved for backward and the loss's buffers (see the module docstring).

    The optimizer state is counted after the step, so a first step counts the state it creates.
    """
    params = list(parts.model.parameters())
    meter = SavedTensorMeter(parts.model, parts.boundary)
    with meter:
        loss = parts.forward()
    saved = meter.alive()
    hooked = [t for ts in meter.alive_tensors().values() for t in ts]
    saved["loss"] += storage_bytes(function_held_tensors(loss), meter.exclude | storage_ptrs(hooked))
    del hooked, meter
    loss.backward()
    del loss
    gradients = storage_bytes(p.grad for p in params if p.grad is not None)
    if parts.grad_clip is not None:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], parts.grad_clip)
    parts.optimizer.step()
    state = storage_bytes(optimizer_state_tensors(parts.optimizer))
    parts.optimizer.zero_grad(set_to_none=True)
    return dict(
        weights_frozen=storage_bytes(p for p in params if not p.requires_grad),
        weights_trainable=storage_bytes(p for p in params if p.requires_grad),
        gradients=gradients, optimizer_state=state, activations=saved["activations"], loss=saved["loss"],
    )


def _trim_heap() -> None:
    """Return glibc's free heap pages to the OS (malloc_trim), so that RSS growth shows new allocations."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, RSS may then under-count a little
        pass


def measure_step(build: Callable[[bool], StepParts], device: str = "cpu", steps: int = 2) -> dict:
    """Measure a training step in this (fresh) process; see the module docstring for the method.

    Args:
        build: build(tiny) -> StepParts. build(True) makes a tiny model of the same kind for the
            warm-up; build(False) the real one (model, optimizer, batch).
        device: "cpu" or "cuda".
        steps: steps whose peaks are measured (the first allocates the optimizer state lazily).

    Returns:
        A dict of bytes: "built" (the model, optimizer and batch, above the baseline taken before
        them), "after_steps" (the same, after the steps), "phases" (peak of each phase over the
        steps, above the baseline), "peak",
        "categories" (weights frozen/trainable, gradients, optimizer state, activations, loss: live
        bytes, counted on one more step), and "steps" (per-step phase peaks).
    """
    device = torch.device(device)
    warm = build(True)  # code pages, thread pools and caches become resident before the baseline
    run_step(warm, PeakProbe(device))
    measure_categories(warm)
    del warm
    gc.collect()
    _trim_heap()  # free heap pages left by the warm-up would otherwise absorb new allocations unseen
    probe = PeakProbe(device)
    parts = build(False)
    built = probe.now()
    per_step = [run_step(parts, probe) for _ in range(steps)]
    phases = {phase: max(step[phase] for step in per_step) for phase in per_step[0]}
    after = probe.now()  # the model, the optimizer state, and whatever the runtime kept

    categories = measure_categories(parts)  # one more step, instrumented; its peak is not used
    params = list(parts.model.parameters())
    return dict(device=str(device), built=built, after_steps=after, phases=phases, peak=max(phases.values()), steps=per_step,
                categories=categories, trainable_params=sum(p.numel() for p in params if p.requires_grad),
                total_params=sum(p.numel() for p in params))


# ----------------------------------------------------------------------------------------------
# A minift run: build it, measure it in a fresh process, print its ledger


def build_minift_step(spec, tiny: bool = False) -> StepParts:
    """The training step of a `minift.ledger.RunSpec`: the model (preset with random weights, or a
    checkpoint), the PEFT method, minift.train's optimizer and CompletionLoss, a random batch.

    tiny=True: the same method, loss and optimizer on a 64-wide model with a 256-token vocabulary
    and 16-token rows (the warm-up of `measure_step`).
    """
    import dataclasses

    from minift.checkpoint import load_gpt2
    from minift.evaluate import shifted_targets
    from minift.ledger import DTYPES
    from minift.model import GPT
    from minift.peft import apply_peft
    from minift.train import CompletionLoss, TrainConfig, build_optimizer

    config, B, T, k = spec.model, spec.batch_size, spec.seq_len, spec.completion_tokens
    if tiny:
        config = dataclasses.replace(config, vocab_size=256, n_embd=64, n_head=2)
        B, T, k = 1, 16, k and min(k, 15)
    torch.manual_seed(0)
    device, dtype = torch.device(spec.device), DTYPES[spec.dtype]
    if spec.checkpoint and not tiny:
        model = load_gpt2(spec.checkpoint, dtype=dtype, dropout=0.0)
    else:
        model = GPT(config).to(dtype)
    model = (model if spec.peft is None else apply_peft(model, spec.peft)).to(device)
    model.activation_checkpointing = spec.activation_checkpointing
    model.train()
    optimizer = build_optimizer(model, spec.optimizer, TrainConfig())
    loss_module = CompletionLoss(model, spec.loss)
    ids = torch.randint(0, config.vocab_size, (B, T), device=device)
    labels = ids.clone()
    if k is not None:
        labels[:, : T - k] = -100  # an instruction-style batch: only the completion (the last k tokens) is scored
    n = int((shifted_targets(labels) != -100).sum())

    def forward() -> torch.Tensor:
        loss, _ = loss_module(ids, labels, None)  # right-padded batches need no mask (minift.train)
        return loss / n  # the token-mean, as minift.train normalises by the step's completion tokens

    return StepParts(model, optimizer, forward)


def _measure_spec(spec: dict, steps: int = 2) -> dict:
    """Subprocess entry point: measure the RunSpec given as a dict."""
    import functools

    from minift.ledger import RunSpec

    run = RunSpec.from_dict(spec)
    return measure_step(functools.partial(build_minift_step, run), run.device, steps)


def measure(spec, tracking_malloc: bool = True, steps: int = 2) -> dict:
    """Measure `spec` (a minift.ledger.RunSpec) in a fresh process; returns `measure_step`'s dict.

    tracking_malloc: run under `TRACKING_ENV` (resident memory follows the live tensors), or under
    glibc's and MKL's defaults (what a plain run sees). No effect on the CUDA figures.
    """
    return measure_with("minift.memory", "_measure_spec", {"spec": spec.to_dict(), "steps": steps}, tracking_malloc)


# The step a user runs: on CPU tensors the kernels' PyTorch reference, also under the test suite,
# whose TRITON_INTERPRET=1 (tests/conftest.py) would otherwise reach the subprocess and run Triton's
# interpreter instead (kernels._backend). Harmless on a GPU, where the compiled kernels run.
_LIBRARY_PATH_ENV = {"TRITON_INTERPRET": "0"}


def measure_with(module: str, function: str, kwargs: dict, tracking_malloc: bool = True) -> dict:
    """`measure_in_subprocess` under TRACKING_ENV or the defaults; the result says which ("allocator")."""
    env = (TRACKING_ENV if tracking_malloc else {}) | _LIBRARY_PATH_ENV
    result = measure_in_subprocess(module, function, kwargs, env)
    result["allocator"] = "tracking (MALLOC_MMAP_THRESHOLD_=65536, MKL_DISABLE_FAST_MM=1)" if tracking_malloc else "default (glibc, MKL)"
    return result


# ----------------------------------------------------------------------------------------------
# The BLAS's workspace: memory a step holds that no tensor owns


def measure_gemm_workspace(spec, processes: int = 3) -> dict[str, int]:
    """The BLAS workspace of `spec`'s output-head products, in bytes by moment of the step (for `predict`).

    While a product runs, MKL packs panels of its operands into per-thread buffers and frees them when
    it returns (minift.ledger's docstring); resident memory sees them, tensors do not. We replay the
    products of `spec.head_matmuls` alone, in a fresh process under TRACKING_ENV (the same library,
    threads and settings as `measure`), and take the memory resident at each one's peak beyond its
    operands and results. The head's products are the ones that matter: its weight (V x C) is the
    largest matrix of the step, and they run at the moments that decide the peak.

    One process repeats its own figure to within 0.01 MiB, but the figure moves from one process to
    the next by a few tenths of a MiB (for the tiny model's head, 1.57 to 1.93 MiB in ten processes;
    we have not pinned down why: how MKL's threads overlap their buffers is one candidate), so we take
    the median of `processes` fresh processes. Measure on a quiet machine: with the cores busy with
    other work MKL's threads stop overlapping, and the tiny head's workspace reads 0.95 MiB, not 1.9.

    On a GPU: {} (PyTorch gives cuBLAS its workspace from the caching allocator at the first product,
    which the warm-up runs, and keeps it, so it is part of the baseline).
    """
    from minift.ledger import predict

    if spec.device != "cpu":
        return {}
    return _measure_head_workspace(predict(spec).head_matmuls, processes)


@functools.lru_cache(maxsize=None)
def _measure_head_workspace(head, processes: int) -> dict[str, int]:
    """Probe each distinct set of head products once per Python session (a process costs a second or two)."""
    runs = [measure_in_subprocess("minift.memory", "_replay_head_matmuls", {"head": dataclasses.asdict(head)}, TRACKING_ENV)
            for _ in range(processes)]
    return {moment: int(statistics.median(run[moment] for run in runs)) for moment in runs[0]}


def _replay_head_matmuls(head: dict) -> dict[str, int]:
    """Subprocess entry point: the workspace of each of the head's products, the largest per moment."""
    import torch.nn.functional as F

    from minift.ledger import DTYPES, HeadMatmuls

    head = HeadMatmuls(**head)
    dtype = DTYPES[head.dtype]
    h = torch.randn(head.rows, head.n_embd, dtype=dtype, requires_grad=head.input_grad)
    weight = torch.randn(head.vocab_size, head.n_embd, dtype=dtype, requires_grad=head.weight_grad)
    if head.fused_linear:  # the products of kernels.linear_cross_entropy's loop, into its preallocated buffers
        logits = torch.empty(head.rows, head.vocab_size, dtype=dtype)
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        products = [lambda: torch.mm(h, weight.t(), out=logits)]
        if head.input_grad:
            products.append(lambda: torch.mm(logits, weight, out=grad_h))
        if head.weight_grad:
            products.append(lambda: grad_w.addmm_(logits.t(), h))
        with torch.no_grad():
            return {"forward: loss": max(_scratch_bytes(product, into_buffers=True) for product in products)}
    workspace = {"forward: output head": _scratch_bytes(lambda: F.linear(h, weight))}  # as the model's lm_head runs it
    inputs = [t for t in (h, weight) if t.requires_grad]
    if inputs:  # autograd's own backward of the head, so the products have the layouts a step gives them
        logits = F.linear(h, weight)
        grad_logits = torch.randn_like(logits)
        workspace["backward: output head"] = _scratch_bytes(
            lambda: torch.autograd.grad(logits, inputs, grad_logits, retain_graph=True))
    return workspace


def _scratch_bytes(run: Callable[[], torch.Tensor | tuple[torch.Tensor, ...]], into_buffers: bool = False) -> int:
    """Resident memory at the peak of `run()` beyond the tensors it returns: its scratch.

    into_buffers: `run` writes into tensors allocated before it (out=, in place); what it returns is not new.
    The first call is a warm-up (code paths, thread pools, the first touch of `into_buffers`' pages).
    """
    run()
    gc.collect()
    _trim_heap()
    base = rss_bytes()
    reset_peak_rss()
    out = run()
    results = () if into_buffers else (out,) if isinstance(out, torch.Tensor) else out
    return max(0, peak_rss_bytes() - base - storage_bytes(t for t in results if t is not None))


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_ledger(prediction, measured: dict | None = None) -> str:
    """The ledger as a table: each category and the peak, predicted beside measured."""
    from minift.ledger import CATEGORIES, LABELS

    p, spec = prediction, prediction.spec
    peak = p.peak
    lines = [
        f"{spec.checkpoint or 'random weights'}: {p.total_params:,} parameters, {p.trainable_params:,} trainable "
        f"({100 * p.trainable_params / p.total_params:.3g}%)",
        spec.describe(),
        "",
        f"{'':<34}{'predicted':>14}{'measured':>14}",
    ]
    m = measured["categories"] if measured else {}
    for c in CATEGORIES[:-1]:
        predicted = "not measured" if c == "workspace" and p.gemm_workspace is None else _mib(p.sizes[c])
        lines.append(f"{LABELS[c]:<34}{predicted:>14}{_mib(m[c]) if c in m else '-':>14}")
    lines.append(f"{'transient at the peak':<34}{_mib(p.sizes['transient']):>14}{'-':>14}")
    if measured and not measured["device"].startswith("cuda"):
        # What stays resident after the steps beyond the model and the optimizer state: MKL's GEMM
        # buffers and malloc's arenas (near zero under TRACKING_ENV), see the module docstring.
        runtime = measured["after_steps"] - measured["built"] - m["optimizer_state"]
        lines.append(f"{'runtime caches (MKL, malloc)':<34}{'not modelled':>14}{_mib(runtime):>14}")
    measured_peak = measured["peak"] if measured else None

    def row(label, predicted, actual):
        diff = f"  ({100 * (predicted - actual) / actual:+.1f}%)" if actual else ""
        return f"{label:<34}{_mib(predicted):>14}{_mib(actual) if actual is not None else '-':>14}{diff}"

    lines.append(row("peak of the step", peak.total, measured_peak))
    phases = p.phase_peaks()
    names = {"forward": "  forward", "backward": "  backward", "optimizer": "  clip + optimizer step"}
    for phase, label in names.items():
        lines.append(row(label, phases[phase], measured["phases"][phase] if measured else None))
    built = p.sizes["weights_frozen"] + p.sizes["weights_trainable"]
    lines.append(row("peak above the built model", peak.total - built,
                     measured_peak - measured["built"] if measured else None))
    per_param = f"{peak.total / p.total_params:.2f} predicted"
    if measured:
        per_param += f", {measured_peak / p.total_params:.2f} measured"
    lines.append(f"bytes per parameter at the peak: {per_param} "
                 f"(weights + gradients + optimizer state alone: "
                 f"{(built + p.sizes['gradients'] + p.sizes['optimizer_state']) / p.total_params:.2f})")
    parts = " + ".join(f"{LABELS[c]} {_mib(b)}" for c, b in peak.bytes.items() if b)
    lines += ["", f"predicted peak at '{peak.name}': {parts}", f"  transient: {peak.transient}"]
    if measured:
        how = ("CUDA allocator peak (torch.cuda.max_memory_allocated)" if measured["device"].startswith("cuda")
               else f"peak resident memory of a fresh process above its baseline before the model was built, "
                    f"{measured['allocator']}")
        lines.append(f"measured: {how}; peak over {len(measured['steps'])} steps")
    return "\n".join(lines)
