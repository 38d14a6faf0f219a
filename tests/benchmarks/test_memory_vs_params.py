"""benchmarks/memory_vs_params.py without running the sweep: which steps it measures, how it pairs
minift's rows with the peer's for the ratios, how it judges the targets, and that the peer's step
trains the same parameters with the same optimizer as minift's."""

import json
from pathlib import Path

import pytest

from benchmarks.memory_vs_params import _add_ratios, build_peer_step, configs, select, targets_report
from minift.memory import RunSpec, build_minift_step, measure_categories
from minift.model import GPTConfig
from minift.peft import LoraConfig, PromptTuningConfig, SelectiveConfig
from minift.training import default_loss

TRACKING = "tracking (MALLOC_MMAP_THRESHOLD_=65536, MKL_DISABLE_FAST_MM=1)"


def test_configs_measure_the_training_default_and_name_every_other_loss():
    cfgs = configs(["tiny-m"], quick=True, device="cpu")
    by_label = {(c.label, c.spec.batch_size, c.spec.seq_len): c for c in cfgs}
    assert len(by_label) == len(cfgs), "each (label, batch, seq) is measured once"
    assert by_label["full", 4, 256].spec.loss == default_loss("cpu") == "fused"
    assert by_label["full, torch loss", 4, 256].spec.loss == "torch"
    fused = by_label["LoRA r=8 c_attn, fused-linear + checkpointing", 4, 256].spec
    assert fused.loss == "fused-linear" and fused.activation_checkpointing
    for c in cfgs:  # a row that names no loss runs the default; a label that names one runs it
        named = "torch loss" in c.label or "fused" in c.label
        assert named or c.spec.loss == "fused", c.label


def test_select_keeps_the_labelled_configurations_and_names_an_unknown_label():
    cfgs = configs(["tiny-m"], quick=True, device="cpu")
    chosen = select(cfgs, ["full, adamw8bit", "QLoRA r=8 c_attn"])
    assert [(c.label, c.spec.optimizer, getattr(c.spec.peft, "quantize", None)) for c in chosen] == [
        ("full, adamw8bit", "adamw8bit", None), ("QLoRA r=8 c_attn", "adamw", "nf4")]
    assert select(cfgs, None) == cfgs
    with pytest.raises(ValueError, match="QLoRA r=9"):
        select(cfgs, ["QLoRA r=9 c_attn"])


def _row(impl, label, above, checkpointing=False, labels="lm", batch=4, seq=256, model="gpt2"):
    return dict(impl=impl, label=label, peak_above_model_mib=above, checkpointing=checkpointing, labels=labels,
                batch=batch, seq=seq, model=model, allocator=TRACKING)


def test_ratios_pair_each_variant_with_the_peers_plain_row_of_its_method():
    rows = [
        _row("transformers+peft", "full", 200.0),
        _row("minift", "full", 150.0),
        _row("minift", "full, torch loss", 160.0),
        _row("minift", "full, fused", 140.0),
        _row("transformers+peft", "LoRA r=8 c_attn", 100.0),
        _row("transformers+peft", "LoRA r=8 c_attn, fused-linear + checkpointing", 40.0, checkpointing=True),
        _row("minift", "LoRA r=8 c_attn, fused-linear + checkpointing", 8.0, checkpointing=True),
        _row("transformers+peft", "full, last 32 tokens scored", 180.0, labels="last-32"),
        _row("minift", "full, last 32 tokens scored", 90.0, labels="last-32"),
        _row("minift", "full", 15.0, batch=1, seq=128),  # a sweep row: no peer at that shape
    ]
    _add_ratios(rows)
    ratio = {(r["label"], r["batch"]): r.get("ratio_vs_peer") for r in rows if r["impl"] == "minift"}
    assert ratio["full", 4] == pytest.approx(0.75)
    assert ratio["full, torch loss", 4] == pytest.approx(0.80)
    assert ratio["full, fused", 4] == pytest.approx(0.70)
    assert ratio["LoRA r=8 c_attn, fused-linear + checkpointing", 4] == pytest.approx(0.08)
    assert ratio["full, last 32 tokens scored", 4] == pytest.approx(0.5)  # the peer's row with the same labels
    assert ratio["full", 1] is None
    checkpointed = next(r for r in rows if r["impl"] == "minift" and r["checkpointing"])
    assert checkpointed["ratio_vs_peer_checkpointed"] == pytest.approx(0.2)


def test_targets_report_says_met_or_not_met_for_each_target():
    rows = [_row("minift", "full", 150.0) | dict(ratio_vs_peer=0.81, predicted_error_pct=-0.1, predicted_tensors_error_pct=-7.9),
            _row("minift", "LoRA r=8 c_attn", 60.0) | dict(ratio_vs_peer=0.41, predicted_error_pct=-10.5,
                                                          predicted_tensors_error_pct=-28.4)]
    report = "\n".join(targets_report(rows))
    assert "worst |error| 10.5% -> target 10%: NOT met (tensors alone, without the BLAS workspace: 28.4%)" in report
    assert "full" in report and "0.81x" in report and "(target <= 0.8x: NOT met)" in report
    assert "0.41x" in report and "(target <= 0.7x: met)" in report


SMALL = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("peft", [None, LoraConfig(rank=4), PromptTuningConfig(num_virtual_tokens=3),
                                  SelectiveConfig("last-2-blocks")], ids=["full", "lora", "prompt-tuning", "selective"])
def test_peer_step_trains_the_same_parameters_with_the_same_optimizer(peft):
    """Weights, trainable weights, gradients and AdamW state of one step: byte for byte the same in
    transformers + peft as in minift, so the benchmark's ratios compare the activations and the loss."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    spec = RunSpec(SMALL, peft, batch_size=2, seq_len=12)
    ours = measure_categories(build_minift_step(spec))
    theirs = measure_categories(build_peer_step(spec))
    for category in ("weights_frozen", "weights_trainable", "gradients", "optimizer_state"):
        assert ours[category] == theirs[category], category
    assert ours["activations"] > 0 and theirs["activations"] > 0


def test_the_quantized_rows_are_predicted_within_10_percent_and_the_readme_quotes_them():
    root = Path(__file__).resolve().parents[2]
    rows = json.loads((root / "benchmarks" / "results" / "memory_vs_params_cpu-2-cores_quantized.json").read_text())["rows"]
    readme = (root / "README.md").read_text()
    names = {"full, adamw8bit": "full + 8-bit AdamW", "QLoRA r=8 c_attn": "QLoRA r=8 `c_attn` (NF4 base)"}
    assert sorted(r["label"] for r in rows) == sorted(names)
    for r in rows:
        assert abs(r["predicted_error_pct"]) <= 10, r["label"]
        line = f"| {names[r['label']]} | {r['trainable_params']:,} | {r['predicted_peak_mib']:.1f} | {r['peak_mib']:.1f} | (no peer) |"
        assert line in readme, line
