"""QLoRA (minift.peft.qlora): the NF4 layer computes what its dequantised weight computes, keeps no
full-precision weight for the backward, LoRA over it trains exactly as over that weight in fp32, the
method's plumbing, and the adapter in PEFT's format."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.kernels.nf4 import BLOCK, SCALE_BLOCK, dequantize_nf4
from minift.model import GPT, GPTConfig
from minift.peft import (
    LoraConfig, NF4Linear, apply_lora, apply_peft, check_method, dequantize_base, lora_layers, merge_adapter,
    merge_and_unload, method_of, nf4_layers, quantize_base, quantized_bits, save_trainable, load_trainable,
    trainable_parameters,
)

CONFIG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=2, n_embd=32)
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _randomize(model, std=0.2):
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A["default"].normal_(0, std)
            layer.lora_B["default"].normal_(0, std)
    return model


def test_layer_is_linear_on_the_dequantised_weight():
    linear = nn.Linear(64, 96)
    layer = NF4Linear.from_linear(linear)
    x = torch.randn(4, 7, 64)
    dense = dequantize_nf4(layer.weight)
    assert torch.equal(layer(x), x @ dense.t() + linear.bias)  # the same fp32 weight, the same ops
    assert torch.equal(layer.dequantize()(x), F.linear(x, dense, linear.bias))
    assert not layer.bias.requires_grad and [n for n, _ in layer.named_parameters()] == ["bias"]
    assert {n for n, _ in layer.named_buffers()} == {"packed", "scales", "factors", "mean"}


def test_backward_saves_no_full_precision_weight():
    """What autograd keeps from forward to backward: the input and the layer's own NF4 buffers, never a
    (96, 64) floating-point tensor; dL/dx is dL/dy W'."""
    layer = NF4Linear.from_linear(nn.Linear(64, 96, bias=False))
    x = torch.randn(5, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert not any(t.is_floating_point() and t.numel() == 96 * 64 for t in saved)
    assert {t.dtype for t in saved} == {torch.uint8, torch.int8, torch.float32}  # codes, scales, factors/mean
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad @ dequantize_nf4(layer.weight))


def test_quantize_base_replaces_the_blocks_linear_layers_only():
    model = GPT(CONFIG)
    n_before = trainable_parameters(model)[1]
    quantize_base(model)
    assert sorted(nf4_layers(model)) == sorted(f"transformer.h.{i}.{n}" for i in range(2) for n in LINEARS)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.transformer.wte.weight  # tied, fp32
    assert trainable_parameters(model)[1] == n_before  # an NF4 weight counts as the parameters it stands for
    # bits: 4 per code + 8 per 64 + 32 per started group of 256 scales + 32 (the mean), over the weights
    sizes = [32 * 96, 32 * 32, 32 * 128, 128 * 32] * 2
    bits = sum(4 * n + 8 * n / BLOCK + 32 * -(-n // (BLOCK * SCALE_BLOCK)) + 32 for n in sizes) / sum(sizes)
    assert quantized_bits(model) == pytest.approx(bits)


def test_gpt2_sized_layer_costs_4_127_bits():
    layer = NF4Linear.from_linear(nn.Linear(768, 3072))  # GPT-2 small's c_fc
    assert 8 * layer.weight.nbytes / layer.weight.numel == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-4)


@pytest.mark.slow
def test_qlora_trains_as_lora_on_the_dequantised_fp32_base():
    """Two copies of one model: QLoRA (NF4 layers), and LoRA over nn.Linear layers holding the same
    dequantised weights. Same data, same AdamW: the same losses step for step and the same adapters.
    Tolerance: the only difference is x W'^T + b (two ops) against F.linear (one addmm), ~1 ulp per
    product, which AdamW's normalised steps do not amplify over 5 steps: 1e-5 relative."""
    torch.manual_seed(0)
    base = GPT(CONFIG)
    qlora = apply_peft(copy.deepcopy(base), check_method("qlora", LoraConfig(rank=4, targets="all-linear")))
    lora = dequantize_base(quantize_base(copy.deepcopy(base)))  # nn.Linear layers with W'
    lora = apply_peft(lora, LoraConfig(rank=4, targets="all-linear"))
    lora.load_state_dict({k: v for k, v in qlora.state_dict().items() if "lora_" in k}, strict=False)  # same A
    ids = torch.randint(0, CONFIG.vocab_size, (4, 16))
    losses = {}
    for name, model in (("qlora", qlora), ("lora", lora)):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses[name] = []
        for _ in range(5):
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["qlora"][-1] < losses["qlora"][0] - 0.05  # it trains
    torch.testing.assert_close(torch.tensor(losses["qlora"]), torch.tensor(losses["lora"]), rtol=1e-5, atol=0)
    trained = {n: p for n, p in qlora.named_parameters() if p.requires_grad}
    assert len(trained) == 2 * 2 * 4  # A and B of the 4 linear layers of 2 blocks
    torch.testing.assert_close(trained, {n: p for n, p in lora.named_parameters() if p.requires_grad}, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for n, p in qlora.named_parameters() if "lora_" not in n)


def test_method_plumbing():
    config = check_method("qlora", None)
    assert config == LoraConfig(quantize="nf4") and method_of(config) == "qlora"
    assert check_method("qlora", LoraConfig(rank=2)) == LoraConfig(rank=2, quantize="nf4")  # LoRA fields kept
    assert method_of(LoraConfig()) == "lora"
    with pytest.raises(ValueError, match="'qlora'"):
        check_method("lora", LoraConfig(quantize="nf4"))
    with pytest.raises(ValueError, match="quantize"):
        LoraConfig(quantize="int3")
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn.*multiple of 64"):
        quantize_base(GPT(GPTConfig(vocab_size=61, block_size=32, n_layer=1, n_head=1, n_embd=6)))


def test_adapter_round_trip_and_merge(tmp_path):
    ids = torch.randint(0, CONFIG.vocab_size, (3, 12))
    base = GPT(CONFIG).eval()
    model = _randomize(apply_lora(copy.deepcopy(base), LoraConfig(rank=4, quantize="nf4")))
    out = model(ids)
    save_trainable(model, tmp_path / "adapter")  # PEFT's LORA format: the adapter only
    saved = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert '"peft_type": "LORA"' in saved
    loaded = load_trainable(quantize_base(copy.deepcopy(base)), tmp_path / "adapter")
    assert torch.equal(loaded(ids), out)  # same base (quantisation is deterministic), same adapter
    with pytest.raises(ValueError, match="NF4 base"):
        merge_adapter(model)
    merged = merge_and_unload(copy.deepcopy(model))  # dequantised, then W' + scaling B A
    assert not nf4_layers(merged) and not lora_layers(merged)
    torch.testing.assert_close(merged(ids), out, rtol=1e-5, atol=1e-5)  # fp32 rounding of the merged sum
