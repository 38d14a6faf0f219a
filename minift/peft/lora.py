"""LoRA, written from scratch: the layer, injection by module name, named adapters, merge and unload.

LoRA (Hu et al. 2021) freezes a pretrained weight W0 (out, in) and learns a low-rank update beside it,
eq. 3:  h = W0 x + (alpha / r) B A x,  with A (r, in) and B (out, r), r << min(in, out).
A starts Kaiming-uniform and B at zero, so a fresh adapter adds exactly nothing; the optimizer then
trains r * (in + out) numbers per layer instead of in * out. rsLoRA (Kalajdzievski 2023) scales by
alpha / sqrt(r) instead, which keeps the update's size stable as r grows.

`LoRALinear` wraps an existing `nn.Linear` or a quantised `NF4Linear` (QLoRA, minift.peft.qlora) (composition: the base layer is kept as `.base`, untouched)
and can hold several named adapters, one per task; one of them is active at a time. The functions
below act on a whole model: `apply_lora` adds an adapter to the layers whose names match the
targets, `set_adapter` switches, `disable_adapters` is a context manager giving the base model back
for a block of code, `delete_adapter` removes one, `merge_adapter`/`unmerge_adapter` fold an adapter
into the base weights and back (no extra matmuls at inference), `merge_and_unload`/`unload` replace
every wrapper by its `nn.Linear` again. An adapter's hyperparameters are one `LoraConfig`; saving in
PEFT's format lives in `minift.peft.files`.

Target names are ours and GPT-2's (`transformer.h.0.attn.c_attn`), matched as in PEFT's LoraConfig:
a list of names matches a module whose full name equals an entry or ends with "." + entry
(`c_attn`, `attn.c_proj`); a single string is a regular expression that must match the full name;
"all-linear" means every linear layer except the output head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.peft.config import ALL_LINEAR, LoraConfig
from minift.peft.qlora import NF4Linear, dequantize_base, quantize_base

def check_adapter_name(name: str) -> None:
    """Adapter names are keys of nn.ParameterDict/nn.ModuleDict: no dots, and not one of their attributes."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"an adapter name must be a non-empty string without dots, got {name!r}")
    if hasattr(nn.ParameterDict(), name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(f"adapter name {name!r} is an attribute of torch's ParameterDict/ModuleDict; pick another")


class LoRALinear(nn.Module):
    """An `nn.Linear` plus named low-rank adapters: y = base(x) + scaling * B A dropout(x).

    Parameters per adapter `name`: `lora_A[name]` (rank, in_features) and `lora_B[name]`
    (out_features, rank), in the base weight's dtype and device; in a GPT's state_dict they appear as
    `transformer.h.0.attn.c_attn.lora_A.<name>`, and the base weight as `...c_attn.base.weight`.
    The base layer's parameters are not touched except by `merge`/`unmerge`.

    State: `active` (the adapter the forward adds, or None), `merged` (the adapter folded into the
    base weight, or None) and `disabled` (True inside `disable_adapters`).
    """

    def __init__(self, base: nn.Linear | NF4Linear, config: LoraConfig | None = None, **fields):
        """Wrap `base`; with a `config` (or LoraConfig fields, e.g. rank=4) add that adapter at once."""
        super().__init__()
        if not isinstance(base, (nn.Linear, NF4Linear)):
            raise TypeError(f"LoRALinear wraps nn.Linear or NF4Linear, got {type(base).__name__}")
        self.base = base
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.specs: dict[str, LoraConfig] = {}
        self.active: str | None = None
        self.merged: str | None = None
        self.disabled = False
        if config is not None or fields:
            config = dataclasses.replace(config or LoraConfig(), **fields)
            self.add_adapter(config.adapter_name, config)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def add_adapter(self, name: str, spec: LoraConfig) -> None:
        """Add a fresh adapter (A Kaiming-uniform, B zero: the output is unchanged) and make it active."""
        check_adapter_name(name)
        if name in self.specs:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        # an NF4 base computes in fp32 (its dequantised weight); A and B are fp32 beside it, as in QLoRA
        w = self.base.weight if isinstance(self.base, nn.Linear) else self.base.mean
        A = torch.empty(spec.rank, self.in_features, dtype=w.dtype, device=w.device)
        # Hu et al. 2021 (sec. 4.1) start A random and B at zero, so B A = 0 before training. For A we use
        # Kaiming-uniform with a = sqrt(5), nn.Linear's own init, U(-1/sqrt(in), 1/sqrt(in)), as PEFT does.
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(A)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, spec.rank, dtype=w.dtype, device=w.device))
        # dropout on the adapter's input only; the frozen path sees x unchanged
        self.lora_dropout[name] = (nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()).train(self.training)
        self.specs[name] = spec
        self.active = name

    def delete_adapter(self, name: str) -> None:
        if self.merged == name:
            raise ValueError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting it")
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            del container[name]
        del self.specs[name]
        if self.active == name:
            self.active = None

    def delta_weight(self, name: str) -> torch.Tensor:
        """scaling * B @ A, (out_features, in_features), in fp32: a bf16 weight is then rounded once, after the sum."""
        A, B = self.lora_A[name], self.lora_B[name]
        return (B.detach().float() @ A.detach().float()) * self.specs[name].scaling

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold an adapter (the active one by default) into the base weight: W <- W + scaling * B A."""
        name = self.active if name is None else name
        if name not in self.specs:
            raise ValueError(f"no adapter named {name!r} to merge; this layer has {sorted(self.specs)}")
        if self.merged is not None:
            raise ValueError(f"adapter {self.merged!r} is already merged; unmerge it first")
        if isinstance(self.base, NF4Linear):
            raise ValueError("cannot merge into an NF4 base (requantising would lose most of the update); "
                             "merge_and_unload dequantises the base first")
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight(name)).to(w.dtype))
        self.merged = self.active = name  # the layer now computes base + this adapter, nothing else

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter again. In fp32 W comes back to within rounding (~1 ulp), not bit for bit."""
        if self.merged is None:
            return
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight(self.merged)).to(w.dtype))
        self.merged = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        y = self.base(x)
        name = self.active
        if self.disabled or self.merged is not None or name not in self.specs:
            return y  # adapters off, the adapter already lives inside base.weight, or none active here
        A, B = self.lora_A[name], self.lora_B[name]
        h = F.linear(self.lora_dropout[name](x.to(A.dtype)), A)  # (..., rank): the low-rank bottleneck
        return y + (F.linear(h, B) * self.specs[name].scaling).to(y.dtype)

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{n}: r={s.rank}, alpha={s.alpha}{', rslora' * s.rslora}" for n, s in self.specs.items())
        return f"active={self.active!r}, merged={self.merged!r}, adapters={{{adapters}}}"


