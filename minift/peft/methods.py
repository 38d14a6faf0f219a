"""Parameter-efficient fine-tuning: one entry point over three families, and the trainable-parameter count.

- Reparametrisation: LoRA (`minift.peft.lora`), a low-rank update beside frozen linear layers.
- Selective (`minift.peft.selective`): train a chosen subset of the existing parameters.
- Additive, soft prompts (`minift.peft.prompt_tuning`): embedding vectors put before every input.

`apply_peft(model, config)` applies the method a configuration (`minift.peft.config`) describes and
returns the model to train (the same object for LoRA and selective, a `PromptTuningModel` wrapping it
for prompt tuning). `minift.peft.files.save_trainable`/`load_trainable` save and load the trained
part of any of them.
"""

from __future__ import annotations

import torch.nn as nn

from minift.model import GPT
from minift.peft.config import LoraConfig, PeftConfig, PromptTuningConfig, SelectiveConfig
from minift.peft.lora import apply_lora
from minift.peft.prompt_tuning import PromptTuningModel
from minift.peft.qlora import nf4_layers
from minift.peft.selective import apply_selective


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor shared by two modules (tied weights) counts once.

    An NF4 weight (QLoRA) counts as the out * in parameters it stands for, not its packed bytes.
    """
    trainable = total = 0
    for p in model.parameters():  # parameters() yields a shared tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    total += sum(layer.weight.numel for layer in nf4_layers(model).values())
    return trainable, total


def format_trainable_parameters(model: nn.Module) -> str:
    """'trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364' (PEFT's wording)."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def apply_peft(model: GPT, config: PeftConfig) -> nn.Module:
    """Prepare `model` for parameter-efficient fine-tuning as `config` says; only the method's parameters train.

    Returns the model to train and evaluate: `model` itself (modified in place) for LoRA and
    selective, a new `PromptTuningModel` wrapping it for prompt tuning.
    """
    if isinstance(config, LoraConfig):
        return apply_lora(model, config)
    if isinstance(config, PromptTuningConfig):
        return PromptTuningModel(model, config.num_virtual_tokens, config.init, config.init_token_ids)
    if isinstance(config, SelectiveConfig):
        return apply_selective(model, config.train)
    raise TypeError(
        f"apply_peft takes a LoraConfig, PromptTuningConfig or SelectiveConfig, got {type(config).__name__}"
    )
