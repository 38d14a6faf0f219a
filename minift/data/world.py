"""The generated world every built-in task and the pretraining corpus talk about.

A small, fixed cast: people, towns, companies, and products with facts (maker, colour, price, the
town where they are made). The tasks and the corpus draw on the same cast, so a model pretrained
on the corpus already knows the words and the facts, and training on one task can help or hurt
another (a QA task asks about the products that the reviews talk about).

The world is small on purpose: a base model of a few million parameters, pretrained for minutes on
a laptop CPU, must learn its language. It has about three hundred distinct words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PEOPLE = (
    ("Anna", "she"), ("Ben", "he"), ("Clara", "she"), ("David", "he"), ("Emma", "she"), ("Felix", "he"),
    ("Grace", "she"), ("Henry", "he"), ("Ivy", "she"), ("Jack", "he"), ("Lily", "she"), ("Max", "he"),
    ("Nora", "she"), ("Oscar", "he"), ("Paula", "she"), ("Sam", "he"), ("Tara", "she"), ("Victor", "he"),
    ("Wendy", "she"), ("Leo", "he"), ("Mia", "she"), ("Noah", "he"), ("Rosa", "she"), ("Tom", "he"),
)
# Each town has one feature, stated in the corpus ("Harlow is a town by the sea.").
TOWNS = (
    ("Ashford", "river"), ("Brookvale", "lake"), ("Dunmore", "hills"), ("Elmstead", "forest"), ("Fairport", "sea"),
    ("Glenwood", "forest"), ("Harlow", "sea"), ("Kingsbay", "sea"), ("Millbrook", "river"), ("Oakridge", "hills"),
)
COMPANIES = ("Lumora", "Brightco", "Tessel", "Quanta", "Verda", "Kestrel", "Solvix", "Marlow")
CATEGORIES = (
    "lamp", "kettle", "backpack", "chair", "bicycle", "radio", "blender", "jacket", "tent", "clock", "camera", "heater",
)
MODEL_NAMES = (
    "Aria", "Bolt", "Comet", "Delta", "Echo", "Flint", "Glow", "Halo", "Jade", "Kite", "Luna", "Mako",
    "Nimbus", "Orbit", "Pixel", "Quill", "Ridge", "Sage", "Terra", "Umbra", "Vega", "Wren", "Zephyr", "Atlas",
)
COLORS = ("red", "blue", "green", "black", "white", "yellow", "grey", "orange")
PRICES = tuple(range(10, 100, 5))  # whole dollars, 18 values: each price is one or two digits
PLACES = ("market", "cafe", "library", "park", "station", "cinema")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Countable things in word problems: (singular, plural).
ITEMS = (
    ("apple", "apples"), ("book", "books"), ("stamp", "stamps"), ("coin", "coins"),
    ("pencil", "pencils"), ("egg", "eggs"), ("card", "cards"), ("shell", "shells"),
)


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str  # "she" or "he"

    @property
    def object(self) -> str:
        return "her" if self.pronoun == "she" else "him"

    @property
    def possessive(self) -> str:
        return "her" if self.pronoun == "she" else "his"


@dataclass(frozen=True)
class Town:
    name: str
    feature: str  # "river", "sea", ...


@dataclass(frozen=True)
class Company:
    name: str
    town: Town  # where it is based, and where its products are made


@dataclass(frozen=True)
class Product:
    name: str  # "Nimbus kettle": a model name and a category
    category: str
    maker: Company
    color: str
    price: int  # dollars

    @property
    def town(self) -> Town:
        return self.maker.town


@dataclass(frozen=True)
class World:
    """The cast and its facts. Build one with `World.build(seed)`; `WORLD` is the default."""

    people: tuple[Person, ...]
    towns: tuple[Town, ...]
    companies: tuple[Company, ...]
    products: tuple[Product, ...]

    @classmethod
    def build(cls, seed: int = 0, n_products: int = 40) -> World:
        """Assign every company a town and every product a maker, colour and price, from `seed`."""
        rng = random.Random(seed)
        people = tuple(Person(n, p) for n, p in PEOPLE)
        towns = tuple(Town(n, f) for n, f in TOWNS)
        companies = tuple(Company(name, rng.choice(towns)) for name in COMPANIES)
        pairs = [(m, c) for m in MODEL_NAMES for c in CATEGORIES]
        if not 0 < n_products <= len(pairs):
            raise ValueError(f"n_products must be in 1..{len(pairs)}, got {n_products}")
        products = tuple(
            Product(f"{m} {c}", c, rng.choice(companies), rng.choice(COLORS), rng.choice(PRICES))
            for m, c in rng.sample(pairs, n_products)
        )
        return cls(people, towns, companies, products)


WORLD = World.build()
