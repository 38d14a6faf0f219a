"""Everything minift's GPU path claims, measured in one command on a lent CUDA machine (well under 8 minutes).

    python -m benchmarks.gpu_suite --dry-run             # every case, its shapes and expected bytes/FLOPs; no GPU needed
    python -m benchmarks.gpu_suite                       # on a CUDA machine: the whole suite
    python -m benchmarks.gpu_suite --wheels DIR          # first install what is missing (Liger-Kernel) from local wheels
    python -m benchmarks.gpu_suite --device cpu --quick  # the machinery on small CPU cases (the test suite runs this)

Groups, each run in its own process with a time limit, so a failure or a hang costs only that group:
  kernel-tests   pytest tests/kernels with compiled kernels (TRITON_INTERPRET=0, tensors on the GPU)
  cross-entropy  forward + backward at N 8192 x V 50257 / 128256, bf16 and fp32: torch eager, torch.compile,
                 minift, Liger (a quarter of the labels ignored, as prompt masking does)
  linear-ce      GPT-2 small's head (8192 x 768 x 50257) and LLaMA-3's (8192 x 4096 x 128256), bf16: eager,
                 torch.compile, F.linear_cross_entropy (reference; chunked with aspect_ratio 1, 2, 4), minift, Liger
  adamw          one step over a flat 128M-element fp32 buffer and over GPT-2 small's tensors in fp32 and bf16:
                 minift's FusedAdamW, torch.optim.AdamW fused=True and foreach=True
  train-step     a GPT-2 small step, 4 x 1024 tokens in bf16, for each loss and each AdamW: tokens/s, and the
                 peak memory measured (fresh process) against the ledger's prediction

Measured: time (triton.testing.do_bench: median, 20th and 80th percentiles; on a CPU the median of 3),
peak torch.cuda.max_memory_allocated above the inputs, achieved GB/s or TFLOP/s and the share of the
data sheet's peak (benchmarks/common.py). The targets are ratios within this one run (TARGETS). Results:
benchmarks/results/gpu_suite_<device>.json, .csv and .png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import bench_adamw, bench_cross_entropy
from benchmarks.common import RESULTS, bandwidth_of, device_name, device_slug, flops_of, write_results
from minift._plots import pyplot, save_figure
from minift.memory import RunSpec, build_minift_step, meta_model, measure, model_config, predict
from minift.memory.step import run_step
from minift.training import LOSSES

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"kernel-tests": 120, "cross-entropy": 100, "linear-ce": 120, "adamw": 45, "train-step": 75}  # time limits, s
DTYPES = bench_cross_entropy.DTYPES
# (shape name, N, H, V), full size and --quick
HEADS = {False: [("gpt2", 8192, 768, 50257), ("llama3", 8192, 4096, 128256)], True: [("small", 256, 32, 1000)]}
FLAT_NUMEL = {False: 2**27, True: 2**16}
# (what, ours, theirs, measure, bound): ours/theirs of `measure` must be within `bound` ("max": <=, "min": >=)
TARGETS = [
    ("cross-entropy fwd+bwd, gpt2 bf16: speed-up over torch eager", "cross_entropy gpt2 bf16 minift",
     "cross_entropy gpt2 bf16 torch eager", "speedup", ("min", 2.0)),
    ("cross-entropy fwd+bwd, gpt2 bf16: share of HBM peak", "cross_entropy gpt2 bf16 minift", None, "of_peak", ("min", 0.75)),
    ("cross-entropy fwd+bwd, gpt2 bf16: peak memory / logits", "cross_entropy gpt2 bf16 minift", None, "peak_x_logits",
     ("max", 1.0)),
    ("linear CE, gpt2 bf16: peak memory / torch chunked", "linear_ce gpt2 bf16 minift",
     "linear_ce gpt2 bf16 torch linear_ce chunked", "peak_bytes", ("max", 1.0)),
    ("linear CE, gpt2 bf16: time / torch eager (unfused)", "linear_ce gpt2 bf16 minift", "linear_ce gpt2 bf16 torch eager",
     "time_s", ("max", 1.25)),
    ("AdamW, flat fp32: share of HBM peak", "adamw flat fp32 minift", None, "of_peak", ("min", 0.85)),
    ("AdamW, gpt2 fp32: time / torch fused", "adamw gpt2 fp32 minift", "adamw gpt2 fp32 torch fused", "time_s", ("max", 1.0)),
]


def cases(quick: bool) -> list[dict]:
    """Every measurement of the suite with its shapes and the bytes or FLOPs it is expected to move or do."""
    found = [{"group": "kernel-tests", "name": "pytest tests/kernels", "expected": "every kernel test passes"}]
    heads = HEADS[quick]
    for shape, N, H, V in heads:
        for dtype in ("bf16", "fp32"):
            b = DTYPES[dtype].itemsize
            traffic = bench_cross_entropy.cross_entropy_bytes(N, V, b, bench_cross_entropy.ignored_rows(N))
            for variant in ("torch eager", "torch.compile", "minift", "liger"):
                found.append(dict(group="cross-entropy", name=f"cross_entropy {shape} {dtype} {variant}", op="cross_entropy",
                                  variant=variant, n=N, h=H, v=V, dtype=dtype, bytes=traffic, logits_bytes=N * V * b))
    for shape, N, H, V in heads:
        variants = ("torch eager", "torch.compile", "torch linear_ce", "torch linear_ce chunked",
                    "torch linear_ce aspect_ratio:1", "torch linear_ce aspect_ratio:4", "minift", "liger")
        for variant in variants:  # "torch linear_ce chunked" is PyTorch's default options: aspect_ratio:2 on CUDA
            found.append(dict(group="linear-ce", name=f"linear_ce {shape} bf16 {variant}", op="linear_cross_entropy",
                              variant=variant, n=N, h=H, v=V, dtype="bf16", flops=6 * N * H * V, logits_bytes=N * V * 2))
    for case in ("flat", "gpt2"):
        case_shapes = _adamw_shapes(case, quick)
        numel = sum(torch.Size(s).numel() for s in case_shapes)
        for dtype in ("fp32",) if case == "flat" else ("fp32", "bf16"):
            for variant in bench_adamw.VARIANTS:
                found.append(dict(group="adamw", name=f"adamw {case} {dtype} {variant}", case=case, variant=variant,
                                  dtype=dtype, numel=numel, tensors=len(case_shapes), quick=quick,
                                  bytes=numel * (4 + 3) * DTYPES[dtype].itemsize))  # read p g m v, write p m v
    model, B, T = ("tiny-m", 2, 64) if quick else ("gpt2", 4, 1024)
    config = model_config(model)
    params = sum(p.numel() for p in meta_model(RunSpec(config)).parameters())
    # 6 FLOPs per parameter per token (forward 2, backward 4), plus attention's scores and values:
    # 12 n_layer T n_embd per token (Chowdhery et al. 2022, PaLM, appendix B)
    flops = (6 * params + 12 * config.n_layer * T * config.n_embd) * B * T
    for loss in ("fused",) if quick else LOSSES:
        for optimizer in ("adamw", "fused-adamw"):
            found.append(dict(group="train-step", name=f"train-step {model} {loss} {optimizer}", loss=loss,
                              optimizer=optimizer, model=model, batch=B, seq=T, flops=flops))
    return found


def _adamw_shapes(case: str, quick: bool) -> list[tuple]:
    """The flat buffer, or GPT-2 small's tensors (--quick: a 64-wide GPT-2 of one block)."""
    if case == "flat":
        return [(FLAT_NUMEL[quick],)]
    return bench_adamw.gpt2_shapes(n_layer=1, n_embd=64, vocab_size=1000, block_size=64) if quick else bench_adamw.gpt2_shapes()


