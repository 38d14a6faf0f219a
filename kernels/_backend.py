"""Which implementation runs an op: the compiled Triton kernel, Triton's interpreter, or PyTorch.

The rule (docs/architecture.md, "Kernels"): the tensor's device chooses.
- CUDA tensor, triton installed           -> the compiled Triton kernel;
- CPU tensor, TRITON_INTERPRET=1 was set   -> the same Triton kernel, run by Triton's interpreter
  (slow, but it is how tests check the kernels on a machine without a GPU);
- otherwise                                -> the PyTorch reference.
A `backend="triton"` or `backend="torch"` argument overrides the choice. Triton is imported lazily,
so `import minift.kernels` works where triton is not installed (macOS, Windows); then everything runs on
the reference, and we say so once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

BACKENDS = ("triton", "torch")


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET is set to a true value (Triton reads it when it is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def _warn_no_triton() -> None:
    # functools.cache makes this run once per process: the fallback is said once, not per call.
    warnings.warn("triton is not installed: kernels run on the PyTorch reference", RuntimeWarning, stacklevel=3)


def select_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """Return "triton" or "torch" for an op on `tensor`.

    Args:
        tensor: a tensor the op reads; its device decides when `backend` is None.
        backend: None (choose by device), "triton" or "torch" (force one).

    Raises:
        ValueError: `backend` is not one of None, "triton", "torch".
        RuntimeError: "triton" was forced where it cannot run (not installed, or a CPU tensor
            without TRITON_INTERPRET=1).
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be None, 'triton' or 'torch', got {backend!r}")
    on_cuda = tensor.device.type == "cuda"
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was requested but triton is not installed")
        if not on_cuda and not interpreter_enabled():
            raise RuntimeError(
                f"backend='triton' on a {tensor.device.type} tensor needs Triton's interpreter: "
                "set TRITON_INTERPRET=1 before triton is imported"
            )
        return "triton"
    if on_cuda or (tensor.device.type == "cpu" and interpreter_enabled()):
        if triton_available():
            return "triton"
        if on_cuda:
            _warn_no_triton()
    return "torch"
