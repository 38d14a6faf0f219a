"""Deterministic train / validation / test splits, stratified by label for label tasks.

Every record goes to exactly one split (by position in the list, so no record is in two splits).
With a label field, each label's records are split by the fractions on their own, so every split
has the same label distribution, up to one record per label (largest-remainder rounding).
Within a split, records keep their order in the input list.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class Splits:
    train: list[Mapping]
    validation: list[Mapping]
    test: list[Mapping]
    label_field: str | None = None

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def __str__(self) -> str:
        sizes = ", ".join(f"{name} {n}" for name, n in self.sizes.items())
        how = f"stratified by {self.label_field!r}" if self.label_field else "not stratified"
        return f"{sizes} ({how})"


def split_records(
    records: Sequence[Mapping],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    label_field: str | None = None,
) -> Splits:
    """Split `records` into train, validation and test by `fractions`, deterministically from `seed`.

    Args:
        records: the records (dicts).
        fractions: (train, validation, test), each >= 0, summing to 1.
        seed: the same records and seed always give the same splits.
        label_field: stratify by this field (e.g. "stars"); None splits the records as one group.

    Raises:
        ValueError: bad fractions, no records, or a record without the label field (named by index).
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three numbers >= 0 summing to 1 (train, validation, test), got {fractions}")
    if not records:
        raise ValueError("no records to split")
    groups: dict[Hashable, list[int]] = {}
    for i, record in enumerate(records):
        if label_field is not None and label_field not in record:
            raise ValueError(f"record {i} has no label field {label_field!r} to stratify by")
        groups.setdefault(record[label_field] if label_field else None, []).append(i)

    rng = np.random.default_rng(seed)
    chosen: list[list[int]] = [[], [], []]
    for label in sorted(groups, key=str):  # a fixed group order, so the rng draws are fixed too
        indices = rng.permutation(groups[label])
        start = 0
        for split, n in enumerate(_largest_remainder(len(indices), fractions)):
            chosen[split] += indices[start:start + n].tolist()
            start += n
    train, validation, test = ([records[i] for i in sorted(idx)] for idx in chosen)
    return Splits(train, validation, test, label_field)


def _largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    """Integer sizes summing to n, each floor(n * f) plus one for the largest remainders (ties: earlier split)."""
    exact = [n * f for f in fractions]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes
