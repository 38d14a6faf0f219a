"""The GPT: presets and parameter counts, shapes, causality, padding masks, init, errors."""

import math

import pytest
import torch

from minift.model import GPT, GPTConfig
from minift.model.gpt import LayerNorm

SMALL = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32)


# Published sizes; GPT-2 small's 124,439,808 is the count transformers reports (tied head once).
@pytest.mark.parametrize(
    "name, expected",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_counts(name, expected):
    with torch.device("meta"):  # counts need shapes only, not 6 GB of gpt2-xl weights
        model = GPT(GPTConfig.from_name(name))
    assert model.num_parameters() == expected
    by_component = model.num_parameters(by_component=True)
    assert sum(by_component.values()) == expected
    assert by_component["head"] == 0 and by_component["other"] == 0  # tied head counted once


def test_component_counts_match_the_formulas():
    c = SMALL
    counts = GPT(c).num_parameters(by_component=True)
    assert counts["embeddings"] == c.vocab_size * c.n_embd + c.block_size * c.n_embd
    assert counts["attention"] == c.n_layer * (3 * c.n_embd * c.n_embd + 3 * c.n_embd + c.n_embd * c.n_embd + c.n_embd)
    assert counts["mlp"] == c.n_layer * (2 * 4 * c.n_embd * c.n_embd + 4 * c.n_embd + c.n_embd)
    assert counts["norms"] == (2 * c.n_layer + 1) * 2 * c.n_embd


def test_untied_head_is_counted():
    model = GPT(GPTConfig(**{**SMALL.__dict__, "tie_weights": False}))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.num_parameters(by_component=True)["head"] == SMALL.vocab_size * SMALL.n_embd


def test_tiny_preset_and_overrides():
    config = GPTConfig.from_name("tiny-m", dropout=0.1)
    assert (config.n_layer, config.n_embd, config.dropout) == (4, 128, 0.1)
    with pytest.raises(ValueError, match="unknown model preset 'gpt3'"):
        GPTConfig.from_name("gpt3")


@pytest.mark.parametrize(
    "overrides, message",
    [({"n_embd": 30, "n_head": 4}, "not divisible"), ({"n_layer": 0}, "n_layer must be positive"), ({"dropout": 1.0}, "dropout")],
)
def test_bad_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL.__dict__, **overrides})


def test_module_names_are_gpt2s():
    names = {n for n, _ in GPT(SMALL).named_parameters()}
    for expected in [
        "transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.ln_1.weight",
        "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias", "transformer.h.1.ln_2.bias",
        "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight",
    ]:
        assert expected in names


def test_forward_shapes_and_tied_head():
    model = GPT(SMALL)
    ids = torch.randint(0, SMALL.vocab_size, (3, 10))
    hidden, logits = model.hidden_states(ids), model(ids)
    assert hidden.shape == (3, 10, SMALL.n_embd) and logits.shape == (3, 10, SMALL.vocab_size)
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(logits, hidden @ model.transformer.wte.weight.T)


def test_gpt2_init_scales_residual_projections():
    model = GPT(GPTConfig(vocab_size=97, block_size=64, n_layer=8, n_head=4, n_embd=256))
    c_proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    c_fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    # 8 x 256 x 1024 samples: the sample std is within 1% of its true value
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.01)
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.01)
    assert all((b.attn.c_attn.bias == 0).all() for b in model.transformer.h)


