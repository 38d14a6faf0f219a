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


# --- the GPU path: autocast, the chunk size, the scale folded into the forward, fp16 ------------------------

import minift.kernels.fused_linear_cross_entropy as linear_module  # noqa: E402


def test_autocast_runs_the_head_in_the_autocast_dtype(monkeypatch):
    # Autocast rewrites F.linear but not mm(out=) / addmm_, so without the cast the products of a bf16-autocast
    # step ran in fp32. CPU autocast shows it as CUDA's would; the gradients come back in the leaves' fp32.
    seen, real = [], linear_module._linear_cross_entropy_chunks
    monkeypatch.setattr(linear_module, "_linear_cross_entropy_chunks",
                        lambda hidden, weight, *rest: seen.append((hidden.dtype, weight.dtype)) or real(hidden, weight, *rest))
    hidden, weight, _, labels = make_inputs(26, 16, 97, torch.float32, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad_hidden, grad_weight, _ = forward_backward(
            lambda h, w, b: linear_cross_entropy(h, w, labels, backend="torch"), hidden, weight, None, torch.tensor(1.0))
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32
    expected = reference(labels, "mean")(hidden.bfloat16(), weight.bfloat16(), None)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)  # the loss of the bf16 products


@pytest.mark.parametrize("N, V, itemsize, device, expected", [
    (8192, 50257, 2, "cuda", 2048),   # GPT-2's head, bf16: 256 MiB -> 2670 rows -> 4 even chunks
    (8192, 128256, 2, "cuda", 1639),  # LLaMA-3's: 1046 rows fit 256 MiB, below the 1600-row floor: 5 chunks
    (8192, 128256, 4, "cuda", 1639),  # fp32 (TF32): half the FLOP per byte, twice the bytes: the same floor
    (8192, 50257, 4, "cpu", 328),     # 64 MiB -> 333 rows -> 25 chunks of 328
    (100, 50257, 4, "cpu", 100),      # fewer rows than the budget: one chunk
    (1800, 50257, 2, "cuda", 1800),   # 2 chunks fit the budget, but 900 rows would fall below the floor
])
def test_chunk_rows(N, V, itemsize, device, expected):
    rows = linear_module.chunk_rows(N, V, itemsize, device)
    assert rows == expected
    if device == "cuda":  # the point of the floor: W's traffic under a quarter of the GEMMs' time at 300 FLOP/B
        chunks, H = -(-N // rows), 4096
        traffic_s, gemm_s = chunks * 4 * V * H * itemsize / 3.35e12, 6 * N * H * V / (3.35e12 * 300 * 2 / itemsize)
        assert traffic_s <= gemm_s / 4 + 1e-12


def test_given_chunk_bytes_is_a_budget_spread_evenly():
    assert linear_module.chunk_rows(26, 97, 4, "cuda", chunk_bytes=7 * 97 * 4) == 7  # 7 + 7 + 7 + 5: 4 chunks of <= 7
    assert linear_module.chunk_rows(30, 97, 4, "cpu", chunk_bytes=16 * 97 * 4) == 15  # 2 chunks of 15, not 16 + 14


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_is_folded_into_the_forward(backend, dtype):
    hidden, weight, b, labels = make_inputs(26, 16, 97, dtype, bias=True)
    scale = 1 / 137
    ours = forward_backward(lambda h, w, bb: linear_cross_entropy(h, w, labels, bb, reduction="sum", backend=backend,
                                                                  scale=scale, chunk_bytes=7 * 97 * 4),
                            hidden, weight, b, torch.tensor(1.0))
    expected = forward_backward(lambda h, w, bb: reference(labels, "sum")(h, w, bb) * scale,
                                hidden, weight, b, torch.tensor(1.0))
    assert_all_close(ours, expected, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_gradient_does_not_underflow(backend):
    # As for cross_entropy: the mean over 512 rows folded into fp16 logits' gradient flushes most of it to
    # zero before a GradScaler's 2**16 arrives; kept for backward, grad_W (fp32 inside) and grad_hidden keep it.
    N, H, V, grad_scale = 512, 16, 96, 2.0**16
    hidden, weight = torch.randn(N, H).half(), (2 * torch.randn(V, H)).half()  # logits of std ~8: small p
    labels = torch.randint(0, V, (N,))
    ours = forward_backward(lambda h, w, b: linear_cross_entropy(h, w, labels, backend=backend),
                            hidden, weight, None, torch.tensor(grad_scale))
    expected = forward_backward(lambda h, w, b: reference(labels, "mean")(h.float(), w.float(), None),
                                hidden, weight, None, torch.tensor(grad_scale))
    for a, e in zip(ours[1:3], expected[1:3]):
        assert a.dtype == torch.float16
        torch.testing.assert_close(a.float(), e.float(), rtol=2**-8, atol=2**-8 * e.abs().max().item())
