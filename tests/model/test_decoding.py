"""Generation: the KV cache equals recomputation, batching equals one prompt at a time, options work."""

import pytest
import torch

from minift.model import GPT, GPTConfig, generate

CONFIG = GPTConfig(vocab_size=61, block_size=48, n_layer=2, n_head=2, n_embd=32)
PROMPTS = [[5, 9, 2], [7, 1, 1, 3, 8, 9, 20, 4], [33]]


@pytest.fixture
def model():
    torch.manual_seed(1)
    return GPT(CONFIG).eval()


@pytest.mark.parametrize(
    "options",
    [{}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.7, "top_k": 5, "seed": 4}, {"temperature": 1.3, "top_p": 0.8, "seed": 5}],
)
def test_cached_generation_equals_recomputation(model, options):
    cached = generate(model, PROMPTS, 20, **options)
    uncached = generate(model, PROMPTS, 20, use_cache=False, **options)
    assert cached == uncached
    assert [len(c) for c in cached] == [20, 20, 20]


def test_a_batch_generates_what_each_prompt_generates_alone(model):
    batched = generate(model, PROMPTS, 15)
    assert batched == [generate(model, [p], 15)[0] for p in PROMPTS]


def test_tensor_prompts(model):
    assert generate(model, torch.tensor([PROMPTS[1]]), 5) == generate(model, [PROMPTS[1]], 5)


def test_stop_tokens_end_a_row_and_are_kept(model):
    free = generate(model, PROMPTS, 12)
    stop = free[1][3]  # a token the second row produces at step 4
    stopped = generate(model, PROMPTS, 12, stop_tokens=[stop])
    for full, cut in zip(free, stopped):
        expected = full[: full.index(stop) + 1] if stop in full else full
        assert cut == expected


def test_sampling_is_reproducible_by_seed_and_leaves_global_rng_alone(model):
    state = torch.get_rng_state()
    a = generate(model, PROMPTS, 10, temperature=1.0, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == generate(model, PROMPTS, 10, temperature=1.0, seed=11)
    assert a != generate(model, PROMPTS, 10, temperature=1.0, seed=12)


def test_top_k_1_and_a_tiny_top_p_are_greedy(model):
    greedy = generate(model, PROMPTS, 10)
    assert generate(model, PROMPTS, 10, temperature=1.0, top_k=1, seed=0) == greedy
    assert generate(model, PROMPTS, 10, temperature=1.0, top_p=1e-6, seed=0) == greedy


def test_top_k_restricts_the_choice(model):
    """Every sampled token is among the k most likely at its step (checked by recomputation)."""
    prompt = PROMPTS[1]
    out = generate(model, [prompt], 10, temperature=2.0, top_k=3, seed=7)[0]
    seq = prompt + out
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0]
    for i, token in enumerate(out):
        top3 = logits[len(prompt) - 1 + i].topk(3).indices.tolist()
        assert token in top3


def test_generation_restores_training_mode(model):
    model.train()
    generate(model, PROMPTS, 2)
    assert model.training


@pytest.mark.parametrize(
    "prompts, n, options, message",
    [
        ([[1] * 40], 9, {}, "prompt of 40 tokens \\+ 9 new tokens exceeds the context length 48"),
        ([[]], 3, {}, "at least one token"),
        ([[1]], 3, {"temperature": -1}, "bad sampling options"),
        ([[1]], 3, {"top_p": 0.0}, "bad sampling options"),
    ],
)
def test_bad_generation_requests(model, prompts, n, options, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, n, **options)
