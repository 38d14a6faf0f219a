"""The optimizer choices (minift.training.optim): 8-bit AdamW through build_optimizer and the snapshot files."""

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
