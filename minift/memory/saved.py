"""Live bytes, counted exactly: unique storages, and the tensors autograd saves for backward.

- weights, gradients and optimizer state come from the live objects (unique storages, so a tied
  weight counts once);
- activations saved for backward come through autograd's saved-tensor hooks
  (`torch.autograd.graph.saved_tensors_hooks`): every tensor an op saves passes through the pack
  hook; we keep a weak reference to it and, when the forward pass ends, add up the unique storages
  still alive that are not parameters. A forward hook on `ln_f` splits them into the model's
  activations and the loss's. Tensors a custom autograd Function keeps as attributes of its ctx
  (the fused losses do) are found by walking the graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
import torch.nn as nn


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] = frozenset()) -> int:
    """Bytes of the unique storages behind `tensors` (views of one storage count once), less `exclude`d ones.

    `exclude` holds storage data pointers (e.g. the parameters'), see `storage_ptrs`.
    """
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def storage_ptrs(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state (moments, momentum buffers, step counters)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward in a forward pass, by phase, exactly.

    Use as a context manager around the forward pass; then `alive()` gives, for each phase, the bytes
    of the unique storages that were saved in that phase and are still alive, parameters and buffers excluded.
    The phase starts as "activations" and becomes "loss" when `boundary` (the final LayerNorm) has
    run. The pack hook returns the tensor itself, so nothing about the run changes; it only keeps a
    weak reference. (A storage that an op saves but whose graph is dropped at once, such as the input
    of a checkpointed block that nothing needs, is dead by the end and not counted.)
    """

    def __init__(self, model: nn.Module, boundary: str = "ln_f"):
        self.exclude = storage_ptrs([*model.parameters(), *model.buffers()])  # QLoRA's NF4 layers save their buffers
        self.phase = "activations"
        self.records: list[tuple[str, weakref.ref]] = []
        modules = [m for name, m in model.named_modules() if name.split(".")[-1] == boundary]
        if not modules:
            raise ValueError(f"the model has no module named {boundary!r} to split activations from the loss")
        self._boundary = modules[0]

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.records.append((self.phase, weakref.ref(t)))
        return t

    def _enter_loss(self, module, inputs, output) -> None:
        self.phase = "loss"

    def __enter__(self) -> SavedTensorMeter:
        self._handle = self._boundary.register_forward_hook(self._enter_loss)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._handle.remove()

    def alive_tensors(self) -> dict[str, list[torch.Tensor]]:
        by_phase: dict[str, list[torch.Tensor]] = {"activations": [], "loss": []}
        for phase, ref in self.records:
            if (t := ref()) is not None:
                by_phase[phase].append(t)
        return by_phase

    def alive(self) -> dict[str, int]:
        """Bytes saved and still alive, by phase; a storage saved in both phases counts in the first."""
        by_phase = self.alive_tensors()
        first = storage_bytes(by_phase["activations"], self.exclude)
        seen = self.exclude | storage_ptrs(by_phase["activations"])
        return {"activations": first, "loss": storage_bytes(by_phase["loss"], seen)}


def function_held_tensors(root: torch.Tensor) -> list[torch.Tensor]:
    """Tensors custom autograd Functions in `root`'s graph keep as ctx attributes (not save_for_backward).

    The fused losses keep the gradient they computed in the forward pass this way (kernels/); the
    saved-tensor hooks never see it.
    """
    found, stack, seen = [], [root.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            values = list(vars(node).values())
            while values:
                v = values.pop()
                if isinstance(v, torch.Tensor):
                    found.append(v)
                elif isinstance(v, (list, tuple)):
                    values.extend(v)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found
