"""Peak memory, read where it can be trusted: the CUDA allocator's peak, or a fresh process's resident memory.

On a GPU, the CUDA caching allocator's own peak (`torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`). On a CPU there is no allocator to ask, so we read the operating system's
account of the process: resident memory (RSS) now, and its high-water mark (VmHWM) since the last
reset. Linux resets the high-water mark when "5" is written to /proc/self/clear_refs (proc(5)), so
a peak *above a baseline* can be taken inside one process. Each measurement runs in a fresh process
(`measure_in_subprocess`): a process that has done other work first (a test runner, a notebook)
holds freed memory whose reuse hides new allocations, so its peak says nothing about the code.

glibc's malloc keeps freed memory for reuse instead of returning it, which inflates RSS peaks by
hundreds of MiB. With MALLOC_MMAP_THRESHOLD_=65536 in the environment every allocation above 64 KiB
gets its own mmap and is returned on free, so RSS follows the live bytes. MKL's memory manager is a
second cache of the same kind: it keeps its GEMM buffers after a matmul, which MKL_DISABLE_FAST_MM=1
turns off. The ledger is judged against measurements with both settings (`TRACKING_ENV`); a run with
neither shows what a plain process holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

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

# The step a user runs: on CPU tensors the kernels' PyTorch reference, also under the test suite,
# whose TRITON_INTERPRET=1 (tests/conftest.py) would otherwise reach the subprocess and run Triton's
# interpreter instead (minift.kernels._backend). Harmless on a GPU, where the compiled kernels run.
_LIBRARY_PATH_ENV = {"TRITON_INTERPRET": "0"}


def measure_with(module: str, function: str, kwargs: dict, tracking_malloc: bool = True) -> dict:
    """`measure_in_subprocess` under TRACKING_ENV or the defaults; the result says which ("allocator")."""
    env = (TRACKING_ENV if tracking_malloc else {}) | _LIBRARY_PATH_ENV
    result = measure_in_subprocess(module, function, kwargs, env)
    result["allocator"] = "tracking (MALLOC_MMAP_THRESHOLD_=65536, MKL_DISABLE_FAST_MM=1)" if tracking_malloc else "default (glibc, MKL)"
    return result


def _trim_heap() -> None:
    """Return glibc's free heap pages to the OS (malloc_trim), so that RSS growth shows new allocations."""
    # Not glibc (no libc.so.6, or no malloc_trim in it): nothing to trim, and RSS may then under-count a little.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
