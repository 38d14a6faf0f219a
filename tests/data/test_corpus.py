import random
import re

import pytest

from minift.data import WORLD, CorpusConfig, generate_corpus
from minift.data.corpus import _QUIZ_HEADERS, _QUIZ_PREFIXES, _QUIZ_WORDS, GENRES, quiz
from minift.tokenizer import EOT


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate_corpus()


def test_default_corpus_is_a_few_megabytes():
    documents = generate_corpus()
    n_chars = sum(map(len, documents))
    assert len(documents) == CorpusConfig().n_documents
    assert 1_000_000 < n_chars < 4_000_000


def test_corpus_is_deterministic_by_seed(corpus):
    assert generate_corpus(CorpusConfig(n_documents=50)) == corpus[:50]
    assert generate_corpus(CorpusConfig(n_documents=50, seed=1)) != corpus[:50]


def test_the_instruction_formats_words_are_only_random_quiz_markers(corpus):
    """They occur (so they become whole tokens with trained embeddings), but only as quiz-sheet markers."""
    text = "\n".join(corpus)
    for word in ("Instruction", "Response"):
        lines = [line for line in text.splitlines() if word in line]
        assert len(lines) > 100
        assert all(re.match(rf"(## |### |> |-- |\* )?{word}:", line) for line in lines), word
    assert EOT not in text


def test_corpus_states_the_world_facts_consistently(corpus):
    prices = {p.name: p.price for p in WORLD.products}
    stated = re.findall(r"The (\w+ \w+) costs (\d+) dollars\.", "\n".join(corpus))
    assert len(stated) > 100
    assert all(prices[name] == int(price) for name, price in stated)


def test_corpus_has_the_few_shot_patterns(corpus):
    text = "\n".join(corpus)
    assert re.search(r'" (She|He) gave it [1-5] stars?\.', text)
    assert re.search(r"\nIn short, \w+ (will meet|cannot meet|bought|will lend) ", text)
    assert re.search(r"\? The answer is \d+\.", text)
    assert re.search(r"\nQ: What color is the \w+ \w+\?\nA: \w+", text)


def test_every_genre_is_written(corpus):
    assert set(CorpusConfig().genre_weights) == set(GENRES)
    only_sums = generate_corpus(CorpusConfig(n_documents=5, genre_weights={"sums": 1.0}))
    assert all(" had " in d or "There were " in d for d in only_sums)


def test_unknown_genre_is_an_error():
    with pytest.raises(ValueError, match=re.escape("unknown genres ['poems']; genres are facts, places")):
        generate_corpus(CorpusConfig(genre_weights={"poems": 1.0}))


def test_a_quiz_sheet_keeps_one_pair_of_random_markers():
    pairs, answer_words = set(), set()
    headers = {h for kind in _QUIZ_HEADERS.values() for h in kind if h}
    for seed in range(200):
        sheet = quiz(random.Random(seed), WORLD)
        lines = sheet.split("\n")
        if lines[0] in headers:
            lines = lines[1:]
        words = "|".join(_QUIZ_WORDS)
        marked = [m.group(0) for line in lines if (m := re.match(rf"^(#+ |> |-- |\* )?({words}):", line))]
        given, answer = marked[0], marked[1]
        assert given != answer
        assert marked == [given, answer] * (len(marked) // 2) and 2 <= len(marked) // 2 <= 4, sheet
        assert any(given.startswith(p) for p in _QUIZ_PREFIXES) and given.split()[-1].rstrip(":") in _QUIZ_WORDS
        pairs.add((given, answer))
        answer_words.add(answer.split()[-1])
    assert len(pairs) > 150 and len(answer_words) > 20  # the markers really vary: none stands for "answer"
