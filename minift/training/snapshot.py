"""Training snapshots: everything needed to continue a run exactly where it stopped.

A snapshot directory `out_dir/snapshots/step-0000100/` holds
- trainable.safetensors: the parameters that require grad (the full model, or only an adapter);
- optimizer.safetensors: the optimizer's tensors (AdamW's moments and step counts) and RNG states;
- trainer_state.json: the step, the data position, the best validation result so far, the
  optimizer's other settings, and the configuration.
When a snapshot is complete, `snapshots/latest.json` is atomically replaced to point at it, and
only then are older snapshots deleted: a crash at any moment leaves a complete snapshot to resume.
Never pickle: safetensors and JSON only.

Under FSDP2 (minift.training.sharding) every rank holds a shard of each tensor; a snapshot gathers them
into whole tensors, one at a time, and rank 0 writes the same files a single process would. So a
snapshot or a best/ directory reads back into one process, and into sharded ranks again (each takes
its shard of every tensor). The price is that rank 0 holds the whole trainable state in memory while
writing: right for models that fit one host's memory, which are the ones minift trains;
torch.distributed.checkpoint (every rank writing its shard) is the tool beyond that.
Under zero1 (DDP with ZeroRedundancyOptimizer) each rank holds the optimizer state of its partition of
the parameters: every rank sends it to rank 0, which writes the same files again; on loading, each rank
takes the state of its own partition from them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

import minift.training.distributed as dist
from minift.training.sharding import gather, optimizer_state_dict, shard_like
from minift._files import atomic_write, read_json, read_safetensors, write_json

# Config fields that may differ when a run is resumed: they do not change what is computed.
_RESUMABLE_CHANGES = {"resume", "overwrite", "progress", "device", "out_dir"}


@dataclass
class Snapshot:
    step: int
    best: dict | None  # the best validation record so far
    since_best: int  # evaluations since it (for early stopping)
    config: dict


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name (a tied weight appears once), whole: sharded ones are
    gathered (a collective under FSDP2: call on every rank)."""
    return {name: gather(p.detach()) for name, p in model.named_parameters() if p.requires_grad}


def save_trainable_tensors(model: torch.nn.Module, directory: Path) -> None:
    """Write the trainable tensors to directory/trainable.safetensors (call on every rank: sharded ones are
    gathered; rank 0 writes).

    Raises:
        ValueError: a parameter holds NaN or inf (nothing is written: a saved checkpoint is always usable).
    """
    tensors = {k: v.contiguous().cpu() for k, v in trainable_tensors(model).items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"not saving {directory}: {len(bad)} trainable tensors hold NaN or inf (first: {bad[0]})")
    if dist.rank() != 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "trainable.safetensors", lambda tmp: save_file(tensors, str(tmp)))


def load_trainable_tensors(model: torch.nn.Module, directory: Path, device=None) -> None:
    """Copy saved trainable parameters into `model`, which must have the same trainable names and shapes."""
    saved = read_safetensors(directory / "trainable.safetensors", device=str(device or "cpu"))
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        raise ValueError(
            f"{directory}: saved trainable tensors do not match the model's: missing {sorted(expected - set(saved))[:5]}, "
            f"unexpected {sorted(set(saved) - expected)[:5]}"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"{directory}: {name} has shape {tuple(tensor.shape)}, the model's is {tuple(params[name].shape)}")
            params[name].copy_(shard_like(tensor, params[name]))


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors for safetensors, everything else for JSON); sharded tensors gathered."""
    tensors, other = {}, {}
    for pid, state in state_dict["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = gather(value).contiguous().cpu()
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict, optimizer) -> dict:
    """The optimizer's state dict again; a tensor the size of its parameter is split as the parameter is."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict's ids, in order
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for key, tensor in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            p = params[int(pid)]
            state.setdefault(int(pid), {})[name] = shard_like(tensor, p) if tensor.shape == p.shape else tensor
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def cuda_rng_keys(tensors: dict, prefix: str) -> list[str]:
    """The keys "<prefix>rng.cuda.<i>" in device order: by the number i, since as strings "10" sorts before "2"."""
    keys = [k for k in tensors if k.startswith(prefix + "rng.cuda.")]
    return sorted(keys, key=lambda k: int(k.rsplit(".", 1)[1]))


def save_snapshot(out: Path, snap: Snapshot, model, optimizer, batches) -> None:
    """Write a snapshot of step `snap.step` (call on every rank: RNG states are gathered to rank 0)."""
    rng_by_rank = dist.all_gather_object(_rng_states())
    root = out / "snapshots"
    directory = root / f"step-{snap.step:07d}"
    save_trainable_tensors(model, directory)
    state = optimizer_state_dict(optimizer)  # every rank: zero1 consolidates its partitions to rank 0
    if state is None:
        return  # zero1, a rank other than 0
    tensors, optimizer_meta = _split_optimizer_state(state)
    if dist.rank() != 0:
        return
    for r, states in enumerate(rng_by_rank):
        tensors.update({f"rank{r}.{k}": v for k, v in states.items()})
    atomic_write(directory / "optimizer.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_json(directory / "trainer_state.json", {
        "step": snap.step, "best": snap.best, "since_best": snap.since_best, "config": snap.config,
        "data": batches.state_dict(), "optimizer": optimizer_meta, "world_size": dist.world_size(),
    })
    write_json(root / "latest.json", {"step": snap.step, "directory": directory.name})
    for old in root.glob("step-*"):
        if old.name != directory.name:
            shutil.rmtree(old)


def has_snapshot(out: Path) -> bool:
    """Whether `out` holds a complete snapshot to resume from."""
    return (out / "snapshots" / "latest.json").is_file()


def load_snapshot(out: Path, config: dict, model, optimizer, batches, device) -> Snapshot | None:
    """Restore the latest snapshot of `out` into model, optimizer, batches and RNG; None if there is none.

    Raises:
        ValueError: the snapshot was made with another configuration or number of ranks.
    """
    pointer = out / "snapshots" / "latest.json"
    if not has_snapshot(out):
        return None
    directory = out / "snapshots" / read_json(pointer)["directory"]
    state = read_json(directory / "trainer_state.json")
    if state["world_size"] != dist.world_size():
        raise ValueError(f"{directory} was written by {state['world_size']} ranks; resume with the same number")
    _check_resumable(state["config"], json.loads(json.dumps(config)))  # JSON turns tuples into lists, as saved
    load_trainable_tensors(model, directory, device)
    tensors = read_safetensors(directory / "optimizer.safetensors")
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"], optimizer))
    batches.load_state_dict(state["data"])
    prefix = f"rank{dist.rank()}."
    torch.set_rng_state(tensors[prefix + "rng.cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda_rng_keys(tensors, prefix)])
    return Snapshot(state["step"], state["best"], state["since_best"], state["config"])


def _check_resumable(saved: dict, current: dict) -> None:
    """Refuse to resume a run with a configuration that would compute something else."""
    changed = sorted(k for k in set(saved) | set(current) if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        raise ValueError(
            "cannot resume: the configuration differs from the snapshot's in "
            + ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in changed)
        )
