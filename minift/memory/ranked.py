"""One training step measured on N ranks under torchrun: each rank's peak, as the ledger predicts it.

`measure_ranks(spec)` launches `torchrun --standalone --nproc_per_node spec.ranks` over this module;
every rank builds the step of `spec` (minift.memory.step.build_minift_step: the strategy applied as
training applies it: DDP, DDP with ZeroRedundancyOptimizer, or FSDP2), measures it with `measure_step` under the tracking allocator
(minift.memory.probes.TRACKING_ENV: resident memory follows the live bytes), and rank 0 writes all
ranks' results to a JSON file. The process group is joined before the warm-up, so gloo's own buffers
are part of every rank's baseline and not of the step.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch.distributed

import minift.training.distributed as dist
from minift.memory.probes import TRACKING_ENV
from minift.memory.spec import RunSpec
from minift.memory.step import build_minift_step, measure_step


def measure_ranks(spec: RunSpec, tracking_malloc: bool = True, steps: int = 2, timeout: float = 600) -> dict:
    """The measured step of the rank with the largest peak (`measure_step`'s dict, no categories), and
    every rank's under "ranks".

    Raises:
        ValueError: the spec asks for one rank.
        RuntimeError: torchrun failed; its output is included.
    """
    if spec.ranks < 2:
        raise ValueError("measure_ranks measures several ranks; use minift.memory.measure for one process")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec.to_dict()))
        env = {**os.environ, **(TRACKING_ENV if tracking_malloc else {}), "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.ranks}",
                               "-m", "minift.memory.ranked", tmp, str(steps)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring {spec.ranks} ranks failed under torchrun:\n{proc.stderr[-4000:]}")
        ranks = json.loads((Path(tmp) / "ranks.json").read_text())
    largest = max(ranks, key=lambda r: r["peak"])
    allocator = "tracking (MALLOC_MMAP_THRESHOLD_=65536, MKL_DISABLE_FAST_MM=1)" if tracking_malloc else "default (glibc, MKL)"
    return {**largest, "ranks": ranks, "allocator": allocator}


def _rank_main(directory: Path, steps: int) -> None:
    """One rank: join the group, measure the step, gather every rank's figures to rank 0."""
    dist.setup()
    spec = RunSpec.from_dict(json.loads((directory / "spec.json").read_text()))
    result = measure_step(functools.partial(build_minift_step, spec), spec.device, steps, categories=False)
    results = dist.all_gather_object(result)
    if dist.rank() == 0:
        (directory / "ranks.json").write_text(json.dumps(results))
    dist.barrier()
    # leave the group before exiting: otherwise gloo's threads can outlive the interpreter and abort the
    # process ("terminate called without an active exception"), seen under zero1 with another torchrun running
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), int(sys.argv[2]))
