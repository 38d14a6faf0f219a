import random
import re

import pytest

from minift.data import TASKS, WORLD, get_task, texts
from minift.data.tasks import _distinct, qa_chance

N = 300


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request):
    return TASKS[request.param]


@pytest.fixture(scope="module")
def records(task):
    return task.generate(N, 0)


def test_registry():
    assert set(TASKS) == {"reviews", "arithmetic", "qa", "summarize"}
    assert get_task("qa") is TASKS["qa"]
    with pytest.raises(KeyError, match="unknown task 'poems'; built-in tasks: reviews, arithmetic, qa, summarize"):
        get_task("poems")


def test_generation_is_deterministic_by_seed(task, records):
    assert task.generate(N, 0) == records
    assert task.generate(N, 1) != records
    assert task.generate(10, 0) == records[:10]  # a prefix does not depend on n


def test_records_are_distinct_plain_dicts_with_ids(task, records):
    assert len(records) == N
    assert all(type(r) is dict for r in records)
    assert len({r["id"] for r in records}) == N
    assert records[0]["id"] == f"{task.name}-0-0"


def test_thousands_of_distinct_records_are_available(task):
    many = task.generate(3000, 7)
    inputs = {tuple(v for k, v in r.items() if k not in ("id", task.answer_field)) for r in many}
    assert len(inputs) == 3000


def test_at_least_three_templates_and_all_render_the_canonical_answer(task, records):
    assert len(task.templates.templates) >= 3
    for template in task.templates.templates:
        for i, record in enumerate(records[:50]):
            prompt, completion = template.render(record, i)
            assert completion == str(record[task.answer_field])
            assert prompt and "{{" not in prompt


def test_task_metadata(task):
    assert 0 <= task.chance_accuracy < 1
    assert "exact_match" in task.metrics and set(task.metrics) <= {"exact_match", "rouge_l"}  # what minift.evaluation reports
    assert task.description


def test_reviews():
    records = get_task("reviews").generate(N, 0)
    assert {r["stars"] for r in records} == {1, 2, 3, 4, 5}
    assert get_task("reviews").label_field == "stars" and get_task("reviews").chance_accuracy == 0.2
    for r in records:
        assert r["product"] in r["review_body"]
        assert r["sentiment"] == {1: "negative", 2: "negative", 3: "neutral", 4: "positive", 5: "positive"}[r["stars"]]


def test_arithmetic_answers_are_correct():
    records = get_task("arithmetic").generate(N, 0)
    assert get_task("arithmetic").chance_accuracy == pytest.approx(1 / 19)
    for r in records:
        a, b = map(int, re.findall(r"\d+", r["story"]))
        assert r["answer"] == (a + b if r["operation"] == "add" else a - b)
        assert 0 <= r["answer"] <= 18
    assert {r["operation"] for r in records} == {"add", "subtract"}


def test_qa_answers_are_world_facts_and_spans_of_the_passage():
    products = {p.name: p for p in WORLD.products}
    for r in get_task("qa").generate(N, 0):
        assert r["answer"] == texts.answer(products[r["product"]], r["attribute"])
        assert r["answer"] in r["passage"]
        assert r["product"] in r["question"]
    assert get_task("qa").chance_accuracy == pytest.approx(qa_chance())


def test_summaries_are_one_sentence_about_the_speakers_and_score_with_rouge():
    task = get_task("summarize")
    assert task.metrics == ("exact_match", "rouge_l")
    records = task.generate(N, 0)
    assert {r["kind"] for r in records} == {"accept", "decline", "bought", "borrow"}
    for r in records:
        first, second = [line.split(":")[0] for line in r["dialogue"].splitlines()][:2]
        assert r["summary"].startswith(second + " ")  # the one who answers is the subject
        assert (first in r["summary"]) == (r["kind"] != "bought")
        assert r["summary"].endswith(".") and r["summary"].count(".") == 1
        assert 2 <= len(r["dialogue"].splitlines()) <= 3


def test_reviews_and_qa_share_the_world_products():
    names = {p.name for p in WORLD.products}
    assert {r["product"] for r in get_task("reviews").generate(N, 0)} <= names
    assert {r["product"] for r in get_task("qa").generate(N, 0)} <= names


def test_too_few_distinct_records_is_an_error():
    with pytest.raises(ValueError, match=re.escape("task 'tiny': could only generate 1 distinct records, 3 asked")):
        _distinct("tiny", 3, 0, lambda rng: {"x": 1}, key=("x",))


def test_texts_are_fixed_by_the_rng():
    product = WORLD.products[0]
    assert texts.review_body(random.Random(5), product, 4) == texts.review_body(random.Random(5), product, 4)
    assert texts.dialogue(random.Random(5), WORLD) == texts.dialogue(random.Random(5), WORLD)
