"""Full fine-tuning against PEFT on one task, side by side: `minift compare`, the README's first command.

    rows = compare(CompareConfig(task="arithmetic", methods=("full", "lora", "prompt-tuning")))

For each method it fine-tunes the same base model on the same split (`minift.recipes.finetuning`), then sets
what the method costs beside what it buys:

    trainable parameters and their share       what the optimizer updates
    artefact bytes                              what you ship: a whole model, or only an adapter
    predicted and measured peak of one step     `minift.memory.predict` (with the BLAS workspace of
                                                `minift.memory.measure_gemm_workspace`) and
                                                `minift.memory.measure` (a fresh process), at the
                                                run's batch and longest row
    time per optimizer step                     from the training loop
    validation and test accuracy                exact match, teacher-forced (`minift.evaluation`)

A first row gives the floor: the base model's test accuracy with `base_shots` solved examples in
its prompt (in-context learning, no training). It writes
compare.csv, compare.json and compare.png into `out`, and each method's run under out/METHOD/.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minift._files import run_directory, write_table
from minift._plots import pyplot, save_figure
from minift.data import IGNORE_INDEX, load_task_data
from minift.evaluation import evaluate_task
from minift.memory import RunSpec, measure, measure_gemm_workspace, model_config, predict
from minift.model import BUILTIN_BASE, load_model
from minift.peft import METHODS, LoraConfig, PromptTuningConfig, SelectiveConfig, check_method
from minift.recipes.finetuning import FinetuneConfig, default_train_config, finetune
from minift.recipes.tables import format_table


@dataclass
class CompareConfig:
    # arithmetic by default: the built-in task that separates the methods (on reviews every method
    # reaches test accuracy 0.98 to 1.0 in 150 steps, and the table shows only their costs)
    task: str = "arithmetic"  # a built-in task (reviews, arithmetic, qa, summarize)
    methods: tuple[str, ...] = ("full", "lora", "prompt-tuning")  # which of full, lora, qlora, prompt-tuning, selective
    base: str | None = None  # a base checkpoint directory; None: the built-in tiny base model
    out: str = "runs/compare"  # where compare.csv, compare.json, compare.png and each method's run go
    n_train: int = 800  # training examples
    n_val: int = 100  # validation examples
    n_test: int = 400  # test examples
    steps: int = 150  # optimizer steps per method
    batch_size: int = 16  # sequences per optimizer step
    eval_every: int = 25  # steps between validations
    lora: LoraConfig = LoraConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    selective: SelectiveConfig = SelectiveConfig()
    base_shots: int = 3  # solved examples in the base model's prompts (its row)
    measure: bool = True  # measure each method's peak in a fresh process (a few seconds each)
    overwrite: bool = False  # replace the results of an earlier comparison in OUT (refused otherwise)
    progress: bool = True  # show progress bars
    seed: int = 0  # the split, the data order and the initialisation

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be some of {METHODS}, got {list(self.methods)}")

    def peft(self, method: str):
        # qlora is LoRA's adapter over an NF4 base: the same LoraConfig, quantised (check_method)
        qlora = check_method("qlora", self.lora)
        return {"full": None, "lora": self.lora, "qlora": qlora, "prompt-tuning": self.prompt_tuning,
                "selective": self.selective}[method]


def memory_spec(config: CompareConfig, method: str, seq_len: int, completion_tokens: int) -> RunSpec:
    """The ledger's description of one training step of `method` as compare runs it on this machine."""
    base = str(Path(config.base or BUILTIN_BASE).resolve())
    device, loss, optimizer = default_train_config(method).resolve()
    return RunSpec(model_config(base), config.peft(method), optimizer=optimizer, loss=loss, batch_size=config.batch_size,
                   seq_len=seq_len, completion_tokens=completion_tokens, device=device.type, checkpoint=base)


def compare(config: CompareConfig, log=print) -> list[dict]:
    """Fine-tune with each method and return one row per method (plus the base model's row)."""
    # --overwrite writes the new comparison beside the old one and swaps it in at the end (minift._files.run_directory)
    with run_directory(config.out, ("compare.json", "compare.csv", "compare.png", *config.methods), config.overwrite) as out:
        return _compare(config, out, log)


