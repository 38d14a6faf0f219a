"""The course's claims as experiments that print numbers: in-context learning, the number of
training examples, catastrophic forgetting and its mitigations.

    minift experiment all                 # the README gives its runtime; `--preset fast` for a smoke test

1. In-context learning (`icl`): zero-, one- and few-shot accuracy of the base model on every task,
   and the share of the context window the examples take.
2. Training examples (`sizes`): test accuracy against the number of training examples, for full
   fine-tuning and LoRA, with the validation curves.
3. Forgetting (`forgetting`): one row per model (the base; full fine-tuning on each task; LoRA on
   each task; multi-task full fine-tuning; per-task LoRA adapters switched on one frozen base), one
   column per task evaluated. Each model is scored on every task zero-shot, and with `k` shots for
   abilities the base model has in context (what fine-tuning can take away), and on the pretraining
   corpus (language-model loss: how much of the base model's knowledge survives).

Every experiment writes a CSV and a JSON (with its configuration and seed) and a PNG into `out`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from minift._files import claim_outputs, write_table
from minift._plots import pyplot, save_figure
from minift.data import ALPACA_FORMAT, TASKS, CorpusConfig, InstructionFormat, generate_corpus, pack
from minift.evaluation import evaluate, evaluate_task
from minift.model import BASE_MODELS, load_model
from minift.peft import LoraConfig, disable_adapters, load_adapter, load_trainable, set_adapter
from minift.recipes.claims import Claim, average, binomial_stderr, difference
from minift.recipes.finetuning import FinetuneConfig, default_train_config, finetune
from minift.recipes.tables import format_table
from minift.training import read_metrics

@dataclass
class ExperimentConfig:
    out: str = "runs/experiments"  # where each experiment's CSV, JSON and PNG (and its runs/) go
    base: str | None = None  # the base model fine-tuned: one of BASE_MODELS or a directory; None: DEFAULT_BASE
    bases: tuple[str, ...] = BASE_MODELS  # the base models of the ICL experiment, smallest to largest
    tasks: tuple[str, ...] = tuple(TASKS)  # every built-in task
    shots: tuple[int, ...] = (0, 1, 3)  # in-context examples for the ICL experiment; it adds as many as fit
    forgetting_shots: int = 3  # the other columns of the forgetting matrix are also scored with this many shots
    sizes: tuple[int, ...] = (50, 100, 250, 500, 1000)  # training-set sizes of the examples-needed experiment
    # arithmetic: with the shipped base model, reviews reaches test accuracy 1.0 from 50 examples,
    # a flat curve; arithmetic is the built-in task whose accuracy still depends on the data
    sizes_task: str = "arithmetic"  # the task of the examples-needed experiment
    n_train: int = 800  # per task, for the forgetting experiment
    n_val: int = 100  # validation examples per task
    n_test: int = 200  # test examples per task
    steps: int = 150  # optimizer steps of every fine-tuning run
    batch_size: int = 16  # sequences per optimizer step
    eval_every: int = 25  # steps between validations
    lora: LoraConfig = field(default_factory=LoraConfig)
    corpus_blocks: int = 16  # held-out pretraining blocks for the language-model loss column
    seed: int = 0  # the splits, data orders and initialisations derive from it
    overwrite: bool = False  # replace an experiment's earlier results in OUT (refused otherwise)

    @classmethod
    def preset(cls, name: str, **overrides) -> ExperimentConfig:
        """"full" (the numbers in the README) or "fast" (seconds; for tests and a first look)."""
        if name == "full":
            return cls(**overrides)
        if name == "fast":
            fast = dict(bases=BASE_MODELS[:2], tasks=("reviews", "qa"), shots=(0, 1), forgetting_shots=1, sizes=(16, 32), n_train=32,
                        n_val=8, n_test=8, steps=3, batch_size=8, eval_every=3, corpus_blocks=2)
            return cls(**{**fast, **overrides})
        raise ValueError(f"unknown preset {name!r}; choose 'full' or 'fast'")


def _finetune(config: ExperimentConfig, name: str, task, method: str, n_train: int, progress: bool = False) -> dict:
    train = default_train_config(method, out_dir=str(Path(config.out) / "runs" / name), max_steps=config.steps,
                                 batch_size=config.batch_size, eval_every=config.eval_every,
                                 warmup_steps=max(1, config.steps // 10), seed=config.seed, overwrite=True, progress=progress)
    return finetune(FinetuneConfig(task=task, method=method, peft=config.lora if method == "lora" else None,
                                   base=config.base, n_train=n_train, n_val=config.n_val, n_test=config.n_test,
                                   seed=config.seed, train=train))


# --- 1. in-context learning and model size ---------------------------------------------------------
# A layout of few-shot prompts the corpus never shows (no document holds "Q]" or "[A]"; the corpus's
# quiz sheets do show "### Instruction:"/"### Response:" among their markers), so that in-context
# ability measured in the instruction format can be told apart from having seen that format.
UNSEEN_LAYOUT = InstructionFormat("unseen", prompt_prefix="Q] ", response_prefix=" [A]\n")
LAYOUTS = {"instruction": ALPACA_FORMAT, "unseen": UNSEEN_LAYOUT}


def run_icl(config: ExperimentConfig) -> list[dict]:
    """Accuracy of every base model on every task with 0, 1, 3, ... and as many shots as fit, in both layouts.

    Only the answer tokens are scored (base models never learned to stop; see evaluate_task), by
    exact match and answer loss (no ROUGE: its generation loop would cost most of the run). The
    standard error of each accuracy is binomial over the test examples.
    """
    rows = []
    for base in config.bases:
        model, tokenizer = load_model(base)
        for layout, fmt in LAYOUTS.items():
            for task in config.tasks:
                for shots in (*config.shots, "max"):
                    r = evaluate_task(model, tokenizer, task, n=config.n_test, shots=shots, seed=config.seed,
                                      score_end=False, fmt=fmt, rouge=False)
                    rows.append({"base": Path(base).name, "parameters": model.num_parameters(), "layout": layout,
                                 "task": task, "shots": r["shots"], "as_many_as_fit": shots == "max", "n": r["n"],
                                 "accuracy": r["accuracy"], "stderr": binomial_stderr(r["accuracy"], r["n"]),
                                 "answer_loss": r["loss"], "chance_accuracy": r["chance_accuracy"],
                                 "shot_tokens": r["shot_tokens"], "shot_fraction": r["shot_fraction"]})
    _save(config, "icl", rows, CLAIMS["icl"](rows, dataclasses.asdict(config)))
    _plot_icl(rows, Path(config.out) / "icl.png")
    return rows


def icl_claims(rows: list[dict], shots: int) -> list[Claim]:
    """The course's in-context claims, from the rows of `run_icl` (the smallest and largest base by parameters).

    "ICL may not work well for smaller models" is read both ways: a smaller model scores lower with
    shots, and it gains less from them. A model's gain is its mean over tasks of (k-shot accuracy -
    zero-shot accuracy). Accuracies that share their test examples are treated as independent, which
    overstates the error of their difference (a conservative test).
    """
    def mean(base: str | None, layout: str, k: int | None) -> tuple[float, float]:
        """Mean accuracy over tasks (and over bases if None) with k shots (None: as many as fit)."""
        return average([(r["accuracy"], r["stderr"]) for r in rows if r["layout"] == layout
                        and (base is None or r["base"] == base)
                        and (r["as_many_as_fit"] if k is None else not r["as_many_as_fit"] and r["shots"] == k)])

    def gain(base: str, layout: str) -> tuple[float, float]:
        return difference(mean(base, layout, shots), mean(base, layout, 0))

    sizes = {r["base"]: r["parameters"] for r in rows}
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    return [
        Claim("icl_helps_largest", f"{shots} in-context examples raise the largest base model's ({large}) accuracy "
              "over zero-shot (mean over tasks, instruction layout)", *gain(large, "instruction")),
        Claim("icl_accuracy_grows_with_size", f"ICL works less well in smaller models: with {shots} shots, {small} "
              f"({sizes[large] / sizes[small]:.0f}x fewer parameters) scores below {large}",
              *difference(mean(large, "instruction", shots), mean(small, "instruction", shots))),
        Claim("icl_weaker_in_smaller_models", f"ICL works less well in smaller models: the {shots}-shot gain of {large} "
              f"exceeds that of {small}", *difference(gain(large, "instruction"), gain(small, "instruction"))),
        Claim("icl_without_the_corpus_layout", f"{large}'s {shots}-shot gain survives a prompt layout the corpus never "
              "shows (Q] ... [A])", *gain(large, "unseen")),
        Claim("icl_full_context_hurts", f"filling the context with as many shots as fit scores below {shots} shots "
              "(mean over base models and tasks, instruction layout)",
              *difference(mean(None, "instruction", shots), mean(None, "instruction", None))),
    ]


# --- 2. accuracy against the number of training examples ----------------------------------------
def run_sizes(config: ExperimentConfig) -> list[dict]:
    rows = []
    for method in ("full", "lora"):
        for n in config.sizes:
            record = _finetune(config, f"sizes-{method}-{n}", config.sizes_task, method, n)
            curve = [r for r in _history(record) if r["kind"] == "eval"]
            rows.append({"task": config.sizes_task, "method": method, "n_train": n, "test_accuracy": record["test_accuracy"],
                         "val_accuracy": record["val_accuracy"], "best_step": record["best_step"],
                         "trainable_parameters": record["trainable_parameters"], "train_time_s": record["train_time_s"],
                         "val_curve": [(r["step"], r["accuracy"]) for r in curve]})
    _save(config, "sizes", rows)
    _plot_sizes(rows, Path(config.out) / "sizes.png")
    return rows


# --- 3. forgetting and its mitigations ------------------------------------------------------------
def run_forgetting(config: ExperimentConfig) -> list[dict]:
    base, tokenizer = load_model(config.base)
    held_out = _corpus_blocks(tokenizer, base.config.block_size, config)
    rows = [_scores(config, "base", "-", base, tokenizer, held_out)]
    adapters = {}
    for method in ("full", "lora"):
        for task in config.tasks:
            record = _finetune(config, f"forget-{method}-{task}", task, method, config.n_train)
            model = _load_finetuned(config, record)
            rows.append(_scores(config, f"{method} on {task}", task, model, tokenizer, held_out, record))
            if method == "lora":
                adapters[task] = record["artefact"]
    # mitigation 1: multi-task instruction tuning on a mixture of all tasks (the same examples per task)
    for method in ("full", "lora"):
        record = _finetune(config, f"forget-{method}-multitask", tuple(config.tasks), method, config.n_train)
        rows.append(_scores(config, f"{method} multi-task", "all", _load_finetuned(config, record), tokenizer, held_out, record))
    # mitigation 2: per-task LoRA adapters on one frozen base, the task's adapter switched on for its column
    rows.append(_switched_adapters(config, adapters, tokenizer, held_out))
    _save(config, "forgetting", rows)
    _plot_forgetting(rows, config, Path(config.out) / "forgetting.png")
    return rows


def _load_finetuned(config: ExperimentConfig, record: dict):
    if record["method"] == "full":
        return load_model(record["artefact"])[0]
    return load_trainable(load_model(config.base)[0], record["artefact"])


def _switched_adapters(config: ExperimentConfig, adapters: dict[str, str], tokenizer, held_out) -> dict:
    """One base model holding every task's LoRA adapter by name; each column uses its task's adapter."""
    model = load_model(config.base)[0]
    for task, path in adapters.items():
        load_adapter(model, path, adapter_name=task)
    row = {"model": "per-task LoRA adapters (switched)", "trained_on": "each"}
    for task in config.tasks:
        set_adapter(model, task)
        row.update(_task_columns(config, model, tokenizer, task))
    with disable_adapters(model):  # the corpus is no task: the frozen base is what every adapter shares
        row["corpus_loss"] = evaluate(model, held_out, tokenizer.pad_id).loss
    return row


def _scores(config: ExperimentConfig, name: str, trained_on: str, model, tokenizer, held_out, record=None) -> dict:
    row = {"model": name, "trained_on": trained_on}
    for task in config.tasks:
        row.update(_task_columns(config, model, tokenizer, task))
    row["corpus_loss"] = evaluate(model, held_out, tokenizer.pad_id).loss
    if record:
        row.update(trainable_parameters=record["trainable_parameters"], train_time_s=record["train_time_s"])
    return row


def _task_columns(config: ExperimentConfig, model, tokenizer, task: str) -> dict:
    zero = evaluate_task(model, tokenizer, task, n=config.n_test, seed=config.seed)
    few = evaluate_task(model, tokenizer, task, n=config.n_test, shots=config.forgetting_shots, seed=config.seed,
                        score_end=False)
    return {task: zero["accuracy"], f"{task} {config.forgetting_shots}-shot": few["accuracy"]}


def _corpus_blocks(tokenizer, block_size: int, config: ExperimentConfig):
    """Blocks of pretraining-style text the base model never trained on (another corpus seed)."""
    documents = generate_corpus(CorpusConfig(n_documents=40 * config.corpus_blocks, seed=config.seed + 10_000))
    return pack(tokenizer, documents, block_size)[: config.corpus_blocks]


# --- running and saving --------------------------------------------------------------------------
EXPERIMENTS = {"icl": run_icl, "sizes": run_sizes, "forgetting": run_forgetting}
# experiment -> its claims from its rows and configuration as the JSON holds them (the tests recompute them)
CLAIMS = {"icl": lambda rows, config: icl_claims(rows, max(config["shots"]))}


def run_experiments(names: list[str], config: ExperimentConfig) -> dict[str, list[dict]]:
    """Run the named experiments, each writing NAME.json, NAME.csv and NAME.png into `config.out`.

    Raises:
        FileExistsError: an experiment's results are there already and `config.overwrite` is False.
    """
    for name in names:  # refuse before any work, not after the first experiment
        claim_outputs(config.out, (f"{name}.json", f"{name}.csv", f"{name}.png"), config.overwrite)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = EXPERIMENTS[name](config)
        print(f"{name}: {time.perf_counter() - t0:.0f} s")
        print(format_table(results[name]))
    return results


def _history(record: dict) -> list[dict]:
    return read_metrics(Path(record["artefact"]).parent / "metrics.jsonl")


def _save(config: ExperimentConfig, name: str, rows: list[dict], claims: list[Claim] = ()) -> None:
    write_table(config.out, name, rows, {"config": dataclasses.asdict(config), "claims": [c.to_dict() for c in claims]})


def _plot_icl(rows, path: Path) -> None:
    """Mean accuracy over tasks against shots, one line per base model, one panel per layout (bars: 1 stderr)."""
    plt = pyplot()
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    fig, axes = plt.subplots(1, len(layouts), figsize=(4.2 * len(layouts), 3.4), sharey=True, squeeze=False)
    for ax, layout in zip(axes[0], layouts):
        for i, base in enumerate(dict.fromkeys(r["base"] for r in rows)):
            mine = [r for r in rows if r["base"] == base and r["layout"] == layout]
            settings = list(dict.fromkeys((r["as_many_as_fit"], r["shots"] if not r["as_many_as_fit"] else -1) for r in mine))
            xs, ys, es = [], [], []
            for fit, k in settings:
                cell = [r for r in mine if r["as_many_as_fit"] == fit and (fit or r["shots"] == k)]
                mean, err = average([(r["accuracy"], r["stderr"]) for r in cell])
                xs.append(sum(r["shots"] for r in cell) / len(cell))
                ys.append(mean)
                es.append(err)
            ax.errorbar(xs, ys, yerr=es, fmt="o-", color=f"C{i}", capsize=3, label=f"{base} ({mine[0]['parameters'] / 1e6:.2f}M)")
        ax.set(xlabel="shots (last point: as many as fit)", title=f"{layout} layout")
        ax.grid(alpha=0.3)
    axes[0][0].set(ylabel="exact match (answer), mean over tasks")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def _plot_sizes(rows, path: Path) -> None:
    plt = pyplot()
    fig, (ax, ax_curve) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, method in enumerate(("full", "lora")):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r["n_train"] for r in mine], [r["test_accuracy"] for r in mine], "o-", color=f"C{i}", label=method)
        for r in mine:
            steps, acc = zip(*r["val_curve"]) if r["val_curve"] else ((), ())
            ax_curve.plot(steps, acc, color=f"C{i}", alpha=0.3 + 0.7 * r["n_train"] / max(x["n_train"] for x in mine))
    ax.set(xscale="log", xlabel="training examples", ylabel="test exact match", ylim=(-0.02, 1.02),
           title=f"{rows[0]['task']}: accuracy vs examples")
    ax.legend()
    ax_curve.set(xlabel="step", ylabel="validation exact match", ylim=(-0.02, 1.02),
                 title="validation curves (darker: more examples)")
    save_figure(fig, path, dpi=110)


def _plot_forgetting(rows, config: ExperimentConfig, path: Path) -> None:
    plt = pyplot()
    columns = list(config.tasks) + [f"{t} {config.forgetting_shots}-shot" for t in config.tasks]
    matrix = [[r[c] for c in columns] for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 3, 0.45 * len(rows) + 1.6))
    ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r["model"] for r in rows])
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_title("Test accuracy of each model (rows) on each task (columns)")
    save_figure(fig, path, dpi=110)
