r"""The pretraining corpus: plain text about the world, in several genres.

A base model pretrained on it learns the language and the facts that the tasks use, but never sees
the instruction format (`### Instruction:\n...\n\n### Response:\n`) as an instruction: following
instructions is what fine-tuning teaches. Quiz sheets use "### <word>:" among their random markers,
with the words drawn per sheet and either word marking the answer, so that no marker means "answer"
by itself (an earlier corpus with fixed "### Response from Lumora" notes taught a base model to
answer every few-shot prompt with a thank-you note). "Instruction" and "Response" are two of those
words: a corpus without them left them unseen, split into letters with untrained embeddings, and
few-shot prompts in the instruction format then scored below chance (every shot added noise). The
words of the task instructions occur too, in other roles (children at school who "summarize a
dialogue"), so that they are whole tokens with trained embeddings and prompts cost few tokens of a
small context.
The corpus also has natural patterns close to the tasks, so that few-shot prompting a base model
can beat chance before any fine-tuning:

- facts:     "The Nimbus kettle is made by Lumora. The Nimbus kettle costs 25 dollars. ..."
- places:    "Lumora is based in Harlow. Harlow is a town by the sea. ..."
- reviews:   'Anna bought the Nimbus kettle. She wrote: "... It is excellent." She gave it 5 stars.'
             sometimes followed by "Reply from Lumora: Thank you for your review, Anna. ..."
- faq:       "Questions about the Nimbus kettle.\nQ: Who makes the Nimbus kettle?\nA: Lumora"
- dialogues: "Anna: ...\nBen: ...\nAnna: ...\nIn short, Ben will meet Anna at the park on Friday."
- sums:      "Anna had 3 apples. She bought 4 more. Now she has 7 apples."
- stories:   "On Friday, Anna went to the market in Harlow. She met Ben there. ..."
- manuals:   "How to use the Nimbus kettle:\nTake the Nimbus kettle out of the box. ..."
- school:    "Anna read the passage and answered the question. Ben wrote a short summary of the chat."
- quizzes:   "Key: ... It is awful.\nNote: 1\nKey: ... I love it.\nNote: 5": a few items of one kind
             (reviews, sums, facts, passages, dialogues) under a pair of markers drawn at random per sheet.
             They teach the skill few-shot prompting needs: continue a pattern set up in the context.

A document holds two to four passages of one genre, so that a repeated pattern (review, rating;
review, rating) appears inside one context, as in-context examples later will.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import minift.data.texts as texts
from minift.data.world import DAYS, PLACES, WORLD, World

_RATINGS = (
    "{P} gave it {n} {stars}.", "{P} rated it {word} {stars} out of five.", "{Q} rating: {n} out of 5.",
    "The reviewer gave the {p} a rating of {n} out of 5.",
)
_REPLIES = {
    "positive": ("We are glad that you like the {p}.", "Thank you for the kind words."),
    "neutral": ("We will try to make the {p} better.", "Thank you for the honest words."),
    "negative": ("We are sorry that the {p} let you down.", "Please bring the {p} back to the shop."),
}
_SUMMARY_INTROS = ("In short, ", "To sum up, ", "Summary: ", "A one-sentence summary of this conversation: ")
_TOWN_FACTS = ("{t} is a town by the {f}.", "{t} lies near the {f}.", "The town of {t} is close to the {f}.")
_COMPANY_FACTS = ("{c} is based in {t}.", "{c} has its home in {t}.", "The company {c} is in {t}.")
_MANUAL_STEPS = (
    "Take the {p} out of the box.", "Press the {color} button to start it.", "Clean it with a dry cloth.",
    "Keep it away from water.", "Read this manual before you use the {c}.", "Ask {maker} in {town} for help.",
    "Do not drop the {c}.", "Turn it off when you are done.",
)
# Quiz sheets. Each sheet labels its items with a pair of markers drawn at random: a symbol prefix
# and two different words from one pool, either of which may mark the answer. No marker means
# "answer" by itself, so the only way to know where an answer goes, and what kind of answer, is to
# read the items above: the in-context pattern copying that few-shot prompting relies on (Olsson et
# al. 2022, "In-context learning and induction heads"). The instruction format's two words are in the
# pool: a few-shot prompt's `### Response:` is then a known word whose role is read from the shots.
_QUIZ_PREFIXES = ("", "", "## ", "### ", "> ", "-- ", "* ")
_QUIZ_WORDS = (
    "Q", "A", "Question", "Answer", "Input", "Output", "Text", "Label", "Example", "Result", "Item", "Reply", "Task",
    "Key", "Note", "Part", "Entry", "Case", "Line", "Prompt", "Target", "Source", "Query", "Value", "Given",
    "Solution", "Clue", "Guess", "Instruction", "Response",
)
_QUIZ_HEADERS = {
    "reviews": ("Rate each review from 1 to 5 stars.", "How many stars did each reviewer give?", ""),
    "sums": ("Solve each problem. Give the answer as a number.", "Work out each answer.", ""),
    "facts": ("Answer each question about the products.", ""),
    "passages": ("Read each passage and answer the question with words from it.", "Find each answer in the text.", ""),
    "dialogues": ("Write a one-sentence summary of each chat.", "Summarize each dialogue.", ""),
}
_SCHOOL = (
    "{A} read the passage and answered the question.", "{A} wrote a short summary of the chat between {B} and {C}.",
    "The teacher asked {A} to solve a problem, and {a} gave the answer as a number.",
    "{A} tried to predict the star rating of a review.", "{A} had to summarize a dialogue in one sentence.",
    "{B} found the answer in the text.", "{A} read the story and the question below it.",
    "{A} asked {B} to rate the {p} from 1 to 5 stars.", "Using the passage, {A} found who makes the {p}.",
    "{B} wrote the answer with a number.", "{A} read the review and the reply from {maker}.",
)


def facts(rng: random.Random, world: World) -> str:
    product = rng.choice(world.products)
    sentences = [texts.product_fact(rng, product, a) for a in texts.ATTRIBUTES]
    rng.shuffle(sentences)
    return " ".join(sentences)


def places(rng: random.Random, world: World) -> str:
    company = rng.choice(world.companies)
    made = [p.name for p in world.products if p.maker == company]
    sentences = [rng.choice(_COMPANY_FACTS).format(c=company.name, t=company.town.name),
                 rng.choice(_TOWN_FACTS).format(t=company.town.name, f=company.town.feature)]
    if made:
        listed = [f"the {name}" for name in rng.sample(made, min(3, len(made)))]
        sentences.append(f"{company.name} makes {' and '.join(listed)}.")
    return " ".join(sentences)


def review(rng: random.Random, world: World) -> str:
    person, product, stars = rng.choice(world.people), rng.choice(world.products), rng.randint(1, 5)
    rating = rng.choice(_RATINGS).format(
        P=person.pronoun.capitalize(), Q=person.possessive.capitalize(), n=stars, p=product.name,
        word=texts.STAR_WORDS[stars], stars="star" if stars == 1 else "stars",
    )
    body = texts.review_body(rng, product, stars)
    text = f'{person.name} bought the {product.name}. {person.pronoun.capitalize()} wrote: "{body}" {rating}'
    if rng.random() < 0.25:
        reply = rng.choice(_REPLIES[texts.sentiment(stars)]).format(p=product.name)
        text += f"\nReply from {product.maker.name}: Thank you for your review, {person.name}. {reply}"
    return text


def faq(rng: random.Random, world: World) -> str:
    product = rng.choice(world.products)
    lines = [f"Questions about the {product.name}."]
    for attribute in rng.sample(texts.ATTRIBUTES, rng.randint(2, 4)):
        lines += [f"Q: {texts.product_question(rng, product, attribute)}", f"A: {texts.answer(product, attribute)}"]
    return "\n".join(lines)


def conversation(rng: random.Random, world: World) -> str:
    d = texts.dialogue(rng, world)
    return f"{d.text}\n{rng.choice(_SUMMARY_INTROS)}{d.summary}"


def sums(rng: random.Random, world: World) -> str:
    problem = texts.word_problem(rng, world)
    if rng.random() < 0.5:
        return f"{problem.story} {problem.statement}"
    return f"Here is a problem. {problem.story} {problem.question} The answer is {problem.answer}."


def story(rng: random.Random, world: World) -> str:
    a, b = rng.sample(world.people, 2)
    product, town = rng.choice(world.products), rng.choice(world.towns)
    day, place = rng.choice(DAYS), rng.choice(PLACES)
    return " ".join([
        f"On {day}, {a.name} went to the {place} in {town.name}.",
        rng.choice((f"{a.pronoun.capitalize()} met {b.name} there.", f"{b.name} was there too.")),
        rng.choice((f"{b.name} showed {a.object} the new {product.name}.", f"They talked about the {product.name}.")),
        rng.choice((f"It was {product.color}.", f"It cost {product.price} dollars.", f"{product.maker.name} made it.")),
        rng.choice((f"{a.name} liked it.", f"{a.name} did not like it.", "Then they went home.")),
    ])


def manual(rng: random.Random, world: World) -> str:
    product = rng.choice(world.products)
    steps = rng.sample(_MANUAL_STEPS, 3)
    v = dict(p=product.name, c=product.category, color=product.color, maker=product.maker.name, town=product.town.name)
    return f"How to use the {product.name}:\n" + " ".join(s.format(**v) for s in steps)


def school(rng: random.Random, world: World) -> str:
    a, b, c = rng.sample(world.people, 3)
    product = rng.choice(world.products)
    v = dict(A=a.name, a=a.pronoun, B=b.name, C=c.name, p=product.name, maker=product.maker.name)
    return " ".join(s.format(**v) for s in rng.sample(_SCHOOL, 3))


def quiz(rng: random.Random, world: World) -> str:
    r"""A sheet of 2-4 items of one kind under random markers: `<m1> <given>\n<m2> <answer>` and layouts
    like the few-shot one (`<m1>\n<given>\n\n<m2>\n<answer>`, items separated by a blank line)."""
    kind = rng.choice(tuple(_QUIZ_HEADERS))
    prefix = rng.choice(_QUIZ_PREFIXES)
    given_marker, answer_marker = (f"{prefix}{word}:" for word in rng.sample(_QUIZ_WORDS, 2))
    after_marker, before_answer, between_items = rng.choice((" ", "\n")), rng.choice(("\n", "\n\n")), rng.choice(("\n", "\n\n"))
    items = []
    for _ in range(rng.randint(2, 4)):
        given, answer = _quiz_item(rng, world, kind)
        items.append(f"{given_marker}{after_marker}{given}{before_answer}{answer_marker}{after_marker}{answer}")
    header = rng.choice(_QUIZ_HEADERS[kind])
    return (header + "\n" if header else "") + between_items.join(items)


def _quiz_item(rng: random.Random, world: World, kind: str) -> tuple[str, str]:
    if kind == "reviews":
        stars = rng.randint(1, 5)
        return texts.review_body(rng, rng.choice(world.products), stars), str(stars)
    if kind == "sums":
        problem = texts.word_problem(rng, world)
        return f"{problem.story} {problem.question}", str(problem.answer)
    if kind == "facts":
        product, attribute = rng.choice(world.products), rng.choice(texts.ATTRIBUTES)
        return texts.product_question(rng, product, attribute), texts.answer(product, attribute)
    if kind == "passages":
        q = texts.passage_question(rng, world)
        return f"{q.passage}\n{q.question}", q.answer
    d = texts.dialogue(rng, world)
    return d.text, d.summary


GENRES: dict[str, Callable[[random.Random, World], str]] = {
    "facts": facts, "places": places, "reviews": review, "faq": faq, "dialogues": conversation,
    "sums": sums, "stories": story, "manuals": manual, "school": school, "quizzes": quiz,
}


@dataclass(frozen=True)
class CorpusConfig:
    n_documents: int = 5000  # about 2 MB of text, generated in well under a second
    seed: int = 0
    # Relative weights of the genres; reviews, dialogues and sums carry the patterns the tasks test.
    genre_weights: dict[str, float] = field(default_factory=lambda: {
        "facts": 1.0, "places": 0.5, "reviews": 1.5, "faq": 1.0, "dialogues": 1.5, "sums": 1.5, "stories": 1.0,
        "manuals": 0.3, "school": 0.5, "quizzes": 2.0,
    })


def generate_corpus(config: CorpusConfig = CorpusConfig(), world: World = WORLD) -> list[str]:
    """`config.n_documents` documents, each 2-4 passages of one genre joined by newlines, fixed by `config.seed`.

    Join them with the end-of-text token to pretrain (documents never contain it).
    """
    unknown = sorted(set(config.genre_weights) - set(GENRES))
    if unknown:
        raise ValueError(f"unknown genres {unknown}; genres are {', '.join(GENRES)}")
    rng = random.Random(f"corpus:{config.seed}")
    names = list(config.genre_weights)
    weights = [config.genre_weights[g] for g in names]
    documents = []
    for _ in range(config.n_documents):  # one document at a time: a smaller corpus is a prefix of a larger one
        write = GENRES[rng.choices(names, weights)[0]]
        documents.append("\n".join(write(rng, world) for _ in range(rng.randint(2, 4))))
    return documents
