"""Triton kernels for fine-tuning, each beside a PyTorch reference with the same contract.

Installed as `minift.kernels` (the folder is `kernels/` in the repository): a name no other PyPI
project owns. Usable on its own: nothing here imports the rest of minift.

- `cross_entropy`: fused softmax cross-entropy whose gradient is written over the logits;
- `linear_cross_entropy`: the output head and the loss in one op, chunk by chunk;
- `FusedAdamW`: AdamW in one pass over parameters, gradients and moments;
- `AdamW8bit`: AdamW with block-wise 8-bit moments, dequantised, updated and requantised in one pass;
- `quantize_nf4`, `dequantize_nf4`, `nf4_linear`: QLoRA's 4-bit NormalFloat weights (NF4_CODES).
"""

from ._backend import BACKENDS, interpreter_enabled, select_backend, triton_available
from .adamw8bit import AdamW8bit
from .fused_adamw import FusedAdamW
from .fused_cross_entropy import CrossEntropyFunction, cross_entropy
from .fused_linear_cross_entropy import LinearCrossEntropyFunction, linear_cross_entropy
from .nf4 import NF4_CODES, NF4LinearFunction, NF4Weight, dequantize_nf4, nf4_linear, quantize_nf4

__all__ = [
    "AdamW8bit", "BACKENDS", "CrossEntropyFunction", "FusedAdamW", "LinearCrossEntropyFunction", "NF4_CODES",
    "NF4LinearFunction", "NF4Weight", "cross_entropy", "dequantize_nf4", "interpreter_enabled",
    "linear_cross_entropy", "nf4_linear", "quantize_nf4", "select_backend", "triton_available",
]