# ----------------------------------------------------------------------------------------------
# Whole-model operations


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of the model, by its module name (the name the nn.Linear had)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters in the model, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.specs))
    return list(names)


def active_adapter(model: nn.Module) -> str | None:
    actives = {layer.active for layer in lora_layers(model).values()}
    return actives.pop() if len(actives) == 1 else None


def _named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every named module except those inside a LoRALinear (its `.base` is not a target of its own)."""
    found, inside = {}, None
    for name, module in model.named_modules():
        if not name or (inside is not None and name.startswith(inside + ".")):
            continue
        found[name] = module
        if isinstance(module, LoRALinear):
            inside = name
    return found


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules LoRA can target: nn.Linear and NF4Linear layers and existing LoRALinear wrappers, by name."""
    return {n: m for n, m in _named_modules(model).items() if isinstance(m, (nn.Linear, NF4Linear, LoRALinear))}


def match_targets(model: nn.Module, targets: str | tuple[str, ...] | list[str]) -> list[str]:
    """The names of the linear layers `targets` selects (see the module docstring for the rules).

    Raises:
        ValueError: a target that matches no module (the linear layers' names are listed), or one
            that matches a module that is not linear (it is named with its type).
    """
    modules = _named_modules(model)
    linears = {n: m for n, m in modules.items() if isinstance(m, (nn.Linear, NF4Linear, LoRALinear))}
    if targets == ALL_LINEAR:
        # PEFT's "all-linear" also leaves the output layer out: it maps back to the vocabulary
        return [n for n in linears if n != "lm_head"]
    if isinstance(targets, str):
        matched = [n for n in modules if re.fullmatch(targets, n)]
        unmatched = [] if matched else [targets]
    else:
        if not targets:
            raise ValueError("no LoRA targets given")
        matched, unmatched = [], []
        for t in targets:
            hits = [n for n in modules if n == t or n.endswith("." + t)]
            matched += [n for n in hits if n not in matched]
            if not hits:
                unmatched.append(t)
    if unmatched:
        kinds = sorted({re.sub(r"^transformer\.h\.\d+\.", "", n) for n in linears})
        hint = ""
        if isinstance(targets, str):
            hint = " (a single string is a regular expression matched against full names; pass a list for suffixes)"
        raise ValueError(
            f"LoRA target(s) {unmatched} match no module{hint}. Linear layers are named like "
            f"transformer.h.0.attn.c_attn; in every block: {kinds}"
        )
    not_linear = [f"{n} ({type(modules[n]).__name__})" for n in matched if n not in linears]
    if not_linear:
        raise ValueError(f"LoRA wraps nn.Linear layers; targets {targets!r} also match {not_linear[:5]}")
    return matched


