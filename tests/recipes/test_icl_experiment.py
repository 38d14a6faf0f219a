"""The ICL experiment: every base model and layout is really evaluated, as many shots as fit do fit, and the
claims are computed from the smallest and largest model."""

import json
from pathlib import Path

import pytest

from minift.data import CorpusConfig, few_shot_prompt, generate_corpus, load_task_data, max_shots
from minift.data.icl import SHOT_SEPARATOR
from minift.evaluation import evaluate_task
from minift.model import BASE_MODELS, load_model
from minift.recipes import ExperimentConfig
from minift.recipes.experiments import LAYOUTS, UNSEEN_LAYOUT, icl_claims, run_icl


def test_the_unseen_layout_never_occurs_in_the_corpus():
    text = "\n".join(generate_corpus(CorpusConfig()))  # the shipped base models' corpus
    assert text.count(UNSEEN_LAYOUT.prompt_prefix.strip()) == 0 and text.count(UNSEEN_LAYOUT.response_prefix.strip()) == 0
    assert text.count("### Response:") > 0  # while the quiz sheets do show the instruction format's markers


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("task", ["reviews", "arithmetic"])
def test_max_shots_fit_every_prompt_and_one_more_of_the_longest_does_not(task, layout):
    _, tokenizer = load_model()
    data = load_task_data(task, tokenizer, 512, n_train="all", n_val=0, n_test=40, seed=0, tokenize=())
    fmt, pool, queries = LAYOUTS[layout], data.rendered["train"], data.rendered["test"]
    k = max_shots(tokenizer, queries, pool, 512, fmt)
    assert k >= 3
    longest = max(pool, key=lambda s: len(tokenizer.encode(fmt.format_prompt(s.prompt) + s.completion + SHOT_SEPARATOR)))
    for query in queries:  # the longest shot k times is the worst case: it fits
        few_shot_prompt(tokenizer, query, [longest] * k, 512, fmt)
    lengths = [few_shot_prompt(tokenizer, q, [longest] * k, 512, fmt).n_tokens for q in queries]
    shot = len(tokenizer.encode(fmt.format_prompt(longest.prompt) + longest.completion + SHOT_SEPARATOR))
    assert max(lengths) + shot > 512  # and k is the most: one more would overflow the longest query


def _row(base, parameters, layout, task, shots, accuracy, fit=False):
    return {"base": base, "parameters": parameters, "layout": layout, "task": task, "shots": shots,
            "as_many_as_fit": fit, "accuracy": accuracy, "stderr": 0.01}


def test_icl_claims_compare_the_largest_with_the_smallest_model():
    rows = []
    for base, params, gain, level in (("big", 3_000_000, 0.4, 0.3), ("mid", 1_000_000, 0.0, 0.9), ("small", 150_000, 0.1, 0.2)):
        for layout, shift in (("instruction", 0.0), ("unseen", -0.3)):
            for task in ("a", "b"):
                rows += [_row(base, params, layout, task, 0, level), _row(base, params, layout, task, 3, level + gain + shift),
                         _row(base, params, layout, task, 8, level + gain + shift - 0.05, fit=True)]
    claims = {c.name: c for c in icl_claims(rows, shots=3)}
    assert claims["icl_helps_largest"].value == pytest.approx(0.4)
    assert claims["icl_accuracy_grows_with_size"].value == pytest.approx(0.7 - 0.3)  # big's 3-shot - small's, not mid's
    assert claims["icl_weaker_in_smaller_models"].value == pytest.approx(0.3)  # big's gain - small's
    assert claims["icl_without_the_corpus_layout"].value == pytest.approx(0.1)
    assert claims["icl_full_context_hurts"].value == pytest.approx(0.05)  # 3 shots - as many as fit, over all bases
    assert claims["icl_helps_largest"].stderr == pytest.approx((2 * 2 * 0.01**2) ** 0.5 / 2)
    assert "big" in claims["icl_helps_largest"].statement and "20x" in claims["icl_accuracy_grows_with_size"].statement


@pytest.fixture(scope="module")
def icl(tmp_path_factory):
    config = ExperimentConfig.preset("fast", out=str(tmp_path_factory.mktemp("icl")))
    return config, run_icl(config)


def test_every_base_layout_task_and_shot_count_is_evaluated(icl):
    config, rows = icl
    assert config.bases == BASE_MODELS[:2]
    settings = [(*config.shots, "max")]
    assert [(r["base"], r["layout"], r["task"]) for r in rows][:: len(settings[0])] == [
        (b, layout, t) for b in config.bases for layout in LAYOUTS for t in config.tasks]
    fitted = [r for r in rows if r["as_many_as_fit"]]
    assert len(fitted) == len(rows) // len(settings[0]) and all(r["shots"] > max(config.shots) for r in fitted)
    assert {r["parameters"] for r in rows} == {load_model(b)[0].num_parameters() for b in config.bases}


def test_the_answer_loss_differs_by_base_layout_and_shots(icl):
    """Continuous quantities that differ even where accuracy is 0: each row was scored on its own model and prompt."""
    _, rows = icl
    key = lambda r: (r["base"], r["layout"], r["task"], r["shots"])
    loss = {key(r): r["answer_loss"] for r in rows}
    small, mid = BASE_MODELS[:2]
    for (base, layout, task, shots), value in loss.items():
        if base == small:
            assert value != pytest.approx(loss[mid, layout, task, shots], rel=1e-3)
        if layout == "instruction" and shots == 0:
            assert value != pytest.approx(loss[base, "unseen", task, 0], rel=1e-3)
        if shots == 1:
            assert value != pytest.approx(loss[base, layout, task, 0], rel=1e-3)
            assert rows[0]["shot_fraction"] == 0 and [r for r in rows if key(r) == (base, layout, task, 1)][0]["shot_fraction"] > 0


@pytest.mark.parametrize("rouge", [True, False])
def test_rouge_is_scored_only_when_asked(rouge):
    model, tokenizer = load_model(BASE_MODELS[0])
    record = evaluate_task(model, tokenizer, "summarize", n=2, score_end=False, rouge=rouge)
    assert ("rouge_l" in record) is rouge


def test_the_results_and_their_claims_are_written(icl):
    config, rows = icl
    saved = json.loads((Path(config.out) / "icl.json").read_text())
    assert saved["rows"] == rows and saved["config"]["bases"] == list(config.bases)
    assert [c["name"] for c in saved["claims"]] == ["icl_helps_largest", "icl_accuracy_grows_with_size",
                                                    "icl_weaker_in_smaller_models", "icl_without_the_corpus_layout",
                                                    "icl_full_context_hurts"]
    assert all(set(c) == {"name", "statement", "value", "stderr", "holds"} for c in saved["claims"])
    assert (Path(config.out) / "icl.csv").read_text().count("\n") == len(rows) + 1
    assert (Path(config.out) / "icl.png").stat().st_size > 5_000
