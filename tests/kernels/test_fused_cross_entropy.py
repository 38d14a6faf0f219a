"""kernels.cross_entropy against F.cross_entropy on fp32-upcast logits, forward and backward, on both
backends ("triton" runs in Triton's interpreter on CPU: tests/conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minift.kernels.fused_cross_entropy as cross_entropy_module
from minift.kernels import cross_entropy

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
REDUCTIONS = ["mean", "sum", "none"]
# The loss is computed in fp32 from the same (rounded) logits as the reference: tight in every dtype.
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}  # fp32 summation order (lse over V, sum over rows)
GRAD_TOL = {
    # fp32 end to end; the atol for softmax - 1 of a confident row depends on the logits, see fp32_grad_atol
    torch.float32: {"rtol": 1e-5},
    # rounded to bf16 (8-bit significand) up to twice, in forward and when scaled by grad_output, each
    # by up to 1 ulp = 2**-7 relative: Triton's interpreter truncates fp32 -> bf16 instead of rounding
    torch.bfloat16: {"rtol": 2**-6, "atol": 1e-7},
    # rounded to nearest fp16 (11-bit significand, 2**-11 relative) up to twice; below 6e-5 fp16 is
    # subnormal (spacing 2**-24): two half-spacing errors, the first scaled by grad_output < 1.5
    torch.float16: {"rtol": 2**-10, "atol": 2**-23},
}


def fp32_grad_atol(logits: torch.Tensor, grad_output: torch.Tensor) -> float:
    """Absolute error of an fp32 gradient entry softmax(x)[j] - 1 where p = softmax(x)[j] is near 1.

    The Triton kernel computes p = exp(x - lse) with lse = m + log(d) rounded to fp32: lse is off by
    up to half an ulp of |lse| (2**-24 |lse|), the exp and the log add about an ulp of 1 (2**-23) each,
    and p - 1 is then exact (Sterbenz). The backward multiplies by grad_output (up to 1.5 for "none").
    PyTorch's log_softmax subtracts the max first and never rounds a number as large as lse, so the
    difference grows with the logits: with |lse| = 5 and grad_output 1.5 a correct kernel is off by 3e-7.
    """
    if logits.numel() == 0:
        return 0.0
    lse = torch.logsumexp(logits.float(), dim=-1).abs().max().item()
    return grad_output.abs().max().item() * (2 * 2**-23 + 2**-24 * lse)


def grad_tol(logits: torch.Tensor, grad_output: torch.Tensor = torch.tensor(1.0)) -> dict:
    if logits.dtype == torch.float32:
        return {**GRAD_TOL[torch.float32], "atol": fp32_grad_atol(logits, grad_output)}
    return GRAD_TOL[logits.dtype]


def make_labels(N: int, V: int, ignore: str, ignore_index: int = -100) -> torch.Tensor:
    labels = torch.randint(0, V, (N,))
    if ignore == "some":
        labels[::3] = ignore_index
    elif ignore == "all":
        labels[:] = ignore_index
    return labels


def check_against_torch(logits, labels, reduction, backend, ignore_index=-100):
    """Forward and backward of cross_entropy against F.cross_entropy on the fp32 upcast of `logits`."""
    ref_logits = logits.to(torch.float32, copy=True).requires_grad_()
    ref_loss = F.cross_entropy(ref_logits, labels, ignore_index=ignore_index, reduction=reduction)
    # "mean" is the last op as in training (grad_output 1: the scaling is skipped); the others get a
    # grad_output that has to be applied, per row for "none".
    grad_output = {"mean": torch.tensor(1.0), "sum": torch.tensor(0.5), "none": torch.rand(labels.shape) + 0.5}
    grad_output = grad_output[reduction]
    ref_loss.backward(grad_output)

    ours = logits.clone().requires_grad_()
    loss = cross_entropy(ours, labels, ignore_index=ignore_index, reduction=reduction, backend=backend)
    loss.backward(grad_output)

    assert loss.dtype == torch.float32 and ours.grad.dtype == logits.dtype
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    torch.testing.assert_close(ours.grad.float(), ref_logits.grad, **grad_tol(logits, grad_output))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(31, 123), (4, 50257)])  # odd sizes; GPT-2's vocabulary (2 blocks of 32768)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(backend, dtype, N, V, reduction):
    logits = (3 * torch.randn(N, V)).to(dtype)  # std 3: confident rows as well as flat ones
    check_against_torch(logits, make_labels(N, V, "some"), reduction, backend)


@pytest.mark.slow  # 423 programs in the interpreter
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_rows(backend, dtype):
    logits = (3 * torch.randn(423, 67)).to(dtype)  # rows not a multiple of anything
    check_against_torch(logits, make_labels(423, 67, "some"), "mean", backend)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_in_row_chunks(monkeypatch, dtype):
    # The reference bounds its fp32 working copy of half-precision logits by chunking rows; force
    # 7-row chunks: 31 = 4 * 7 + 3.
    monkeypatch.setattr(cross_entropy_module, "REFERENCE_CHUNK_BYTES", 7 * 123 * 4)
    logits = (3 * torch.randn(31, 123)).to(dtype)
    check_against_torch(logits, make_labels(31, 123, "some"), "none", "torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "none"])  # "mean" of an all-ignored batch: see below
@pytest.mark.parametrize("ignore", ["none", "all"])
def test_ignore_patterns(backend, reduction, ignore):
    check_against_torch(torch.randn(31, 123), make_labels(31, 123, ignore), reduction, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_ignored_rows_mean(backend):
    check_against_torch(torch.randn(31, 123), make_labels(31, 123, "none"), "mean", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_mean_is_zero_not_nan(backend, dtype):
    # F.cross_entropy returns 0/0 = NaN here; ours returns 0 with a zero gradient.
    logits = torch.randn(7, 50).to(dtype).requires_grad_()
    loss = cross_entropy(logits.clone(), make_labels(7, 50, "all"), backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ignore_index(backend):
    labels = make_labels(31, 123, "some", ignore_index=5)
    check_against_torch(torch.randn(31, 123), labels, "mean", backend, ignore_index=5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batch_time_vocab_input(backend, reduction):
    B, T, V = 2, 9, 37
    logits, labels = torch.randn(B, T, V), make_labels(B * T, V, "some").view(B, T)
    ref_logits = logits.clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.view(-1, V), labels.view(-1), reduction=reduction)
    ref = ref.view(B, T) if reduction == "none" else ref
    ref.backward(torch.ones_like(ref))
    ours = logits.clone().requires_grad_()
    loss = cross_entropy(ours, labels, reduction=reduction, backend=backend)
    loss.backward(torch.ones_like(loss))
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref, **LOSS_TOL)
    torch.testing.assert_close(ours.grad, ref_logits.grad, **grad_tol(logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_a_stride(backend):
    # A slice of a wider buffer: the kernel must step rows by the stride, not by V.
    wide = torch.randn(13, 80)
    logits, labels = wide[:, :50], make_labels(13, 50, "some")
    expected = F.cross_entropy(logits, labels)
    ref_logits = logits.clone().requires_grad_()
    F.cross_entropy(ref_logits, labels).backward()
    loss = cross_entropy(logits, labels, backend=backend)
    torch.testing.assert_close(loss, expected, **LOSS_TOL)
    torch.testing.assert_close(wide[:, :50], ref_logits.grad, **grad_tol(ref_logits))  # written in place


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_with_a_stride(backend):
    # labels[::2] is a 1-D view with stride 2: the kernel must read label `row` at row * stride
    logits, labels = torch.randn(13, 50), make_labels(26, 50, "some")[::2]
    assert labels.stride(0) == 2
    torch.testing.assert_close(cross_entropy(logits.clone(), labels, backend=backend), F.cross_entropy(logits, labels),
                               **LOSS_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_overwrites_logits_with_gradient(backend):
    logits, labels = torch.randn(31, 123), make_labels(31, 123, "some")
    ref_logits = logits.clone().requires_grad_()
    F.cross_entropy(ref_logits, labels).backward()
    cross_entropy(logits, labels, backend=backend)  # no backward: the gradient is there after forward
    torch.testing.assert_close(logits, ref_logits.grad, **grad_tol(ref_logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_false_keeps_logits(backend):
    logits, labels = torch.randn(31, 123), make_labels(31, 123, "some")
    before = logits.clone()
    leaf = logits.requires_grad_()
    cross_entropy(leaf, labels, backend=backend, inplace=False).backward()
    assert torch.equal(logits, before)
    assert leaf.grad is not None and not torch.equal(leaf.grad, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overwriting_logits_saved_by_autograd_raises(backend):
    # tanh saves its output for backward; overwriting it must not silently give a wrong gradient.
    x, labels = torch.randn(5, 20, requires_grad=True), make_labels(5, 20, "none")
    loss = cross_entropy(torch.tanh(x), labels, backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_twice_raises(backend):
    logits = torch.randn(4, 10, requires_grad=True)
    loss = cross_entropy(logits.clone(), make_labels(4, 10, "none"), backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("bad", [-1, 123, 10**6])
def test_out_of_range_label_raises(bad):
    labels = make_labels(31, 123, "none")
    labels[17] = bad
    with pytest.raises(ValueError, match=rf"label {bad} at row 17 is outside \[0, 123\)"):
        cross_entropy(torch.randn(31, 123), labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_mode(backend):
    # Evaluation code runs under inference_mode, where tensors carry no version counter.
    logits, labels = torch.randn(31, 123), make_labels(31, 123, "some")
    expected = F.cross_entropy(logits, labels)
    with torch.inference_mode():
        loss = cross_entropy(logits.clone(), labels, backend=backend)
    torch.testing.assert_close(loss, expected, **LOSS_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rows(backend):
    loss = cross_entropy(torch.randn(0, 7, requires_grad=True), torch.zeros(0, dtype=torch.long), backend=backend)
    assert loss.item() == 0.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), reduction="max")
    with pytest.raises(ValueError, match="do not match"):
        cross_entropy(torch.randn(3, 5), torch.zeros(4, dtype=torch.long))


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(1, 12),
    V=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    reduction=st.sampled_from(["sum", "none"]),
    ignore=st.sampled_from(["none", "some"]),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**16),
)
# Found by Hypothesis: a confident row (lse 5.03) with grad_output 1.46, off by 2.9e-7 (see fp32_grad_atol).
@example(N=2, V=2, dtype=torch.float32, reduction="none", ignore="none", backend="triton", seed=16661)
def test_property_random_shapes(N, V, dtype, reduction, ignore, backend, seed):
    # "sum"/"none" so that an example whose rows are all ignored still compares with PyTorch.
    torch.manual_seed(seed)
    check_against_torch((3 * torch.randn(N, V)).to(dtype), make_labels(N, V, ignore), reduction, backend)


# --- the GPU path: the scale folded into the forward, no host sync, fp16 kept out of underflow ---------------


class _ElementwiseOverRows(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every elementwise op that reads or writes a tensor of `numel` elements (the [N, V] gradient)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func.overloadpacket in (torch.ops.aten.mul, torch.ops.aten.mul_, torch.ops.aten.div_, torch.ops.aten.div):
            if any(t.numel() == self.numel for t in tensors):
                self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scale_is_folded_into_the_forward(backend, dtype, reduction):
    # A training step normalises by its token count: scale = 1 / 137 here. The loss and gradient are those
    # of F.cross_entropy times the scale, and backward with grad_output 1 makes no pass over the gradient
    # (fp16 excepted: its scale waits for backward, see test_fp16_gradient_does_not_underflow).
    N, V, scale = 31, 123, 1 / 137
    logits, labels = (3 * torch.randn(N, V)).to(dtype), make_labels(N, V, "some")
    ref_logits = logits.to(torch.float32, copy=True).requires_grad_()
    (F.cross_entropy(ref_logits, labels, reduction=reduction) * scale).backward()
    ours = logits.clone().requires_grad_()
    loss = cross_entropy(ours, labels, reduction=reduction, backend=backend, scale=scale)
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), labels, reduction=reduction) * scale, **LOSS_TOL)
    with _ElementwiseOverRows(N * V) as mode:
        loss.backward()
    torch.testing.assert_close(ours.grad.float(), ref_logits.grad, **grad_tol(logits, torch.tensor(scale)))
    assert mode.seen == ([] if dtype != torch.float16 else ["aten.mul_.Tensor"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_gradient_does_not_underflow(backend):
    # The mean over N = 512 rows folded into fp16 would write p / 512 for every probability p, and fp16
    # flushes values below 2**-24 = 6e-8 (p < 3e-5 here: a third of each row, logits of std 4) to zero
    # before a GradScaler's factor G = 2**16 arrives as grad_output. Kept for backward, only p below 2**-24
    # itself is lost: an absolute error of at most 2**-24 * G / N = 7.6e-6 on the final gradient, where the
    # folded scale lost up to 2**-24 * G = 3.9e-3. Above that, two fp16 roundings (2**-10 each, the
    # interpreter truncates): rtol 2**-9.
    N, V, grad_scale = 512, 96, 2.0**16
    logits, labels = (4 * torch.randn(N, V)).to(torch.float16), make_labels(N, V, "none")
    ref_logits = logits.float().requires_grad_()
    F.cross_entropy(ref_logits, labels).backward(torch.tensor(grad_scale))
    ours = logits.clone().requires_grad_()
    cross_entropy(ours, labels, backend=backend).backward(torch.tensor(grad_scale))
    expected = ref_logits.grad
    assert (expected.abs() < 2.0**-24 * grad_scale).float().mean() > 0.3  # the entries at stake
    torch.testing.assert_close(ours.grad.float(), expected, rtol=2**-9, atol=2.0**-24 * grad_scale / N)


def test_labels_on_a_device_are_not_checked_by_default():
    # On a GPU the check reads a device tensor on the host: a sync per call. The meta device stands in
    # for one here: reading it raises, so any check would fail this test.
    labels = torch.empty(8, dtype=torch.long, device="meta")
    cross_entropy_module._check_labels(labels, 5, -100, None)
    with pytest.raises(RuntimeError, match="meta tensors"):  # what a check that reads the labels meets
        cross_entropy_module._check_labels(labels, 5, -100, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_bad_label_gives_nan_not_a_bad_read(backend):
    labels = make_labels(31, 123, "some")
    labels[4], labels[5] = 123, -7  # past the row's end, before its start
    loss = cross_entropy(torch.randn(31, 123), labels, reduction="none", backend=backend, check_labels=False)
    assert loss[4].isnan() and loss[5].isnan()
    assert loss[labels == -100].eq(0).all() and loss[6:].isfinite().all()
