"""kernels.linear_cross_entropy against F.linear + F.cross_entropy (logits upcast to fp32), forward and
backward, on both backends ("triton" runs in Triton's interpreter on CPU, see tests/conftest.py)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from fresh_process import run_in_fresh_process
from hypothesis import strategies as st

from minift.kernels import linear_cross_entropy
from minift.memory import peak_rss_bytes, reset_peak_rss, rss_bytes

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rtol, atol as a fraction of the reference's largest magnitude): the gradients are sums of products,
# and an entry that cancels to near zero keeps the rounding error of the large terms it summed.
TOL = {
    # fp32 throughout; the chunked GEMMs sum over rows in another order
    torch.float32: (1e-5, 1e-5),
    # d loss/d logits rounded to bf16 (1 ulp = 2**-7: the interpreter truncates), grad_weight rounded
    # once per chunk (4 chunks here): up to 4 roundings of 2**-7
    torch.bfloat16: (2**-5, 2**-5),
    # the same roundings to nearest fp16, 2**-11 each
    torch.float16: (2**-9, 2**-9),
}


def make_inputs(N, H, V, dtype, bias, ignore="some"):
    hidden = torch.randn(N, H).to(dtype)
    weight = (0.2 * torch.randn(V, H)).to(dtype)
    b = (0.1 * torch.randn(V)).to(dtype) if bias else None
    labels = torch.randint(0, V, (N,))
    if ignore == "some":
        labels[::3] = -100
    elif ignore == "all":
        labels[:] = -100
    return hidden, weight, b, labels


def forward_backward(fn, hidden, weight, bias, grad_output, requires=(True, True, True)):
    """Run fn on fresh leaf copies of the inputs, backward with grad_output; return the loss and grads."""
    leaves = [t.clone().requires_grad_(r) if t is not None else None for t, r in zip((hidden, weight, bias), requires)]
    loss = fn(*leaves)
    loss.backward(grad_output)
    return [loss] + [t.grad if t is not None else None for t in leaves]


def reference(labels, reduction):
    def fn(hidden, weight, bias):
        logits = F.linear(hidden, weight, bias).float()  # logits rounded to the inputs' dtype, as ours are
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction=reduction)
        return loss.view(labels.shape) if reduction == "none" else loss

    return fn


def assert_all_close(actual, expected, dtype):
    rtol, atol_fraction = TOL[dtype]
    for a, e in zip(actual, expected, strict=True):
        assert (a is None) == (e is None)
        if e is not None:
            assert a.dtype == e.dtype and a.shape == e.shape
            atol = atol_fraction * e.float().abs().max().item()
            torch.testing.assert_close(a.float(), e.float(), rtol=rtol, atol=atol)


def grad_output_for(reduction, shape):
    # "mean" as the last op (1: the scaling is skipped); the others apply a grad_output, per row for "none".
    return {"mean": torch.tensor(1.0), "sum": torch.tensor(0.5), "none": torch.rand(shape) + 0.5}[reduction]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(backend, dtype, bias, reduction):
    B, T, H, V = 2, 13, 32, 300
    hidden, weight, b, labels = make_inputs(B * T, H, V, dtype, bias)
    hidden, labels = hidden.view(B, T, H), labels.view(B, T)  # (B, T, H) input, (B, T) labels
    chunk_bytes = 7 * V * hidden.element_size()  # 7 rows a chunk: 26 rows = 7 + 7 + 7 + 5
    grad_output = grad_output_for(reduction, labels.shape)
    expected = forward_backward(reference(labels, reduction), hidden, weight, b, grad_output)
    actual = forward_backward(
        lambda h, w, bb: linear_cross_entropy(
            h, w, labels, bb, reduction=reduction, backend=backend, chunk_bytes=chunk_bytes
        ),
        hidden, weight, b, grad_output,
    )
    assert_all_close(actual, expected, dtype)  # the loss is fp32 in both


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_rows", [1, 5, 26, 1000])  # one row; uneven last chunk; exactly one; budget > all
def test_chunk_budgets(backend, chunk_rows):
    H, V = 16, 97
    hidden, weight, b, labels = make_inputs(26, H, V, torch.float32, bias=True)
    expected = forward_backward(reference(labels, "mean"), hidden, weight, b, torch.tensor(1.0))
    actual = forward_backward(
        lambda h, w, bb: linear_cross_entropy(h, w, labels, bb, backend=backend, chunk_bytes=chunk_rows * V * 4),
        hidden, weight, b, torch.tensor(1.0),
    )
    assert_all_close(actual, expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt2_vocabulary(backend):
    hidden, weight, b, labels = make_inputs(6, 16, 50257, torch.float32, bias=False)
    expected = forward_backward(reference(labels, "mean"), hidden, weight, b, torch.tensor(1.0))
    actual = forward_backward(
        lambda h, w, bb: linear_cross_entropy(h, w, labels, backend=backend, chunk_bytes=2 * 50257 * 4),  # 3 chunks
        hidden, weight, b, torch.tensor(1.0),
    )
    assert_all_close(actual, expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [(True, False, False), (False, True, True), (True, True, False)])
def test_frozen_inputs_get_no_gradient(backend, requires):
    # (hidden, weight, bias): a frozen LoRA head; a first layer (no input grad); a frozen bias.
    hidden, weight, b, labels = make_inputs(26, 16, 97, torch.float32, bias=True)
    expected = forward_backward(reference(labels, "mean"), hidden, weight, b, torch.tensor(1.0), requires)
    actual = forward_backward(
        lambda h, w, bb: linear_cross_entropy(h, w, labels, bb, backend=backend, chunk_bytes=7 * 97 * 4),
        hidden, weight, b, torch.tensor(1.0), requires,
    )
    assert_all_close(actual, expected, torch.float32)  # None exactly where the reference has None


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux")
def peak_of_backward(weight_requires_grad: bool) -> dict:
    """Subprocess entry point: the peak resident memory of one forward + backward above the inputs, in bytes."""
    N, H, V = 16, 256, 50257
    hidden, weight, _, labels = make_inputs(N, H, V, torch.float32, bias=False)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_(weight_requires_grad)
    linear_cross_entropy(h[:2], w, labels[:2], backend="torch", chunk_bytes=2**20)  # warm-up: code paths, pools
    baseline = rss_bytes()
    reset_peak_rss()
    linear_cross_entropy(h, w, labels, backend="torch", chunk_bytes=2**20).backward()
    return {"peak": peak_rss_bytes() - baseline, "weight_bytes": V * H * 4}


def test_frozen_head_allocates_no_weight_gradient():
    # A [V, H] gradient of a frozen head would cost as much memory as the head itself (51 MB). Each case runs
    # in a fresh process under the tracking allocator (RSS follows live bytes), so no earlier test's freed
    # memory can absorb the allocation unseen, and the control shows the measurement sees such a gradient.
    trained, frozen = (run_in_fresh_process(__file__, "peak_of_backward", weight_requires_grad=flag) for flag in (True, False))
    assert trained["peak"] > trained["weight_bytes"]  # the measurement sees a [V, H] gradient when there is one
    assert frozen["peak"] < frozen["weight_bytes"] / 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_gives_zero_not_nan(backend, dtype):
    hidden, weight, b, labels = make_inputs(10, 16, 97, dtype, bias=True, ignore="all")
    loss, *grads = forward_backward(
        lambda h, w, bb: linear_cross_entropy(h, w, labels, bb, backend=backend), hidden, weight, b, torch.tensor(1.0)
    )
    assert loss.item() == 0.0
    for grad in grads:
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_with_a_stride(backend):
    hidden, weight, _, labels = make_inputs(26, 16, 97, torch.float32, bias=False)
    strided = labels.repeat_interleave(2)[::2]  # the same labels, read with stride 2
    assert strided.stride(0) == 2
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, strided, backend=backend),
                               reference(labels, "mean")(hidden, weight, None), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_computes_only_the_loss(backend):
    hidden, weight, b, labels = make_inputs(26, 16, 97, torch.float32, bias=True)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden.requires_grad_(), weight.requires_grad_(), labels, b, backend=backend)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(labels, "mean")(hidden, weight, b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_twice_raises(backend):
    hidden, weight, b, labels = make_inputs(8, 16, 97, torch.float32, bias=False)
    loss = linear_cross_entropy(hidden.requires_grad_(), weight, labels, backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bad_inputs_raise():
    hidden, weight, _, labels = make_inputs(8, 16, 97, torch.float32, bias=False)
    labels[5] = 97
    with pytest.raises(ValueError, match=r"label 97 at row 5 is outside \[0, 97\)"):
        linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_cross_entropy(hidden, weight.bfloat16(), labels.clamp(max=96))
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(hidden, weight[:, :8], labels.clamp(max=96))


@settings(max_examples=20, deadline=None)
@given(
    N=st.integers(1, 20),
    H=st.integers(1, 16),
    V=st.integers(1, 200),
    chunk_rows=st.integers(1, 24),
    bias=st.booleans(),
    reduction=st.sampled_from(["sum", "none"]),  # still comparable with PyTorch when every row is ignored
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(N, H, V, chunk_rows, bias, reduction, backend, seed):
    torch.manual_seed(seed)
    hidden, weight, b, labels = make_inputs(N, H, V, torch.float32, bias)  # (N, H) input
    grad_output = grad_output_for(reduction, labels.shape)
    expected = forward_backward(reference(labels, reduction), hidden, weight, b, grad_output)
    actual = forward_backward(
        lambda h, w, bb: linear_cross_entropy(
            h, w, labels, bb, reduction=reduction, backend=backend, chunk_bytes=chunk_rows * V * 4
        ),
        hidden, weight, b, grad_output,
    )
    assert_all_close(actual, expected, torch.float32)
