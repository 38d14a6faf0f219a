"""The model: GPT-2's architecture under GPT-2's module names, generation with a KV cache, and
checkpoints in Hugging Face's layout (config.json + model.safetensors + the tokenizer).

    model, tokenizer = load_model()                          # the shipped tiny base model
    model = load_gpt2("path/to/gpt2")                        # a GPT-2 downloaded once from the hub
    new_ids = generate(model, [tokenizer.encode("Once")], max_new_tokens=20)

`gpt` imports nothing from minift; `decoding` and `pretrained` import it, never the reverse.
"""

from minift.model.gpt import GPT, GPT2_SIZES, TINY_SIZES, GPTConfig, KVCache, check_context
from minift.model.decoding import generate
from minift.model.pretrained import (
    ASSETS,
    BASE_MODELS,
    BUILTIN_BASE,
    DEFAULT_BASE,
    config_from_hf,
    config_to_hf,
    load_gpt2,
    load_model,
    save_gpt2,
    save_model,
)

__all__ = [
    "ASSETS", "BASE_MODELS", "BUILTIN_BASE", "DEFAULT_BASE", "GPT", "GPT2_SIZES", "TINY_SIZES", "GPTConfig", "KVCache", "check_context",
    "config_from_hf", "config_to_hf", "generate", "load_gpt2", "load_model", "save_gpt2", "save_model",
]
