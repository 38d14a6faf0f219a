"""LoRA from scratch: the layer (eq. 3, init, scaling, dropout), the merge invariant, training touches only
the adapters, named adapters, and errors that name what exists."""

import math

import pytest
import torch
import torch.nn as nn

from minift.peft import (
    LoRALinear,
    active_adapter,
    adapter_names,
    apply_lora,
    delete_adapter,
    disable_adapters,
    format_trainable_parameters,
    lora_layers,
    merge_adapter,
    merge_and_unload,
    set_adapter,
    trainable_parameters,
    unload,
    unmerge_adapter,
)
from minift.model import GPT, GPTConfig, generate

CONFIG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=16)
ALL_LINEAR = ("c_attn", "c_proj", "c_fc")  # c_proj: attn.c_proj and mlp.c_proj


def _randomize(model, name="default", std=0.2):
    """Give an adapter non-zero B (and a new A) so that it changes the outputs."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if name in layer.specs:
                layer.lora_A[name].normal_(0, std)
                layer.lora_B[name].normal_(0, std)
    return model


# ---- the layer


def test_fresh_layer_is_the_base_layer_and_init_follows_the_paper():
    base = nn.Linear(20, 30)
    layer = LoRALinear(base, rank=4, alpha=8)
    x = torch.randn(5, 20)
    assert torch.equal(layer(x), base(x))  # B = 0: B A x adds exact zeros
    assert layer.base is base and layer.in_features == 20 and layer.out_features == 30
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    assert A.shape == (4, 20) and B.shape == (30, 4) and not B.any()
    bound = 1 / math.sqrt(20)  # Kaiming-uniform, a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert A.abs().max() <= bound and A.abs().max() > bound / 2
    assert layer.specs["default"].scaling == 2.0  # alpha / r
    assert LoRALinear(base, rank=4, alpha=8, rslora=True).specs["default"].scaling == 4.0  # alpha / sqrt(r)


@pytest.mark.parametrize("rslora", [False, True])
def test_forward_is_eq3(rslora):
    base = nn.Linear(12, 7)
    layer = LoRALinear(base, rank=3, alpha=5, rslora=rslora)
    nn.init.normal_(layer.lora_B["default"])
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    x = torch.randn(2, 4, 12)
    scaling = 5 / (math.sqrt(3) if rslora else 3)
    expected = x @ base.weight.T + base.bias + scaling * (x @ A.T @ B.T)
    # the same fp32 products summed in another order: rounding, ~1e-7 on values of size ~1
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_dropout_is_on_the_adapter_branch_only():
    base = nn.Linear(16, 16)
    layer = LoRALinear(base, rank=4, alpha=8, dropout=0.5).train()
    nn.init.normal_(layer.lora_B["default"])
    x = torch.randn(8, 16)
    assert not torch.equal(layer(x), layer(x))  # a fresh dropout mask each call
    layer.disabled = True
    assert torch.equal(layer(x), base(x))  # the frozen path sees x without dropout
    layer.disabled = False
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_merge_computes_the_delta_in_fp32():
    base = nn.Linear(32, 24).to(torch.bfloat16)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, rank=4, alpha=8)
    nn.init.normal_(layer.lora_B["default"])
    delta = (layer.lora_B["default"].float() @ layer.lora_A["default"].float()) * 2.0
    layer.merge()
    assert torch.equal(base.weight, (w0.float() + delta).to(torch.bfloat16))  # one rounding, at the end


# ---- the merge invariant (peft tests/testing_common.py::_test_merge_layers)


@pytest.mark.parametrize("targets,rank,rslora", [(("c_attn",), 1, False), (ALL_LINEAR, 4, False), (ALL_LINEAR, 8, True)])
def test_outputs_equal_before_merge_after_merge_and_after_unmerge(model, ids, targets, rank, rslora):
    with torch.no_grad():
        base = model(ids)
        apply_lora(model, rank=rank, alpha=16, targets=targets, dropout=0.1, rslora=rslora)  # dropout: inactive in eval mode
        assert torch.equal(model(ids), base)  # a fresh adapter changes nothing, bit for bit
        _randomize(model)
        before = model(ids)
        assert (before - base).abs().max() > 1e-2  # the adapter does change the outputs
        merge_adapter(model)
        merged = model(ids)
        unmerge_adapter(model)
        unmerged = model(ids)
    # W + delta in fp32 rounds each weight by <= half an ulp (~6e-8 relative); logits ~1 move by ~1e-7
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unmerged, before, rtol=1e-5, atol=1e-5)
    assert all(layer.merged is None for layer in lora_layers(model).values())


def test_training_changes_only_the_adapter_and_gradients_reach_only_it(model, ids):
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, rank=4, alpha=8, targets=ALL_LINEAR)
    adapters = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapters)
    start = {n: p.detach().clone() for n, p in adapters.items()}
    # every parameter goes to the optimizer: frozen ones have no gradient, so AdamW skips them
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == (name in adapters), name
        optimizer.step()
    for name, p in model.named_parameters():
        base_name = name.replace(".base.", ".")
        if name in adapters:
            assert not torch.equal(p, start[name]), name
        else:
            assert torch.equal(p, frozen[base_name]), name  # bit-identical, tied wte/lm_head included


def test_generation_with_lora_cached_equals_uncached(model):
    _randomize(apply_lora(model, rank=4, alpha=8, targets=ALL_LINEAR))
    prompts = [[5, 9, 2], [7, 1, 1, 3, 8]]
    assert generate(model, prompts, 10) == generate(model, prompts, 10, use_cache=False)


# ---- parameter counts


def test_trainable_parameter_formula_on_the_tiny_model(model):
    C, L, r = CONFIG.n_embd, CONFIG.n_layer, 4
    total = model.num_parameters()
    apply_lora(model, rank=r, alpha=8, targets=ALL_LINEAR)
    # per block: c_attn r(C + 3C), attn.c_proj r(C + C), c_fc r(C + 4C), mlp.c_proj r(4C + C)
    lora = L * r * (4 * C + 2 * C + 5 * C + 5 * C)
    assert trainable_parameters(model) == (lora, total + lora)


def test_gpt2_small_rank_8_on_c_attn_counts_as_peft_prints_it():
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = apply_lora(GPT(GPTConfig.from_name("gpt2")), rank=8, alpha=16, targets=("c_attn",))
    # 12 layers * 8 * (768 + 2304) = 294,912 on top of GPT-2 small's 124,439,808
    assert format_trainable_parameters(model) == "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"


# ---- targets


@pytest.mark.parametrize(
    "targets,expected",
    [
        (("c_attn",), ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
        (("attn.c_proj",), ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]),
        (("c_proj",), ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj"]),
        (("transformer.h.1.mlp.c_fc",), ["transformer.h.1.mlp.c_fc"]),
        (r"transformer\.h\.0\.(attn\.c_attn|mlp\.c_fc)", ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]),
        ("all-linear", [f"transformer.h.{i}.{k}" for i in (0, 1) for k in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]),
    ],
)
def test_targets_by_name_suffix_regex_and_all_linear(model, targets, expected):
    apply_lora(model, rank=2, alpha=4, targets=targets)
    assert sorted(lora_layers(model)) == sorted(expected)


def test_a_target_that_matches_nothing_names_the_layers_that_exist(model):
    with pytest.raises(ValueError, match=r"\['c_atn'\] match no module.*in every block: \['attn.c_attn', 'attn.c_proj', 'lm_head', 'mlp.c_fc', 'mlp.c_proj'\]"):
        apply_lora(model, rank=4, alpha=8, targets=["c_attn", "c_atn"])
    with pytest.raises(ValueError, match="a single string is a regular expression matched against full names; pass a list"):
        apply_lora(model, rank=4, alpha=8, targets="c_attn")
    assert not lora_layers(model)  # nothing was injected


def test_non_linear_targets_and_the_tied_head_are_refused(model):
    with pytest.raises(ValueError, match=r"LoRA wraps nn.Linear layers.*transformer.h.0.ln_1 \(LayerNorm\)"):
        apply_lora(model, rank=4, alpha=8, targets=["ln_1"])
    with pytest.raises(ValueError, match="lm_head shares its weight with transformer.wte"):
        apply_lora(model, rank=4, alpha=8, targets=["lm_head"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(rank=-2), "rank must be a positive integer, got -2"),
    (dict(rank=2.5), "rank must be a positive integer, got 2.5"),
    (dict(alpha=0), "alpha must be positive"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
])
def test_bad_hyperparameters(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **{"rank": 4, "alpha": 8, **kwargs})


# ---- named adapters


def test_named_adapters_switch_disable_delete(model, ids):
    with torch.no_grad():
        base = model(ids)
        _randomize(apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name="sum"), "sum")
        _randomize(apply_lora(model, rank=2, alpha=4, targets=("c_fc",), adapter_name="reverse"), "reverse")
        assert adapter_names(model) == ["sum", "reverse"] and active_adapter(model) == "reverse"
        # only the newest adapter trains
        assert all(".reverse" in n for n, p in model.named_parameters() if p.requires_grad)
        out_reverse = model(ids)
        set_adapter(model, "sum")
        out_sum = model(ids)
        assert all(".sum" in n for n, p in model.named_parameters() if p.requires_grad)
        assert (out_sum - out_reverse).abs().max() > 1e-2 and (out_sum - base).abs().max() > 1e-2
        with disable_adapters(model):
            assert torch.equal(model(ids), base)
        assert torch.equal(model(ids), out_sum)  # restored on exit
        set_adapter(model, "reverse")
        assert torch.equal(model(ids), out_reverse)
        delete_adapter(model, "reverse")
        assert adapter_names(model) == ["sum"] and active_adapter(model) is None
        # the c_fc layers held only "reverse": they are plain nn.Linear again
        assert sorted(lora_layers(model)) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
        assert torch.equal(model(ids), base)  # no adapter active
        set_adapter(model, "sum")
        assert torch.equal(model(ids), out_sum)


def test_merge_and_unload_gives_back_a_plain_gpt(model, ids):
    keys = list(model.state_dict())
    _randomize(apply_lora(model, rank=4, alpha=8, targets=ALL_LINEAR, adapter_name="a"), "a")
    _randomize(apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name="b"), "b")
    set_adapter(model, "a")
    with torch.no_grad():
        expected = model(ids)
        plain = merge_and_unload(model)
        assert plain is model and type(plain) is GPT
        assert not lora_layers(plain) and isinstance(plain.transformer.h[0].attn.c_attn, nn.Linear)
        assert list(plain.state_dict()) == keys  # GPT-2's keys again: save_gpt2 works
        # one fp32 rounding of W + delta per weight (see the merge invariant)
        torch.testing.assert_close(plain(ids), expected, rtol=1e-5, atol=1e-5)


def test_unload_without_merge_drops_the_adapters(model, ids):
    with torch.no_grad():
        base = model(ids)
        unload(_randomize(apply_lora(model, rank=4, alpha=8, targets=ALL_LINEAR)))
        assert not lora_layers(model) and torch.equal(model(ids), base)


def test_while_merged_other_adapter_operations_are_refused(model):
    apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name="a")
    apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name="b")
    merge_adapter(model, "a")
    assert active_adapter(model) == "a"  # the merged adapter is the one the model computes with
    for action in (lambda: set_adapter(model, "b"), lambda: delete_adapter(model, "a"), lambda: merge_adapter(model, "b"),
                   lambda: apply_lora(model, rank=2, alpha=4, adapter_name="c"), lambda: disable_adapters(model).__enter__()):
        with pytest.raises(ValueError, match="while adapter 'a' is merged into the base weights; unmerge_adapter"):
            action()
    unmerge_adapter(model)
    set_adapter(model, "b")


def test_unknown_duplicate_and_unusable_adapter_names(model):
    for bad in ("train", "a.b", ""):
        with pytest.raises(ValueError, match="adapter name"):
            apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name=bad)
    apply_lora(model, rank=4, alpha=8, targets=("c_attn",), adapter_name="a")
    with pytest.raises(ValueError, match=r"no adapter named 'x'; the model has \['a'\]"):
        set_adapter(model, "x")
    with pytest.raises(ValueError, match="already has an adapter named 'a'"):
        apply_lora(model, rank=4, alpha=8, targets=("c_fc",), adapter_name="a")


@pytest.mark.parametrize("targets, rank, ok", [("c_attn", 16, True), ("c_attn", 17, False), ("c_fc", 16, True),
                                              ("c_fc", 17, False)])
def test_a_rank_above_min_in_out_is_refused_and_leaves_the_model_as_it_was(model, targets, rank, ok):
    # n_embd 16: c_attn is 16 -> 48 and c_fc 16 -> 64, so min(in, out) = 16 for both; r = 16 is full rank
    before = [name for name, _ in model.named_modules()]
    if ok:
        apply_lora(model, rank=rank, targets=[targets])
        return
    with pytest.raises(ValueError, match=rf"LoRA rank {rank} is above min\(in, out\) = 16 of transformer.h.0.\w+.{targets} "
                                         r"\(16 -> \d+\): a rank-16 update is already full rank"):
        apply_lora(model, rank=rank, targets=[targets])
    assert [name for name, _ in model.named_modules()] == before  # nothing wrapped


def test_a_refused_rank_wraps_no_layer_even_when_earlier_layers_allow_it():
    net = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))  # min(in, out): 32, then 8
    with pytest.raises(ValueError, match=r"rank 16 is above min\(in, out\) = 8 of 1 \(32 -> 8\)"):
        apply_lora(net, rank=16, targets=["0", "1"])
    assert all(type(m) is nn.Linear for m in net)
