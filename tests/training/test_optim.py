"""The optimizer choices: on CPU "adamw" is torch's fused AdamW, the same trajectory as torch's default loop."""

import torch
import torch.nn as nn

from minift.training import build_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.LayerNorm(96), nn.Linear(96, 8))


def _trajectory(model, optimizer, steps=10):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adamw_on_cpu_is_torchs_fused_kernel_with_the_loops_trajectory():
    ours = _model()
    optimizer = build_optimizer(ours, "adamw", lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    assert all(group["fused"] is True for group in optimizer.param_groups)
    ref = _model()
    loop = torch.optim.AdamW([{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), foreach=False, fused=False)
    for a, b in zip(_trajectory(ours, optimizer), _trajectory(ref, loop)):
        # the same update in another association of its fp32 products: a few ulps of |p| <= ~0.2 after
        # 10 steps of lr 1e-2, so atol 1e-7 (a wrong group, decay or bias correction moves p by >= 1e-4)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
