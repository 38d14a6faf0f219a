"""The benchmarks' device table: each part's name finds its own data-sheet bandwidth."""

import pytest

from benchmarks.common import bandwidth_of


@pytest.mark.parametrize("name, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA H100 NVL", 3.9e12),
    ("NVIDIA H200", 4.8e12), ("NVIDIA A100-SXM4-80GB", 2.039e12), ("NVIDIA A100-SXM4-40GB", 1.555e12),
    ("NVIDIA A100-PCIE-40GB", 1.555e12), ("NVIDIA A100 80GB PCIe", 1.935e12), ("Tesla T4", None),
])
def test_each_part_finds_its_bandwidth(name, bandwidth):
    assert bandwidth_of(name) == bandwidth
