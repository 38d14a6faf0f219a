"""The ledger as a table: each category and the peak, predicted beside measured."""

from __future__ import annotations

from minift.memory.ledger import CATEGORIES, LABELS, Prediction


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_ledger(prediction: Prediction, measured: dict | None = None) -> str:
    """The ledger as a table: each category and the peak, predicted beside measured."""
    p, spec = prediction, prediction.spec
    peak = p.peak
    lines = [
        f"{spec.checkpoint or 'random weights'}: {p.total_params:,} parameters, {p.trainable_params:,} trainable "
        f"({100 * p.trainable_params / p.total_params:.3g}%)",
        spec.describe(),
        "",
        f"{'':<34}{'predicted':>14}{'measured':>14}",
    ]
    m = measured["categories"] if measured else {}
    for c in CATEGORIES[:-1]:
        predicted = "not measured" if c == "workspace" and p.gemm_workspace is None else _mib(p.sizes[c])
        lines.append(f"{LABELS[c]:<34}{predicted:>14}{_mib(m[c]) if c in m else '-':>14}")
    lines.append(f"{'transient at the peak':<34}{_mib(p.sizes['transient']):>14}{'-':>14}")
    if measured and not measured["device"].startswith("cuda") and m:
        # What stays resident after the steps beyond the model and the optimizer state: MKL's GEMM
        # buffers and malloc's arenas (near zero under TRACKING_ENV), see the module docstring.
        runtime = measured["after_steps"] - measured["built"] - m["optimizer_state"]
        lines.append(f"{'runtime caches (MKL, malloc)':<34}{'not modelled':>14}{_mib(runtime):>14}")
    measured_peak = measured["peak"] if measured else None

    def row(label, predicted, actual):
        diff = f"  ({100 * (predicted - actual) / actual:+.1f}%)" if actual else ""
        return f"{label:<34}{_mib(predicted):>14}{_mib(actual) if actual is not None else '-':>14}{diff}"

    lines.append(row("peak of the step", peak.total, measured_peak))
    phases = p.phase_peaks()
    names = {"forward": "  forward", "backward": "  backward", "optimizer": "  clip + optimizer step"}
    for phase, label in names.items():
        lines.append(row(label, phases[phase], measured["phases"][phase] if measured else None))
    built = p.sizes["weights_frozen"] + p.sizes["weights_trainable"]
    lines.append(row("peak above the built model", peak.total - built,
                     measured_peak - measured["built"] if measured else None))
    per_param = f"{peak.total / p.total_params:.2f} predicted"
    if measured:
        per_param += f", {measured_peak / p.total_params:.2f} measured"
    lines.append(f"bytes per parameter at the peak: {per_param} "
                 f"(weights + gradients + optimizer state alone: "
                 f"{(built + p.sizes['gradients'] + p.sizes['optimizer_state']) / p.total_params:.2f})")
    states = p.sizes["weights_frozen"] + p.sizes["weights_trainable"] + p.sizes["gradients"] + p.sizes["optimizer_state"]
    lines.append(f"model states (weights + gradients + optimizer state){' per rank' if spec.ranks > 1 else ''}: "
                 f"{states / 1e9:,.3g} GB ({states / 2**20:,.1f} MiB; ZeRO's Figure 1 counts in GB of 10^9 bytes)")
    parts = " + ".join(f"{LABELS[c]} {_mib(b)}" for c, b in peak.bytes.items() if b)
    lines += ["", f"predicted peak at '{peak.name}': {parts}", f"  transient: {peak.transient}"]
    if measured:
        how = ("CUDA allocator peak (torch.cuda.max_memory_allocated)" if measured["device"].startswith("cuda")
               else f"peak resident memory of a fresh process above its baseline before the model was built, "
                    f"{measured['allocator']}")
        lines.append(f"measured: {how}; peak over {len(measured['steps'])} steps")
        if "ranks" in measured:
            lines.append(f"measured on {len(measured['ranks'])} ranks under torchrun, the largest rank's shown; each rank's peak: "
                         + ", ".join(_mib(r["peak"]) for r in measured["ranks"]))
    return "\n".join(lines)
