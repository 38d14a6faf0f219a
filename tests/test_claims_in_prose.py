"""Every outcome the README or a notebook states is tagged "(claim `NAME`: holds|not shown)" and agrees with the
committed results it comes from (docs/results/*.json); the claims there are what their rows give."""

import json
import re
from pathlib import Path

import pytest

from minift.recipes import claims_table
from minift.recipes.experiments import CLAIMS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
TAG = re.compile(r"\(claim\s+`(\w+)`:\s+(holds|not\s+shown)\)")  # a tag may wrap across lines


def _committed() -> dict[str, dict]:
    """Each committed experiment's JSON, by its file's stem."""
    return {f.stem: json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))}


def _prose() -> dict[str, str]:
    """The README, and each notebook's markdown and printed outputs, by file name."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for nb in sorted((ROOT / "tutorials").rglob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        texts[nb.name] = "\n".join("".join(c["source"]) if c["cell_type"] == "markdown" else
                                   "".join("".join(o.get("text", "")) for o in c.get("outputs", [])) for c in cells)
    return texts


def _claims() -> dict[str, dict]:
    return {c["name"]: c for saved in _committed().values() for c in saved.get("claims", [])}


def test_results_are_committed_with_their_claims():
    assert set(CLAIMS) <= set(_committed())  # every experiment that makes claims has committed results
    assert all(_committed()[name]["claims"] for name in CLAIMS)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_committed_claims_are_what_their_rows_give(name):
    """A claim edited by hand, or left from an earlier run's rows, fails here."""
    saved = _committed()[name]
    recomputed = [c.to_dict() for c in CLAIMS[name](saved["rows"], saved["config"])]
    assert recomputed == saved["claims"]


def test_every_tag_in_the_prose_agrees_with_the_committed_claim():
    claims, tagged = _claims(), set()
    for where, text in _prose().items():
        for name, verdict in TAG.findall(text):
            verdict = " ".join(verdict.split())
            assert name in claims, f"{where} tags claim {name!r}, which no committed result holds"
            expected = "holds" if claims[name]["holds"] else "not shown"
            assert verdict == expected, f"{where} says claim {name!r} {verdict}; the committed result: {expected}"
            tagged.add(name)
    assert tagged == set(claims)  # and every committed claim is stated somewhere


def test_the_readme_shows_each_experiments_claims_table():
    readme = (ROOT / "README.md").read_text()
    for name, saved in _committed().items():
        if saved.get("claims"):
            assert claims_table(saved["claims"]) in readme, f"README lacks the claims table of docs/results/{name}.json"
