"""What quantisation costs in accuracy: QLoRA against LoRA, 8-bit AdamW against AdamW, over seeds.

    python -m benchmarks.quantization_accuracy                       # qa, 30 steps, seeds 0 1 2
    python -m benchmarks.quantization_accuracy --task arithmetic --steps 200 --seeds 0 1 2 3 4

Four cases fine-tune the shipped tiny base model on one built-in task with `minift.finetune`, each
case paired with the one it is compared against, alike in everything else (task, split, steps,
learning rate, seed):

- LoRA (r = 8, alpha = 16 on c_attn, fp32 base) and QLoRA (the same adapter on the NF4 base);
- full fine-tuning with AdamW and with 8-bit AdamW (block-wise quantised moments).

The seed sets the split, the data order and the initialisation, so the spread over seeds is the noise
a student sees when rerunning. Runs alternate case by case within a seed. For each case: the mean and
the sample standard deviation over seeds of the test accuracy and test loss. Each claim compares one
pair: the difference of means d with its standard error se = sqrt(s1^2/n1 + s2^2/n2) (Welch), and
"holds" when |d| <= 2 se, i.e. the seeds cannot tell the two apart at about 95%.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, device_name, device_slug
from minift._files import write_table
from minift.recipes import FinetuneConfig, default_train_config, finetune

# case name -> (method, optimizer); "auto" is the optimizer minift picks for the device
CASES = {
    "LoRA": ("lora", "auto"),
    "QLoRA": ("qlora", "auto"),
    "full, AdamW": ("full", "adamw"),
    "full, 8-bit AdamW": ("full", "adamw8bit"),
}
# (quantised case, its reference): the pairs the claims compare
PAIRS = (("QLoRA", "LoRA"), ("full, 8-bit AdamW", "full, AdamW"))
METRICS = ("test_accuracy", "test_loss")


def run_case(case: str, task: str, seed: int, steps: int, out_dir: Path, n_train: int | None = None,
             n_test: int | None = None) -> dict:
    """One fine-tuning run of `case`; its test accuracy and loss."""
    method, optimizer = CASES[case]
    train = default_train_config(method, out_dir=str(out_dir), seed=seed, max_steps=steps, optimizer=optimizer,
                                 eval_every=steps, warmup_steps=min(20, steps // 2), progress=False)
    record = finetune(FinetuneConfig(task=task, method=method, seed=seed, n_train=n_train, n_test=n_test, train=train))
    test = record["tests"][record["task"]]
    return {"case": case, "method": method, "optimizer": optimizer, "seed": seed, "steps": record["steps"],
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "n_test": test["n"],
            "time_per_step_s": record["time_per_step_s"]}


def summarize(rows: list[dict]) -> dict:
    """Per case and metric: mean, sample standard deviation over seeds, and n."""
    out = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        runs = [r for r in rows if r["case"] == case]
        out[case] = {"n": len(runs)}
        for m in METRICS:
            values = [r[m] for r in runs]
            out[case][m] = {"mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else float("nan")}
    return out


def claims(summary: dict) -> list[dict]:
    """For each pair and metric: the difference of means, its Welch standard error, and whether |d| <= 2 se."""
    out = []
    for quantised, reference in PAIRS:
        if quantised not in summary or reference not in summary:
            continue
        q, r = summary[quantised], summary[reference]
        for m in METRICS:
            diff = q[m]["mean"] - r[m]["mean"]
            se = math.sqrt(q[m]["std"] ** 2 / q["n"] + r[m]["std"] ** 2 / r["n"])
            out.append({"name": f"{quantised} vs {reference}: {m}",
                        "statement": f"{quantised}'s mean {m.replace('_', ' ')} is within 2 standard errors of {reference}'s",
                        "value": diff, "stderr": se, "holds": abs(diff) <= 2 * se})
    return out


def benchmark(task: str, seeds: list[int], steps: int, work: Path, n_train: int | None = None,
              n_test: int | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Every case at every seed (cases alternating within a seed); the runs, their summary and the claims."""
    rows = []
    for seed in seeds:
        for i, case in enumerate(CASES):
            rows.append(run_case(case, task, seed, steps, work / f"seed{seed}-{i}", n_train, n_test))
            print(f"seed {seed} {case:<18} test accuracy {rows[-1]['test_accuracy']:.4f}  loss {rows[-1]['test_loss']:.4f}",
                  flush=True)
    summary = summarize(rows)
    return rows, summary, claims(summary)


def format_table(summary: dict, found: list[dict]) -> str:
    """The summary and the claims as text."""
    lines = [f"{'case':<18} {'n':>2} {'test accuracy':>18} {'test loss':>18}"]
    for case, s in summary.items():
        acc, loss = s["test_accuracy"], s["test_loss"]
        lines.append(f"{case:<18} {s['n']:>2} {acc['mean']:>9.4f} ± {acc['std']:.4f} {loss['mean']:>9.4f} ± {loss['std']:.4f}")
    for c in found:
        lines.append(f"{c['name']}: d = {c['value']:+.4f} ± {c['stderr']:.4f} (se) -> within 2 se: {c['holds']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="qa")
    p.add_argument("--steps", type=int, default=30, help="the same fixed budget for every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-train", type=int, help="None: the task's default (800)")
    p.add_argument("--n-test", type=int, help="None: the task's default (400)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows, summary, found = benchmark(args.task, args.seeds, args.steps, Path(tmp), args.n_train, args.n_test)
    print(format_table(summary, found))
    meta = {"device": device_name(), "task": args.task, "steps": args.steps, "seeds": args.seeds,
            "command": f"python -m benchmarks.quantization_accuracy --task {args.task} --steps {args.steps} "
                       f"--seeds {' '.join(map(str, args.seeds))}"
                       + (f" --n-train {args.n_train}" if args.n_train else "") + (f" --n-test {args.n_test}" if args.n_test else "")}
    write_table(args.out, f"quantization_accuracy_{device_slug()}", rows, {"meta": meta, "summary": summary, "claims": found})

if __name__ == "__main__":
    main()
