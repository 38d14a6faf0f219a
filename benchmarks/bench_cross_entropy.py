"""Benchmark the fused cross-entropy and fused linear+cross-entropy against PyTorch (and Liger).

    python -m benchmarks.bench_cross_entropy            # 8192 tokens x 768 hidden x 50257 vocab
    python -m benchmarks.bench_cross_entropy --quick    # 2048 x 256 x 8192, for a quick look
    python -m benchmarks.bench_cross_entropy --runs 3   # fresh processes per variant (CPU), medians

Every measurement is one forward + backward (`loss.backward()`), the way a training step uses it.

Variants. cross_entropy on given logits: torch eager (F.cross_entropy), minift, Liger (CUDA).
linear_cross_entropy: torch eager (F.linear then F.cross_entropy, logits materialised),
F.linear_cross_entropy (options=None, its reference path), F.linear_cross_entropy with
options=LinearCrossEntropyOptions() (PyTorch's chunked path), minift, Liger (CUDA).

GPU: time by triton.testing.do_bench (median, 20th and 80th percentiles, ms); peak memory is
torch.cuda.max_memory_allocated after reset_peak_memory_stats, above the inputs. CPU: each variant
runs in a fresh process (minift.memory.measure_in_subprocess); its peak resident memory above the
inputs is taken on the first forward + backward, its time is the median of `--repeats` more.
Gradients that stay in .grad count in the peak: every variant has to produce them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, device_name, device_slug, peak_bandwidth, write_results
from minift.kernels import cross_entropy, linear_cross_entropy
from minift.memory import measure_in_subprocess, peak_rss_bytes, reset_peak_rss, rss_bytes
from minift._plots import pyplot, save_figure

FULL = {"n": 8192, "h": 768, "v": 50257}  # GPT-2 small's head over 8 sequences of 1024 tokens
QUICK = {"n": 2048, "h": 256, "v": 8192}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _liger(device: str) -> dict:
    """Liger-Kernel's two ops by our op names, where it is installed and can run (CUDA only)."""
    if device != "cuda":
        return {}
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy
    except ImportError:
        return {}
    return {"cross_entropy": liger_cross_entropy, "linear_cross_entropy": liger_fused_linear_cross_entropy}


def cross_entropy_variants(device: str) -> dict:
    """name -> fn(logits, labels) returning the loss."""
    variants = {
        "torch eager": lambda x, y: F.cross_entropy(x, y),
        "minift": lambda x, y: cross_entropy(x, y),
    }
    if liger := _liger(device).get("cross_entropy"):
        variants["liger"] = liger
    return variants


def linear_cross_entropy_variants(device: str) -> dict:
    """name -> fn(hidden, weight, labels) returning the loss."""
    variants = {
        "torch eager": lambda h, w, y: F.cross_entropy(F.linear(h, w), y),
        "torch linear_ce": lambda h, w, y: F.linear_cross_entropy(h, w, y),
        "torch linear_ce chunked": lambda h, w, y: F.linear_cross_entropy(
            h, w, y, options=torch.nn.LinearCrossEntropyOptions()
        ),
        "minift": lambda h, w, y: linear_cross_entropy(h, w, y),
    }
    if liger := _liger(device).get("linear_cross_entropy"):
        variants["liger"] = liger
    return variants


def ignored_rows(n: int) -> int:
    """Rows of `make_inputs` whose label is ignore_index: the first quarter."""
    return n // 4


def cross_entropy_bytes(n: int, v: int, itemsize: int, n_ignored: int) -> int:
    """The memory traffic of minift's cross-entropy kernel: a scored row reads its logits twice (the log-sum-exp
    pass, the gradient pass) and writes the gradient once; an ignored row only writes its zero gradient."""
    return (3 * (n - n_ignored) + n_ignored) * v * itemsize


