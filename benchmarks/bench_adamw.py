"""Benchmark one AdamW step: minift's FusedAdamW against torch.optim.AdamW (foreach and fused).

    python -m benchmarks.bench_adamw                                   # flat 64M (GPU) / 16M (CPU), GPT-2 small
    python -m benchmarks.bench_adamw --flat-numel 4194304 --gpt2-layers 2   # a smaller CPU run

Cases, fp32: "flat", one tensor of --flat-numel elements; "gpt2", GPT-2 small's 148 parameter
tensors (124,439,808 elements; --gpt2-layers keeps fewer of its 12 blocks), in two groups as GPT
training uses them (weight decay on matrices only). Every gradient is set once and kept, so a
measurement is the optimizer step alone.

Variants: minift FusedAdamW (the Triton kernel on GPU, the PyTorch reference on CPU), torch AdamW
foreach=True, torch AdamW fused=True.

GPU: time by triton.testing.do_bench (median, 20th and 80th percentiles); peak memory is
torch.cuda.max_memory_allocated after reset_peak_memory_stats, above parameters, gradients and
optimizer state (a warm-up step creates the state first). CPU: each variant runs in fresh
processes (minift.memory.measure_in_subprocess): peak resident memory above the same baseline on
one step, with the malloc setting that makes RSS track live memory; time, the median of --repeats
steps, in a second process with glibc's default malloc, since that setting returns every freed
temporary to the OS and charges each step the page faults of re-allocating it.

GB/s is effective bandwidth: BYTES_PER_ELEMENT (28 B: read p, g, m, v; write p, m, v in fp32, the
least any AdamW step can move, and what FusedAdamW moves) * elements / time, for every variant.
torch's foreach path really moves ~80 B per element, so its effective rate is below its achieved one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import RESULTS, device_name, device_slug, peak_bandwidth, write_results
from minift.kernels import FusedAdamW
from minift.memory import measure_in_subprocess, peak_rss_bytes, reset_peak_rss, rss_bytes
from minift._plots import pyplot, save_figure

BYTES_PER_ELEMENT = 4 * 4 + 3 * 4  # fp32: read p, g, m, v (16 B), write p, m, v (12 B)
# "minift" runs the Triton kernel on a GPU and the PyTorch reference on a CPU (kernels/_backend.py).
VARIANTS = ("minift", "torch foreach", "torch fused")
HYPER = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)  # GPT-2-style settings; speed does not depend on them


def gpt2_shapes(n_layer: int = 12, n_embd: int = 768, vocab_size: int = 50257, block_size: int = 1024) -> list[tuple]:
    """GPT-2 small's parameter shapes (Hugging Face's Conv1D layout: (in, out)); lm_head is tied to wte."""
    shapes = [(vocab_size, n_embd), (block_size, n_embd)]  # wte, wpe
    for _ in range(n_layer):
        shapes += [(n_embd,), (n_embd,)]  # ln_1 weight, bias
        shapes += [(n_embd, 3 * n_embd), (3 * n_embd,)]  # attn.c_attn
        shapes += [(n_embd, n_embd), (n_embd,)]  # attn.c_proj
        shapes += [(n_embd,), (n_embd,)]  # ln_2
        shapes += [(n_embd, 4 * n_embd), (4 * n_embd,)]  # mlp.c_fc
        shapes += [(4 * n_embd, n_embd), (n_embd,)]  # mlp.c_proj
    return shapes + [(n_embd,), (n_embd,)]  # ln_f


def make_step(variant: str, shapes: list[tuple], device: str, dtype: torch.dtype = torch.float32):
    """Parameters with gradients and an optimizer over them; returns its `step`."""
    torch.manual_seed(0)
    params = [torch.randn(s, device=device, dtype=dtype).mul_(0.02).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p).mul_(1e-3)
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if variant == "minift":
        opt = FusedAdamW(groups, **HYPER)
    else:
        opt = torch.optim.AdamW(groups, **HYPER, **{variant.removeprefix("torch "): True})
    opt.step()  # creates exp_avg and exp_avg_sq: measurements see only the step itself
    return opt.step


def measure_cpu(variant: str, shapes: list[list[int]], repeats: int) -> dict:
    """Run in a fresh process: peak RSS above parameters, gradients and state on one step, median time of more."""
    step = make_step(variant, [tuple(s) for s in shapes], "cpu")
    baseline = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = peak_rss_bytes() - baseline
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "time_s": statistics.median(times) if times else first}


def measure_gpu(variant: str, shapes: list[tuple]) -> dict:
    """Time with do_bench (ms quantiles) and the CUDA allocator's peak above parameters, gradients and state."""
    from triton.testing import do_bench

    step = make_step(variant, shapes, "cuda")
    ms, ms_p20, ms_p80 = do_bench(step, quantiles=[0.5, 0.2, 0.8])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    return {"peak_bytes": peak, "time_s": ms / 1e3, "time_p20_s": ms_p20 / 1e3, "time_p80_s": ms_p80 / 1e3}


