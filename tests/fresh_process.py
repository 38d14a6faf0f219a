"""Run a function of a test module in a fresh Python process, where the memory history is known.

A test that asserts on resident memory must not read the test runner's own: what glibc kept from the
tests before it decides whether a new allocation raises the peak at all. The function runs instead in
a new interpreter under the tracking allocator (`minift.memory.probes.TRACKING_ENV`: RSS follows the
live bytes) and returns a JSON-serialisable dict.
"""

from __future__ import annotations

import os
from pathlib import Path

from minift.memory import measure_in_subprocess
from minift.memory.probes import TRACKING_ENV


def run_in_fresh_process(test_file: str, function: str, **kwargs) -> dict:
    """`function(**kwargs)` of the module `test_file` (pass `__file__`), in a fresh process."""
    here = Path(test_file).resolve().parent
    path = os.pathsep.join([str(here), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**TRACKING_ENV, "PYTHONPATH": path, "TRITON_INTERPRET": "0"}  # the PyTorch reference, as a user's CPU runs
    return measure_in_subprocess(Path(test_file).stem, function, kwargs, env)
