"""Triton kernels for fine-tuning, each beside a PyTorch reference.

Usable on its own: nothing here imports `minift`.
"""

from kernels._backend import BACKENDS, interpreter_enabled, select_backend, triton_available
from kernels.adamw import FusedAdamW
from kernels.cross_entropy import CrossEntropyFunction, cross_entropy
from kernels.linear_cross_entropy import LinearCrossEntropyFunction, linear_cross_entropy

__all__ = [
    "BACKENDS", "CrossEntropyFunction", "FusedAdamW", "LinearCrossEntropyFunction", "cross_entropy",
    "interpreter_enabled", "linear_cross_entropy", "select_backend", "triton_available",
]
