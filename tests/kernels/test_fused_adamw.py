"""FusedAdamW against torch.optim.AdamW: steps, trajectories, state_dicts, both backends.

On a CPU the "triton" backend runs the kernel in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); with TRITON_INTERPRET=0 on a GPU machine the same tests run the compiled kernel.
"""

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_backends import BACKENDS, DEVICE, assert_refuses_bad_inputs, assert_step_returns_the_closures_loss, requires_triton

from minift.kernels.fused_adamw import BLOCK_SIZE, FusedAdamW

# fp32: torch's CPU lerp_ is an FMA and Triton's interpreter (numpy) has none, so m differs by an ulp
# now and then; after 10-20 steps values of size ~1 agree to within 6e-7 (measured), inside 1e-6 + 1e-6 * |x|.
FP32 = dict(rtol=1e-6, atol=1e-6)
# Odd sizes: a scalar, 1, 7, 1000, 31x123, one past a block, a 3-D tensor.
SHAPES = [(), (1,), (7,), (1000,), (31, 123), (BLOCK_SIZE + 1,), (3, 5, 2)]


def _params(shapes, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def _groups(params):
    """Two groups with different hyperparameters; the first keeps the constructor's defaults."""
    return [
        {"params": params[:4]},
        {"params": params[4:], "lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0},
    ]


def _set_grads(param_lists, step):
    """The same fresh random gradients (as after zero_grad(set_to_none=True)) for each list.

    params[0] never gets one; params[1] only on even steps, so step counts differ within a group.
    """
    gen = torch.Generator().manual_seed(step)
    for i, p in enumerate(param_lists[0]):
        has_grad = i != 0 and (i != 1 or step % 2 == 0)
        g = torch.randn(p.shape, generator=gen).to(DEVICE, p.dtype) if has_grad else None
        for params in param_lists:
            params[i].grad = None if g is None else g.clone()


def _assert_same_state(opt, params, ref_opt, ref_params, **tol):
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, **tol)
        assert set(opt.state[p]) == set(ref_opt.state[r])
        if opt.state[p]:
            assert float(opt.state[p]["step"]) == float(ref_opt.state[r]["step"])
            torch.testing.assert_close(opt.state[p]["exp_avg"], ref_opt.state[r]["exp_avg"], **tol)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref_opt.state[r]["exp_avg_sq"], **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_adamw(backend):
    params = _params(SHAPES)
    ref_params = _clone(params)
    opt = FusedAdamW(_groups(params), lr=1e-2, weight_decay=0.1, backend=backend)
    ref_opt = torch.optim.AdamW(_groups(ref_params), lr=1e-2, weight_decay=0.1)
    initial = params[0].detach().clone()
    for step in range(12):
        _set_grads([params, ref_params], step)
        opt.step()
        ref_opt.step()
        _assert_same_state(opt, params, ref_opt, ref_params, **FP32)
    assert torch.equal(params[0], initial) and not opt.state[params[0]]  # no grad: untouched, no state
    assert float(opt.state[params[1]]["step"]) == 6  # updated on even steps only


@requires_triton
@settings(max_examples=12, deadline=None, derandomize=True)  # the same examples every run
@given(
    sizes=st.lists(st.integers(0, 3 * BLOCK_SIZE + 5), min_size=1, max_size=5),
    lr=st.floats(1e-4, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    weight_decay=st.floats(0.0, 0.5),
)
def test_triton_matches_reference_random(sizes, lr, beta1, beta2, weight_decay):
    params = _params([(n,) for n in sizes])
    ref_params = _clone(params)
    hyper = dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
    opt = FusedAdamW(params, **hyper, backend="triton")
    ref_opt = torch.optim.AdamW(ref_params, **hyper)
    for step in range(3):
        for p, r in zip(params, ref_params):
            p.grad = torch.randn(p.shape, device=DEVICE)
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    _assert_same_state(opt, params, ref_opt, ref_params, **FP32)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to(DEVICE)


def _mlp_groups(model, **weights_group):
    """Weight decay on matrices only, as nanoGPT and GPT-2 training do."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": matrices, **weights_group}, {"params": vectors, "weight_decay": 0.0}]


def _train(model, opt, steps, scheduler=None):
    """Full-batch training on fixed data; returns the loss of every step."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen).to(DEVICE)
    y = torch.randint(0, 3, (64,), generator=gen).to(DEVICE)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()  # set_to_none=True: fresh gradient tensors every step
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return torch.tensor(losses)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trajectory_matches_torch_adamw(backend):
    ref_model, model = _mlp(), _mlp()
    ref_losses = _train(ref_model, torch.optim.AdamW(_mlp_groups(ref_model, weight_decay=0.1), lr=3e-2), 20)
    losses = _train(model, FusedAdamW(_mlp_groups(model, weight_decay=0.1), lr=3e-2, backend=backend), 20)
    assert ref_losses[-1] < 0.8 * ref_losses[0]  # it trains, so the comparison is not of two flat lines
    torch.testing.assert_close(losses, ref_losses, **FP32)
    torch.testing.assert_close(list(model.parameters()), list(ref_model.parameters()), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scheduler_lr_change_is_honoured(backend):
    ref_model, model = _mlp(), _mlp()
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=3e-2)
    opt = FusedAdamW(model.parameters(), lr=3e-2, backend=backend)
    # StepLR mutates group["lr"] every 4 steps, as every torch scheduler does.
    ref_losses = _train(ref_model, ref_opt, 12, torch.optim.lr_scheduler.StepLR(ref_opt, step_size=4, gamma=0.1))
    losses = _train(model, opt, 12, torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.1))
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-5)  # decayed after steps 4, 8 and 12
    torch.testing.assert_close(losses, ref_losses, **FP32)
    torch.testing.assert_close(list(model.parameters()), list(ref_model.parameters()), **FP32)


