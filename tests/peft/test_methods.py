"""The other PEFT families: selective fine-tuning and prompt tuning, counted by formula; one entry point."""

import pytest
import torch
import torch.nn as nn

from minift.model import GPT, GPTConfig, KVCache, generate
from minift.peft import (
    LoraConfig,
    PromptTuningConfig,
    PromptTuningModel,
    SelectiveConfig,
    apply_peft,
    apply_selective,
    format_trainable_parameters,
    lora_layers,
    selected_parameters,
    trainable_parameters,
)

CONFIG = GPTConfig(vocab_size=61, block_size=32, n_layer=3, n_head=2, n_embd=16)
C, L = CONFIG.n_embd, CONFIG.n_layer
PROMPTS = [[5, 9, 2], [7, 1, 1, 3, 8, 9, 20, 4], [33]]


def _train(model, ids, steps=3):
    """A few AdamW steps of next-token loss; every parameter is given to the optimizer (frozen ones have no grad)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


# ---- selective


@pytest.mark.parametrize(
    "train,count",
    [
        ("last-1-blocks", 12 * C * C + 13 * C),  # one block: 4 linear layers 12 C^2 + 9 C, two LayerNorms 4 C
        ("last-2-blocks", 2 * (12 * C * C + 13 * C)),
        ("bias", L * 11 * C + C),  # per block c_attn 3C, attn.c_proj C, c_fc 4C, mlp.c_proj C, ln_1 C, ln_2 C; ln_f C
        ("layernorm", 4 * L * C + 2 * C),  # ln_1, ln_2 scale and shift per block; ln_f
        ("bias+layernorm", L * 11 * C + C + 2 * L * C + C),  # the LayerNorm shifts are biases: counted once
    ],
)
def test_selective_trains_exactly_the_chosen_parameters(model, train, count):
    total = model.num_parameters()
    assert apply_peft(model, SelectiveConfig(train)) is model
    assert trainable_parameters(model) == (count, total)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(selected_parameters(model, train))
    if train == "last-1-blocks":
        assert all(n.startswith("transformer.h.2.") for n in trainable)


def test_selective_training_changes_only_the_selection(model, ids):
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_selective(model, "bias")
    _train(model, ids)
    for name, p in model.named_parameters():
        assert torch.equal(p, start[name]) != name.endswith(".bias"), name


def test_selective_bad_specs(model):
    with pytest.raises(ValueError, match="the model has 3 blocks; choose K in 1..3"):
        apply_selective(model, "last-4-blocks")
    with pytest.raises(ValueError, match="unknown selective part 'heads'"):
        apply_selective(model, "bias+heads")
    no_bias = GPT(GPTConfig(vocab_size=61, block_size=32, n_layer=1, n_head=2, n_embd=16, bias=False))
    with pytest.raises(ValueError, match=r"'bias' selects no parameter of this model \(built with bias=False\)"):
        apply_selective(no_bias, "bias")


# ---- prompt tuning


def test_prompt_tuning_counts_and_interface(model, ids):
    total = model.num_parameters()
    pt = apply_peft(model, PromptTuningConfig(num_virtual_tokens=5))
    assert isinstance(pt, PromptTuningModel) and pt.base_model is model
    assert trainable_parameters(pt) == (5 * C, total + 5 * C)  # only the (n, C) soft prompt
    assert pt.num_parameters() == total + 5 * C and pt.num_parameters(by_component=True)["other"] == 5 * C
    assert format_trainable_parameters(pt).startswith("trainable params: 80 || ")
    logits = pt(ids)
    assert logits.shape == (3, 12, CONFIG.vocab_size)  # aligned with the input: virtual positions dropped
    h = pt.hidden_states(ids)
    assert h.shape == (3, 12, C) and torch.equal(pt.lm_head(h), logits)
    assert pt.lm_head is model.lm_head
    assert pt.config.block_size == CONFIG.block_size - 5 and pt.config.n_embd == C


def test_a_text_initialised_prompt_equals_putting_the_text_first(model, ids):
    """Prompt tuning changes outputs by design. Initialised from tokens t, it computes exactly what the base
    model computes on t followed by the input: the soft prompt *is* those tokens' embeddings."""
    text = [7, 3, 19]
    pt = PromptTuningModel(model, 5, init="text", init_token_ids=text)
    t = torch.tensor(text + text[:2])  # repeated to 5 tokens
    assert torch.equal(pt.prompt_embeddings, model.transformer.wte.weight[t])
    with torch.no_grad():
        expected = model(torch.cat([t.expand(3, 5), ids], dim=1))[:, 5:]
        torch.testing.assert_close(pt(ids), expected, rtol=0, atol=0)  # the same ops on the same numbers
    # generation too (greedy; left-padded batch): virtual tokens sit at positions 0..4 like the text would
    assert generate(pt, PROMPTS, 6) == generate(model, [text + text[:2] + p for p in PROMPTS], 6)


