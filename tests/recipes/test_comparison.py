"""`minift compare` on a tiny random checkpoint: one row per method, consistent with its own run's files."""

import json
from pathlib import Path

import pytest

from minift.cli import main
from minift.recipes import CompareConfig, compare, format_rows
from minift.recipes.comparison import memory_spec
from minift.memory import measure_gemm_workspace, predict
from minift.peft import LoraConfig


@pytest.fixture(scope="module")
def compared(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    config = CompareConfig(task="reviews", base=str(tiny_checkpoint), out=str(out), methods=("full", "lora", "prompt-tuning"),
                           n_train=32, n_val=16, n_test=16, base_shots=1, steps=3, batch_size=4, eval_every=3, progress=False)
    return config, compare(config, log=lambda *_: None)


def test_one_row_per_method_after_the_base(compared):
    config, rows = compared
    assert [r["method"] for r in rows] == ["base, 1-shot", *config.methods]
    assert rows[0]["trainable_params"] == 0
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and r["chance"] == pytest.approx(0.2)  # reviews: 5 ratings


def test_parameters_and_files_match_each_run(compared):
    config, rows = compared
    full, lora, prompt = rows[1:]
    for r in rows[1:]:
        result = json.loads((Path(config.out) / r["method"] / "result.json").read_text())
        assert r["trainable_params"] == result["trainable_parameters"]
        assert r["artefact_bytes"] == sum(result["artefact_bytes"].values())
        assert r["test_accuracy"] == result["test_accuracy"] and r["val_accuracy"] == result["val_accuracy"]
    # The tiny checkpoint (n_embd 32, 2 layers): LoRA r=8 on c_attn adds r * (32 + 96) per layer;
    # prompt tuning trains 20 virtual tokens of width 32.
    assert lora["trainable_params"] == 2 * 8 * (32 + 96) and prompt["trainable_params"] == 20 * 32
    assert full["trainable_pct"] == 100.0 and full["artefact_bytes"] > lora["artefact_bytes"]


def test_memory_columns_are_the_ledger_and_a_measurement(compared):
    config, rows = compared
    saved = json.loads((Path(config.out) / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    for r in rows[1:]:
        assert r["predicted_peak_mib"] > 0 and r["measured_peak_mib"] > 0
    assert rows[1]["predicted_peak_mib"] > rows[2]["predicted_peak_mib"]  # full holds gradients and AdamW state
    assert (Path(config.out) / "compare.png").stat().st_size > 0
    assert (Path(config.out) / "compare.csv").read_text().count("\n") == len(rows) + 1


def test_the_predicted_peak_is_the_ledgers_for_the_runs_longest_batch(compared, tiny_checkpoint):
    config, rows = compared
    meta = json.loads((Path(config.out) / "compare.json").read_text())["meta"]
    assert meta["completion_tokens"] == 2  # reviews: a digit and end-of-text
    for r in rows[1:]:
        spec = memory_spec(config, r["method"], meta["seq_len"], meta["completion_tokens"])
        assert spec.checkpoint == str(Path(tiny_checkpoint).resolve()) and spec.batch_size == config.batch_size
        # the ledger with the BLAS workspace measured for the same head products (one probe per process)
        assert r["predicted_peak_mib"] == predict(spec, measure_gemm_workspace(spec)).peak.total / 2**20


def test_format_rows_prints_every_method(compared):
    _, rows = compared
    text = format_rows(rows)
    for r in rows:
        assert r["method"] in text
    assert "KiB" in text  # the adapters


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="methods must be some of"):
        CompareConfig(methods=("full", "dora"))


def test_cli_compare_prints_the_table(tiny_checkpoint, tmp_path, capsys):
    code = main(["compare", "--task", "reviews", "--base", str(tiny_checkpoint), "--out", str(tmp_path), "--methods", "lora", "--steps", "2",
                 "--n-train", "16", "--n-test", "8", "--base-shots", "0", "--batch-size", "4", "--no-measure", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "lora" in out and "chance accuracy on reviews: 0.200" in out
    assert str(tmp_path) in out and (tmp_path / "compare.json").exists()


def test_qlora_row_is_the_lora_config_over_an_nf4_base():
    config = CompareConfig(methods=("lora", "qlora"), lora=LoraConfig(rank=2))
    assert config.peft("lora") == LoraConfig(rank=2)
    assert config.peft("qlora") == LoraConfig(rank=2, quantize="nf4")  # the same adapter, the base in NF4
