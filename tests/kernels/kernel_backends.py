"""What the optimizer kernels' tests share: the device they run on, the backends, the refusals both make."""

import pytest
import torch

from minift.kernels._backend import interpreter_enabled, triton_available

# A GPU runs the compiled kernels; a CPU runs them in Triton's interpreter (tests/conftest.py sets it).
DEVICE = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"
requires_triton = pytest.mark.skipif(
    not triton_available() or (DEVICE == "cpu" and not interpreter_enabled()),
    reason="needs triton, and TRITON_INTERPRET=1 on a CPU",
)
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


def assert_refuses_bad_inputs(optimizer_class) -> None:
    """torch.optim.AdamW's refusals: an unknown backend, a negative lr, a sparse gradient, a float64 parameter."""
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="backend"):
        optimizer_class([p], backend="cuda")
    with pytest.raises(ValueError, match="learning rate"):
        optimizer_class([p], lr=-1.0)
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer_class([p]).step()
    double = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    double.grad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        optimizer_class([double]).step()


def assert_step_returns_the_closures_loss(optimizer_class) -> None:
    """step(closure) re-evaluates the loss with gradients on (step itself runs under no_grad) and returns it."""
    p = torch.ones(3, requires_grad=True)
    optimizer = optimizer_class([p], backend="torch")

    def closure():
        optimizer.zero_grad()
        loss = (p * p).sum()
        loss.backward()  # would raise under no_grad: nothing requires grad there
        return loss

    loss = optimizer.step(closure)
    assert float(loss) == 3.0 and p.grad is not None and optimizer.step() is None
