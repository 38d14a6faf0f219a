"""benchmarks/gpu_suite.py without a GPU: the dry run's cases and costs, the targets, the failure handling."""

import json

import pytest

from benchmarks import gpu_suite


def test_dry_run_prints_every_case_with_its_shapes_and_cost(capsys):
    assert gpu_suite.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1] + " " + " ".join(line.split()[2:5]): line for line in out.splitlines() if not line.startswith("target")}
    assert len([line for line in out.splitlines() if not line.startswith("target")]) == len(gpu_suite.cases(False)) == 48
    # a quarter of 8192 rows ignored: (3 * 6144 + 2048) * 50257 * 2 B = 2.059 GB (three passes for every row: 2.47)
    assert "n=8192 h=768 v=50257" in out and "2.059 GB" in lines["cross_entropy gpt2 bf16 minift"]
    assert "1.897 TFLOP" in lines["linear_ce gpt2 bf16 minift"]  # 6 * 8192 * 768 * 50257
    assert "25.821 TFLOP" in lines["linear_ce llama3 bf16 minift"]
    assert "3.758 GB" in lines["adamw flat fp32 minift"]  # 2**27 elements * 28 B
    assert "1.742 GB" in lines["adamw gpt2 bf16 minift"]  # GPT-2 small's 124,439,808 parameters * 14 B
    assert out.count("target: ") == len(gpu_suite.TARGETS)


def test_targets_are_ratios_within_the_run():
    rows = [
        {"name": "cross_entropy gpt2 bf16 minift", "time_s": 1.0, "of_peak": 0.8, "peak_x_logits": 1.0},
        {"name": "cross_entropy gpt2 bf16 torch eager", "time_s": 1.5},
        {"name": "linear_ce gpt2 bf16 minift", "time_s": 1.0, "peak_bytes": 10},
        {"name": "linear_ce gpt2 bf16 torch linear_ce chunked", "error": "RuntimeError: out of memory"},
    ]
    found = {t["target"]: t for t in gpu_suite.check_targets(rows)}
    speedup = found["cross-entropy fwd+bwd, gpt2 bf16: speed-up over torch eager"]
    assert speedup["value"] == 1.5 and speedup["holds"] is False  # 1.5x where 2x is the target
    assert found["cross-entropy fwd+bwd, gpt2 bf16: share of HBM peak"]["holds"] is True
    assert found["linear CE, gpt2 bf16: peak memory / torch chunked"]["holds"] is None  # the peer's row failed


def test_a_failing_case_is_reported_and_the_others_still_run(monkeypatch):
    real = gpu_suite.run_adamw_case

    def flaky(case, device):
        if case["variant"] == "torch foreach":
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(case, device)

    monkeypatch.setattr(gpu_suite, "run_adamw_case", flaky)
    rows = gpu_suite.run_group("adamw", "cpu", quick=True)
    failed = [r["name"] for r in rows if "error" in r]
    assert failed == ["adamw flat fp32 torch foreach", "adamw gpt2 fp32 torch foreach", "adamw gpt2 bf16 torch foreach"]
    assert all(r["time_s"] > 0 and r["GB/s"] > 0 for r in rows if "error" not in r) and len(rows) == 9


def test_preflight_names_what_is_missing():
    problems, notes = gpu_suite.preflight("cuda", None)
    assert "no CUDA device: run with --dry-run, or --device cpu --quick" in problems
    assert gpu_suite.main(["--groups", "adamw"]) == 2  # says why and stops, before any work


@pytest.mark.slow  # one group in its own process
def test_a_group_runs_in_its_own_process_and_writes_results(tmp_path):
    assert gpu_suite.main(["--device", "cpu", "--quick", "--groups", "adamw", "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["csv", "json", "png"]
    written = json.loads((tmp_path / files[1]).read_text())
    assert {r["name"] for r in written["rows"]} == {c["name"] for c in gpu_suite.cases(True) if c["group"] == "adamw"}
    assert [t["target"] for t in written["meta"]["targets"]] == [t[0] for t in gpu_suite.TARGETS]
