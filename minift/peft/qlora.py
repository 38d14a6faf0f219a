"""QLoRA's frozen base: linear layers whose weights are stored in 4-bit NormalFloat (Dettmers et al. 2023).

QLoRA = LoRA (minift.peft.lora) on top of a base whose linear weights are quantised to NF4 with
double-quantised scales (minift.kernels.nf4: 4.127 bits per weight instead of 32). The forward
dequantises a layer's weight, multiplies and drops it; the backward dequantises again for the input
gradient (the weight is frozen, so it needs no gradient). LoRA's A and B stay in full precision and
train exactly as on an fp32 base, on the base's dequantised weights W' instead of W.

`NF4Linear` replaces an `nn.Linear`; `quantize_base(model)` replaces every linear layer of the
transformer blocks (the embeddings, norms and the output head, tied to the token embedding, stay in
full precision, as in QLoRA, where only the linear layers of the blocks are quantised);
`quantized_bits(model)` is the bits per quantised weight; `dequantize_base(model)` gives nn.Linear back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minift.kernels.nf4 import NF4Weight, dequantize_nf4, nf4_linear, quantize_nf4

class NF4Linear(nn.Module):
    """A frozen linear layer y = x W'^T + b with W' dequantised from NF4 in every forward and backward.

    Buffers (saved in the state_dict, moved by .to()): `packed` (out * in / 2,) uint8, `scales`
    (out * in / 64,) int8, `factors` fp32, `mean` () fp32 (minift.kernels.nf4.NF4Weight); `bias`
    (out,) is a frozen parameter in full precision. The compute dtype is the input's.
    """

    def __init__(self, weight: NF4Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", weight.packed)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("factors", weight.factors)
        self.register_buffer("mean", weight.mean)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> NF4Linear:
        """Quantise `linear`'s weight (its numel a multiple of 64) and keep its bias."""
        return cls(quantize_nf4(linear.weight), linear.bias)

    @property
    def weight(self) -> NF4Weight:
        """The NF4 weight (out, in); `dequantize_nf4(layer.weight)` gives W' in full precision."""
        return NF4Weight(self.packed, self.scales, self.factors, self.mean, (self.out_features, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        return nf4_linear(x, self.weight, self.bias)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        """An `nn.Linear` holding W' (and the bias): what this layer computes, in full precision."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.packed.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(dequantize_nf4(self.weight, dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nf4"


def quantize_base(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` inside `model.transformer.h` (the blocks) by an `NF4Linear`, in place.

    Returns the same model. Layers already quantised are left as they are.

    Raises:
        ValueError: a linear layer whose weight's numel is not a multiple of 64 (named).
    """
    for name, module in list(model.named_modules()):
        if not name.startswith("transformer.h.") or not isinstance(module, nn.Linear):
            continue
        if module.weight.numel() % 64:
            raise ValueError(f"{name}: weight {tuple(module.weight.shape)} has a numel that is not a multiple of 64; NF4 cannot store it")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, NF4Linear.from_linear(module).train(module.training))
    return model


def dequantize_base(model: nn.Module) -> nn.Module:
    """Replace every NF4Linear of `model` (inside LoRA wrappers too) by the nn.Linear it computes, in place."""
    for name, layer in nf4_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.dequantize(layer.mean.dtype).train(layer.training))
    return model


def nf4_layers(model: nn.Module) -> dict[str, NF4Linear]:
    """Every NF4Linear of the model, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NF4Linear)}


def quantized_bits(model: nn.Module) -> float:
    """Bits per quantised weight over all NF4 layers (4 + 8/64 + 32/(64*256) + the means: ~4.127).

    Raises:
        ValueError: the model has no NF4 layer.
    """
    layers = nf4_layers(model).values()
    if not layers:
        raise ValueError("the model has no NF4Linear layer (quantize_base it first)")
    return 8 * sum(layer.weight.nbytes for layer in layers) / sum(layer.weight.numel for layer in layers)
