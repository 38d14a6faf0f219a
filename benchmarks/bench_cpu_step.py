"""Benchmark one CPU training step: minift against transformers + peft, in tokens per second.

    python -m benchmarks.bench_cpu_step                     # GPT-2 small, 4 x 256 tokens, fp32, 2 rounds
    python -m benchmarks.bench_cpu_step --rounds 3 --steps 3
    python -m benchmarks.bench_cpu_step --profile           # torch.profiler's top ops of one step of each

The step is the one the memory benchmark measures (minift.memory.run_step over
minift.memory.build_minift_step and benchmarks.memory_vs_params.build_peer_step): forward and the
cross-entropy of every next token, backward, the gradient clipped to norm 1, an AdamW step,
zero_grad. Both libraries train GPT-2 small with random weights (speed does not depend on the
values), no dropout, on 4 x 256 random token ids, fp32:

- minift: `GPT`, `CompletionLoss` with the loss and `build_optimizer` with the optimizer "auto" means
  on a CPU (minift.training's `default_loss`, `default_optimizer`), `apply_peft(LoraConfig())`;
- the peer: `transformers.GPT2LMHeadModel(..., labels=ids)` (SDPA attention, its mean cross-entropy),
  peft's `get_peft_model` with the same adapter (r = 8, alpha = 16, c_attn), torch.optim.AdamW with
  the same two groups.

Cases: full fine-tuning and LoRA r = 8, at the default thread count and at 1 thread. Every
measurement runs in a fresh process (minift.memory.measure_in_subprocess): a warm-up step, then
`--steps` timed steps, their median. The two libraries alternate case by case and swap their order
every round, so load from other processes on the machine falls on both alike; a case's figure is
the median over rounds. tokens/s = batch * seq_len / (seconds per step); ratio = minift / peer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import RESULTS, device_name, device_slug, write_results
from benchmarks.memory_vs_params import build_peer_step
from minift._plots import pyplot, save_figure
from minift.memory import RunSpec, build_minift_step, measure_in_subprocess
from minift.memory.step import run_step
from minift.model import GPTConfig
from minift.peft import LoraConfig
from minift.training import default_loss, default_optimizer

LIBRARIES = ("minift", "peer")
METHODS = {"full": None, "lora": LoraConfig()}  # LoRA: minift's default adapter, r = 8, alpha = 16 on c_attn
BUILDERS = {"minift": build_minift_step, "peer": build_peer_step}


def step_spec(method: str, model: GPTConfig | None = None, batch: int = 4, seq_len: int = 256) -> RunSpec:
    """The step measured: GPT-2 small (random weights, no dropout) on batch x seq_len tokens, every next
    token scored, with the loss and optimizer "auto" means on a CPU."""
    return RunSpec(model=model or GPTConfig.from_name("gpt2"), peft=METHODS[method], optimizer=default_optimizer("cpu"),
                   loss=default_loss("cpu"), batch_size=batch, seq_len=seq_len)


def measure(library: str, spec: dict, threads: int | None, steps: int) -> dict:
    """Run in a fresh process: a warm-up step, then `steps` timed steps; seconds per step (median) and tokens/s."""
    if threads is not None:
        torch.set_num_threads(threads)
    run = RunSpec.from_dict(spec)
    parts = BUILDERS[library](run)
    run_step(parts)  # warm-up: the optimizer's state, the allocator's and MKL's first-call set-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step(parts)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"threads": torch.get_num_threads(), "seconds_per_step": seconds, "step_times_s": times,
            "tokens_per_s": run.batch_size * run.seq_len / seconds}


def run(specs: dict[str, RunSpec], thread_counts: tuple, rounds: int, steps: int, measure_one=None) -> list[dict]:
    """Every (method, threads) case, each library in a fresh process, alternating; one row per case.

    `specs` maps each method to its step; `measure_one(library, spec_dict, threads, steps)` defaults
    to `measure` in a subprocess.
    """
    measure_one = measure_one or _in_subprocess
    samples: dict[tuple, list[dict]] = {}
    for r in range(rounds):
        for threads in thread_counts:
            for method, spec in specs.items():
                for library in LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]:
                    result = measure_one(library, spec.to_dict(), threads, steps)
                    samples.setdefault((method, threads, library), []).append(result)
                    print(f"round {r + 1}: {method:4s} {result['threads']} thread(s) {library:6s} "
                          f"{result['tokens_per_s']:8.1f} tokens/s", flush=True)
    rows = []
    for threads in thread_counts:
        for method in specs:
            row = {"method": method, "threads": samples[(method, threads, LIBRARIES[0])][0]["threads"]}
            for library in LIBRARIES:
                runs = [s["tokens_per_s"] for s in samples[(method, threads, library)]]
                row[f"{library}_tokens_per_s"] = round(statistics.median(runs), 1)
                row[f"{library}_runs"] = " ".join(f"{t:.1f}" for t in runs)
            row["ratio"] = round(row["minift_tokens_per_s"] / row["peer_tokens_per_s"], 3)
            rows.append(row)
    return rows


def _in_subprocess(library: str, spec: dict, threads: int | None, steps: int) -> dict:
    kwargs = {"library": library, "spec": spec, "threads": threads, "steps": steps}
    # glibc's default malloc (not the memory benchmarks' tracking setting): time, not bytes, is measured;
    # TRITON_INTERPRET=0: a CPU step runs the kernels' PyTorch reference, as a user's run does
    return measure_in_subprocess("benchmarks.bench_cpu_step", "measure", kwargs, malloc_env={"TRITON_INTERPRET": "0"})


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':6s} {'threads':>7s} {'minift tok/s':>13s} {'peer tok/s':>11s} {'ratio':>6s}"]
    for r in rows:
        lines.append(f"{r['method']:6s} {r['threads']:>7d} {r['minift_tokens_per_s']:13.1f} "
                     f"{r['peer_tokens_per_s']:11.1f} {r['ratio']:6.2f}")
    return "\n".join(lines)


def plot(rows: list[dict], title: str, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, library in enumerate(LIBRARIES):
        xs = [j + (i - 0.5) * 0.4 for j in range(len(rows))]
        label = "transformers + peft" if library == "peer" else library
        ax.bar(xs, [r[f"{library}_tokens_per_s"] for r in rows], 0.4, label=label)
    for j, r in enumerate(rows):
        top = max(r["minift_tokens_per_s"], r["peer_tokens_per_s"])
        ax.annotate(f"{r['ratio']:.2f}x", (j, top), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{r['method']}, {r['threads']} thread(s)" for r in rows])
    ax.set_ylabel("tokens / s, one training step")
    ax.legend(fontsize=8)
    save_figure(fig, path, title=title)


def profile(library: str, spec: RunSpec, rows: int = 15) -> str:
    """torch.profiler's table of the ops of one step (after a warm-up step), by self CPU time."""
    parts = BUILDERS[library](spec)
    run_step(parts)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_step(parts)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="processes per library and case (median)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process after the warm-up")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one step instead")
    args = parser.parse_args()
    specs = {method: step_spec(method) for method in METHODS}
    if args.profile:
        for method, spec in specs.items():
            for library in LIBRARIES:
                print(f"--- {library}, {method}, {torch.get_num_threads()} threads\n{profile(library, spec)}")
        return
    spec = specs["full"]
    title = f"{device_name('cpu')}: one fp32 training step, GPT-2 small, {spec.batch_size} x {spec.seq_len} tokens"
    print(title)
    rows = run(specs, (None, 1), args.rounds, args.steps)
    print(format_table(rows))
    name = f"bench_cpu_step_{device_slug('cpu')}"
    meta = {"device": device_name("cpu"), "torch": torch.__version__, "batch": spec.batch_size, "seq_len": spec.seq_len,
            "loss": spec.loss, "optimizer": spec.optimizer, "rounds": args.rounds, "steps": args.steps,
            "order": "libraries alternated in fresh processes, their order swapped every round"}
    json_path, csv_path = write_results(name, rows, meta)
    png_path = RESULTS / f"{name}.png"
    plot(rows, title, png_path)
    print(f"wrote {json_path}, {csv_path}, {png_path}")


if __name__ == "__main__":
    main()