@pytest.mark.parametrize("options", [{}, {"temperature": 1.0, "seed": 3}])
def test_prompt_tuned_generation_cached_equals_uncached(model, options):
    pt = PromptTuningModel(model, 4, init="random")
    cached = generate(pt, PROMPTS, 10, **options)
    assert cached == generate(pt, PROMPTS, 10, use_cache=False, **options)
    assert [len(c) for c in cached] == [10, 10, 10]


def test_a_prompt_tuned_batch_generates_what_each_prompt_generates_alone(model):
    pt = PromptTuningModel(model, 4, init="random")
    assert generate(pt, PROMPTS, 8) == [generate(pt, [p], 8)[0] for p in PROMPTS]


def test_cached_forward_with_a_mask_matches_the_full_forward(model):
    pt = PromptTuningModel(model, 4, init="vocab")
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    cache = KVCache(CONFIG, 2, 4 + 9)
    with torch.no_grad():
        first = pt(ids[:, :6], attention_mask=mask[:, :6], kv_cache=cache)
        rest = pt(ids[:, 6:], attention_mask=mask, kv_cache=cache)
        full = pt(ids)
    assert cache.length == 4 + 9  # the virtual tokens are in the cache too
    # masked and causal SDPA paths, cached and not: fp32 rounding only
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_prompt_training_changes_only_the_prompt(model, ids, checkpointing):
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    pt = PromptTuningModel(model, 5)
    pt.activation_checkpointing = checkpointing  # set on the wrapped GPT, which runs the blocks
    assert model.activation_checkpointing == checkpointing
    prompt0 = pt.prompt_embeddings.detach().clone()
    _train(pt, ids)
    assert not torch.equal(pt.prompt_embeddings, prompt0)
    assert all(p.grad is None for p in model.parameters())  # no gradient reached the frozen model
    for name, p in model.named_parameters():
        assert torch.equal(p, start[name]), name


def test_prompt_inits(model):
    wte = model.transformer.wte.weight
    vocab = PromptTuningModel(model, 6, init="vocab").prompt_embeddings
    assert all(any(torch.equal(row, w) for w in wte) for row in vocab)  # rows of the embedding matrix
    random = PromptTuningModel(model, 30, init="random").prompt_embeddings  # 480 draws
    assert 0.8 < random.std() / wte.std() < 1.2  # the scale of real token embeddings (sampling error ~3%)
    with pytest.raises(ValueError, match=r"init='text' needs init_token_ids, token ids in \[0, 61\)"):
        PromptTuningModel(model, 4, init="text")
    with pytest.raises(ValueError, match="unknown prompt init 'zeros'"):
        PromptTuningModel(model, 4, init="zeros")


def test_the_context_shrinks_by_the_virtual_tokens(model):
    pt = PromptTuningModel(model, 5)
    pt(torch.zeros(1, 27, dtype=torch.long))  # 27 + 5 = 32 positions: fits
    with pytest.raises(ValueError, match=r"sequence of 28 tokens exceeds the context length 27 \(what 5 virtual tokens of prompt tuning leave of 32 positions\)"):
        pt(torch.zeros(1, 28, dtype=torch.long))
    with pytest.raises(ValueError, match=r"exceeds the context length 27 \(what 5 virtual tokens of prompt tuning leave of 32 positions\)"):
        generate(pt, [[1] * 20], 8)
    with pytest.raises(ValueError, match=r"num_virtual_tokens must be in 1..31 \(the context holds 32\)"):
        PromptTuningModel(model, 32)


# ---- one entry point


def test_apply_peft_dispatches(model):
    assert apply_peft(model, LoraConfig(rank=2, alpha=4, targets=("c_fc",))) is model
    assert sorted(lora_layers(model)) == [f"transformer.h.{i}.mlp.c_fc" for i in range(L)]
    assert trainable_parameters(model)[0] == L * 2 * (C + 4 * C)
    with pytest.raises(TypeError, match="apply_peft takes a LoraConfig, PromptTuningConfig or SelectiveConfig, got dict"):
        apply_peft(model, {"rank": 8})