def make_inputs(op: str, n: int, h: int, v: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """Seeded inputs; the float ones require grad (the head is trained, as with a tied embedding)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=gen).to(device)
    labels[: ignored_rows(n)] = -100  # a prompt-masked quarter, as in instruction tuning
    if op == "cross_entropy":
        logits = torch.randn(n, v, generator=gen).to(device, dtype).requires_grad_()
        return [logits, labels]
    hidden = torch.randn(n, h, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.02).to(device, dtype).requires_grad_()  # GPT-2's init std
    return [hidden, weight, labels]


def _variants(op: str, device: str) -> dict:
    return cross_entropy_variants(device) if op == "cross_entropy" else linear_cross_entropy_variants(device)


def _step(fn, inputs: list[torch.Tensor]) -> None:
    for t in inputs:
        t.grad = None
    fn(*inputs).backward()


def measure_cpu(op: str, variant: str, n: int, h: int, v: int, dtype: str, repeats: int) -> dict:
    """Run in a fresh process: peak RSS above the inputs of the first step, median time of `repeats` more."""
    torch.manual_seed(0)
    fn = _variants(op, "cpu")[variant]
    _step(fn, make_inputs(op, 64, 16, 128, DTYPES[dtype], "cpu"))  # load the math libraries' code and pools
    inputs = make_inputs(op, n, h, v, DTYPES[dtype], "cpu")
    baseline = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    _step(fn, inputs)
    first = time.perf_counter() - start
    peak = peak_rss_bytes() - baseline
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        _step(fn, inputs)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)  # all threads' CPU time: less hurt by other jobs
    return {
        "peak_bytes": peak,
        "time_s": statistics.median(times) if times else first,
        "cpu_s": statistics.median(cpu_times) if cpu_times else None,
        "first_s": first,
    }


def measure_gpu(op: str, variant: str, n: int, h: int, v: int, dtype: str) -> dict:
    """Time with do_bench (ms quantiles) and the CUDA allocator's peak above the inputs."""
    from triton.testing import do_bench

    fn = _variants(op, "cuda")[variant]
    inputs = make_inputs(op, n, h, v, DTYPES[dtype], "cuda")
    grads = [t for t in inputs if t.is_floating_point()]
    ms, ms_p20, ms_p80 = do_bench(lambda: fn(*inputs).backward(), quantiles=[0.5, 0.2, 0.8], grad_to_none=grads)
    for t in grads:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    _step(fn, inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    return {"peak_bytes": peak, "time_s": ms / 1e3, "time_p20_s": ms_p20 / 1e3, "time_p80_s": ms_p80 / 1e3}


def throughput(op: str, n: int, h: int, v: int, dtype: str, seconds: float, device: str) -> dict:
    """Achieved rates. cross_entropy: GB/s = `cross_entropy_bytes` / t, the traffic of our two-pass kernel
    on `make_inputs`' labels, as a fraction of the device's peak. linear_cross_entropy: TFLOP/s =
    6 * N * H * V / t (logits, grad_hidden and grad_weight GEMMs)."""
    if op == "cross_entropy":
        gbps = cross_entropy_bytes(n, v, DTYPES[dtype].itemsize, ignored_rows(n)) / seconds / 1e9
        peak = peak_bandwidth(device)
        return {"GB/s": round(gbps, 1), "of_peak_bw": round(gbps * 1e9 / peak, 3) if peak else None}
    return {"TFLOP/s": round(6 * n * h * v / seconds / 1e12, 3)}


def measure_cpu_runs(op: str, size: dict, dtype: str, runs: int, repeats: int) -> dict:
    """variant -> medians over `runs` fresh processes. The variants take turns (A B C, A B C, ...)
    so that a burst of load from elsewhere on a shared machine spreads over all of them."""
    results = {variant: [] for variant in _variants(op, "cpu")}
    for _ in range(runs):
        for variant, found in results.items():
            kwargs = {"op": op, "variant": variant, **size, "dtype": dtype, "repeats": repeats}
            found.append(measure_in_subprocess("benchmarks.bench_cross_entropy", "measure_cpu", kwargs))
    return {
        variant: {
            "peak_bytes": statistics.median(r["peak_bytes"] for r in found),
            "time_s": statistics.median(r["time_s"] for r in found),
            "times_s": [round(r["time_s"], 2) for r in found],
            "cpu_s": statistics.median(r["cpu_s"] for r in found) if repeats else None,
        }
        for variant, found in results.items()
    }


def run(size: dict, dtype: str, device: str, runs: int, repeats: int) -> list[dict]:
    rows = []
    n, h, v = size["n"], size["h"], size["v"]
    logits_bytes = n * v * DTYPES[dtype].itemsize
    for op in ("cross_entropy", "linear_cross_entropy"):
        if device == "cuda":
            results = {variant: measure_gpu(op, variant, n, h, v, dtype) for variant in _variants(op, device)}
        else:
            results = measure_cpu_runs(op, size, dtype, runs, repeats)
        for variant, result in results.items():
            row = {"op": op, "variant": variant, "n": n, "h": h, "v": v, "dtype": dtype, **result}
            row["peak_MB"] = round(result["peak_bytes"] / 1e6, 1)
            row["peak_x_logits"] = round(result["peak_bytes"] / logits_bytes, 3)
            row.update(throughput(op, n, h, v, dtype, result["time_s"], device))
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    rate = f"{row['GB/s']:8.1f} GB/s" if "GB/s" in row else f"{row['TFLOP/s']:7.3f} TFLOP/s"
    peak_bw = f"  {row['of_peak_bw']:.0%} of peak" if row.get("of_peak_bw") else ""
    cpu = f"  (CPU time {row['cpu_s']:.1f} s)" if row.get("cpu_s") else ""
    return (
        f"{row['op']:22s} {row['variant']:25s} {row['time_s'] * 1e3:10.1f} ms {row['peak_MB']:10.1f} MB "
        f"{row['peak_x_logits']:7.3f}x logits {rate}{peak_bw}{cpu}"
    )


def compare(rows: list[dict], ours: str = "minift", theirs: str = "torch linear_ce chunked") -> dict:
    """Our linear cross-entropy over PyTorch's chunked one: peak memory and time ratios (target <= 0.8, <= 1)."""
    found = {r["variant"]: r for r in rows if r["op"] == "linear_cross_entropy"}
    ratios = {"peak": found[ours]["peak_bytes"] / found[theirs]["peak_bytes"]}
    ratios["time"] = found[ours]["time_s"] / found[theirs]["time_s"]
    if found[ours].get("cpu_s") and found[theirs].get("cpu_s"):
        ratios["cpu_time"] = found[ours]["cpu_s"] / found[theirs]["cpu_s"]
    print(f"linear_cross_entropy, {ours} / {theirs}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return {k: round(v, 3) for k, v in ratios.items()}


def plot(rows: list[dict], title: str, path) -> None:
    plt = pyplot()
    ops = list(dict.fromkeys(r["op"] for r in rows))
    fig, axes = plt.subplots(2, len(ops), figsize=(6 * len(ops), 7), squeeze=False)
    for col, op in enumerate(ops):
        mine = [r for r in rows if r["op"] == op]
        names = [r["variant"].replace(" ", "\n", 1) for r in mine]
        axes[0][col].bar(names, [r["time_s"] * 1e3 for r in mine], color="tab:blue")
        axes[0][col].set_title(f"{op}: time, forward + backward")
        axes[0][col].set_ylabel("ms")
        axes[1][col].bar(names, [r["peak_MB"] for r in mine], color="tab:orange")
        axes[1][col].set_title(f"{op}: peak memory above inputs")
        axes[1][col].set_ylabel("MB")
        for ax in (axes[0][col], axes[1][col]):
            ax.tick_params(axis="x", labelsize=8)
    save_figure(fig, path, title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small size {QUICK} instead of {FULL}")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--runs", type=int, default=1, help="CPU: fresh processes per variant (medians)")
    parser.add_argument("--repeats", type=int, default=2, help="CPU: timed steps per process after the first")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    size = QUICK if args.quick else FULL
    print(f"{device_name(device)}; N={size['n']} H={size['h']} V={size['v']} {dtype}; forward + backward")
    rows = run(size, dtype, device, args.runs, args.repeats)
    name = f"bench_cross_entropy_{device_slug(device)}" + ("_quick" if args.quick else "")
    meta = {"device": device_name(device), "torch": torch.__version__, **size, "dtype": dtype,
            "runs": args.runs, "repeats": args.repeats, "minift_over_torch_chunked": compare(rows)}
    json_path, csv_path = write_results(name, rows, meta)
    png_path = RESULTS / f"{name}.png"
    plot(rows, f"{device_name(device)}, N={size['n']} H={size['h']} V={size['v']} {dtype}", png_path)
    print(f"wrote {json_path}, {csv_path}, {png_path}")


if __name__ == "__main__":
    main()
