import pytest

from minift.evaluation import exact_match, lcs_length, rouge_l, words
from minift.data import normalize


def test_normalize_strips_surrounding_whitespace_only():
    assert normalize("  Ben will  come.\n") == "Ben will  come."
    assert normalize("\t4 ") == "4"


def test_exact_match_after_normalize_is_case_sensitive():
    assert exact_match(" 4\n", "4")
    assert not exact_match("Red", "red")
    assert not exact_match("4 stars", "4")


def test_words_are_lowercased_alphanumeric_runs():
    assert words("Ben, meet ANNA at 5pm!") == ["ben", "meet", "anna", "at", "5pm"]
    assert words("...") == []


def test_lcs_length_textbook_example():
    # CLRS section 15.4: LCS of ABCBDAB and BDCABA has length 4 (e.g. BCBA).
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_lin_2004_example():
    # Lin (2004), section 3.1: reference "police killed the gunman".
    reference = "police killed the gunman"
    assert rouge_l("police kill the gunman", reference) == pytest.approx(0.75)  # LCS 3 of 4 and 4
    assert rouge_l("the gunman kill police", reference) == pytest.approx(0.5)  # LCS 2 ("the gunman")


def test_rouge_l_hand_computed_summary():
    # LCS = "ben will meet anna at the" = 6 words; P = 6/7, R = 6/9; F = 2PR / (P + R) = 0.75.
    prediction = "Ben will meet Anna at the park."
    reference = "Ben will meet Anna at the cafe on Friday."
    assert rouge_l(prediction, reference) == pytest.approx(0.75)


def test_rouge_l_edge_cases():
    assert rouge_l("Ben will come.", "ben will come") == 1.0  # case and punctuation do not count
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "Ben") == 0.0
    assert rouge_l("Anna", "Ben") == 0.0

