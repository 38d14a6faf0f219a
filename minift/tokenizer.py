"""A byte-level BPE tokenizer over the `tokenizers` package.

Byte-level BPE (the GPT-2 scheme, Radford et al. 2019, section 2.2) first maps every byte of the
UTF-8 text to one of 256 printable symbols, then merges frequent pairs. Because every byte has a
symbol, any Unicode string encodes and decodes back exactly: there is no unknown token.

Two special tokens matter for fine-tuning:
- end-of-text (`<|endoftext|>`) ends every completion and is trained, so a model learns to stop;
- padding fills batches to one length. GPT-2 has no padding token; we then pad with end-of-text,
  which is safe because padded positions get label -100 and are never attended to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from minift._files import atomic_write

EOT = "<|endoftext|>"
PAD = "<|pad|>"
# What to do with a sequence too long for the context: refuse it, naming the lengths, or cut its start.
# The one list: tokenisation of examples (minift.data) and generation's prompts (minift.model) both use it.
TRUNCATIONS = ("error", "left")


class Tokenizer:
    """Text <-> token ids, with the end-of-text and padding ids the rest of minift needs.

    Make one with `Tokenizer.train(texts, vocab_size)`, `Tokenizer.from_file("tokenizer.json")` or
    `Tokenizer.from_dir(path)` (a directory with `tokenizer.json`, or GPT-2's `vocab.json` +
    `merges.txt`).
    """

    def __init__(self, backend: HFTokenizer):
        self.backend = backend
        self.eot_id = backend.token_to_id(EOT)
        if self.eot_id is None:
            raise ValueError(f"tokenizer has no end-of-text token {EOT!r}; minift needs it to end completions")
        pad_id = backend.token_to_id(PAD)
        self.pad_id = self.eot_id if pad_id is None else pad_id

    # --- making one -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = (EOT, PAD)) -> Tokenizer:
        """Train a byte-level BPE on an iterator of texts.

        Args:
            texts: the training texts (any iterable of str; read once).
            vocab_size: the final vocabulary size, special tokens and the 256 byte symbols included.
            special_tokens: tokens that are never split; must include end-of-text.
        """
        if EOT not in special_tokens:
            raise ValueError(f"special_tokens must include the end-of-text token {EOT!r}")
        n_min = 256 + len(special_tokens)
        if vocab_size < n_min:
            raise ValueError(f"vocab_size={vocab_size} is too small: the byte alphabet and special tokens need {n_min}")
        backend = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(special_tokens),
            # Seed the vocabulary with all 256 byte symbols so every string stays encodable,
            # even bytes that never occur in the training texts.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `tokenizer.json` (ours, or GPT-2's from Hugging Face)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load the tokenizer of a checkpoint directory: `tokenizer.json`, else `vocab.json` + `merges.txt`."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            return cls.from_file(path / "tokenizer.json")
        vocab, merges = path / "vocab.json", path / "merges.txt"
        if vocab.is_file() and merges.is_file():
            backend = _byte_level(models.BPE.from_file(str(vocab), str(merges)))
            # GPT-2's vocab.json lists <|endoftext|> as an ordinary entry; mark it special so
            # that the text "<|endoftext|>" encodes to its one id.
            backend.add_special_tokens([t for t in (EOT, PAD) if t in json.loads(vocab.read_text("utf-8"))])
            return cls(backend)
        raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, or vocab.json and merges.txt")

    def save(self, path: str | os.PathLike) -> None:
        """Write `tokenizer.json` atomically (`path` is the file, or a directory to write it in)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write(path, lambda tmp: self.backend.save(str(tmp)))

    # --- using one --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        # Keep special tokens: decode(encode(text)) must give back `text` exactly.
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return self.backend.decode_batch(batch, skip_special_tokens=False)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, pad_id={self.pad_id})"


def _byte_level(model: models.Model) -> HFTokenizer:
    """Wrap a BPE model in GPT-2's byte-level pre-tokenizer and decoder."""
    backend = HFTokenizer(model)
    # add_prefix_space=False: GPT-2 does not add a leading space, and the round trip stays exact.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend
