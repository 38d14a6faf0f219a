"""Save and load the trained part of a model, in PEFT's on-disk format: kilobytes to megabytes, not a model copy.

A directory holds `adapter_config.json` and `adapter_model.safetensors`, as `peft`'s
`save_pretrained` writes them, so an adapter trained here loads with
`peft.PeftModel.from_pretrained(transformers_gpt2, path)` and one trained with peft loads here.

- LoRA (peft_type "LORA"): for every adapted module, `base_model.model.<module>.lora_A.weight`
  (r, in_features) and `...lora_B.weight` (out_features, r); PEFT drops the adapter's name from the
  keys. Our module names are GPT-2's, so `<module>` is the same in both libraries. transformers'
  GPT-2 layers are `Conv1D` (weight stored (in, out)), hence `fan_in_fan_out: true` in the config;
  A and B themselves have the same shapes for Conv1D and nn.Linear, so no tensor is transposed.
- Prompt tuning (peft_type "PROMPT_TUNING"): one tensor, `prompt_embeddings` (num_virtual_tokens, n_embd).
- Selective fine-tuning has no PEFT format; peft_type "MINIFT_SELECTIVE" marks ours: the selected
  tensors under minift's parameter names (nn.Linear layout), their names listed in the config.

Each file is written atomically (temporary file, then rename). Files are read with safetensors
only; a pickled `adapter_model.bin` is refused, because unpickling can run arbitrary code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from minift._files import atomic_write, read_json, read_safetensors, write_json
from minift.model import save_gpt2
from minift.peft.config import LoraConfig
from minift.peft.lora import (
    active_adapter,
    adapter_names,
    apply_lora,
    linear_layers,
    lora_layers,
    match_targets,
    merge_and_unload,
)
from minift.peft.prompt_tuning import PromptTuningModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
SELECTIVE = "MINIFT_SELECTIVE"
# Settings of PEFT's LoraConfig that change what the adapter computes and that minift does not
# implement, with the value that means "off".
_UNSUPPORTED_LORA = {
    "use_dora": False, "bias": "none", "lora_bias": False, "modules_to_save": None, "rank_pattern": {},
    "alpha_pattern": {}, "layers_to_transform": None, "exclude_modules": None, "layer_replication": None,
    "target_parameters": None, "trainable_token_indices": None, "use_qalora": False, "alora_invocation_tokens": None,
}
# PEFT's name for our prompt init. Its TEXT init needs a tokenizer to download, so "text" (and "random") are
# written as RANDOM; the init only matters when PEFT builds a fresh prompt, never when it loads a trained one.
_PROMPT_INIT = {"vocab": "SAMPLE_VOCAB"}


# ----------------------------------------------------------------------------------------------
# LoRA


def save_adapter(model: nn.Module, path, adapter_name: str = "default") -> None:
    """Write the LoRA adapter `adapter_name` as PEFT does: adapter_config.json + adapter_model.safetensors.

    Raises:
        ValueError: the model has no adapter of that name.
    """
    layers = {name: layer for name, layer in lora_layers(model).items() if adapter_name in layer.specs}
    if not layers:
        raise ValueError(f"no adapter named {adapter_name!r} to save; the model has {adapter_names(model)}")
    spec = next(iter(layers.values())).specs[adapter_name]
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A[adapter_name].detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B[adapter_name].detach().contiguous().cpu()
    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": spec.rank,
        "lora_alpha": alpha,
        "lora_dropout": spec.dropout,
        "use_rslora": spec.rslora,
        "target_modules": _target_modules(model, list(layers)),
        "fan_in_fan_out": True,  # transformers' GPT-2 uses Conv1D, whose weight is (in, out)
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        # the rest off, written as older PEFT versions know them (newer keys take their defaults)
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    _write(path, config, tensors)


def load_adapter(model: nn.Module, path, adapter_name: str = "default") -> nn.Module:
    """Add the LoRA adapter saved at `path` (by minift or peft) to `model` under `adapter_name`.

    As with `apply_lora`, the loaded adapter becomes the active one and the only trainable part.
    Everything is checked before the model is touched.

    Returns:
        The same model, with the adapter.

    Raises:
        FileNotFoundError: no adapter_config.json / adapter_model.safetensors at `path`.
        ValueError: not a LoRA adapter, a PEFT option minift does not implement, a name already in
            use, targets that match nothing here, or tensors that do not fit this model (missing or
            unexpected keys; a shape mismatch names the key and both shapes).
    """
    config, tensors = _read(path)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path} holds a {config.get('peft_type')!r} adapter, not LoRA (load_trainable reads all kinds)")
    for key, off in _UNSUPPORTED_LORA.items():
        if config.get(key, off) not in (off, None, {}, [], False):
            raise ValueError(f"{path}: {key}={config[key]!r} is a PEFT option minift's LoRA does not implement")
    if adapter_name in adapter_names(model):
        raise ValueError(
            f"the model already has an adapter named {adapter_name!r}; delete_adapter() it or load under another name"
        )
    rank, targets = config["r"], config["target_modules"]
    targets = targets if isinstance(targets, str) else list(targets)
    expected = {}
    for name in match_targets(model, targets):
        layer = model.get_submodule(name)
        expected[f"{PREFIX}{name}.lora_A.weight"] = (rank, layer.in_features)
        expected[f"{PREFIX}{name}.lora_B.weight"] = (layer.out_features, rank)
    _check_tensors(path, tensors, expected)
    dropout, rslora = config.get("lora_dropout", 0.0), config.get("use_rslora", False)
    apply_lora(model, LoraConfig(rank, config["lora_alpha"], targets, dropout, rslora, adapter_name))
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            if adapter_name in layer.specs:
                layer.lora_A[adapter_name].copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])
                layer.lora_B[adapter_name].copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
    return model


def _target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Short target names for the config: "attn.c_attn" when every block's such layer is adapted, else full names."""
    by_kind: dict[str, set[str]] = {}
    for name in linear_layers(model):
        kind = re.sub(r"^transformer\.h\.\d+\.", "", name)
        by_kind.setdefault(kind, set()).add(name)
    chosen = set(names)
    short = [kind for kind, members in by_kind.items() if members <= chosen]
    # use the short form only if it selects exactly these modules under PEFT's suffix rule
    return short if short and set(match_targets(model, short)) == chosen else sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Prompt tuning and selective fine-tuning