def test_causal_future_tokens_do_not_change_the_past():
    model = GPT(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % SMALL.vocab_size
    torch.testing.assert_close(model(ids)[:, :8], model(changed)[:, :8], rtol=0, atol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_compute_what_they_compute_alone(side):
    model = GPT(SMALL).eval()
    short, long = torch.randint(0, SMALL.vocab_size, (5,)), torch.randint(0, SMALL.vocab_size, (9,))
    pad = torch.zeros(4, dtype=torch.long)
    row = torch.cat([pad, short]) if side == "left" else torch.cat([short, pad])
    ids = torch.stack([row, long])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0 if side == "left" else 1
    mask[0, 5:] = 0 if side == "right" else 1
    logits = model(ids, attention_mask=mask)
    alone = model(short[None])[0]
    real = slice(4, 9) if side == "left" else slice(0, 5)
    # same fp32 arithmetic except the masked softmax entries (exact zeros): agreement to rounding
    torch.testing.assert_close(logits[0, real], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], model(long[None])[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logits).all()  # padded queries see themselves: no NaN anywhere


def test_activation_checkpointing_gives_the_same_gradients():
    model = GPT(SMALL)
    ids = torch.randint(0, SMALL.vocab_size, (2, 16))
    model(ids).logsumexp(-1).mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(ids).logsumexp(-1).mean().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)  # recomputation repeats the same fp32 ops


@pytest.mark.parametrize(
    "ids, message",
    [
        (torch.tensor([[1, 97]]), r"token id 97 is outside the vocabulary \[0, 97\)"),
        (torch.tensor([[-1, 3]]), r"token id -1 is outside the vocabulary"),
        (torch.zeros(1, 65, dtype=torch.long), "sequence of 65 tokens .* exceeds the context length 64"),
        (torch.zeros(1, 3), "must be integer token ids"),
    ],
)
def test_bad_input_ids(ids, message):
    with pytest.raises(ValueError, match=message):
        GPT(SMALL)(ids)


def test_bad_mask_shape():
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\), expected \(1, 5\)"):
        GPT(SMALL)(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))


def test_input_embeds_equal_input_ids():
    model = GPT(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (2, 7))
    torch.testing.assert_close(model(input_embeds=model.transformer.wte(ids)), model(ids), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one of input_ids and input_embeds"):
        model(ids, input_embeds=model.transformer.wte(ids))
    with pytest.raises(ValueError, match="sequence of 65 tokens"):
        model(input_embeds=torch.zeros(1, 65, SMALL.n_embd))


def _layer_norm_grads(ln, x, dy, threads):
    """Gradients of `ln` at x for the upstream gradient dy, computed with `threads` CPU threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ln.zero_grad(set_to_none=True)
        x = x.detach().clone().requires_grad_()
        (ln(x) * dy).sum().backward()
        return x.grad, *(p.grad for p in ln.parameters() if p.requires_grad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(4, 58, 128), (3, 7, 31), (1, 1, 768)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch_and_its_gradients_ignore_the_thread_count(shape, bias):
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ours = LayerNorm(shape[-1], bias=bias)
    ref = torch.nn.LayerNorm(shape[-1], bias=bias)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
            q.copy_(p)
    assert torch.equal(ours(x.requires_grad_()), ref(x))  # torch's own forward
    by_threads = [_layer_norm_grads(ours, x, dy, t) for t in (1, 2, 3)]
    for grads in by_threads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads, by_threads[0]))  # bitwise, whatever the threads
    expected = _layer_norm_grads(ref, x, dy, 1)
    assert torch.equal(by_threads[0][0], expected[0])  # the input's gradient is torch's own kernel
    for a, b in zip(by_threads[0][1:], expected[1:]):
        # the same M-term fp32 sums in another order: |error| <= M * eps * sum|terms|, far below 1e-5 here
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_frozen_weight_with_a_trained_bias_gets_the_bias_gradient_alone():
    ln = LayerNorm(16)
    ln.weight.requires_grad_(False)  # BitFit: only biases train
    x, dy = torch.randn(5, 16), torch.randn(5, 16)
    grads = [_layer_norm_grads(ln, x, dy, t) for t in (1, 2)]
    assert ln.weight.grad is None and len(grads[0]) == 2  # x's and the bias's
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    torch.testing.assert_close(grads[0][1], dy.sum(0), rtol=1e-6, atol=1e-6)  # dbias = column sums of dy
