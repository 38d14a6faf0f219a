"""Tokenizers for the data tests: a real BPE trained in-process on a corpus sample, and a
character-level stand-in whose ids are known in advance (for exact label positions)."""

import pytest

from minift.data import CorpusConfig, generate_corpus
from minift.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    # 400 documents hold every genre and almost every word of the world; training takes ~0.1 s.
    return Tokenizer.train(generate_corpus(CorpusConfig(n_documents=400)), vocab_size=2048)


class CharTokenizer:
    """One token per character, its code point; end-of-text is 0 (no character has code 0 here)."""

    eot_id = 0
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@pytest.fixture
def chars() -> CharTokenizer:
    return CharTokenizer()