def save_prompt(model: PromptTuningModel, path) -> None:
    """Write the soft prompt in PEFT's PROMPT_TUNING format (the embeddings only)."""
    cfg = model.base_model.config
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "num_virtual_tokens": model.num_virtual_tokens,
        "token_dim": cfg.n_embd,
        "num_transformer_submodules": 1,  # a decoder-only model has one stack to prompt
        "num_attention_heads": cfg.n_head,
        "num_layers": cfg.n_layer,
        "prompt_tuning_init": _PROMPT_INIT.get(model.init, "RANDOM"),
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "inference_mode": True,
    }
    _write(path, config, {"prompt_embeddings": model.prompt_embeddings.detach().contiguous().cpu()})


def load_prompt(model: nn.Module, path) -> PromptTuningModel:
    """A PromptTuningModel around the base `model` with the soft prompt saved at `path` (by minift or peft)."""
    config, tensors = _read(path)
    if config.get("peft_type") != "PROMPT_TUNING":
        raise ValueError(f"{path} holds a {config.get('peft_type')!r} adapter, not PROMPT_TUNING")
    if isinstance(model, PromptTuningModel):
        raise ValueError("the model already has a soft prompt; load into its base_model")
    if config.get("num_transformer_submodules", 1) != 1:
        n = config["num_transformer_submodules"]
        raise ValueError(f"{path}: num_transformer_submodules={n} (an encoder-decoder prompt); a GPT has 1")
    n = config["num_virtual_tokens"]
    _check_tensors(path, tensors, {"prompt_embeddings": (n, model.config.n_embd)})
    with torch.random.fork_rng(devices=[]):  # the initial values are overwritten: leave the global RNG as it was
        wrapped = PromptTuningModel(model, n, init="random")
    with torch.no_grad():
        wrapped.prompt_embeddings.copy_(tensors["prompt_embeddings"])
    wrapped.init = "vocab" if config.get("prompt_tuning_init") == "SAMPLE_VOCAB" else "random"
    return wrapped


def save_selected(model: nn.Module, path) -> None:
    """Write the trainable parameters of a selectively fine-tuned model (minift names and layout)."""
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    config = {"peft_type": SELECTIVE, "parameters": list(tensors)}
    _write(path, config, tensors)


