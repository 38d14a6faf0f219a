"""From tokenized examples to batches: right padding (collate), and seeded, resumable batch orders.

`Batches` serves one list of examples in a fresh permutation every epoch; `MixtureBatches` mixes
several tasks by given proportions (multi-task instruction tuning). Both are endless iterators with
`state_dict()` / `load_state_dict()`, so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from minift.data.tokenized import IGNORE_INDEX, TokenizedExample


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    Returns:
        input_ids: (B, T) long, padded with pad_id.
        labels: (B, T) long, IGNORE_INDEX on prompt and padding tokens.
        attention_mask: (B, T) long, 1 on real tokens, 0 on padding.
    """
    B, T = len(examples), max(len(e.input_ids) for e in examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def sequential_batches(examples: Sequence[TokenizedExample], batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """One pass in list order, for evaluation; the last batch may be smaller."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# Distinct first words of the numpy seeds, so the example orders and the mixture draws of one seed
# are independent random streams.
_ORDER_STREAM, _MIXTURE_STREAM = 0, 1


class ExampleOrder:
    """Indices 0..n-1 in a fresh permutation every epoch, drawn from (seed, stream, epoch).

    The position is (epoch, index): `index` examples of `epoch` have been taken. Restoring a
    position restores the exact continuation, because each epoch's permutation depends only on
    its number.
    """

    def __init__(self, n: int, seed: int, stream: int = 0):
        if n <= 0:
            raise ValueError(f"need at least one example to order, got {n}")
        self.n, self.seed, self.stream = n, seed, stream
        self.epoch, self.index = 0, 0

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _ORDER_STREAM, self.stream, epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        """The next k indices; an epoch boundary may fall inside them."""
        taken: list[int] = []
        while len(taken) < k:
            m = min(k - len(taken), self.n - self.index)
            taken += self.permutation(self.epoch)[self.index:self.index + m].tolist()
            self.index += m
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return taken


class Batches:
    """An endless, deterministic, resumable stream of collated batches over one list of examples.

    Every batch has `batch_size` examples; each epoch visits every example once in its own order,
    and a batch may end one epoch and begin the next. Save `state_dict()` with a checkpoint and
    `load_state_dict()` it to continue with exactly the next batch.
    """

    def __init__(self, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int, seed: int = 0):
        _check_batch_size(batch_size)
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.order = ExampleOrder(len(examples), seed)

    @property
    def epoch(self) -> int:
        return self.order.epoch

    @property
    def index(self) -> int:
        """Examples of the current epoch already served."""
        return self.order.index

    @property
    def batches_per_epoch(self) -> float:
        return len(self.examples) / self.batch_size

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate([self.examples[i] for i in self.order.take(self.batch_size)], self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "index": self.order.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.order.epoch, self.order.index = state["epoch"], state["index"]


class MixtureBatches:
    """Batches mixing several tasks: each example's task is drawn by the given proportions.

    The draws of step s come from (seed, s) alone, and every task has its own `ExampleOrder`, so
    the stream is deterministic and resumable from `state_dict()` (the step and each task's position).
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence[TokenizedExample]],
        proportions: Mapping[str, float],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
    ):
        _check_batch_size(batch_size)
        if set(proportions) != set(sources):
            raise ValueError(f"proportions name {sorted(proportions)} but the sources are {sorted(sources)}")
        weights = np.array([proportions[name] for name in sources], dtype=np.float64)
        if (weights < 0).any() or not math.isfinite(weights.sum()) or weights.sum() <= 0:
            raise ValueError(f"proportions must be >= 0 with a positive sum, got {dict(proportions)}")
        self.names = list(sources)
        self.probabilities = weights / weights.sum()  # weights are normalised: {a: 3, b: 1} is 75% / 25%
        self.sources, self.batch_size, self.pad_id, self.seed = sources, batch_size, pad_id, seed
        self.orders = {name: ExampleOrder(len(sources[name]), seed, stream=k) for k, name in enumerate(self.names)}
        self.step = 0

    def draw_sources(self, step: int) -> list[str]:
        """The task of each example of batch `step`."""
        rng = np.random.default_rng([self.seed, _MIXTURE_STREAM, step])
        return [self.names[k] for k in rng.choice(len(self.names), size=self.batch_size, p=self.probabilities)]

    def __iter__(self) -> MixtureBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        drawn = self.draw_sources(self.step)
        queues = {name: iter(self.orders[name].take(drawn.count(name))) for name in self.names}
        self.step += 1
        return collate([self.sources[name][next(queues[name])] for name in drawn], self.pad_id)

    def state_dict(self) -> dict:
        return {"step": self.step, "orders": {n: {"epoch": o.epoch, "index": o.index} for n, o in self.orders.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.step = state["step"]
        for name, position in state["orders"].items():
            self.orders[name].epoch, self.orders[name].index = position["epoch"], position["index"]
