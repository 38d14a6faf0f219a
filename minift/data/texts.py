"""The sentences of the world: product facts, reviews, dialogues and word problems.

Both the task generators (`tasks.py`) and the pretraining corpus (`corpus.py`) write with these
functions, so the corpus teaches exactly the language the tasks use. Every kind of sentence has
several phrasings: a model must learn the fact, not one string.

All functions take a `random.Random`, so their output is fixed by its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minift.data.world import DAYS, ITEMS, PLACES, Product, World

# --- product facts and questions (the QA task, the corpus's fact pages) -------------------------
ATTRIBUTES = ("color", "maker", "price", "town")

_FACTS = {
    "color": ("The {p} is {v}.", "The {p} comes in {v}.", "You can get the {p} in {v}."),
    "maker": ("The {p} is made by {v}.", "{v} makes the {p}.", "The {p} comes from {v}."),
    "price": ("The {p} costs {v} dollars.", "You can buy the {p} for {v} dollars.", "The price of the {p} is {v} dollars."),
    "town": ("The {p} is made in {v}.", "The {p} is built in {v}.", "The factory of the {p} is in {v}."),
}
_QUESTIONS = {
    "color": ("What color is the {p}?", "Which color does the {p} come in?"),
    "maker": ("Who makes the {p}?", "Which company makes the {p}?"),
    "price": ("How many dollars does the {p} cost?", "What is the price of the {p} in dollars?"),
    "town": ("Where is the {p} made?", "In which town is the {p} made?"),
}


def answer(product: Product, attribute: str) -> str:
    """The canonical answer text of a fact: "red", "Lumora", "25", "Harlow"."""
    value = {"color": product.color, "maker": product.maker.name, "price": product.price, "town": product.town.name}
    return str(value[attribute])


def product_fact(rng: random.Random, product: Product, attribute: str) -> str:
    return rng.choice(_FACTS[attribute]).format(p=product.name, v=answer(product, attribute))


def product_question(rng: random.Random, product: Product, attribute: str) -> str:
    return rng.choice(_QUESTIONS[attribute]).format(p=product.name)


# --- reviews (the review task, the corpus's review prose) ---------------------------------------
# Each star level has its own cue words, so that the rating is learnable from the text.
_STAR_SENTENCES = {
    5: ("It is excellent.", "I love it.", "It is perfect in every way.", "It is the best {c} I have ever had.",
        "It works wonderfully.", "It is simply amazing."),
    4: ("It is good.", "It works well.", "I like it a lot.", "It is solid, with one small flaw.",
        "It is pretty good for the price.", "It is nice."),
    3: ("It is okay.", "It is average.", "It is fine, nothing special.", "Some parts are good and some are bad.",
        "It does the job, no more.", "It is neither good nor bad."),
    2: ("It is poor.", "It is disappointing.", "It is not worth the price.", "It broke after a month.",
        "I do not like it much.", "It works badly."),
    1: ("It is terrible.", "It is awful.", "It broke on the first day.", "It is useless.",
        "I hate it.", "It is the worst {c} I have ever had."),
}
_OPENERS = (
    "I bought the {color} {p} in {town}.", "I got the {p} from {maker} last {day}.", "My {p} arrived on {day}.",
    "This is my review of the {p}.", "I have used the {p} for a week.", "I paid {price} dollars for the {p}.",
)
_CLOSERS = {
    "positive": ("I would buy it again.", "I recommend it."),
    "neutral": ("Maybe I would buy it again.", "It is worth a look."),
    "negative": ("I would not buy it again.", "I do not recommend it."),
}
STAR_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def sentiment(stars: int) -> str:
    return "positive" if stars >= 4 else "negative" if stars <= 2 else "neutral"


def review_body(rng: random.Random, product: Product, stars: int) -> str:
    """An opener that names the product, two sentences with the cue words of `stars`, sometimes a closer."""
    opener = rng.choice(_OPENERS).format(
        p=product.name, color=product.color, town=product.town.name, maker=product.maker.name,
        day=rng.choice(DAYS), price=product.price,
    )
    cues = [s.format(c=product.category) for s in rng.sample(_STAR_SENTENCES[stars], 2)]
    closer = [rng.choice(_CLOSERS[sentiment(stars)])] if rng.random() < 0.5 else []
    return " ".join([opener, *cues, *closer])


# --- dialogues (the summary task, the corpus's conversations) -----------------------------------
_INVITES = (
    "{b}, do you want to go to the {place} on {day}?", "{b}, shall we meet at the {place} on {day}?",
    "Shall we go to the {place} on {day}, {b}?",
)
_YES = ("Yes, I would love to.", "Sure, see you there.", "Good idea, I will come.")
_NO = ("Sorry, I cannot. I have to {chore}.", "No, I am busy. I have to {chore}.", "I am sorry, I need to {chore}.")
_CHORES = ("work late", "visit my aunt", "fix my bicycle", "clean the house", "study")
_AFTER_YES = ("Great, see you on {day}.", "Perfect.", "Nice.")
_AFTER_NO = ("No problem.", "Oh, what a pity.", "Okay, maybe next week.")
_SHOP_ASK = ("Did you go shopping in {town}, {b}?", "What did you do in {town}, {b}?", "Hi {b}, how was {town}?")
_SHOP_TELL = ("I bought the {p} from {maker}.", "I went to a shop and bought the {p}.", "It was fun. I got the {p} there.")
_SHOP_REPLY = ("Nice, is it {color}?", "Great, I want one too.", "Oh, how much was it?")
_BORROW_ASK = ("Can I borrow your {c}, {b}?", "{b}, may I use your {c} for a few days?", "Could you lend me your {c}, {b}?")
_BORROW_YES = ("Yes, you can have it until {day}.", "Sure, bring it back on {day}.", "Of course, but I need it on {day}.")
_BORROW_THANKS = ("Thank you so much.", "Thanks, you are kind.", "Great, thanks.")


@dataclass(frozen=True)
class Dialogue:
    text: str  # "Anna: ...\nBen: ..." and sometimes "\nAnna: ..."
    summary: str  # one sentence in a canonical form, e.g. "Ben will meet Anna at the park on Friday."
    kind: str  # "accept", "decline", "bought" or "borrow"


def dialogue(rng: random.Random, world: World) -> Dialogue:
    """A dialogue of two or three lines between two people, and its canonical one-sentence summary."""
    a, b = rng.sample(world.people, 2)
    kind = rng.choice(("accept", "decline", "bought", "borrow"))
    v = dict(b=b.name, place=rng.choice(PLACES), day=rng.choice(DAYS), chore=rng.choice(_CHORES))
    if kind in ("accept", "decline"):
        lines = [rng.choice(_INVITES), rng.choice(_YES if kind == "accept" else _NO),
                 rng.choice(_AFTER_YES if kind == "accept" else _AFTER_NO)]
        verb = "will meet" if kind == "accept" else "cannot meet"
        summary = f"{b.name} {verb} {a.name} at the {v['place']} on {v['day']}."
    elif kind == "bought":
        product, town = rng.choice(world.products), rng.choice(world.towns)
        v.update(town=town.name, p=product.name, maker=product.maker.name, color=product.color)
        lines = [rng.choice(_SHOP_ASK), rng.choice(_SHOP_TELL), rng.choice(_SHOP_REPLY)]
        summary = f"{b.name} bought the {product.name} in {town.name}."
    else:
        v.update(c=rng.choice(world.products).category)
        lines = [rng.choice(_BORROW_ASK), rng.choice(_BORROW_YES), rng.choice(_BORROW_THANKS)]
        summary = f"{b.name} will lend {a.name} the {v['c']} until {v['day']}."
    # The third line (the first speaker's reply) adds nothing to the summary; half of the
    # dialogues end without it, which keeps a 3-shot summary prompt within 256 tokens.
    if rng.random() < 0.5:
        lines.pop()
    speakers = (a, b, a)
    text = "\n".join(f"{s.name}: {line.format(**v)}" for s, line in zip(speakers, lines))
    return Dialogue(text, summary, kind)


# --- word problems (the arithmetic task, the corpus's little sums) ------------------------------
# (story, question, statement of the result); {n} names the person, {p} is the pronoun.
_ADDITIONS = (
    ("{N} had {a} {items}. {P} bought {b} more.", "How many {items} does {p} have now?", "Now {p} has {r}."),
    ("{N} found {a} {items} and then {b} more.", "How many {items} did {N} find?", "{N} found {r} in all."),
    ("There were {a} {items} in a box. {N} put in {b} more.", "How many {items} are in the box now?",
     "Now the box holds {r}."),
)
_SUBTRACTIONS = (
    ("{N} had {a} {items}. {P} gave {b} to {M}.", "How many {items} does {N} have left?", "{N} has {r} left."),
    ("There were {a} {items} on the table. {N} took {b}.", "How many {items} are on the table now?",
     "Now the table has {r}."),
    ("{N} had {a} {items} and lost {b} of them.", "How many {items} does {p} have left?", "Now {p} has {r}."),
)


@dataclass(frozen=True)
class WordProblem:
    story: str  # "Anna had 3 apples. She bought 4 more."
    question: str  # "How many apples does she have now?"
    statement: str  # "Now she has 7 apples." (the corpus states results; the task asks for them)
    answer: int
    operation: str  # "add" or "subtract"


def count(n: int, item: tuple[str, str]) -> str:
    """'1 apple', '7 apples'."""
    return f"{n} {item[0] if n == 1 else item[1]}"


def word_problem(rng: random.Random, world: World, max_operand: int = 9) -> WordProblem:
    """One addition or subtraction with operands 1..max_operand; answers lie in 0..2*max_operand.

    Additions start from at least 2 things and subtractions never go below 0, so every count is a
    natural number and every story is grammatical.
    """
    person, other = rng.sample(world.people, 2)
    item = rng.choice(ITEMS)
    operation = rng.choice(("add", "subtract"))
    if operation == "add":
        a, b = rng.randint(2, max_operand), rng.randint(1, max_operand)
        result, phrasings = a + b, _ADDITIONS
    else:
        b, result = rng.randint(1, max_operand), rng.randint(0, max_operand)
        a, phrasings = max(result + b, 2), _SUBTRACTIONS
        result = a - b
    story, question, statement = rng.choice(phrasings)
    v = dict(N=person.name, P=person.pronoun.capitalize(), p=person.pronoun, M=other.name, items=item[1],
             a=a, b=b, r=count(result, item))
    return WordProblem(story.format(**v), question.format(**v), statement.format(**v), result, operation)


@dataclass(frozen=True)
class PassageQuestion:
    """A passage of product facts and a question whose answer is a span of it."""

    product: str
    attribute: str
    passage: str
    question: str
    answer: str


def passage_question(rng: random.Random, world: World) -> PassageQuestion:
    """The passage states the asked fact, another fact about the same product and, half of the time,
    the asked kind of fact about another product: a reader must find the right product, not just the
    only colour word."""
    product, attribute = rng.choice(world.products), rng.choice(ATTRIBUTES)
    other_attribute = rng.choice([a for a in ATTRIBUTES if a != attribute])
    sentences = [product_fact(rng, product, a) for a in (attribute, other_attribute)]
    if rng.random() < 0.5:
        other = rng.choice([p for p in world.products if p.name != product.name])
        sentences.append(product_fact(rng, other, attribute))
    rng.shuffle(sentences)
    return PassageQuestion(product.name, attribute, " ".join(sentences), product_question(rng, product, attribute),
                           answer(product, attribute))