def load_selected(model: nn.Module, path) -> nn.Module:
    """Copy the saved tensors into `model`; they become its only trainable parameters. Returns the model."""
    config, tensors = _read(path)
    if config.get("peft_type") != SELECTIVE:
        raise ValueError(f"{path} holds a {config.get('peft_type')!r} adapter, not minift's selective format")
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"{path}: tensors that are not parameters of this model: {unknown[:10]}")
    _check_tensors(path, tensors, {n: tuple(params[n].shape) for n in tensors})
    with torch.no_grad():
        for name, p in params.items():
            p.requires_grad_(name in tensors)
            if name in tensors:
                p.copy_(tensors[name])
    return model


# ----------------------------------------------------------------------------------------------
# Any family


def save_trainable(model: nn.Module, path) -> None:
    """Save the trained part of a model prepared by `apply_peft`, whichever family it is.

    A PromptTuningModel saves its soft prompt; a model with LoRA layers, its active adapter; any
    other model, its trainable parameters (selective fine-tuning).

    Raises:
        ValueError: no active adapter, nothing trainable, or everything trainable (full
            fine-tuning: save the whole model with `minift.model.save_model`).
    """
    if isinstance(model, PromptTuningModel):
        return save_prompt(model, path)
    if lora_layers(model):
        name = active_adapter(model)
        if name is None:
            raise ValueError(f"no active adapter to save; set_adapter() one of {adapter_names(model)}")
        return save_adapter(model, path, name)
    flags = [p.requires_grad for p in model.parameters()]
    if not any(flags):
        raise ValueError("no parameter is trainable: nothing to save")
    if all(flags):
        raise ValueError("every parameter is trainable (full fine-tuning): save the whole model with save_model()")
    save_selected(model, path)


def load_trainable(model: nn.Module, path) -> nn.Module:
    """The inverse of `save_trainable`: `model` is the base model (as given to `apply_peft`).

    Returns the model prepared as `apply_peft` would, holding the saved values: the same object
    with a LoRA adapter named "default" or with the selected parameters, or a PromptTuningModel.
    """
    kind = _read_config(Path(path)).get("peft_type")
    loaders = {"LORA": load_adapter, "PROMPT_TUNING": load_prompt, SELECTIVE: load_selected}
    if kind not in loaders:
        raise ValueError(f"{path}: peft_type {kind!r} is not one minift loads ({sorted(loaders)})")
    return loaders[kind](model, path)


def saved_sizes(model: nn.Module, directory) -> dict[str, int]:
    """Bytes on disk of the trainable part and of a full checkpoint of the same fine-tuned model.

    Writes `directory/trainable` (save_trainable) and `directory/full` (save_gpt2 of a plain
    GPT: LoRA merged into a copy; prompt tuning's base model, since a soft prompt cannot be folded
    into the weights; the model itself for selective). Returns the two safetensors files' sizes,
    {"trainable": ..., "full": ...}; the JSON configs add about a kilobyte each.
    """
    directory = Path(directory)
    save_trainable(model, directory / "trainable")
    if isinstance(model, PromptTuningModel):
        full = model.base_model
    elif lora_layers(model):
        full = merge_and_unload(copy.deepcopy(model), active_adapter(model))
    else:
        full = model
    save_gpt2(full, directory / "full")
    return {"trainable": (directory / "trainable" / WEIGHTS_NAME).stat().st_size,
            "full": (directory / "full" / "model.safetensors").stat().st_size}


# ----------------------------------------------------------------------------------------------
# Files


def _write(path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_json(path / CONFIG_NAME, config)  # last, so a config present means its tensors were written


def _read_config(path: Path) -> dict:
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
    return read_json(path / CONFIG_NAME)


def _read(path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    config = _read_config(path)
    if not (path / WEIGHTS_NAME).is_file():
        if (path / "adapter_model.bin").is_file():
            raise ValueError(
                f"{path} holds only adapter_model.bin: minift reads safetensors only, because loading a pickle "
                "can execute arbitrary code"
            )
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}")
    return config, read_safetensors(path / WEIGHTS_NAME)


def _check_tensors(path, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Raise ValueError naming the first tensor that is missing, unexpected or of the wrong shape."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    for key in sorted(set(expected) & set(tensors)):
        if tuple(tensors[key].shape) != tuple(expected[key]):
            raise ValueError(
                f"{path}: {key} has shape {tuple(tensors[key].shape)} but this model expects {tuple(expected[key])}; "
                "the adapter was made for a model of another shape"
            )
    if missing:
        raise ValueError(f"{path}: the adapter lacks {len(missing)} tensors this model needs, e.g. {missing[:5]}")
    if unexpected:
        raise ValueError(f"{path}: tensors for modules this model does not have or adapt: {unexpected[:5]}")
