"""benchmarks/quantization_accuracy.py: its statistics on known numbers, a tiny run end to end, and the
README's sentences against the committed results file."""

import json
import math
from pathlib import Path

import pytest

from benchmarks.quantization_accuracy import CASES, PAIRS, claims, main, summarize

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "benchmarks" / "results" / "quantization_accuracy_cpu-2-cores.json"


def _rows(case, accuracies, losses):
    return [{"case": case, "seed": s, "test_accuracy": a, "test_loss": l} for s, (a, l) in enumerate(zip(accuracies, losses))]


def test_summary_and_claims_on_known_numbers():
    rows = (_rows("LoRA", [0.80, 0.82, 0.84], [0.5, 0.6, 0.7]) + _rows("QLoRA", [0.70, 0.74, 0.78], [0.6, 0.6, 0.6])
            + _rows("full, AdamW", [0.9, 0.9], [0.3, 0.5]) + _rows("full, 8-bit AdamW", [0.9, 0.9], [0.3, 0.5]))
    summary = summarize(rows)
    assert summary["LoRA"]["n"] == 3
    assert summary["LoRA"]["test_accuracy"]["mean"] == pytest.approx(0.82)
    assert summary["LoRA"]["test_accuracy"]["std"] == pytest.approx(0.02)  # sample std (n - 1)
    assert summary["QLoRA"]["test_accuracy"]["std"] == pytest.approx(0.04)
    found = {c["name"]: c for c in claims(summary)}
    acc = found["QLoRA vs LoRA: test_accuracy"]
    assert acc["value"] == pytest.approx(-0.08)
    assert acc["stderr"] == pytest.approx(math.sqrt(0.04**2 / 3 + 0.02**2 / 3))  # Welch: 0.0258
    assert acc["holds"] is False  # 0.08 > 2 x 0.0258
    loss = found["QLoRA vs LoRA: test_loss"]
    assert loss["value"] == pytest.approx(-0.0) and loss["holds"] is True
    assert found["full, 8-bit AdamW vs full, AdamW: test_accuracy"]["holds"] is True  # d = 0 = 2 se: equal holds
    assert len(found) == 2 * len(PAIRS)


@pytest.mark.slow
def test_a_tiny_run_writes_every_run_its_summary_and_claims(tmp_path):
    main(["--task", "qa", "--steps", "1", "--seeds", "0", "1", "--n-train", "16", "--n-test", "8", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "quantization_accuracy_cpu-2-cores.json").read_text())
    rows = data["rows"]
    assert [(r["case"], r["seed"]) for r in rows] == [(c, s) for s in (0, 1) for c in CASES]
    assert all(r["steps"] == 1 and r["n_test"] == 8 for r in rows)
    by = {(r["case"], r["seed"]): r for r in rows}
    # the NF4 base changes the model, so QLoRA's loss is not LoRA's; the seed changes the split
    assert by["QLoRA", 0]["test_loss"] != by["LoRA", 0]["test_loss"]
    assert by["LoRA", 0]["test_loss"] != by["LoRA", 1]["test_loss"]
    assert data["summary"] == summarize(rows)
    assert data["claims"] == claims(data["summary"])
    csv = (tmp_path / "quantization_accuracy_cpu-2-cores.csv").read_text().splitlines()
    assert len(csv) == 1 + len(rows)


def readme_sentence(summary: dict, claim: dict, quantised: str, reference: str) -> str:
    """The README's sentence for one pair's test accuracy, from the results file."""
    q, r = summary[quantised]["test_accuracy"], summary[reference]["test_accuracy"]
    verdict = "within" if claim["holds"] else "more than"
    return (f"{quantised}: test accuracy {q['mean']:.3f} ± {q['std']:.3f} against {reference}'s {r['mean']:.3f} ± {r['std']:.3f}; "
            f"the difference, {claim['value']:+.3f} ± {claim['stderr']:.3f} (standard error), is {verdict} 2 standard errors")


def test_the_readme_quotes_the_committed_results():
    data = json.loads(COMMITTED.read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    found = {c["name"]: c for c in data["claims"]}
    assert len(data["rows"]) == len(CASES) * len(data["meta"]["seeds"]) and len(data["meta"]["seeds"]) >= 3
    for quantised, reference in PAIRS:
        claim = found[f"{quantised} vs {reference}: test_accuracy"]
        assert readme_sentence(data["summary"], claim, quantised, reference) in readme
        loss = found[f"{quantised} vs {reference}: test_loss"]
        assert f"test loss {loss['value']:+.3f} ± {loss['stderr']:.3f}" in readme
    assert data["meta"]["command"] in readme
    acc = {(r["case"], r["seed"]): r["test_accuracy"] for r in data["rows"]}
    lower = all(acc["QLoRA", s] < acc["LoRA", s] for s in data["meta"]["seeds"])
    assert lower == ("QLoRA scored lower at every seed" in readme)
