"""The loss of a fine-tuning step: the summed cross-entropy of the completion tokens, three ways.

- "torch": `F.cross_entropy` on the fp32 logits of the scored rows (eager PyTorch, the reference);
- "fused": `minift.kernels.cross_entropy`, the same logits, the gradient written over them in the forward;
- "fused-linear": `minift.kernels.linear_cross_entropy`, the output head and the loss in one op, chunk by
  chunk, so the (tokens, vocabulary) logits never exist whole.

`LOSSES` is the one list of choices; `default_loss` is what "auto" means on a device.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.data import IGNORE_INDEX, shifted_targets
from minift.kernels import cross_entropy, linear_cross_entropy

LOSSES = ("torch", "fused", "fused-linear")


def default_loss(device: torch.device | str) -> str:
    """The loss "auto" means on `device`.

    CUDA: "fused-linear", the [tokens, vocabulary] logits never exist whole (Triton kernels). CPU:
    "fused", the PyTorch reference of minift.kernels.cross_entropy: the same logits as F.cross_entropy,
    with the gradient written over them in the forward pass, so no log-softmax is kept for backward
    and no [tokens, vocabulary] gradient is allocated (2 of eager's 3 such buffers gone; the bytes and
    the step time are in benchmarks/results/).
    """
    return "fused-linear" if torch.device(device).type == "cuda" else "fused"


class CompletionLoss(nn.Module):
    """Summed cross-entropy of the completion tokens of a batch, times `scale`, and how many there were.

    Only completion tokens are scored, so only their hidden states go through the output head:
    the logits are (completion tokens, V), not (B*T, V). With "fused-linear" even those never exist
    whole (minift.kernels.linear_cross_entropy works in chunks).

    A training step divides by its token count (all micro-batches, all ranks) before backward. Passed
    as `scale`, the fused losses fold it into the gradient they write in forward, so backward starts
    with grad_output 1 and has nothing to rescale (kernels/fused_cross_entropy.py).
    """

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.model, self.loss = model, loss

    def forward(self, input_ids, labels, attention_mask, scale: float = 1.0, rows: torch.Tensor | None = None):
        """(scale * summed loss, number of scored tokens).

        rows: the flat positions of the scored tokens, `scored_rows(labels)`, on the model's device. A
            training loop computes them on the host, where the batch is made; left out, they are computed
            here, which on a GPU waits for the device (a host sync).
        """
        # Batches are right-padded, so under causal attention no real token ever sees a pad: the
        # mask changes nothing we score, and without it SDPA takes its fast causal path.
        hidden = self.model.hidden_states(input_ids)  # (B, T, C)
        rows = scored_rows(labels).to(hidden.device) if rows is None else rows
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (N, C)
        t = shifted_targets(labels).reshape(-1)[rows]  # (N,)
        weight = self.model.lm_head.weight  # (V, C)
        if self.loss == "fused-linear":
            loss = linear_cross_entropy(h, weight, t, reduction="sum", scale=scale)
        elif self.loss == "fused":
            loss = cross_entropy(self.model.lm_head(h), t, reduction="sum", scale=scale)
        else:
            loss = F.cross_entropy(self.model.lm_head(h).float(), t, reduction="sum") * scale
        return loss, len(rows)


def scored_rows(labels: torch.Tensor) -> torch.Tensor:
    """The flat positions (N,) int64 of a (B, T) batch's scored tokens: those whose next-token label is kept."""
    return (shifted_targets(labels).reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
