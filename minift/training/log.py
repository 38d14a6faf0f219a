"""The metrics log of a run, `metrics.jsonl`: one JSON object per training step and per evaluation,
and the training curves drawn from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from minift._files import atomic_write
from minift._plots import pyplot, save_figure


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order ([] if there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class MetricsLog:
    """Appends records to metrics.jsonl (on rank 0 only, when `enabled` is False elsewhere)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        """Append `record`; a NaN or infinite number is written as null (JSON has no NaN, so each line stays JSON)."""
        if self.enabled:
            finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(finite, allow_nan=False) + "\n")
            except OSError as error:  # a full disk: name the file (a write error does not)
                raise OSError(error.errno, f"cannot write {self.path}: {error.strerror or error}") from error

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites them, so they must not appear twice."""
        if self.enabled and self.path.is_file():
            kept = [json.dumps(r) for r in self.read() if r["step"] <= step]
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, validation loss and validation accuracy against the step, as a PNG."""
    plt = pyplot()
    history = [{k: math.nan if v is None else v for k, v in r.items()} for r in history]  # null: a gap in the curve
    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.7)
    ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation")
    ax_loss.set(xlabel="step", ylabel="loss per completion token (nats)", yscale="log", title="Loss")
    ax_loss.legend()
    ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", color="C2")
    ax_acc.set(xlabel="step", ylabel="exact match", ylim=(-0.02, 1.02), title="Validation accuracy")
    save_figure(fig, path, dpi=110)
