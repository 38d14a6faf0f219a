"""What every benchmark shares: naming the device, and saving results as JSON and CSV."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from minift._files import write_table

RESULTS = Path(__file__).parent / "results"
# Peak HBM bandwidth, bytes/s, from NVIDIA's data sheets; matched against the device name in order, so the
# parts named by more than "H100"/"A100" come first ("NVIDIA H100 80GB HBM3" is the SXM part: 3.35 TB/s).
PEAK_BANDWIDTH = [
    ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12),
    ("A100-SXM4-40GB", 1.555e12), ("A100-PCIE-40GB", 1.555e12), ("A100 80GB PCIe", 1.935e12), ("A100", 2.039e12),
]


# Peak dense bf16 tensor-core FLOP/s from the same data sheets (no sparsity), matched the same way.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
]


def flops_of(name: str) -> float | None:
    """The peak dense bf16 FLOP/s PEAK_BF16_FLOPS lists for a device name (None if unlisted)."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def device_name(device: str | torch.device = "cpu") -> str:
    """A human name for the device, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU: AMD EPYC (2 cores)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # no /proc (not Linux): keep platform's name for the processor
        pass
    return f"CPU: {model} ({os.cpu_count()} cores)"


def peak_bandwidth(device: str | torch.device) -> float | None:
    """The GPU's peak memory bandwidth in bytes/s, when it is listed in PEAK_BANDWIDTH (None on CPU)."""
    if torch.device(device).type != "cuda":
        return None
    return bandwidth_of(device_name(device))


def bandwidth_of(name: str) -> float | None:
    """The peak bandwidth PEAK_BANDWIDTH lists for a device name such as 'NVIDIA H100 80GB HBM3' (None if unlisted)."""
    return next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)


def device_slug(device: str | torch.device = "cpu") -> str:
    """A file-name-safe short form of `device_name`, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu-2-cores'."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{os.cpu_count()}-cores"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def write_results(name: str, rows: list[dict], meta: dict, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write `rows` (one dict per measurement) as `<name>.json` (with `meta`) and `<name>.csv`."""
    return write_table(out_dir, name, rows, {"meta": meta})
