"""The BLAS's workspace: memory a step holds that no tensor owns, measured for the ledger.

While a matrix product runs, MKL (like every GotoBLAS-style library: Goto and van de Geijn 2008)
packs panels of its operands into per-thread buffers and frees them when it returns; resident memory
sees them, tensors do not. `measure_gemm_workspace` replays the output head's products alone, in
fresh processes, and `minift.memory.ledger.predict` adds what they hold at the moments they run.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minift.memory.ledger import HeadMatmuls, predict
from minift.memory.probes import TRACKING_ENV, _trim_heap, measure_in_subprocess, peak_rss_bytes, reset_peak_rss, rss_bytes
from minift.memory.saved import storage_bytes
from minift.memory.spec import DTYPES


def measure_gemm_workspace(spec, processes: int = 3) -> dict[str, int]:
    """The BLAS workspace of `spec`'s output-head products, in bytes by moment of the step (for `predict`).

    While a product runs, MKL packs panels of its operands into per-thread buffers and frees them when
    it returns (minift.memory.ledger's docstring); resident memory sees them, tensors do not. We replay the
    products of `spec.head_matmuls` alone, in a fresh process under TRACKING_ENV (the same library,
    threads and settings as `measure`), and take the memory resident at each one's peak beyond its
    operands and results. The head's products are the ones that matter: its weight (V x C) is the
    largest matrix of the step, and they run at the moments that decide the peak.

    One process repeats its own figure closely, but the figure moves from one process to the next
    (how MKL's threads overlap their buffers is one candidate; the README gives the measured spread),
    so we take the median of `processes` fresh processes. Measure on a quiet machine: with the cores
    busy with other work MKL's threads stop overlapping, and the workspace reads about one thread's
    buffer instead of two.

    On a GPU: {} (PyTorch gives cuBLAS its workspace from the caching allocator at the first product,
    which the warm-up runs, and keeps it, so it is part of the baseline).
    """
    if spec.device != "cpu":
        return {}
    return _measure_head_workspace(predict(spec).head_matmuls, processes)


@functools.lru_cache(maxsize=None)
def _measure_head_workspace(head, processes: int) -> dict[str, int]:
    """Probe each distinct set of head products once per Python session (a process costs a second or two)."""
    runs = [measure_in_subprocess("minift.memory.workspace", "_replay_head_matmuls", {"head": dataclasses.asdict(head)}, TRACKING_ENV)
            for _ in range(processes)]
    return {moment: int(statistics.median(run[moment] for run in runs)) for moment in runs[0]}


def _replay_head_matmuls(head: dict) -> dict[str, int]:
    """Subprocess entry point: the workspace of each of the head's products, the largest per moment."""
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
