"""Hugging Face GPT-2 checkpoints: load and save key for key, matching transformers' logits."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minift.model import GPT, GPTConfig, load_gpt2, save_gpt2

transformers = pytest.importorskip("transformers")


@pytest.fixture
def hf_checkpoint(tmp_path):
    """A random transformers GPT-2 (small config) saved as config.json + model.safetensors."""
    config = transformers.GPT2Config(
        vocab_size=211, n_positions=48, n_embd=64, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_logits_match_transformers(hf_checkpoint):
    hf, path = hf_checkpoint
    ours = load_gpt2(path).eval()
    ids = torch.randint(0, 211, (2, 48))
    with torch.no_grad():
        diff = (ours(ids) - _hf_logits(hf, ids)).abs().max().item()
    # The same fp32 computation in a different order (fused vs split qkv, SDPA vs eager softmax):
    # differences are rounding, ~1e-7 on logits of size ~1.
    assert diff < 1e-5, diff


def test_save_gpt2_loads_in_transformers(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint
    ours = load_gpt2(path).eval()
    save_gpt2(ours, tmp_path / "ours", eot_id=0)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, 211, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, ids), ours(ids), rtol=1e-5, atol=1e-5)
    # Conv1D layout on disk: c_attn is (in, out) = (64, 192)
    assert load_file(tmp_path / "ours" / "model.safetensors")["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)
    assert not list((tmp_path / "ours").glob("*.tmp"))  # atomic writes leave no temporaries


def test_round_trip_of_an_untied_model_without_biases(tmp_path):
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8, bias=False, tie_weights=False))
    save_gpt2(model, tmp_path)
    loaded = load_gpt2(tmp_path)
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_keys_without_the_transformer_prefix_and_old_mask_buffers(hf_checkpoint, tmp_path):
    """The hub's original gpt2 was saved from GPT2Model: no "transformer." prefix, with attn.bias buffers."""
    hf, path = hf_checkpoint
    tensors = load_file(path / "model.safetensors")
    old = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    old["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 48, 48))
    (tmp_path / "old").mkdir()
    save_file(old, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text((path / "config.json").read_text())
    ids = torch.randint(0, 211, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt2(tmp_path / "old").eval()(ids), _hf_logits(hf, ids), rtol=1e-5, atol=1e-5)


def test_dtype_and_overrides(hf_checkpoint):
    _, path = hf_checkpoint
    model = load_gpt2(path, dtype=torch.bfloat16, dropout=0.0)
    assert model.transformer.wte.weight.dtype == torch.bfloat16 and model.config.dropout == 0.0
    with pytest.raises(ValueError, match="dropout"):
        load_gpt2(path, dropout=2.0)


def _edit(path, config=None, tensors=None):
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, path / "model.safetensors")


def test_missing_directory_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_gpt2(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_gpt2(tmp_path)
    _edit(tmp_path, config={"model_type": "gpt2", "vocab_size": 5, "n_positions": 4, "n_layer": 1, "n_head": 1, "n_embd": 4})
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_gpt2(tmp_path)


def test_pickle_checkpoints_are_refused_with_the_reason(hf_checkpoint):
    _, path = hf_checkpoint
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only, because loading a pickle can execute arbitrary code"):
        load_gpt2(path)


def test_another_architecture_is_named(hf_checkpoint):
    _, path = hf_checkpoint
    _edit(path, config={**json.loads((path / "config.json").read_text()), "model_type": "llama"})
    with pytest.raises(ValueError, match="describes a 'llama' model; minift loads GPT-2 checkpoints only"):
        load_gpt2(path)


def test_a_gpt2_variant_we_do_not_build_is_named(hf_checkpoint):
    _, path = hf_checkpoint
    _edit(path, config={**json.loads((path / "config.json").read_text()), "activation_function": "relu"})
    with pytest.raises(ValueError, match="activation_function='relu' is a GPT-2 variant"):
        load_gpt2(path)


def test_wrong_shape_names_the_key_and_both_shapes(hf_checkpoint):
    _, path = hf_checkpoint
    tensors = load_file(path / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(64, 100)
    _edit(path, tensors=tensors)
    with pytest.raises(ValueError, match=r"transformer.h.1.mlp.c_fc.weight: the checkpoint has shape \(100, 64\) but the model expects \(256, 64\)"):
        load_gpt2(path)


def test_missing_and_unexpected_keys(hf_checkpoint):
    _, path = hf_checkpoint
    tensors = load_file(path / "model.safetensors")
    del tensors["transformer.ln_f.bias"]
    _edit(path, tensors=tensors)
    with pytest.raises(ValueError, match=r"lacks 1 tensors, e.g. \['transformer.ln_f.bias'\]"):
        load_gpt2(path)
    tensors["transformer.ln_f.bias"] = torch.zeros(64)
    tensors["transformer.h.9.attn.c_attn.weight"] = torch.zeros(1)
    _edit(path, tensors=tensors)
    with pytest.raises(ValueError, match=r"not part of a GPT-2 model: \['transformer.h.9.attn.c_attn.weight'\]"):
        load_gpt2(path)


def test_a_model_with_adapters_is_not_saved_as_gpt2(tmp_path):
    from minift.peft import apply_lora, merge_and_unload

    model = apply_lora(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=8)), rank=2, alpha=4, targets=["c_attn"])
    assert model.num_parameters(by_component=True)["other"] == 2 * (8 + 24)  # A (2, 8) + B (24, 2)
    with pytest.raises(ValueError, match="merge or unload adapters first"):
        save_gpt2(model, tmp_path)
    save_gpt2(merge_and_unload(model), tmp_path)
    assert load_gpt2(tmp_path).num_parameters() == GPT(model.config).num_parameters()
