"""GPT-2 checkpoints in Hugging Face's format: `config.json` + `model.safetensors`.

Hugging Face's GPT-2 stores its linear layers as `Conv1D` modules whose weight is (in, out), the
transpose of `nn.Linear`'s (out, in); everything else maps key for key because our modules carry
GPT-2's names. We read only safetensors: a `pytorch_model.bin` is a pickle, and unpickling runs
whatever code the file contains.

Writes are atomic (a temporary file, then `os.replace`), so an interrupted save never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

from minift._files import atomic_write, read_json, read_safetensors, write_json
from minift.model.gpt import GPT, TINY_SIZES, GPTConfig
from minift.tokenizer import Tokenizer

# Hugging Face GPT-2 keys whose weight is stored transposed (Conv1D: (in, out)).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Activations that are the tanh approximation of GELU, which is what our MLP computes.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict, source: str = "config.json") -> GPTConfig:
    """Translate a Hugging Face GPT-2 `config.json` dict into a GPTConfig.

    Raises:
        ValueError: the config describes another architecture, or a GPT-2 variant we do not build.
    """
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"{source} describes a {model_type!r} model; minift loads GPT-2 checkpoints only")
    unsupported = {
        "activation_function": hf.get("activation_function", "gelu_new") not in _TANH_GELUS,
        "n_inner": hf.get("n_inner") not in (None, 4 * hf["n_embd"]),
        "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx")),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "add_cross_attention": bool(hf.get("add_cross_attention")),
    }
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"{source}: {key}={hf.get(key)!r} is a GPT-2 variant minift does not implement")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=hf.get("resid_pdrop", 0.0),
        bias=hf.get("bias", True),  # "bias" is ours: transformers' GPT-2 always has biases
        tie_weights=hf.get("tie_word_embeddings", True),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def config_to_hf(config: GPTConfig, eot_id: int | None = None) -> dict:
    """The `config.json` that transformers' GPT2LMHeadModel reads (`eot_id`: the end-of-text id)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "tie_word_embeddings": config.tie_weights,
        "bias": config.bias,
        "bos_token_id": eot_id,  # GPT-2 begins and ends texts with <|endoftext|>
        "eos_token_id": eot_id,
    }


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors, or shards listed in its index."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [path / f for f in sorted(set(read_json(index)["weight_map"].values()))]
    elif (path / "pytorch_model.bin").is_file():
        raise ValueError(
            f"{path} holds only pytorch_model.bin: minift reads safetensors only, because loading a pickle "
            "can execute arbitrary code. Convert it once with transformers "
            "(from_pretrained(...).save_pretrained(dir, safe_serialization=True))."
        )
    else:
        raise FileNotFoundError(f"no model.safetensors in {path}")
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(file))
    return tensors


def load_gpt2(path, dtype: torch.dtype = torch.float32, **overrides) -> GPT:
    """Load a GPT-2 checkpoint directory (Hugging Face layout) into our GPT.

    Args:
        path: a directory with `config.json` and `model.safetensors` (or sharded safetensors).
        dtype: the dtype of the returned model's parameters.
        overrides: GPTConfig fields to change, e.g. dropout=0.0.

    Raises:
        FileNotFoundError: the directory, its config.json or its weights are missing.
        ValueError: another architecture, a pickle-only checkpoint, missing or unexpected keys, or a
            tensor of the wrong shape (the key and both shapes are named).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    config = config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    config = dataclasses.replace(config, **overrides)  # re-validated by __post_init__
    model = GPT(config)
    expected = model.state_dict()
    tensors = _read_tensors(path)

    state, unexpected = {}, []
    for hf_key, tensor in tensors.items():
        # The hub's original GPT-2 was saved from GPT2Model, without the "transformer." prefix.
        key = hf_key if hf_key.startswith(("transformer.", "lm_head.")) else "transformer." + hf_key
        if key.endswith((".attn.bias", ".attn.masked_bias")) or (key == "lm_head.weight" and config.tie_weights):
            continue  # old checkpoints store the causal mask as a buffer; a tied head is the embedding
        if key not in expected:
            unexpected.append(hf_key)
            continue
        if key.endswith(_CONV1D):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{hf_key}: the checkpoint has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(expected[key].shape)}" + (" (after the Conv1D transpose)" if key.endswith(_CONV1D) else "")
            )
        state[key] = tensor
    if unexpected:
        raise ValueError(f"{path}: keys that are not part of a GPT-2 model: {sorted(unexpected)[:10]}")
    missing = sorted(set(expected) - set(state) - ({"lm_head.weight"} if config.tie_weights else set()))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} tensors, e.g. {missing[:10]}")
    model.load_state_dict(state, strict=False)  # strict=False only for the tied lm_head.weight
    return model.to(dtype)


def save_gpt2(model: GPT, path, eot_id: int | None = None) -> None:
    """Write `config.json` and `model.safetensors` in Hugging Face's GPT-2 layout, atomically.

    `eot_id`, the tokenizer's end-of-text id, is recorded as bos/eos for transformers' generate().
    """
    path = Path(path)
    state = model.state_dict()
    with torch.device("meta"):
        plain = set(GPT(model.config).state_dict())
    if set(state) != plain:
        extra = sorted(set(state) - plain)[:3]
        raise ValueError(
            f"the model has tensors a GPT-2 checkpoint cannot hold ({extra}, ...): merge or unload adapters first "
            "(minift.merge_and_unload), or save the adapter alone (minift.save_adapter)"
        )
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, tensor in state.items():
        if key == "lm_head.weight" and model.config.tie_weights:
            continue  # safetensors refuses shared storage; the reader re-ties it
        if key.endswith(_CONV1D):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        tensors[key] = tensor.detach().contiguous().cpu()
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write_json(path / "config.json", config_to_hf(model.config, eot_id))


# The family of base models minift pretrains on its built-in corpus (`minift pretrain --size NAME`),
# shipped with the package so everything that uses them starts in seconds; each one's pretrain.json
# says how it was made. One corpus, tokenizer and recipe; only the depth and width differ (TINY_SIZES).
BASE_MODELS = tuple(TINY_SIZES)
DEFAULT_BASE = "tiny-m"  # the middle size: what every recipe, notebook and command uses unless told
ASSETS = Path(__file__).parent.parent / "assets"
BUILTIN_BASE = ASSETS / DEFAULT_BASE


def load_model(path=None, **overrides) -> tuple[GPT, Tokenizer]:
    """A model and its tokenizer: one of BASE_MODELS by name, or one checkpoint directory.

    None loads DEFAULT_BASE. A directory holds config.json + model.safetensors and the tokenizer
    (tokenizer.json, or GPT-2's vocab.json + merges.txt): a real GPT-2 downloaded once from
    Hugging Face works as it is.
    """
    name = DEFAULT_BASE if path is None else str(path)
    path = ASSETS / name if name in BASE_MODELS else Path(path)
    if name in BASE_MODELS and not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in base model {name!r} is missing from {path}; "
                                f"build it with `minift pretrain --size {name} --out {path}`")
    model = load_gpt2(path, **overrides)
    tokenizer = Tokenizer.from_dir(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model.config.vocab_size}: they do not belong together"
        )
    return model, tokenizer


def save_model(model: GPT, tokenizer: Tokenizer, path) -> None:
    """Write the model (config.json + model.safetensors) and its tokenizer.json into one directory."""
    save_gpt2(model, path, tokenizer.eot_id)
    tokenizer.save(Path(path) / "tokenizer.json")