def apply_lora(model: nn.Module, config: LoraConfig | None = None, **fields) -> nn.Module:
    """Add the LoRA adapter `config` describes (LoraConfig's defaults, changed by `fields`) to the linear
    layers its targets select: `apply_lora(model, LoraConfig(rank=4))` or `apply_lora(model, rank=4)`.

    Layers not yet wrapped are wrapped in place (a `LoRALinear` takes the `nn.Linear`'s name and
    keeps it as `.base`). The new adapter becomes the active one, and it is the only trainable part
    of the model: every other parameter, earlier adapters included, gets requires_grad=False.

    Args:
        model: a GPT (or any module with nn.Linear layers).
        config: rank r (> 0), alpha (the update is scaled by alpha / r, alpha / sqrt(r) with rslora),
            targets (module names or suffixes, a regular expression, or "all-linear"), dropout on the
            adapter branch's input, the adapter's name, and quantize ("nf4": QLoRA, the blocks' linear
            layers are first replaced by NF4Linear, minift.peft.qlora.quantize_base).
        fields: LoraConfig fields that replace those of `config`.

    Returns:
        The same model object, modified in place.

    Raises:
        ValueError: bad hyperparameters, targets matching nothing or a non-linear module, the tied
            output head, a name already in use, or a model with a merged adapter.
    """
    spec = dataclasses.replace(config or LoraConfig(), **fields)
    if spec.quantize == "nf4":
        quantize_base(model)  # QLoRA: the frozen base's block linear layers to NF4 first (sec. 3)
    adapter_name = spec.adapter_name
    check_adapter_name(adapter_name)
    if adapter_name in adapter_names(model):
        raise ValueError(
            f"the model already has an adapter named {adapter_name!r}; delete_adapter() it or pick another name"
        )
    _refuse_if_merged(model, f"add adapter {adapter_name!r}")
    names = match_targets(model, spec.targets)
    if "lm_head" in names and getattr(getattr(model, "config", None), "tie_weights", False):
        raise ValueError("lm_head shares its weight with transformer.wte (tied); LoRA on it would change wte too")
    for name in names:  # checked before any layer is wrapped, so a refused adapter leaves the model as it was
        _check_rank(name, model.get_submodule(name), spec.rank)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, LoRALinear):
            module = LoRALinear(module).train(module.training)  # a model in eval mode stays in eval mode
            _replace(model, name, module)
        module.add_adapter(adapter_name, spec)
    for layer in lora_layers(model).values():
        layer.active = adapter_name  # layers the new adapter does not touch add nothing
    _make_only_trainable(model, adapter_name)
    return model