def _compare(config: CompareConfig, out: Path, log) -> list[dict]:
    t0 = time.perf_counter()
    model, tokenizer = load_model(config.base)
    data = load_task_data(config.task, tokenizer, model.config.block_size, config.n_train, config.n_val, config.n_test,
                          config.seed, tokenize=("train", "test"))
    # The floor: the base model prompted with solved examples; it never learned to stop, so only its
    # answer is scored (minift.evaluate.evaluate_task, score_end=False).
    base = evaluate_task(model, tokenizer, config.task, n=config.n_test, shots=config.base_shots, seed=config.seed,
                         score_end=False, progress=config.progress)
    rows = [dict(method=f"base, {config.base_shots}-shot", trainable_params=0, trainable_pct=0.0, artefact_bytes=0,
                 test_accuracy=base["accuracy"], chance=data.chance_accuracy)]
    # The step the memory columns describe: the run's batch of its longest rows.
    seq_len = max(len(e.input_ids) for e in data.train)
    completion = max(sum(label != IGNORE_INDEX for label in e.labels) for e in data.train)
    del model
    for i, method in enumerate(config.methods, 1):
        log(f"[{i}/{len(config.methods)}] {method}: fine-tuning on {config.task} ({config.steps} steps)")
        train = default_train_config(method, out_dir=str(out / method), max_steps=config.steps,
                                     batch_size=config.batch_size, eval_every=config.eval_every, seed=config.seed,
                                     progress=config.progress, overwrite=True)
        record = finetune(FinetuneConfig(task=config.task, method=method, peft=config.peft(method), base=config.base,
                                         n_train=config.n_train, n_val=config.n_val, n_test=config.n_test,
                                         seed=config.seed, train=train))
        spec = memory_spec(config, method, seq_len, min(completion, seq_len - 1))
        log(f"    memory of one step: {spec.describe()}")
        predicted = predict(spec, measure_gemm_workspace(spec) if config.measure else None).peak.total
        measured = measure(spec)["peak"] if config.measure else None
        rows.append(dict(
            method=method, trainable_params=record["trainable_parameters"], trainable_pct=record["trainable_percent"],
            artefact_bytes=sum(record["artefact_bytes"].values()), predicted_peak_mib=predicted / 2**20,
            measured_peak_mib=None if measured is None else measured / 2**20, time_per_step_s=record["time_per_step_s"],
            val_accuracy=record["val_accuracy"], test_accuracy=record["test_accuracy"], chance=data.chance_accuracy,
        ))
    meta = dict(config=_jsonable(config), seq_len=seq_len, completion_tokens=min(completion, seq_len - 1), n_train=len(data.train), n_test=len(data.test),
                wall_s=time.perf_counter() - t0)
    _save(rows, meta, out)
    return rows


def _jsonable(config: CompareConfig) -> dict:
    d = asdict(config)
    d["methods"] = list(config.methods)
    d["lora"]["targets"] = list(config.lora.targets) if not isinstance(config.lora.targets, str) else config.lora.targets
    return d


def _save(rows: list[dict], meta: dict, out: Path) -> None:
    write_table(out, "compare", rows, {"meta": meta})
    plot(rows, out / "compare.png", meta)


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    """Left: trainable parameters (log) and peak memory per method. Right: test accuracy against chance."""
    plt = pyplot()
    trained = [r for r in rows if r["trainable_params"]]
    names = [r["method"] for r in trained]
    fig, (mem, acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(trained))
    mem.bar([i - 0.2 for i in x], [r["predicted_peak_mib"] for r in trained], 0.4, label="predicted peak", color="C0")
    if all(r["measured_peak_mib"] is not None for r in trained):
        mem.bar([i + 0.2 for i in x], [r["measured_peak_mib"] for r in trained], 0.4, label="measured peak", color="C1")
    for i, r in zip(x, trained):
        mem.annotate(f"{r['trainable_params']:,} trainable\n({r['trainable_pct']:.2f}%)", (i, 0), xytext=(0, 4),
                     textcoords="offset points", ha="center", va="bottom", fontsize=7, color="white")
    mem.set_xticks(list(x), names)
    mem.set_ylabel("MiB (one training step)")
    mem.set_title("memory of one step", fontsize=10)
    mem.legend(fontsize=8)
    bars = acc.bar(range(len(rows)), [r["test_accuracy"] for r in rows], color=["C7"] + ["C2"] * len(trained))
    acc.bar_label(bars, fmt="%.3f", fontsize=8)
    acc.axhline(rows[0]["chance"], color="k", ls=":", lw=1, label="chance")
    acc.set_xticks(range(len(rows)), [r["method"] for r in rows])
    acc.set_ylim(0, 1)
    acc.set_ylabel("test accuracy (exact match)")
    acc.set_title(f"{meta['config']['task']}: {meta['n_test']} test examples", fontsize=10)
    acc.legend(fontsize=8)
    save_figure(fig, path)


def format_rows(rows: list[dict]) -> str:
    """The table `minift compare` prints: sizes in MiB/KiB, accuracies to 3 decimals."""
    shown = []
    for r in rows:
        size = r["artefact_bytes"]
        shown.append({
            "method": r["method"], "trainable": f"{r['trainable_params']:,}", "%": f"{r['trainable_pct']:.3f}",
            "file": "-" if not size else f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB",
            "peak pred (MiB)": _num(r.get("predicted_peak_mib"), ".1f"), "peak meas (MiB)": _num(r.get("measured_peak_mib"), ".1f"),
            "s/step": _num(r.get("time_per_step_s"), ".3f"), "val acc": _num(r.get("val_accuracy"), ".3f"),
            "test acc": f"{r['test_accuracy']:.3f}",
        })
    return format_table(shown)


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