def preflight(device: str, wheels: str | None) -> tuple[list[str], list[str]]:
    """(problems that stop the suite, notes): CUDA, triton, pytest; Liger installed from `wheels` if missing."""
    problems, notes = [], []
    if device == "cuda" and not torch.cuda.is_available():
        problems.append("no CUDA device: run with --dry-run, or --device cpu --quick")
    for module in ("triton", "pytest"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"{module} is not installed")
    if importlib.util.find_spec("liger_kernel") is None and wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels, "liger-kernel"],
                              capture_output=True, text=True)
        notes.append(f"pip install liger-kernel from {wheels}: " + ("ok" if proc.returncode == 0 else proc.stderr[-300:]))
    if importlib.util.find_spec("liger_kernel") is None:
        notes.append("Liger-Kernel is not installed: its rows are skipped (--wheels DIR with its wheel installs it)")
    return problems, notes


def _time(fn, device: str) -> dict:
    if device == "cuda":
        from triton.testing import do_bench

        ms, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"time_s": ms / 1e3, "time_p20_s": p20 / 1e3, "time_p80_s": p80 / 1e3}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times)}


def _peak(fn, device: str) -> int | None:
    """Peak bytes the CUDA allocator held above what was allocated before `fn` (None on a CPU)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def _loss_fn(case: dict, device: str):
    variant, name = case["variant"], case["op"]
    if variant == "liger":
        return bench_cross_entropy._liger(device)[name]
    if variant == "torch.compile":
        eager = bench_cross_entropy._variants(name, device)["torch eager"]
        return torch.compile(eager)
    if variant.startswith("torch linear_ce aspect_ratio"):
        options = torch.nn.LinearCrossEntropyOptions(chunking_method=variant.split()[-1])
        return lambda h, w, y: F.linear_cross_entropy(h, w, y, options=options)
    return bench_cross_entropy._variants(name, device)[variant]


def run_loss_case(case: dict, device: str) -> dict:
    fn = _loss_fn(case, device)
    inputs = bench_cross_entropy.make_inputs(case["op"], case["n"], case["h"], case["v"], DTYPES[case["dtype"]], device)
    step = lambda: bench_cross_entropy._step(fn, inputs)  # noqa: E731
    step()  # compile / warm up
    result = {**_time(step, device), "peak_bytes": _peak(step, device)}
    name = device_name(device)
    if "bytes" in case:
        result["GB/s"] = case["bytes"] / result["time_s"] / 1e9
        result["of_peak"] = (case["bytes"] / result["time_s"] / bandwidth_of(name)) if bandwidth_of(name) else None
    else:
        result["TFLOP/s"] = case["flops"] / result["time_s"] / 1e12
        result["of_peak"] = (case["flops"] / result["time_s"] / flops_of(name)) if flops_of(name) else None
    if result["peak_bytes"] is not None:
        result["peak_x_logits"] = result["peak_bytes"] / case["logits_bytes"]
    return result


def run_adamw_case(case: dict, device: str) -> dict:
    step = bench_adamw.make_step(case["variant"], _adamw_shapes(case["case"], case["quick"]), device, DTYPES[case["dtype"]])
    result = {**_time(step, device), "peak_bytes": _peak(step, device)}
    bandwidth = bandwidth_of(device_name(device))
    result["GB/s"] = case["bytes"] / result["time_s"] / 1e9
    result["of_peak"] = case["bytes"] / result["time_s"] / bandwidth if bandwidth else None
    return result


def _time_step(spec: RunSpec, device: str) -> dict:
    """The time of one training step of `spec` (its memory is freed when this returns)."""
    parts = build_minift_step(spec)
    run_step(parts)  # the optimizer state exists from here on, as in every later step
    return _time(lambda: run_step(parts), device)


def run_train_case(case: dict, device: str) -> dict:
    dtype = "bfloat16" if device == "cuda" else "float32"
    spec = RunSpec(model_config(case["model"]), None, optimizer=case["optimizer"], loss=case["loss"], device=device,
                   batch_size=case["batch"], seq_len=case["seq"], dtype=dtype)
    result = _time_step(spec, device)
    result["tokens/s"] = case["batch"] * case["seq"] / result["time_s"]
    flops = flops_of(device_name(device))
    result["mfu"] = case["flops"] / result["time_s"] / flops if flops else None  # model FLOPs utilisation
    result["predicted_peak_bytes"] = predict(spec).peak.total
    result["peak_bytes"] = measure(spec)["peak"]  # a fresh process, as the ledger is checked
    result["measured_over_predicted"] = result["peak_bytes"] / result["predicted_peak_bytes"]
    return result


def run_group(group: str, device: str, quick: bool) -> list[dict]:
    """Every case of `group`, each failure recorded in its row and the rest carried on."""
    if group == "kernel-tests":
        env = {**os.environ, "TRITON_INTERPRET": "0", "MINIFT_TEST_DEVICE": device}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/kernels"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        return [{"group": group, "name": "pytest tests/kernels", "passed": proc.returncode == 0, "summary": summary,
                 **({} if proc.returncode == 0 else {"error": proc.stdout[-3000:]})}]
    run = {"cross-entropy": run_loss_case, "linear-ce": run_loss_case, "adamw": run_adamw_case,
           "train-step": run_train_case}[group]
    rows = []
    for case in (c for c in cases(quick) if c["group"] == group):
        if case.get("variant") == "liger" and not bench_cross_entropy._liger(device):
            continue  # not installed: preflight said so
        if case.get("variant") == "torch.compile" and device != "cuda":
            continue  # on a CPU the suite checks its own machinery; inductor's C++ build would take minutes
        try:
            rows.append({**case, **run(case, device)})
        except Exception as error:  # noqa: BLE001 - a case that fails is reported, and the others still run
            rows.append({**case, "error": f"{type(error).__name__}: {error}"[:2000]})
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        print(_format(rows[-1]), flush=True)
    return rows


def _format(row: dict) -> str:
    if "error" in row:
        return f"FAILED {row['name']}: {row['error'].splitlines()[0] if row['error'] else ''}"
    parts = [f"{row['name']:<52}"]
    for key, fmt in (("time_s", "{:.3f} ms"), ("GB/s", "{:.0f} GB/s"), ("TFLOP/s", "{:.1f} TFLOP/s"),
                     ("of_peak", "{:.0%} of peak"), ("peak_bytes", "{:.0f} MB peak"), ("tokens/s", "{:,.0f} tok/s"),
                     ("measured_over_predicted", "measured/predicted {:.3f}"), ("summary", "{}")):
        value = row.get(key)
        if value is not None:
            scale = 1e3 if key == "time_s" else 1e-6 if key == "peak_bytes" else 1
            parts.append(fmt.format(value * scale if isinstance(value, (int, float)) and key != "summary" else value))
    return "  ".join(parts)


def check_targets(rows: list[dict]) -> list[dict]:
    """Each target's measured ratio and whether it holds (None where a row it needs is missing or failed)."""
    by_name = {r["name"]: r for r in rows if "error" not in r}
    checked = []
    for what, ours, theirs, key, (kind, bound) in TARGETS:
        mine, other = by_name.get(ours), by_name.get(theirs) if theirs else None
        value = None
        if mine is not None and (theirs is None or other is not None):
            if key == "speedup":
                value = other["time_s"] / mine["time_s"]
            elif theirs is None:
                value = mine.get(key)
            elif mine.get(key) is not None and other.get(key):
                value = mine[key] / other[key]
        holds = None if value is None else (value >= bound if kind == "min" else value <= bound)
        checked.append({"target": what, "value": value, "bound": f"{'>=' if kind == 'min' else '<='} {bound}", "holds": holds})
    return checked


