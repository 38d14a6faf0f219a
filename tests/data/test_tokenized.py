import re

import pytest
import torch

from minift.data import (
    ALPACA_FORMAT,
    IGNORE_INDEX,
    TASKS,
    Batches,
    ContextLengthError,
    Example,
    ExampleOrder,
    MixtureBatches,
    TokenizedExample,
    collate,
    length_stats,
    sequential_batches,
    tokenize_example,
    tokenize_examples,
)

X = IGNORE_INDEX


def test_labels_mask_exactly_the_prompt(chars):
    # Character ids: "a"=97, "b"=98, "\n"=10, "4"=52; end-of-text is 0.
    ex = tokenize_example(chars, "ab\n", "4", max_length=16)
    assert ex.input_ids == [97, 98, 10, 52, 0]
    assert ex.labels == [X, X, X, 52, 0]
    assert (ex.n_prompt_tokens, ex.n_completion_tokens, ex.n_truncated) == (3, 2, 0)


def test_labels_of_a_known_alpaca_prompt(tokenizer):
    prompt = ALPACA_FORMAT.format_prompt("Predict the star rating of this review:\nIt is excellent.")
    ex = tokenize_example(tokenizer, prompt, "5", max_length=256)
    n = len(tokenizer.encode(prompt))
    assert ex.labels == [X] * n + tokenizer.encode("5") + [tokenizer.eot_id]
    assert ex.input_ids[:n] == tokenizer.encode(prompt)
    assert tokenizer.decode(ex.input_ids[n:]) == "5<|endoftext|>"
    assert [i for i, label in enumerate(ex.labels) if label != X] == [n, n + 1]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_separate_encoding_equals_joint_encoding(tokenizer, name):
    """The canonical ids (prompt ids + completion ids) are the ids of the joined text."""
    task = TASKS[name]
    for ex in task.templates.render(task.generate(60, 0), seed=0):
        prompt = ALPACA_FORMAT.format_prompt(ex.prompt)
        assert tokenizer.encode(prompt) + tokenizer.encode(ex.completion) == tokenizer.encode(prompt + ex.completion)


def test_left_truncation_cuts_and_counts_prompt_tokens(chars):
    ex = tokenize_example(chars, "0123456789", "ab", max_length=8, truncation="left")
    assert ex.input_ids == [ord(c) for c in "56789ab"] + [0]
    assert ex.labels == [X] * 5 + [97, 98, 0]
    assert ex.n_truncated == 5


def test_too_long_is_an_error_by_default(chars):
    message = "example: 10 prompt + 3 completion tokens (with end-of-text) = 13 > max_length 8; truncation='left' would cut 5 prompt tokens"
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        tokenize_example(chars, "0123456789", "ab", max_length=8)


@pytest.mark.parametrize("truncation", ["error", "left"])
def test_completion_that_cannot_fit_is_always_an_error(chars, truncation):
    message = ("example: the completion takes 8 tokens with end-of-text and needs one prompt token before it, "
               "but max_length is 8: it cannot fit the context")
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        tokenize_example(chars, "p", "1234567", max_length=8, truncation=truncation)


def test_completion_that_just_fits_keeps_one_prompt_token(chars):
    ex = tokenize_example(chars, "xyz", "123456", max_length=8, truncation="left")
    assert ex.input_ids == [ord("z")] + [ord(c) for c in "123456"] + [0]
    assert ex.n_truncated == 2


def test_empty_prompt_and_bad_truncation_are_errors(chars):
    with pytest.raises(ContextLengthError, match="example: the prompt is empty"):
        tokenize_example(chars, "", "4", max_length=8)
    with pytest.raises(ValueError, match=r"truncation must be one of \('error', 'left'\), got 'right'"):
        tokenize_example(chars, "p", "4", max_length=8, truncation="right")


def test_tokenize_examples_applies_the_format_and_names_the_record(chars):
    examples = [Example("Hi", "4", "t", "r-0"), Example("A long prompt", "5", "reviews/rate", "r-1")]
    [first] = tokenize_examples(chars, examples[:1], max_length=64)
    assert first.input_ids == chars.encode(ALPACA_FORMAT.format_prompt("Hi")) + chars.encode("4") + [0]
    with pytest.raises(ContextLengthError, match=re.escape("record 'r-1' (template 'reviews/rate'): 46 prompt + 2")):
        tokenize_examples(chars, examples, max_length=40)


def test_length_stats(chars):
    tokenized = [tokenize_example(chars, "abcd", "1", 16), tokenize_example(chars, "ab", "123", 16),
                 tokenize_example(chars, "abcdefghij", "1", 8, truncation="left")]
    stats = length_stats(tokenized)
    assert (stats.n, stats.prompt_max, stats.completion_max) == (3, 6, 4)
    assert stats.prompt_mean == pytest.approx((4 + 2 + 6) / 3)
    assert stats.completion_mean == pytest.approx((2 + 4 + 2) / 3)
    assert (stats.n_truncated_examples, stats.n_truncated_tokens) == (1, 4)


def _example(prompt: list[int], completion: list[int]) -> TokenizedExample:
    return TokenizedExample(prompt + completion, [X] * len(prompt) + completion, len(prompt), 0)


