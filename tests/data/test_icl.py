import re

import pytest

from minift.data import (
    ALPACA_FORMAT,
    ContextLengthError,
    Example,
    choose_shots,
    few_shot_prompt,
    few_shot_text,
    get_task,
)


@pytest.fixture(scope="module")
def reviews() -> list[Example]:
    task = get_task("reviews")
    return task.templates.render(task.generate(50, 0), seed=0)


def test_zero_shot_is_the_formatted_query(tokenizer, reviews):
    query = reviews[0]
    prompt = few_shot_prompt(tokenizer, query, [], max_length=256)
    assert prompt.input_ids == tokenizer.encode(ALPACA_FORMAT.format_prompt(query.prompt))
    assert prompt.completion_ids == tokenizer.encode(query.completion) + [tokenizer.eot_id]
    assert (prompt.n_shots, prompt.n_shot_tokens, prompt.shot_fraction) == (0, 0, 0.0)


def test_k_shot_layout_and_token_counts(tokenizer, reviews):
    query, shots = reviews[0], reviews[1:4]
    prompt = few_shot_prompt(tokenizer, query, shots, max_length=512)
    text = few_shot_text(query, shots)
    assert text == "".join(f"### Instruction:\n{s.prompt}\n\n### Response:\n{s.completion}\n\n" for s in shots) + \
        f"### Instruction:\n{query.prompt}\n\n### Response:\n"
    query_ids = tokenizer.encode(ALPACA_FORMAT.format_prompt(query.prompt))
    assert prompt.input_ids == tokenizer.encode(text)
    assert prompt.input_ids[-len(query_ids):] == query_ids  # the query tokenizes as in zero-shot
    assert (prompt.n_shots, prompt.n_query_tokens) == (3, len(query_ids))
    assert prompt.n_shot_tokens == len(prompt.input_ids) - len(query_ids)
    assert tokenizer.eot_id not in prompt.input_ids
    assert prompt.answer_ids == tokenizer.encode(query.completion) == prompt.completion_ids[:-1]
    assert prompt.completion_ids[-1] == tokenizer.eot_id
    assert prompt.shot_fraction == prompt.n_shot_tokens / 512
    assert str(prompt) == (f"3-shot: shots {prompt.n_shot_tokens} tokens ({prompt.n_shot_tokens / 512:.0%} of 512), "
                           f"query {len(query_ids)}, completion {len(prompt.completion_ids)}")


def test_a_shot_costs_its_own_ids_and_the_blank_line(tokenizer, reviews):
    shot = reviews[1]
    alone = tokenizer.encode(ALPACA_FORMAT.format_prompt(shot.prompt)) + tokenizer.encode(shot.completion)
    one = few_shot_prompt(tokenizer, reviews[0], [shot], max_length=512)
    assert one.input_ids[:len(alone)] == alone
    # In context the blank line is two newline tokens (a pre-token ends at each newline before "###").
    assert one.input_ids[len(alone):one.n_shot_tokens] == tokenizer.encode("\n") * 2


def test_prompt_that_overflows_the_context_is_an_error(tokenizer, reviews):
    prompt = few_shot_prompt(tokenizer, reviews[0], reviews[1:5], max_length=1024)
    message = (f"4-shot prompt for record 'reviews-0-0': shots {prompt.n_shot_tokens} + query {prompt.n_query_tokens} + "
               f"completion {len(prompt.completion_ids)} (with end-of-text) = {prompt.n_tokens} tokens > max_length 100")
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        few_shot_prompt(tokenizer, reviews[0], reviews[1:5], max_length=100)


def test_choose_shots_is_deterministic_and_distinct(reviews):
    shots = choose_shots(reviews, 5, seed=0)
    assert choose_shots(reviews, 5, seed=0) == shots
    assert choose_shots(reviews, 5, seed=1) != shots
    assert len({s.record for s in shots}) == 5
    with pytest.raises(ValueError, match="cannot choose 51 shots from 50 examples"):
        choose_shots(reviews, 51, seed=0)
