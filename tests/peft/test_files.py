"""Adapters on disk in PEFT's format: round trips, parity with `peft` in both directions, and errors."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minift.peft import (
    PromptTuningModel,
    SelectiveConfig,
    adapter_names,
    apply_lora,
    apply_peft,
    load_adapter,
    load_prompt,
    load_trainable,
    lora_layers,
    save_adapter,
    save_prompt,
    save_trainable,
    saved_sizes,
    set_adapter,
    trainable_parameters,
)
from minift.model import GPT, GPTConfig, load_gpt2, save_gpt2

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft
transformers = pytest.importorskip("transformers")

CONFIG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture
def base(tmp_path):
    """A random minift GPT and its Hugging Face checkpoint directory (for transformers)."""
    model = GPT(CONFIG).eval()
    save_gpt2(model, tmp_path / "base", eot_id=0)
    return model, tmp_path / "base"


@pytest.fixture
def ids():
    return torch.randint(0, CONFIG.vocab_size, (2, 12))


def _hf(path):
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def _randomize(model, name="default"):
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if name in layer.specs:
                layer.lora_A[name].normal_(0, 0.2)
                layer.lora_B[name].normal_(0, 0.2)
    return model


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


# (targets, rank, alpha, rslora): several target sets and ranks, rsLoRA's scaling, a regular expression
PARITY = [
    (["c_attn"], 1, 2, False),
    (["c_attn"], 8, 16, False),
    (["c_attn", "c_proj", "c_fc"], 4, 8, False),
    (["c_attn"], 4, 8, True),
    (r".*\.h\.1\.mlp\.c_fc", 2, 5, False),
]


# ---- LoRA: our format, and parity with peft


def test_files_keys_shapes_and_config_follow_peft(base, tmp_path):
    model, _ = base
    apply_lora(model, rank=4, alpha=8, targets=["c_attn", "attn.c_proj"])
    save_adapter(model, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    expected = {}
    for i in range(2):
        for module, (out, inp) in {"attn.c_attn": (48, 16), "attn.c_proj": (16, 16)}.items():
            expected[f"base_model.model.transformer.h.{i}.{module}.lora_A.weight"] = (4, inp)
            expected[f"base_model.model.transformer.h.{i}.{module}.lora_B.weight"] = (out, 4)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] is True
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, False)
    assert config["target_modules"] == ["attn.c_attn", "attn.c_proj"]


def test_round_trip_is_exact(base, tmp_path, ids):
    model, _ = base
    fresh = copy.deepcopy(model)
    _randomize(apply_lora(model, rank=4, alpha=8, targets=["c_attn", "c_fc"], rslora=True))
    save_adapter(model, tmp_path / "a")
    load_adapter(fresh, tmp_path / "a")
    assert torch.equal(_logits(fresh, ids), _logits(model, ids))  # same weights, same ops
    assert trainable_parameters(fresh) == trainable_parameters(model)
    assert not list((tmp_path / "a").glob(".*tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("targets,rank,alpha,rslora", PARITY)
def test_a_minift_adapter_loads_in_peft_with_the_same_logits(base, tmp_path, ids, targets, rank, alpha, rslora):
    model, path = base
    _randomize(apply_lora(model, rank=rank, alpha=alpha, targets=targets, rslora=rslora))
    save_adapter(model, tmp_path / "a")
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path / "a").eval()
    ours = _logits(model, ids)
    assert (ours - _logits(load_gpt2(path), ids)).abs().max() > 1e-2  # the adapter matters
    # fp32, the same math in another order (Conv1D addmm vs linear, SDPA vs eager): ~1e-7 rounding
    torch.testing.assert_close(_logits(theirs, ids), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets,rank,alpha,rslora", PARITY)
def test_a_peft_adapter_loads_in_minift_with_the_same_logits_and_counts(base, tmp_path, ids, targets, rank, alpha, rslora):
    model, path = base
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_rslora=rslora, fan_in_fan_out=True,
                             init_lora_weights=False, task_type="CAUSAL_LM")  # init False: B random, not zero
    theirs = peft.get_peft_model(_hf(path), config).eval()
    theirs.save_pretrained(tmp_path / "p")
    load_adapter(model, tmp_path / "p")
    assert trainable_parameters(model) == theirs.get_nb_trainable_parameters()
    # as above: fp32 rounding of the same computation
    torch.testing.assert_close(_logits(model, ids), _logits(theirs, ids), rtol=1e-5, atol=1e-5)


def test_two_named_adapters_saved_apart_load_into_one_model(base, tmp_path, ids):
    model, _ = base
    fresh = copy.deepcopy(model)
    _randomize(apply_lora(model, rank=4, alpha=8, targets=["c_attn"], adapter_name="sum"), "sum")
    _randomize(apply_lora(model, rank=2, alpha=4, targets=["c_fc"], adapter_name="reverse"), "reverse")
    outputs = {}
    for name in ("sum", "reverse"):
        set_adapter(model, name)
        save_adapter(model, tmp_path / name, adapter_name=name)
        outputs[name] = _logits(model, ids)
        load_adapter(fresh, tmp_path / name, adapter_name=name)
    assert adapter_names(fresh) == ["sum", "reverse"]
    for name in ("sum", "reverse"):
        set_adapter(fresh, name)
        assert torch.equal(_logits(fresh, ids), outputs[name])


# ---- prompt tuning: PEFT's PROMPT_TUNING format


def test_a_minift_prompt_loads_in_peft_with_the_same_logits(base, tmp_path, ids):
    model, path = base
    pt = PromptTuningModel(model, 5, init="random")
    save_prompt(pt, tmp_path / "pt")
    tensors = load_file(tmp_path / "pt" / "adapter_model.safetensors")
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 16)
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path / "pt").eval()
    # peft returns logits for the virtual positions too; ours are aligned with the input. fp32 rounding only.
    torch.testing.assert_close(_logits(theirs, ids)[:, 5:], _logits(pt, ids), rtol=1e-5, atol=1e-5)


def test_a_peft_prompt_loads_in_minift_with_the_same_logits_and_counts(base, tmp_path, ids):
    model, path = base
    theirs = peft.get_peft_model(_hf(path), peft.PromptTuningConfig(num_virtual_tokens=6, task_type="CAUSAL_LM")).eval()
    theirs.save_pretrained(tmp_path / "pt")
    pt = load_trainable(model, tmp_path / "pt")
    assert isinstance(pt, PromptTuningModel) and pt.num_virtual_tokens == 6
    assert trainable_parameters(pt) == theirs.get_nb_trainable_parameters()
    torch.testing.assert_close(_logits(pt, ids), _logits(theirs, ids)[:, 6:], rtol=1e-5, atol=1e-5)  # fp32 rounding


# ---- any family: save_trainable / load_trainable


@pytest.mark.parametrize("method", ["lora", "prompt", "selective"])
def test_save_and_load_trainable_round_trip(base, tmp_path, ids, method):
    model, _ = base
    fresh = copy.deepcopy(model)
    if method == "lora":
        trained = _randomize(apply_lora(model, rank=4, alpha=8, targets=["c_attn"]))
    elif method == "prompt":
        trained = PromptTuningModel(model, 3)
    else:
        trained = apply_peft(model, SelectiveConfig("last-1-blocks"))
        with torch.no_grad():
            for p in trained.transformer.h[1].parameters():
                p.add_(0.1)
    save_trainable(trained, tmp_path / "t")
    loaded = load_trainable(fresh, tmp_path / "t")
    assert type(loaded) is type(trained)
    assert torch.equal(_logits(loaded, ids), _logits(trained, ids))
    assert trainable_parameters(loaded) == trainable_parameters(trained)  # ready to resume training


def test_saved_sizes_adapter_is_a_small_fraction_of_the_checkpoint(base, tmp_path):
    model, _ = base
    apply_lora(model, rank=4, alpha=8, targets=["c_attn"])
    sizes = saved_sizes(model, tmp_path / "sizes")
    # 2 layers * 4 * (16 + 48) fp32 numbers = 2,048 bytes of tensors plus the safetensors header
    assert 2048 < sizes["trainable"] < 2048 + 1024
    assert sizes["full"] > 4 * CONFIG.vocab_size * CONFIG.n_embd and sizes["full"] > 10 * sizes["trainable"]
    assert load_gpt2(tmp_path / "sizes" / "full").config == CONFIG  # a loadable merged checkpoint


def test_save_trainable_refuses_full_fine_tuning_and_nothing(base, tmp_path):
    model, _ = base
    with pytest.raises(ValueError, match="every parameter is trainable .full fine-tuning.: save the whole model with save_model"):
        save_trainable(model, tmp_path / "x")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter is trainable"):
        save_trainable(model, tmp_path / "x")


# ---- bad input


def test_loading_twice_under_one_name(base, tmp_path):
    model, _ = base
    save_adapter(apply_lora(copy.deepcopy(model), rank=4, alpha=8, targets=["c_attn"]), tmp_path / "a")
    load_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match="already has an adapter named 'default'; delete_adapter.. it or load under another name"):
        load_adapter(model, tmp_path / "a")
    load_adapter(model, tmp_path / "a", adapter_name="again")  # another name is fine
    assert adapter_names(model) == ["default", "again"]


def test_an_adapter_for_another_model_shape_names_the_key_and_shapes(base, tmp_path):
    model, _ = base
    wider = GPT(GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32))
    save_adapter(apply_lora(wider, rank=4, alpha=8, targets=["c_attn"]), tmp_path / "wide")
    with pytest.raises(ValueError, match=r"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight has shape \(4, 32\) but this model expects \(4, 16\)"):
        load_adapter(model, tmp_path / "wide")
    deeper = GPT(GPTConfig(vocab_size=61, block_size=32, n_layer=3, n_head=2, n_embd=16))
    save_adapter(apply_lora(deeper, rank=4, alpha=8, targets=["c_attn"]), tmp_path / "deep")
    with pytest.raises(ValueError, match=r"modules this model does not have or adapt: \['base_model.model.transformer.h.2.attn.c_attn"):
        load_adapter(model, tmp_path / "deep")
    assert not lora_layers(model)  # a failed load leaves the model untouched


def test_bad_files_and_unsupported_peft_options(base, tmp_path):
    model, _ = base
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapter(model, tmp_path / "nothing")
    save_adapter(apply_lora(copy.deepcopy(model), rank=4, alpha=8, targets=["c_attn"]), tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True is a PEFT option minift's LoRA does not implement"):
        load_adapter(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="holds a 'IA3' adapter, not LoRA"):
        load_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match="peft_type 'IA3' is not one minift loads"):
        load_trainable(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "a" / "adapter_model.safetensors").rename(tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(ValueError, match="safetensors only, because loading a pickle can execute arbitrary code"):
        load_adapter(model, tmp_path / "a")


def test_a_prompt_of_another_width_is_refused(base, tmp_path):
    model, _ = base
    pt = PromptTuningModel(model, 4)
    save_prompt(pt, tmp_path / "pt")
    save_file({"prompt_embeddings": torch.zeros(4, 32)}, tmp_path / "pt" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"prompt_embeddings has shape \(4, 32\) but this model expects \(4, 16\)"):
        load_prompt(GPT(CONFIG), tmp_path / "pt")
