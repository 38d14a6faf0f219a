"""Scoring a completion against its reference: exact match and ROUGE-L.

One normalisation is used everywhere an answer is compared: `minift.data.templates.normalize`
strips surrounding whitespace and nothing else, the same as templates apply to what they render.

ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", section 3.1) scores a
summary by the longest common subsequence (LCS) of its words with the reference:

    R = LCS / len(reference)    P = LCS / len(prediction)    F = 2 P R / (P + R)

(Lin's F_lcs with beta = 1, as in Google's `rouge_score`.) Words are lower-cased runs of letters
and digits; punctuation separates words and is not a word itself, so "Ben." and "ben" match.
"""

from __future__ import annotations

import re

from minift.data import normalize

_WORD = re.compile(r"[a-z0-9]+")


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction equals the reference after `normalize`."""
    return normalize(prediction) == normalize(reference)


def words(text: str) -> list[str]:
    """ROUGE's words: lower-cased runs of ASCII letters and digits."""
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two word lists (dynamic programming, O(len a * len b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]; 1.0 when both have no words, 0.0 when only one has none."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