def _first_tokens(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def test_collate_right_pads_with_masks():
    batch = collate([_example([5, 6], [7, 1]), _example([8], [1])], pad_id=3)
    assert {k: v.dtype for k, v in batch.items()} == {"input_ids": torch.long, "labels": torch.long, "attention_mask": torch.long}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 1, 3, 3]]
    assert batch["labels"].tolist() == [[X, X, 7, 1], [X, 1, X, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_sequential_batches_keep_list_order():
    examples = [_example([i], [1]) for i in range(5)]
    batches = list(sequential_batches(examples, batch_size=2, pad_id=0))
    assert [b["input_ids"][:, 0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_example_order_is_a_fresh_permutation_each_epoch():
    order = ExampleOrder(10, seed=0)
    epochs = [order.take(10) for _ in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert ExampleOrder(10, seed=0).take(30) == sum(epochs, [])
    assert ExampleOrder(10, seed=1).take(10) != epochs[0]


def test_batches_expose_epoch_and_index():
    batches = Batches([_example([i], [1]) for i in range(10)], batch_size=4, pad_id=0, seed=0)
    positions = []
    for _ in range(3):
        next(batches)
        positions.append((batches.epoch, batches.index))
    assert positions == [(0, 4), (0, 8), (1, 2)]
    assert batches.batches_per_epoch == 2.5


def test_batches_are_deterministic_and_every_example_is_seen_once_per_epoch():
    examples = [_example([i], [1]) for i in range(12)]
    stream, again = Batches(examples, 4, 0, seed=0), Batches(examples, 4, 0, seed=0)
    epoch = [_first_tokens(next(stream)) for _ in range(3)]
    assert [_first_tokens(next(again)) for _ in range(3)] == epoch
    assert sorted(sum(epoch, [])) == list(range(12))
    assert _first_tokens(next(Batches(examples, 4, 0, seed=1))) != epoch[0]


def test_batches_resume_exactly_from_state_dict():
    examples = [_example([i], [1]) for i in range(7)]
    reference = Batches(examples, 3, 0, seed=5)
    expected = [next(reference)["input_ids"].tolist() for _ in range(6)]
    run = Batches(examples, 3, 0, seed=5)
    for _ in range(4):
        next(run)
    resumed = Batches(examples, 3, 0, seed=5)
    resumed.load_state_dict(run.state_dict())
    assert resumed.state_dict() == {"epoch": 1, "index": 5}
    assert [next(resumed)["input_ids"].tolist() for _ in range(2)] == expected[4:]


def test_bad_batch_size_and_no_examples():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        Batches([_example([1], [1])], 0, 0)
    with pytest.raises(ValueError, match="need at least one example to order, got 0"):
        Batches([], 4, 0)


# Task a's examples start with token 1, task b's with token 2, so a batch shows where each came from.
SOURCES = {"a": [_example([1, i], [9]) for i in range(10)], "b": [_example([2, i], [9]) for i in range(10)]}


def test_mixture_samples_tasks_by_proportions():
    mixture = MixtureBatches(SOURCES, {"a": 0.75, "b": 0.25}, batch_size=16, pad_id=0, seed=0)
    firsts = sum((_first_tokens(next(mixture)) for _ in range(200)), [])
    # 3200 draws: the share of a has standard deviation 0.0077, so 0.03 is four of them.
    assert firsts.count(1) / len(firsts) == pytest.approx(0.75, abs=0.03)
    assert mixture.step == 200


def test_mixture_weights_are_normalised_and_zero_means_never():
    by_share = MixtureBatches(SOURCES, {"a": 0.75, "b": 0.25}, 8, 0, seed=1)
    by_weight = MixtureBatches(SOURCES, {"a": 3, "b": 1}, 8, 0, seed=1)
    assert [next(by_share)["input_ids"].tolist() for _ in range(5)] == [next(by_weight)["input_ids"].tolist() for _ in range(5)]
    only_a = MixtureBatches(SOURCES, {"a": 1, "b": 0}, 8, 0, seed=1)
    assert all(_first_tokens(next(only_a)) == [1] * 8 for _ in range(5))


def test_mixture_resumes_exactly_from_state_dict():
    reference = MixtureBatches(SOURCES, {"a": 0.5, "b": 0.5}, 4, 0, seed=2)
    expected = [next(reference)["input_ids"].tolist() for _ in range(8)]
    run = MixtureBatches(SOURCES, {"a": 0.5, "b": 0.5}, 4, 0, seed=2)
    for _ in range(5):
        next(run)
    resumed = MixtureBatches(SOURCES, {"a": 0.5, "b": 0.5}, 4, 0, seed=2)
    resumed.load_state_dict(run.state_dict())
    assert resumed.state_dict()["step"] == 5
    assert [next(resumed)["input_ids"].tolist() for _ in range(3)] == expected[5:]


def test_mixture_proportion_errors():
    with pytest.raises(ValueError, match=re.escape("proportions name ['a'] but the sources are ['a', 'b']")):
        MixtureBatches(SOURCES, {"a": 1.0}, 4, 0)
    with pytest.raises(ValueError, match=re.escape("proportions must be >= 0 with a positive sum, got {'a': -1, 'b': 2}")):
        MixtureBatches(SOURCES, {"a": -1, "b": 2}, 4, 0)
    with pytest.raises(ValueError, match="proportions must be >= 0 with a positive sum"):
        MixtureBatches(SOURCES, {"a": 0, "b": 0}, 4, 0)
