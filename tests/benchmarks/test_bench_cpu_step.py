"""benchmarks/bench_cpu_step.py on a tiny model, without timing anything that matters: which step each
library runs, how the libraries alternate, how rows and ratios are formed, and a fresh-process run."""

import pytest
import torch

import benchmarks.bench_cpu_step as bench
from benchmarks.bench_cpu_step import (
    BUILDERS,
    LIBRARIES,
    METHODS,
    _in_subprocess,
    format_table,
    measure,
    plot,
    run,
    step_spec,
)
from minift.model import GPTConfig
from minift.peft import LoraConfig
from minift.training import default_loss, default_optimizer

TINY = GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=32)


def _specs():
    return {method: step_spec(method, TINY, batch=2, seq_len=16) for method in METHODS}


def test_the_step_is_gpt2_small_on_4_x_256_with_the_cpu_defaults_and_lora_r8():
    full, lora = step_spec("full"), step_spec("lora")
    assert (full.model.n_layer, full.model.n_embd, full.model.vocab_size) == (12, 768, 50257)
    assert (full.batch_size, full.seq_len, full.completion_tokens, full.dtype) == (4, 256, None, "float32")
    assert (full.loss, full.optimizer) == (default_loss("cpu"), default_optimizer("cpu"))
    assert full.peft is None and lora.peft == LoraConfig() and lora.peft.rank == 8


@pytest.mark.parametrize("method", METHODS)
def test_both_libraries_train_the_same_parameters(method):
    spec = _specs()[method]
    counts = {}
    for library in LIBRARIES:
        model = BUILDERS[library](spec).model
        counts[library] = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                           sum(p.numel() for p in model.parameters()))
    assert counts["minift"] == counts["peer"]
    if method == "lora":  # r (in + out) per c_attn: 8 * (32 + 96) in the one block
        assert counts["minift"][0] == 8 * (32 + 96)


def test_the_libraries_alternate_and_swap_their_order_every_round():
    calls = []

    def fake(library, spec, threads, steps):
        calls.append((library, spec["peft"] is None, threads))
        speed = {"minift": 200.0, "peer": 100.0}[library] * (1 if threads is None else 0.5) + len(calls)
        return {"threads": threads or 2, "tokens_per_s": speed}

    rows = run(_specs(), (None, 1), rounds=2, steps=1, measure_one=fake)
    assert [c[0] for c in calls[:2]] == ["minift", "peer"] and [c[0] for c in calls[8:10]] == ["peer", "minift"]
    assert all(calls[i][1:] == calls[i + 1][1:] for i in range(0, len(calls), 2))  # a case's two runs are adjacent
    assert [(r["method"], r["threads"]) for r in rows] == [("full", 2), ("lora", 2), ("full", 1), ("lora", 1)]
    first = rows[0]  # full, default threads: minift's calls 1 and 10, the peer's 2 and 9
    assert first["minift_tokens_per_s"] == pytest.approx((201 + 210) / 2)
    assert first["peer_tokens_per_s"] == pytest.approx((102 + 109) / 2)
    assert first["ratio"] == pytest.approx(round(205.5 / 105.5, 3))
    assert "full" in format_table(rows).splitlines()[1]


@pytest.mark.parametrize("library", LIBRARIES)
def test_measure_runs_the_steps_at_the_thread_count_asked(library):
    before = torch.get_num_threads()
    try:
        result = measure(library, _specs()["lora"].to_dict(), threads=1, steps=2)
    finally:
        torch.set_num_threads(before)
    assert result["threads"] == 1 and len(result["step_times_s"]) == 2
    assert result["tokens_per_s"] == pytest.approx(2 * 16 / result["seconds_per_step"])


def test_each_measurement_goes_to_a_fresh_process_running_the_library_path(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench, "measure_in_subprocess", lambda *args, **kwargs: seen.setdefault("call", (args, kwargs)))
    spec = _specs()["full"].to_dict()
    _in_subprocess("peer", spec, 1, 3)
    (module, function, kwargs), options = seen["call"]
    assert (module, function) == ("benchmarks.bench_cpu_step", "measure") and getattr(bench, function) is measure
    assert kwargs == {"library": "peer", "spec": spec, "threads": 1, "steps": 3}
    assert options == {"malloc_env": {"TRITON_INTERPRET": "0"}}  # glibc's own malloc, and the kernels' PyTorch reference as a user runs it


def test_the_plot_is_written(tmp_path):
    row = {"method": "full", "threads": 1, "minift_tokens_per_s": 2.0, "peer_tokens_per_s": 1.0, "ratio": 2.0}
    plot([row], "tiny", tmp_path / "step.png")
    assert (tmp_path / "step.png").stat().st_size > 0
