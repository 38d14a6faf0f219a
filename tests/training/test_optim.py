"""The optimizer choices (minift.training.optim): on CPU "adamw" is torch's fused AdamW with the loop's trajectory;
8-bit AdamW through build_optimizer and the snapshot files."""

import torch
from safetensors.torch import load, save

from minift.kernels import AdamW8bit
from minift.training.optim import OPTIMIZERS, build_optimizer
from minift.training.snapshot import _join_optimizer_state, _split_optimizer_state


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 300), torch.nn.Tanh(), torch.nn.Linear(300, 3))


def _steps(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_adamw8bit_is_a_choice_and_resumes_exactly_from_a_snapshot():
    """build_optimizer's groups (decay on matrices only); the state through the snapshot's safetensors
    split and join (minift.training.snapshot) and load_state_dict: 3 + 3 steps == 6 steps, bit for bit."""
    assert "adamw8bit" in OPTIMIZERS
    straight, resumed = _model(), _model()
    opt = build_optimizer(straight, "adamw8bit", lr=1e-2, weight_decay=0.1)
    assert isinstance(opt, AdamW8bit) and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    opt.backend = "torch"  # the reference: the interpreter (TRITON_INTERPRET=1 in tests) is slow for a loop
    _steps(straight, opt, 6, seed=0)
    first = build_optimizer(resumed, "adamw8bit", lr=1e-2, weight_decay=0.1)
    first.backend = "torch"
    _steps(resumed, first, 3, seed=0)
    tensors, meta = _split_optimizer_state(first.state_dict())
    second = build_optimizer(resumed, "adamw8bit", lr=1e-2, weight_decay=0.1)
    second.backend = "torch"
    second.load_state_dict(_join_optimizer_state(load(save(tensors)), meta, second))
    # the same data for steps 4-6 as the straight run saw: replay the generator past the first 3 batches
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    for _ in range(3):
        x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        second.zero_grad()
        torch.nn.functional.cross_entropy(resumed(x), y).backward()
        second.step()
    for p, r in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, r)
        assert second.state[r]["exp_avg"].dtype == torch.uint8 and second.state[r]["exp_avg_sq_absmax"].dtype == torch.float32


def _norm_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.LayerNorm(96), torch.nn.Linear(96, 8))


def _trajectory(model, optimizer, steps=10):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adamw_on_cpu_is_torchs_fused_kernel_with_the_loops_trajectory():
    ours = _norm_model()
    optimizer = build_optimizer(ours, "adamw", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    assert all(group["fused"] is True for group in optimizer.param_groups)
    ref = _norm_model()
    loop = torch.optim.AdamW([{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), foreach=False, fused=False)
    for a, b in zip(_trajectory(ours, optimizer), _trajectory(ref, loop)):
        # the same update in another association of its fp32 products: a few ulps of |p| <= ~0.2 after
        # 10 steps of lr 1e-2, so atol 1e-7 (a wrong group, decay or bias correction moves p by >= 1e-4)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