def _round_trip(state_dict):
    """Through bytes, as a checkpoint would go (weights_only: no pickled code)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first", ["fused", "torch"])
def test_state_dict_round_trip(backend, first):
    """Train 5 steps with one optimizer, move its state_dict to the other, train 5 more: the
    trajectory equals 10 steps of torch.optim.AdamW."""
    make = {
        "fused": lambda m: FusedAdamW(_mlp_groups(m, weight_decay=0.1), lr=3e-2, backend=backend),
        "torch": lambda m: torch.optim.AdamW(_mlp_groups(m, weight_decay=0.1), lr=3e-2),
    }
    second = "torch" if first == "fused" else "fused"
    ref_model, model = _mlp(), _mlp()
    ref_losses = _train(ref_model, make["torch"](ref_model), 10)
    opt = make[first](model)
    losses_a = _train(model, opt, 5)
    resumed = make[second](model)
    resumed.load_state_dict(_round_trip(opt.state_dict()))
    losses_b = _train(model, resumed, 5)
    torch.testing.assert_close(torch.cat([losses_a, losses_b]), ref_losses, **FP32)
    torch.testing.assert_close(list(model.parameters()), list(ref_model.parameters()), **FP32)


def test_state_dict_layout_matches_torch():
    """Same group keys, same per-parameter keys, dtypes, shapes and devices as torch.optim.AdamW."""
    model, ref_model = _mlp(), _mlp()
    opt = FusedAdamW(_mlp_groups(model, weight_decay=0.1), lr=3e-2, backend="torch")
    ref_opt = torch.optim.AdamW(_mlp_groups(ref_model, weight_decay=0.1), lr=3e-2)
    _train(model, opt, 1)
    _train(ref_model, ref_opt, 1)
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]
    assert sd["state"].keys() == ref_sd["state"].keys()
    for i, state in sd["state"].items():
        assert state.keys() == ref_sd["state"][i].keys()
        for key, value in state.items():
            ref = ref_sd["state"][i][key]
            assert (value.dtype, value.shape, value.device) == (ref.dtype, ref.shape, ref.device), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_matches_reference(backend):
    """fp16 parameters, fp32 math: the kernel against the reference, 10 steps."""
    params = _params(SHAPES, torch.float16)
    ref_params = _clone(params)
    opt = FusedAdamW(_groups(params), lr=1e-2, backend=backend)
    ref_opt = FusedAdamW(_groups(ref_params), lr=1e-2, backend="torch")
    for step in range(10):
        _set_grads([params, ref_params], step)
        opt.step()
        ref_opt.step()
    assert opt.state[params[2]]["exp_avg"].dtype == torch.float16  # moments in the parameter's dtype
    # Both round the same fp32 result to fp16 once per step; an ulp of fp32 difference can flip that
    # rounding, so allow one fp16 ulp (2**-10 relative) and an atol for moments near zero.
    _assert_same_state(opt, params, ref_opt, ref_params, rtol=2**-10, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_one_step_matches_reference(backend):
    """bf16 parameters, one step. Triton's interpreter rounds fp32 -> bf16 toward zero where a GPU
    and torch round to nearest, so the results may differ by one bf16 ulp (at most 2**-7 relative);
    one step keeps that from compounding, and any wrong address or dtype is far larger."""
    params = _params(SHAPES, torch.bfloat16)
    ref_params = _clone(params)
    opt = FusedAdamW(_groups(params), lr=1e-2, backend=backend)
    ref_opt = FusedAdamW(_groups(ref_params), lr=1e-2, backend="torch")
    _set_grads([params, ref_params], step=0)
    opt.step()
    ref_opt.step()
    assert opt.state[params[2]]["exp_avg_sq"].dtype == torch.bfloat16
    _assert_same_state(opt, params, ref_opt, ref_params, rtol=2**-7, atol=1e-6)


def test_unsupported_options_raise():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdamW([p], amsgrad=True)
    with pytest.raises(ValueError, match="maximize"):
        FusedAdamW([{"params": [p], "maximize": True}])
    assert_refuses_bad_inputs(FusedAdamW)


def test_loaded_amsgrad_state_raises():
    """A torch.optim.AdamW state_dict with amsgrad=True loads (it replaces the groups), then step refuses."""
    model = _mlp()
    ref_opt = torch.optim.AdamW(model.parameters(), amsgrad=True)
    _train(model, ref_opt, 1)
    opt = FusedAdamW(model.parameters())
    opt.load_state_dict(ref_opt.state_dict())
    with pytest.raises(ValueError, match="amsgrad"):
        _train(model, opt, 1)


@requires_triton
def test_triton_rejects_non_contiguous():
    p = torch.randn(6, 4, device=DEVICE).t().requires_grad_()  # (4, 6) with strides (1, 4)
    p.grad = torch.randn(6, 4, device=DEVICE).t()
    with pytest.raises(ValueError, match="contiguous"):
        FusedAdamW([p], backend="triton").step()


@requires_triton
def test_kernel_writes_stay_inside_each_tensor():
    """Two parameters sliced from one buffer of sentinels: a block that ran past the end of its
    tensor (a wrong tail mask) would overwrite them. The first ends one element short of a block;
    the second starts 4 B past a 16 B boundary, so the launch takes the unaligned path too."""
    buffer = torch.full((3 * BLOCK_SIZE,), 7.0, device=DEVICE)
    a = torch.nn.Parameter(buffer[: BLOCK_SIZE - 1])  # a view: shares the buffer's memory
    b = torch.nn.Parameter(buffer[BLOCK_SIZE + 1 : 2 * BLOCK_SIZE + 2])
    ref_params = _clone([a, b])
    for p, r in zip([a, b], ref_params):
        p.grad = torch.randn(p.shape, device=DEVICE)
        r.grad = p.grad.clone()
    FusedAdamW([a, b], backend="triton").step()
    torch.optim.AdamW(ref_params).step()
    torch.testing.assert_close([a, b], ref_params, **FP32)
    assert (buffer[BLOCK_SIZE - 1 : BLOCK_SIZE + 1] == 7.0).all() and (buffer[2 * BLOCK_SIZE + 2 :] == 7.0).all()


@requires_triton
def test_a_misaligned_tensor_gets_its_own_launch(monkeypatch):
    """One view 4 B past a 16 B boundary must not take the 128-bit promise away from the others: the
    aligned tensors go in one launch with ALIGNED=True, the misaligned one in a second without it."""
    import minift.kernels.fused_adamw as adamw_module

    launches, real = [], adamw_module._adamw_kernel

    class Spy:  # records each launch's (ALIGNED, number of tensors), then runs the real kernel
        def __getitem__(self, grid):
            def launch(tensors, *args, **kwargs):
                launches.append((kwargs["ALIGNED"], len(tensors)))
                return real[grid](tensors, *args, **kwargs)
            return launch

    monkeypatch.setattr(adamw_module, "_adamw_kernel", Spy())
    buffer = torch.zeros(3 * BLOCK_SIZE, device=DEVICE)
    params = [torch.nn.Parameter(torch.randn(300, device=DEVICE)), torch.nn.Parameter(buffer[1 : BLOCK_SIZE + 1]),
              torch.nn.Parameter(torch.randn(7, 5, device=DEVICE))]
    reference = _clone(params)
    for p, r in zip(params, reference):
        p.grad = torch.randn(p.shape, device=DEVICE)
        r.grad = p.grad.clone()
    FusedAdamW(params, backend="triton").step()
    torch.optim.AdamW(reference).step()
    assert launches == [(True, 2), (False, 1)]
    torch.testing.assert_close(params, reference, **FP32)


def test_step_returns_the_closures_loss():
    assert_step_returns_the_closures_loss(FusedAdamW)
