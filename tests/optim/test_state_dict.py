"""state_dict round trips, and state written by other diffGrad implementations loads."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from diffgrad import DiffGrad


def _setup(options: dict) -> tuple[nn.Module, DiffGrad]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    return model, DiffGrad(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 3e-3}], lr=1e-2, **options
    )


def _train(model: nn.Module, opt: DiffGrad, sched, steps: range) -> None:
    for i in steps:
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"foreach": True},
        {"amsgrad": True, "weight_decay": 0.1, "friction": "dfc4"},
        {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True},
    ],
)
def test_round_trip_mid_training_is_bit_exact(options: dict) -> None:
    model, opt = _setup(options)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    _train(model, opt, sched, range(20))
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = _setup(options)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    _train(model, opt, sched, range(8))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, opt = _setup(options)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    state = opt.state_dict()["state"][0]
    assert set(state) >= {"step", "exp_avg", "exp_avg_sq", "previous_grad"}
    _train(model, opt, sched, range(8, 20))
    for actual, want in zip(model.parameters(), expected):
        assert torch.equal(actual, want)


def test_loads_state_saved_by_the_published_code() -> None:
    """The published diffGrad.py keeps ``step`` as a Python int and the same tensor keys."""
    p = torch.randn(4, requires_grad=True)
    published_state = {
        "state": {
            0: {
                "step": 3,
                "exp_avg": torch.full((4,), 0.1),
                "exp_avg_sq": torch.full((4,), 0.01),
                "previous_grad": torch.ones(4),
            }
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [0]}],
    }
    opt = DiffGrad([p])
    opt.load_state_dict(published_state)
    state = opt.state[p]
    assert torch.is_tensor(state["step"]) and state["step"].item() == 3.0
    assert opt.param_groups[0]["friction"] == "dfc"
    p.grad = torch.ones(4)
    opt.step()
    assert state["step"].item() == 4.0 and torch.equal(state["previous_grad"], torch.ones(4))


def test_loads_state_with_per_group_step() -> None:
    """Some implementations (pytorch_optimizer) keep ``step`` in the param group, not per parameter."""
    p = torch.randn(4, requires_grad=True)
    saved = {
        "state": {0: {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4), "previous_grad": torch.zeros(4)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "step": 7, "params": [0]}],
    }
    opt = DiffGrad([p])
    opt.load_state_dict(saved)
    assert opt.state[p]["step"].item() == 7.0


def test_enabling_amsgrad_after_loading_creates_its_buffer() -> None:
    p = torch.randn(4, requires_grad=True)
    opt = DiffGrad([p])
    p.grad = torch.randn(4)
    opt.step()
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert "max_exp_avg_sq" in opt.state[p]
