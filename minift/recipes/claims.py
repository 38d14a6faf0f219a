"""The course's claims as numbers: each one an effect with its standard error, and whether it holds.

An experiment's JSON carries a top-level "claims" list, one `Claim` per statement of the course it
tests. The README and the notebooks quote them (`claims_table`), and every sentence of theirs that
states an outcome tags it, "(claim `NAME`: holds)" or "(claim `NAME`: not shown)"; the tests check
each tag against the committed results, so a re-run that changes a conclusion fails the suite
instead of leaving stale prose.

A claim holds when its effect is at least `SIGMAS` standard errors in the stated direction (a
one-sided test at about the 2.3% level for a normal estimate); an effect smaller than that is
reported as not shown, whichever way it points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SIGMAS = 2.0  # standard errors an effect needs to count as shown


@dataclass(frozen=True)
class Claim:
    name: str  # a stable key the notebooks, README and tests look the claim up by
    statement: str  # the sentence of the course it tests, with the direction it predicts
    value: float  # the effect, positive in the predicted direction
    stderr: float  # its standard error (seed spread or binomial, as the experiment says)

    @property
    def holds(self) -> bool:
        return self.value >= SIGMAS * self.stderr and self.value > 0

    @property
    def sigmas(self) -> float:
        """The effect in standard errors (inf for an exact, nonzero effect)."""
        if self.stderr == 0:
            return math.copysign(math.inf, self.value) if self.value else 0.0
        return self.value / self.stderr

    def to_dict(self) -> dict:
        return asdict(self) | {"holds": self.holds}


def binomial_stderr(p: float, n: int) -> float:
    """The standard error of an accuracy p measured on n independent examples: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1 - p) / n)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean of independent runs (seeds) and its standard error, s / sqrt(n) with the n-1 sample s."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def difference(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(mean, stderr) of a - b for independent estimates: the variances add."""
    return a[0] - b[0], math.hypot(a[1], b[1])


def average(estimates: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(mean, stderr) of the plain average of independent estimates."""
    n = len(estimates)
    return sum(m for m, _ in estimates) / n, math.sqrt(sum(s * s for _, s in estimates)) / n


def verdict(holds: bool) -> str:
    """How prose states a claim's outcome: "(claim `NAME`: holds)" or "(claim `NAME`: not shown)"."""
    return "holds" if holds else "not shown"


def claims_table(claims: Sequence[dict]) -> str:
    """Claims (as an experiment's JSON holds them) as a Markdown table: the statement, effect ± stderr, sigmas, verdict."""
    lines = ["| claim | statement | effect ± s.e. | s.e.s | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        sigmas = c["value"] / c["stderr"] if c["stderr"] else math.inf if c["value"] else 0.0
        lines.append(f"| `{c['name']}` | {c['statement']} | {c['value']:+.3f} ± {c['stderr']:.3f} | {sigmas:.1f} | "
                     f"{verdict(c['holds'])} |")
    return "\n".join(lines)
