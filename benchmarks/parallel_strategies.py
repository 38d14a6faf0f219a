"""One rank's memory under each parallel strategy, predicted and measured on 2 CPU ranks, and the same
fine-tune trained under torchrun with DDP, ZeRO-1 (DDP + ZeroRedundancyOptimizer) and FSDP2.

    python -m benchmarks.parallel_strategies

Memory: `minift.memory.measure` (one process) and `minift.memory.measure_ranks` (2 ranks under torchrun,
each rank's peak resident memory under the tracking allocator) of one training step of the tiny preset
(AdamW, the fused loss, fp32, 2 rows of 64 tokens per rank), beside `minift.memory.predict`.
Fine-tuning: `torchrun --nproc_per_node 2 -m minift.cli finetune --task reviews --strategy S` on the
shipped tiny base with the default configuration (200 steps, global batch 16), its test accuracy and time.
Writes results/parallel_strategies_<device>.json and .csv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import device_name, device_slug, write_results
from minift.memory import RunSpec, measure, measure_ranks, model_config, predict

CASES = [("ddp", 1), ("ddp", 2), ("zero1", 2), ("zero2", 2), ("zero3", 2)]
FINETUNES = ("ddp", "zero1", "fsdp")


def memory_rows() -> list[dict]:
    rows = []
    for strategy, ranks in CASES:
        spec = RunSpec(model_config("tiny-m"), optimizer="adamw", loss="fused", strategy=strategy, ranks=ranks,
                       batch_size=2, seq_len=64)
        prediction = predict(spec)
        measured = measure_ranks(spec) if ranks > 1 else measure(spec)
        peaks = [r["peak"] for r in measured["ranks"]] if ranks > 1 else [measured["peak"]]
        rows.append({"kind": "memory", "strategy": strategy, "ranks": ranks, "predicted_peak": prediction.peak.total,
                     "measured_peak_by_rank": peaks, "measured_peak": max(peaks),
                     "error_percent": 100 * (prediction.peak.total - max(peaks)) / max(peaks),
                     "predicted_sizes": prediction.sizes})
        print(f"{strategy} x{ranks}: predicted {prediction.peak.total / 2**20:.2f} MiB, measured "
              f"{', '.join(f'{p / 2**20:.2f}' for p in peaks)} MiB")
    return rows


def finetune_rows() -> list[dict]:
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for strategy in FINETUNES:
        out = Path(tempfile.mkdtemp(prefix=f"minift-{strategy}-"))
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "minift.cli",
                        "finetune", "--task", "reviews", "--strategy", strategy, "--out", str(out), "--overwrite",
                        "--no-progress"], check=True, env=env, capture_output=True)
        record = json.loads((out / "result.json").read_text())
        rows.append({"kind": "finetune", "strategy": strategy, "ranks": 2, "test_accuracy": record["test_accuracy"],
                     "n_test": record["n_test"], "val_accuracy": record["val_accuracy"], "steps": record["steps"],
                     "train_time_s": record["train_time_s"]})
        print(f"finetune {strategy} x2: test accuracy {record['test_accuracy']:.3f} of {record['n_test']}, "
              f"{record['train_time_s']:.0f} s")
    return rows


def main() -> None:
    rows = memory_rows() + finetune_rows()
    meta = {"device": device_name(), "command": "python -m benchmarks.parallel_strategies",
            "note": "2 ranks share the machine's cores; times are of a loaded machine"}
    paths = write_results(f"parallel_strategies_{device_slug()}", rows, meta)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
