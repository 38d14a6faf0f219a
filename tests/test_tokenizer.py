"""The byte-level BPE tokenizer: training, special tokens, files, and an exact round trip."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.tokenizer import EOT, PAD, Tokenizer

TEXTS = [
    f"{name} bought the {colour} {thing} in {town}. It is {verdict}; {name} gave it {stars} stars."
    for name in ("Mia", "Tom", "Ana", "Olu") for colour in ("blue", "red", "green") for thing in ("lamp", "kettle")
    for town in ("Pell", "Rovo") for verdict, stars in (("great", 5), ("poor", 1), ("fine", 3))
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS, vocab_size=320)


def test_training_gives_the_size_and_special_tokens(tokenizer):
    assert tokenizer.vocab_size == 320
    assert tokenizer.decode([tokenizer.eot_id]) == EOT and tokenizer.decode([tokenizer.pad_id]) == PAD
    assert tokenizer.encode(f"lamp{EOT}")[-1] == tokenizer.eot_id  # the special token is never split
    assert len(tokenizer.encode("The lamp")) < len("The lamp")  # merges were learned


@given(text=st.text())
@settings(max_examples=300, deadline=None)
def test_round_trip_is_exact_on_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_batch_equals_one_at_a_time(tokenizer):
    texts = ["Mia 🌟 bought", "", "naïve café\n\tTom"]
    batch = tokenizer.encode_batch(texts)
    assert batch == [tokenizer.encode(t) for t in texts]
    assert tokenizer.decode_batch(batch) == texts


def test_save_and_load_tokenizer_json(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    for loaded in (Tokenizer.from_file(tmp_path / "tokenizer.json"), Tokenizer.from_dir(tmp_path)):
        assert loaded.encode(TEXTS[1] + EOT) == tokenizer.encode(TEXTS[1] + EOT)
        assert (loaded.eot_id, loaded.pad_id, loaded.vocab_size) == (tokenizer.eot_id, tokenizer.pad_id, 320)


def test_gpt2_style_vocab_and_merges(tokenizer, tmp_path):
    """GPT-2 ships vocab.json + merges.txt, with <|endoftext|> an ordinary vocab entry and no padding."""
    tokenizer.backend.model.save(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    del vocab[PAD]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    loaded = Tokenizer.from_dir(tmp_path)
    assert loaded.encode(TEXTS[0] + EOT) == tokenizer.encode(TEXTS[0] + EOT)
    assert loaded.pad_id == loaded.eot_id  # no padding token: pad with end-of-text


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json, or vocab.json and merges.txt"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        Tokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="must include the end-of-text token"):
        Tokenizer.train(TEXTS, vocab_size=300, special_tokens=(PAD,))