def _check_rank(name: str, layer: nn.Module, rank: int) -> None:
    """Refuse r > min(in, out): B A then has full rank already at r = min(in, out), so a larger r adds
    parameters (r * (in + out), more than the layer's in * out) and nothing it could express."""
    base = layer.base if isinstance(layer, LoRALinear) else layer
    limit = min(base.in_features, base.out_features)
    if rank > limit:
        raise ValueError(
            f"LoRA rank {rank} is above min(in, out) = {limit} of {name} ({base.in_features} -> {base.out_features}): "
            f"a rank-{limit} update is already full rank, so more would only add parameters; use --rank <= {limit}"
        )


def set_adapter(model: nn.Module, name: str) -> None:
    """Make `name` the active adapter (and the trainable one; other adapters are frozen)."""
    _check_name(model, name)
    _refuse_if_merged(model, f"switch to {name!r}")
    for layer in lora_layers(model).values():
        layer.active = name
    _make_only_trainable(model, name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base (no adapter added); restored on exit."""
    _refuse_if_merged(model, "disable adapters")
    layers = list(lora_layers(model).values())
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before):
            layer.disabled = was


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove an adapter; a layer left without adapters becomes its plain nn.Linear again."""
    _check_name(model, name)
    _refuse_if_merged(model, f"delete adapter {name!r}")
    for layer_name, layer in lora_layers(model).items():
        if name in layer.specs:
            layer.delete_adapter(name)
        if layer.active == name:
            layer.active = None  # also where the adapter had no weights: none is active now
        if not layer.specs:
            _replace(model, layer_name, layer.base)


def merge_adapter(model: nn.Module, name: str | None = None) -> None:
    """Fold an adapter (the active one by default) into the base weights; forward then costs no extra matmul.

    The merged adapter becomes the active one. Until `unmerge_adapter`, switching, disabling, adding
    and deleting adapters are refused: they would silently compute with the merged weights.
    """
    name = active_adapter(model) if name is None else name
    _check_name(model, name)
    _refuse_if_merged(model, f"merge {name!r}")
    for layer in lora_layers(model).values():
        if name in layer.specs:
            layer.merge(name)
        else:
            layer.active = name  # adds nothing here, as for any layer the adapter does not touch


def unmerge_adapter(model: nn.Module) -> None:
    """Undo merge_adapter: subtract the merged adapter from the base weights."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module, name: str | None = None) -> nn.Module:
    """Merge an adapter (the active one by default) for good and replace every wrapper by its nn.Linear.

    Returns the same model object, now a plain GPT. Its parameters keep requires_grad as they were
    (frozen after apply_lora); call `model.requires_grad_(True)` to train all of it. A QLoRA model's
    NF4 layers are dequantised first, so the result holds W' + scaling B A in full precision.
    """
    dequantize_base(model)
    merge_adapter(model, name)
    return unload(model)


def unload(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its base nn.Linear (a merged adapter stays in the weights; others are dropped)."""
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.base)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule `name` ("transformer.h.0.attn.c_attn") is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _make_only_trainable(model: nn.Module, adapter_name: str) -> None:
    model.requires_grad_(False)
    for layer in lora_layers(model).values():
        if adapter_name in layer.specs:
            layer.lora_A[adapter_name].requires_grad_(True)
            layer.lora_B[adapter_name].requires_grad_(True)


def _check_name(model: nn.Module, name: str | None) -> None:
    names = adapter_names(model)
    if name not in names:
        raise ValueError(f"no adapter named {name!r}; the model has {names}")


def _refuse_if_merged(model: nn.Module, action: str) -> None:
    merged = {layer.merged for layer in lora_layers(model).values()} - {None}
    if merged:
        raise ValueError(
            f"cannot {action} while adapter {merged.pop()!r} is merged into the base weights; unmerge_adapter() first"
        )
