"""Selective fine-tuning: train a chosen subset of the existing parameters and freeze the rest.

The parts to choose from: the last k transformer blocks; the biases only (BitFit, Ben Zaken et al.
2022); the LayerNorms. Nothing is added to the model, so the trained part is saved under minift's
own parameter names (`minift.peft.files`: PEFT has no format for it).
"""

from __future__ import annotations

import re

from minift.model import GPT


def selected_parameters(model: GPT, train: str) -> list[str]:
    """The names of the parameters `train` selects (see SelectiveConfig), in model order.

    - "last-K-blocks": every parameter of the last K transformer blocks, K * (12 C^2 + 13 C) with
      biases; embeddings, ln_f and the (tied) head stay frozen.
    - "bias": every bias vector, the linear layers' and the LayerNorms' (BitFit), L * 11 C + C.
    - "layernorm": the LayerNorms' scale and shift, ln_1, ln_2 in each block and ln_f: 4 L C + 2 C.

    Raises:
        ValueError: an unknown part, K outside 1..n_layer, a selection that is empty (biases of a
            model built with bias=False).
    """
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for part in train.split("+"):
        if m := re.fullmatch(r"last-(\d+)-blocks?", part):
            k, n_layer = int(m.group(1)), model.config.n_layer
            if not 1 <= k <= n_layer:
                raise ValueError(f"{part!r}: the model has {n_layer} blocks; choose K in 1..{n_layer}")
            prefixes = tuple(f"transformer.h.{i}." for i in range(n_layer - k, n_layer))
            chosen |= {n for n in names if n.startswith(prefixes)}
        elif part == "bias":
            chosen |= {n for n in names if n.endswith(".bias")}
        elif part == "layernorm":
            chosen |= {n for n in names if re.search(r"(^|\.)ln_(1|2|f)\.", n)}
        else:
            raise ValueError(
                f"unknown selective part {part!r} in {train!r}; use 'last-K-blocks', 'bias', 'layernorm', joined by '+'"
            )
    if not chosen:
        raise ValueError(f"{train!r} selects no parameter of this model (built with bias={model.config.bias})")
    return [n for n in names if n in chosen]


def apply_selective(model: GPT, train: str) -> GPT:
    """Freeze every parameter except those `train` selects; returns the same model."""
    chosen = set(selected_parameters(model, train))
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return model
