"""The course's experiments, on the fast preset: they run, write their tables and plots, and are consistent."""

import json
from pathlib import Path

import pytest

from minift.recipes import ExperimentConfig, run_experiments


@pytest.fixture(scope="module")
def results(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    config = ExperimentConfig.preset("fast", base=str(tiny_checkpoint), out=str(out))
    return config, run_experiments(["icl", "sizes", "forgetting"], config)


def test_icl_rows_cover_every_task_and_shot_count(results):
    config, r = results
    assert [(row["task"], row["shots"]) for row in r["icl"]] == [(t, k) for t in config.tasks for k in config.shots]
    zero, one = r["icl"][0], r["icl"][1]
    assert zero["shot_tokens"] == 0 and one["shot_tokens"] > 0 and 0 < one["shot_fraction"] < 1


def test_sizes_rows_and_curves(results):
    config, r = results
    assert [(row["method"], row["n_train"]) for row in r["sizes"]] == [(m, n) for m in ("full", "lora") for n in config.sizes]
    for row in r["sizes"]:
        assert row["val_curve"] and all(0 <= acc <= 1 for _, acc in row["val_curve"])
    lora = [row for row in r["sizes"] if row["method"] == "lora"][0]
    full = [row for row in r["sizes"] if row["method"] == "full"][0]
    assert lora["trainable_parameters"] < full["trainable_parameters"]


def test_forgetting_matrix_has_a_row_per_model_and_a_column_per_task(results):
    config, r = results
    names = [row["model"] for row in r["forgetting"]]
    assert names == ["base", "full on reviews", "full on qa", "lora on reviews", "lora on qa", "full multi-task",
                     "lora multi-task", "per-task LoRA adapters (switched)"]
    for row in r["forgetting"]:
        for task in config.tasks:
            assert 0 <= row[task] <= 1 and 0 <= row[f"{task} 1-shot"] <= 1
        assert row["corpus_loss"] > 0


def test_switched_adapters_reproduce_each_single_task_lora(results):
    """The adapter of task t, switched on in the shared base, scores what the LoRA-on-t model scored on t."""
    config, r = results
    rows = {row["model"]: row for row in r["forgetting"]}
    for task in config.tasks:
        assert rows["per-task LoRA adapters (switched)"][task] == rows[f"lora on {task}"][task]


def test_outputs_are_written(results):
    config, _ = results
    out = Path(config.out)
    for name in ("icl", "sizes", "forgetting"):
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["config"]["seed"] == 0 and saved["rows"]
        assert (out / f"{name}.csv").read_text().count("\n") == len(saved["rows"]) + 1
        assert (out / f"{name}.png").stat().st_size > 5_000