def run(cases: dict, device: str, runs: int, repeats: int) -> list[dict]:
    rows = []
    peak_bw = peak_bandwidth(device)
    for case, shapes in cases.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        for variant in VARIANTS:
            if device == "cuda":
                result = measure_gpu(variant, shapes)
                torch.cuda.empty_cache()  # the next variant allocates its own 2 GB of tensors
            else:
                kwargs = {"variant": variant, "shapes": [list(s) for s in shapes]}
                memory = measure_in_subprocess("benchmarks.bench_adamw", "measure_cpu", {**kwargs, "repeats": 0})
                times = [
                    measure_in_subprocess("benchmarks.bench_adamw", "measure_cpu", {**kwargs, "repeats": repeats}, malloc_env={})
                    for _ in range(runs)
                ]
                result = {"peak_bytes": memory["peak_bytes"], "time_s": statistics.median(r["time_s"] for r in times)}
            gbps = BYTES_PER_ELEMENT * numel / result["time_s"] / 1e9
            row = {"case": case, "variant": variant, "numel": numel, "tensors": len(shapes), **result}
            row["GB/s"] = round(gbps, 1)
            row["of_peak_bw"] = round(gbps * 1e9 / peak_bw, 3) if peak_bw else None
            row["peak_MB"] = round(result["peak_bytes"] / 1e6, 1)
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    spread = f" [{row['time_p20_s'] * 1e3:.3f}, {row['time_p80_s'] * 1e3:.3f}]" if "time_p20_s" in row else ""
    of_peak = f"  {row['of_peak_bw']:.0%} of peak" if row["of_peak_bw"] else ""
    return (
        f"{row['case']:5s} {row['numel']:>11,d} el {row['tensors']:>4d} tensors  {row['variant']:14s}"
        f"{row['time_s'] * 1e3:10.3f} ms{spread} {row['GB/s']:8.1f} GB/s{of_peak} {row['peak_MB']:9.1f} MB peak"
    )


def plot(rows: list[dict], title: str, peak_bw: float | None, path) -> None:
    plt = pyplot()
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        mine = [next(r for r in rows if r["case"] == c and r["variant"] == variant) for c in cases]
        xs = [j + (i - (len(VARIANTS) - 1) / 2) * width for j in range(len(cases))]
        for ax, key, scale in zip(axes, ("time_s", "GB/s", "peak_MB"), (1e3, 1, 1)):
            ax.bar(xs, [r[key] * scale for r in mine], width, label=variant)
    for ax, label in zip(axes, ("ms per step", "effective GB/s (28 B per element)", "MB above params, grads, state")):
        ax.set_xticks(range(len(cases)), cases)
        ax.set_ylabel(label)
    if peak_bw:
        axes[1].axhline(peak_bw / 1e9, color="black", linestyle="--", label="peak bandwidth")
    axes[1].legend(fontsize=8)
    save_figure(fig, path, title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flat-numel", type=int, help="elements of the flat case; default 2**26 on GPU, 2**24 on CPU")
    parser.add_argument("--gpt2-layers", type=int, default=12, help="GPT-2 blocks kept in the gpt2 case (12: GPT-2 small)")
    parser.add_argument("--runs", type=int, default=1, help="CPU: timing processes per variant (median)")
    parser.add_argument("--repeats", type=int, default=3, help="CPU: timed steps per process after the first")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    flat_numel = args.flat_numel or (2**26 if device == "cuda" else 2**24)
    cases = {"flat": [(flat_numel,)], "gpt2": gpt2_shapes(n_layer=args.gpt2_layers)}
    minift = "Triton kernel" if device == "cuda" else "PyTorch reference"
    print(f"{device_name(device)}; one fp32 AdamW step; flat {flat_numel:,d} elements, "
          f"GPT-2 with {args.gpt2_layers} layers; minift = FusedAdamW's {minift}")
    rows = run(cases, device, args.runs, args.repeats)
    name = f"bench_adamw_{device_slug(device)}"
    if args.flat_numel or args.gpt2_layers != 12:
        name += f"_flat{flat_numel}_layers{args.gpt2_layers}"
    meta = {"device": device_name(device), "torch": torch.__version__, "minift": minift, "flat_numel": flat_numel,
            "gpt2_layers": args.gpt2_layers, "bytes_per_element": BYTES_PER_ELEMENT, "runs": args.runs,
            "repeats": args.repeats}
    json_path, csv_path = write_results(name, rows, meta)
    png_path = RESULTS / f"{name}.png"
    plot(rows, f"{device_name(device)}: one fp32 AdamW step (minift = {minift})", peak_bandwidth(device), png_path)
    print(f"wrote {json_path}, {csv_path}, {png_path}")


if __name__ == "__main__":
    main()
