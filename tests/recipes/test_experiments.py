"""The examples-needed and forgetting experiments, on the fast preset: each row is what its own run did."""

import json
from pathlib import Path

import pytest

from minift.recipes import ExperimentConfig, run_experiments
from minift.training import read_metrics


@pytest.fixture(scope="module")
def results(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    config = ExperimentConfig.preset("fast", base=str(tiny_checkpoint), out=str(out))
    return config, run_experiments(["sizes", "forgetting"], config)  # icl: tests/recipes/test_icl_experiment.py


def _run(config, name: str) -> tuple[dict, list[dict]]:
    """The result.json and metrics.jsonl the experiment's fine-tuning run NAME wrote under out/runs/."""
    run = Path(config.out) / "runs" / name
    return json.loads((run / "result.json").read_text()), read_metrics(run / "metrics.jsonl")


def test_sizes_rows_and_curves_are_those_of_their_runs(results):
    config, r = results
    assert [(row["method"], row["n_train"]) for row in r["sizes"]] == [(m, n) for m in ("full", "lora") for n in config.sizes]
    for row in r["sizes"]:
        record, history = _run(config, f"sizes-{row['method']}-{row['n_train']}")
        assert row["val_curve"] == [(e["step"], e["accuracy"]) for e in history if e["kind"] == "eval"]
        assert row["best_step"] == record["best_step"] and row["val_accuracy"] == record["val_accuracy"]
    lora = [row for row in r["sizes"] if row["method"] == "lora"][0]
    full = [row for row in r["sizes"] if row["method"] == "full"][0]
    assert lora["trainable_parameters"] < full["trainable_parameters"]


def test_each_size_trains_on_that_many_examples(results):
    """Each run of the sizes experiment trains on its own n_train examples: its result.json says so, and the
    training losses of two sizes differ (other examples in the batches), for each method."""
    config, r = results
    for method in ("full", "lora"):
        losses = []
        for n in config.sizes:
            record, history = _run(config, f"sizes-{method}-{n}")
            assert record["n_train"] == n and record["config"]["n_train"] == n
            losses.append([e["loss"] for e in history if e["kind"] == "train"])
        assert len(losses[0]) == config.steps and losses[0] != losses[1]


def test_forgetting_matrix_has_a_row_per_model_and_a_column_per_task(results):
    config, r = results
    names = [row["model"] for row in r["forgetting"]]
    assert names == ["base", "full on reviews", "full on qa", "lora on reviews", "lora on qa", "full multi-task",
                     "lora multi-task", "per-task LoRA adapters (switched)"]
    columns = {"model", "trained_on", "corpus_loss", *config.tasks, *(f"{t} 1-shot" for t in config.tasks)}
    assert all(columns <= set(row) for row in r["forgetting"])


def test_every_fine_tuned_row_scores_its_own_model(results):
    """Accuracies are all 0 on the fast preset, but the corpus loss is continuous: each fine-tuned model (3
    steps, LoRA's B no longer zero) has its own, different from the base row's and from every other row's;
    the switched adapters are scored on the corpus with the adapters off, so that row is the base's."""
    _, r = results
    rows = {row["model"]: row["corpus_loss"] for row in r["forgetting"]}
    base, switched = rows.pop("base"), rows.pop("per-task LoRA adapters (switched)")
    assert switched == pytest.approx(base, rel=1e-6)
    assert all(loss != pytest.approx(base, rel=1e-6) for loss in rows.values()), rows
    assert len({round(loss, 7) for loss in rows.values()}) == len(rows), rows  # six models, six losses


def test_switched_adapters_reproduce_each_single_task_lora(results):
    """The adapter of task t, switched on in the shared base, scores what the LoRA-on-t model scored on t."""
    config, r = results
    rows = {row["model"]: row for row in r["forgetting"]}
    for task in config.tasks:
        assert rows["per-task LoRA adapters (switched)"][task] == rows[f"lora on {task}"][task]


def test_outputs_are_written(results):
    config, _ = results
    out = Path(config.out)
    for name in ("sizes", "forgetting"):
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["config"]["seed"] == 0 and saved["rows"]
        assert (out / f"{name}.csv").read_text().count("\n") == len(saved["rows"]) + 1
        assert (out / f"{name}.png").stat().st_size > 5_000
