"""Parameter-efficient fine-tuning, written from scratch: LoRA, QLoRA, selective fine-tuning, prompt tuning,
and their files in PEFT's format.

    model = apply_peft(model, LoraConfig(rank=8))          # or PromptTuningConfig(), SelectiveConfig()
    print(format_trainable_parameters(model))               # PEFT's wording
    save_trainable(model, "adapter/")                       # loads in peft.PeftModel too
"""

# what a method is configured by: the one list of methods and one dataclass per family
from minift.peft.config import (
    ALL_LINEAR,
    METHODS,
    PEFT_CONFIGS,
    PROMPT_INITS,
    QUANTIZATIONS,
    LoraConfig,
    PeftConfig,
    PromptTuningConfig,
    SelectiveConfig,
    check_method,
    method_of,
)

# the methods
from minift.peft.lora import (
    LoRALinear,
    active_adapter,
    adapter_names,
    apply_lora,
    delete_adapter,
    disable_adapters,
    lora_layers,
    match_targets,
    merge_adapter,
    merge_and_unload,
    set_adapter,
    unload,
    unmerge_adapter,
)
from minift.peft.qlora import NF4Linear, dequantize_base, nf4_layers, quantize_base, quantized_bits
from minift.peft.selective import apply_selective, selected_parameters
from minift.peft.prompt_tuning import PromptTuningModel
from minift.peft.methods import apply_peft, format_trainable_parameters, trainable_parameters

# files: the trained part in PEFT's on-disk format
from minift.peft.files import (
    load_adapter,
    load_prompt,
    load_selected,
    load_trainable,
    save_adapter,
    save_prompt,
    save_selected,
    save_trainable,
    saved_sizes,
)

__all__ = [
    "ALL_LINEAR", "METHODS", "PEFT_CONFIGS", "PROMPT_INITS", "QUANTIZATIONS",
    "LoRALinear", "LoraConfig", "NF4Linear", "PeftConfig", "PromptTuningConfig", "PromptTuningModel", "SelectiveConfig",
    "active_adapter", "adapter_names", "apply_lora", "apply_peft", "apply_selective", "check_method",
    "delete_adapter", "dequantize_base", "disable_adapters", "format_trainable_parameters", "load_adapter", "load_prompt",
    "load_selected", "load_trainable", "lora_layers", "match_targets", "merge_adapter", "merge_and_unload",
    "method_of", "nf4_layers", "quantize_base", "quantized_bits", "save_adapter", "save_prompt", "save_selected", "save_trainable", "saved_sizes",
    "selected_parameters", "set_adapter", "trainable_parameters", "unload", "unmerge_adapter",
]
