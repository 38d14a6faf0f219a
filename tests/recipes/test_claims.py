"""Claims: an effect holds at two standard errors in its direction; the errors combine as independent estimates."""

import math

import pytest

from minift.recipes import Claim, claims_table
from minift.recipes.claims import average, binomial_stderr, difference, mean_stderr


@pytest.mark.parametrize("value, stderr, holds", [(0.1, 0.05, True), (0.099, 0.05, False), (-0.5, 0.1, False),
                                                  (0.2, 0.0, True), (0.0, 0.0, False)])
def test_a_claim_holds_at_two_standard_errors_in_its_direction(value, stderr, holds):
    claim = Claim("c", "s", value, stderr)
    assert claim.holds is holds and claim.to_dict()["holds"] is holds


def test_standard_errors():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    mean, se = mean_stderr([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))  # s = 1, n = 3
    assert math.isnan(mean_stderr([1.0])[1])
    assert difference((0.7, 0.03), (0.5, 0.04)) == (pytest.approx(0.2), pytest.approx(0.05))
    assert average([(0.2, 0.03), (0.4, 0.04)]) == (pytest.approx(0.3), pytest.approx(0.025))


def test_claims_table_gives_effect_sigmas_and_verdict():
    table = claims_table([Claim("up", "it rises", 0.12, 0.04).to_dict(), Claim("flat", "it moves", 0.01, 0.02).to_dict()])
    assert "| `up` | it rises | +0.120 ± 0.040 | 3.0 | holds |" in table
    assert "| `flat` | it moves | +0.010 ± 0.020 | 0.5 | not shown |" in table
