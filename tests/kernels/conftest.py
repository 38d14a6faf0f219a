"""On a GPU machine (benchmarks/gpu_suite.py sets MINIFT_TEST_DEVICE=cuda and TRITON_INTERPRET=0), the kernel
tests make their tensors on the GPU, so the compiled kernels run where the interpreter ran before."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _test_device():
    if os.environ.get("MINIFT_TEST_DEVICE") != "cuda":
        yield
        return
    torch.set_default_device("cuda")
    yield
    torch.set_default_device(None)
