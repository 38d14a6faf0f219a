"""The benchmarks' device table (each part's name finds its own data-sheet figures) and their byte counts."""

import pytest
import torch

from benchmarks.common import bandwidth_of, flops_of


@pytest.mark.parametrize("name, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA H100 NVL", 3.9e12),
    ("NVIDIA H200", 4.8e12), ("NVIDIA A100-SXM4-80GB", 2.039e12), ("NVIDIA A100-SXM4-40GB", 1.555e12),
    ("NVIDIA A100-PCIE-40GB", 1.555e12), ("NVIDIA A100 80GB PCIe", 1.935e12), ("Tesla T4", None),
])
def test_each_part_finds_its_bandwidth(name, bandwidth):
    assert bandwidth_of(name) == bandwidth


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla T4", None),
])
def test_each_part_finds_its_bf16_peak(name, flops):
    assert flops_of(name) == flops


def test_cross_entropy_traffic_counts_one_write_for_an_ignored_row():
    from benchmarks.bench_cross_entropy import cross_entropy_bytes, ignored_rows, make_inputs

    labels = make_inputs("cross_entropy", 16, 4, 10, torch.float32, "cpu")[1]
    assert int((labels == -100).sum()) == ignored_rows(16) == 4
    assert cross_entropy_bytes(16, 10, 2, 4) == (3 * 12 + 4) * 10 * 2  # not 3 * 16 * 10 * 2
