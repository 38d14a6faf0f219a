"""The built-in tasks: generators of records from the world, their templates, and a registry.

| name         | input -> output                                   | output kind | label   | chance   |
|--------------|---------------------------------------------------|-------------|---------|----------|
| `reviews`    | product review -> star rating 1..5                | a digit     | `stars` | 1/5      |
| `arithmetic` | word problem -> result 0..18                      | a number    | -       | 1/19     |
| `qa`         | passage about a product + question -> a span      | a word      | -       | 0.13     |
| `summarize`  | 2-3 line dialogue -> canonical summary sentence   | a sentence  | -       | 0        |

Every generator is `generate(n, seed) -> list[dict]`: `n` distinct records (no two with the same
input text), each a plain dict with an `id`, fixed by `seed`. The completion of every template is
the answer field alone, so the canonical answer of a record is the same whichever template
renders it. Reviews and QA talk about the same products; the corpus states the same facts.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

import minift.data.texts as texts
from minift.data.world import WORLD, World
from minift.data.templates import PromptTemplate, TemplateLibrary


@dataclass(frozen=True)
class Task:
    """A built-in task: how to generate its records and how to render them."""

    name: str
    description: str
    generate: Callable[[int, int], list[dict]]  # (n, seed) -> n distinct records
    templates: TemplateLibrary
    answer_field: str  # the field every template's completion renders
    label_field: str | None  # splits are stratified by it; None for generative tasks
    chance_accuracy: float  # exact match of a uniform guess over the possible answers
    metrics: tuple[str, ...]  # what evaluation reports besides loss: "exact_match", "rouge_l" (minift.evaluation)


def _distinct(task: str, n: int, seed: int, make: Callable[[random.Random], dict], key: tuple[str, ...]) -> list[dict]:
    """Draw records until `n` have distinct `key` fields (so no input can be in two splits); add ids."""
    rng, records, seen = random.Random(f"{task}:{seed}"), [], set()
    for _ in range(50 * n + 100):
        if len(records) == n:
            break
        record = make(rng)
        k = tuple(record[f] for f in key)
        if k not in seen:
            seen.add(k)
            records.append({"id": f"{task}-{seed}-{len(records)}", **record})
    if len(records) < n:
        raise ValueError(f"task {task!r}: could only generate {len(records)} distinct records, {n} asked")
    return records


# --- reviews ------------------------------------------------------------------------------------
def generate_reviews(n: int, seed: int, world: World = WORLD) -> list[dict]:
    """Product reviews with a star rating 1..5 drawn uniformly; the text carries cue words of the rating."""

    def make(rng: random.Random) -> dict:
        product, stars = rng.choice(world.products), rng.randint(1, 5)
        return {"product": product.name, "reviewer": rng.choice(world.people).name,
                "review_body": texts.review_body(rng, product, stars), "stars": stars,
                "sentiment": texts.sentiment(stars)}

    return _distinct("reviews", n, seed, make, key=("review_body",))


REVIEW_TEMPLATES = TemplateLibrary("reviews", (
    PromptTemplate("reviews/predict", "Predict the star rating (1 to 5) of this review:\n{{review_body}}", "{{stars}}"),
    PromptTemplate("reviews/how_many", "{{review_body}}\nHow many stars out of 5 did the reviewer give?", "{{stars}}"),
    PromptTemplate("reviews/rate", "Read the review and rate it from 1 to 5 stars.\nReview: {{review_body}}", "{{stars}}"),
    PromptTemplate("reviews/product", "A review of the {{product}}:\n{{review_body}}\nWhat is its star rating?", "{{stars}}"),
))


# --- arithmetic ---------------------------------------------------------------------------------
def generate_arithmetic(n: int, seed: int, world: World = WORLD) -> list[dict]:
    """Word problems: one addition or subtraction of single-digit operands, answer 0..18."""

    def make(rng: random.Random) -> dict:
        problem = texts.word_problem(rng, world)
        return {"story": problem.story, "question": problem.question, "answer": problem.answer,
                "operation": problem.operation}

    return _distinct("arithmetic", n, seed, make, key=("story", "question"))


ARITHMETIC_TEMPLATES = TemplateLibrary("arithmetic", (
    PromptTemplate("arithmetic/solve", "Solve this problem:\n{{story}} {{question}}", "{{answer}}"),
    PromptTemplate("arithmetic/number", "{{story}} {{question}}\nAnswer with a number.", "{{answer}}"),
    PromptTemplate("arithmetic/story", "Answer the question about the story.\nStory: {{story}}\nQuestion: {{question}}",
                   "{{answer}}"),
))


# --- question answering -------------------------------------------------------------------------
def generate_qa(n: int, seed: int, world: World = WORLD) -> list[dict]:
    """Extractive QA: a passage of product facts and a question whose answer is a span of it
    (see `texts.passage_question`)."""

    def make(rng: random.Random) -> dict:
        return dataclasses.asdict(texts.passage_question(rng, world))

    return _distinct("qa", n, seed, make, key=("passage", "question"))


def qa_chance(world: World = WORLD) -> float:
    """A uniform guess among the values of the asked kind (colours, makers, ...), averaged over kinds."""
    sizes = [len({texts.answer(p, a) for p in world.products}) for a in texts.ATTRIBUTES]
    return sum(1 / s for s in sizes) / len(sizes)


QA_TEMPLATES = TemplateLibrary("qa", (
    PromptTemplate("qa/passage", "Answer the question using the passage.\nPassage: {{passage}}\nQuestion: {{question}}",
                   "{{answer}}"),
    PromptTemplate("qa/read", "{{passage}}\n{{question}}", "{{answer}}"),
    PromptTemplate("qa/question_first", "{{question}}\nFind the answer in this text: {{passage}}", "{{answer}}"),
))


# --- dialogue summarisation ---------------------------------------------------------------------
def generate_summaries(n: int, seed: int, world: World = WORLD) -> list[dict]:
    """Dialogues of two or three lines between two people, and a canonical one-sentence summary."""

    def make(rng: random.Random) -> dict:
        d = texts.dialogue(rng, world)
        return {"dialogue": d.text, "summary": d.summary, "kind": d.kind}

    return _distinct("summarize", n, seed, make, key=("dialogue",))


SUMMARY_TEMPLATES = TemplateLibrary("summarize", (
    PromptTemplate("summarize/one_sentence", "Summarize this dialogue in one sentence:\n{{dialogue}}", "{{summary}}"),
    PromptTemplate("summarize/after", "{{dialogue}}\nWhat is a one-sentence summary of this conversation?", "{{summary}}"),
    PromptTemplate("summarize/brief", "Write a short summary of the chat below.\n{{dialogue}}", "{{summary}}"),
))


# --- the registry -------------------------------------------------------------------------------
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("reviews", "Predict the star rating (1-5) of a product review.", generate_reviews, REVIEW_TEMPLATES,
             answer_field="stars", label_field="stars", chance_accuracy=1 / 5, metrics=("exact_match",)),
        Task("arithmetic", "Solve a one-step addition or subtraction word problem.", generate_arithmetic,
             ARITHMETIC_TEMPLATES, answer_field="answer", label_field=None, chance_accuracy=1 / 19,
             metrics=("exact_match",)),
        Task("qa", "Answer a question about a product with a span of a short passage.", generate_qa, QA_TEMPLATES,
             answer_field="answer", label_field=None, chance_accuracy=qa_chance(), metrics=("exact_match",)),
        Task("summarize", "Summarize a two- or three-line dialogue in one canonical sentence.", generate_summaries,
             SUMMARY_TEMPLATES, answer_field="summary", label_field=None,
             # A guess of the whole sentence is essentially never exact; ROUGE-L gives partial credit.
             chance_accuracy=0.0, metrics=("exact_match", "rouge_l")),
    )
}


def get_task(name: str) -> Task:
    """The built-in task called `name` (see `TASKS`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]