def plot(rows: list[dict], title: str, path: Path) -> None:
    plt = pyplot()
    panels = [("cross-entropy", "time_s", "ms, fwd+bwd", 1e3), ("linear-ce", "time_s", "ms, fwd+bwd", 1e3),
              ("adamw", "GB/s", "GB/s (7 accesses per element)", 1), ("train-step", "tokens/s", "tokens/s", 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    for ax, (group, key, label, scale) in zip(axes, panels):
        mine = [r for r in rows if r["group"] == group and r.get(key) is not None]
        ax.barh([r["name"].split(" ", 1)[1] for r in mine], [r[key] * scale for r in mine], color="tab:blue")
        ax.set_title(group)
        ax.set_xlabel(label)
        ax.tick_params(axis="y", labelsize=6)
    save_figure(fig, path, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print every case with its shapes and expected bytes/FLOPs")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: the machinery only (with --quick)")
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS), help="which groups to run")
    parser.add_argument("--wheels", help="a folder of wheels to install missing optional peers from (no network)")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON, CSV and PNG go")
    parser.add_argument("--run-group", choices=list(GROUPS), help=argparse.SUPPRESS)  # a group's own process
    args = parser.parse_args(argv)
    if args.run_group:
        print("@@ROWS@@" + json.dumps(run_group(args.run_group, args.device, args.quick)))
        return 0
    if args.dry_run:
        for case in cases(args.quick):
            shape = " ".join(f"{k}={case[k]}" for k in ("n", "h", "v", "numel", "tensors", "batch", "seq") if k in case)
            cost = (f"{case['bytes'] / 1e9:.3f} GB" if "bytes" in case else f"{case['flops'] / 1e12:.3f} TFLOP"
                    if "flops" in case else case["expected"])
            print(f"{case['group']:<14}{case['name']:<56}{shape:<32}{cost}")
        for what, *_, (kind, bound) in TARGETS:
            print(f"target: {what} {'>=' if kind == 'min' else '<='} {bound}")
        return 0
    problems, notes = preflight(args.device, args.wheels)
    for line in notes:
        print(f"note: {line}")
    if problems:
        for line in problems:
            print(f"gpu_suite: cannot run: {line}", file=sys.stderr)
        return 2
    print(f"{device_name(args.device)}; torch {torch.__version__}")
    rows = []
    for group in args.groups:
        command = [sys.executable, "-m", "benchmarks.gpu_suite", "--run-group", group, "--device", args.device]
        command += ["--quick"] if args.quick else []
        try:
            limit = GROUPS[group] * (1 if args.device == "cuda" else 4)  # the limits are a GPU's; a CPU is slower
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
            print(proc.stdout.split("@@ROWS@@")[0], end="", flush=True)
            found = json.loads(proc.stdout.split("@@ROWS@@")[1]) if "@@ROWS@@" in proc.stdout else []
            rows += found or [{"group": group, "name": group, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}]
        except subprocess.TimeoutExpired:
            rows.append({"group": group, "name": group, "error": f"timed out after {limit} s"})
            print(_format(rows[-1]), flush=True)
    targets = check_targets(rows)
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{'HOLDS' if t['holds'] else 'MISSED' if t['holds'] is False else 'N/A':<7}{t['target']}: {value} ({t['bound']})")
    name = f"gpu_suite_{device_slug(args.device)}" + ("_quick" if args.quick else "")
    meta = {"device": device_name(args.device), "torch": torch.__version__, "quick": args.quick, "targets": targets,
            "notes": notes}
    write_results(name, rows, meta, Path(args.out))
    plot(rows, f"{device_name(args.device)}: minift's GPU path", Path(args.out) / f"{name}.png")
    failed = [r["name"] for r in rows if "error" in r]
    print(f"wrote {args.out}/{name}.json, .csv, .png" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
