"""Bad input raises an error naming the argument and the value; None grads leave state alone."""

from __future__ import annotations

import math

import pytest
import torch

from diffgrad import DiffGrad


def _p() -> list[torch.Tensor]:
    return [torch.randn(3, requires_grad=True)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # torch.optim's own phrases first (users' and other libraries' checks match on them).
        ({"lr": -1e-3}, "Invalid learning rate: -0.001"),
        ({"lr": math.nan}, "Invalid learning rate: nan"),
        ({"lr": "0.1"}, "Invalid learning rate: '0.1'"),
        ({"lr": torch.tensor([0.1, 0.2])}, "Invalid learning rate"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"betas": (0.9,)}, "Invalid betas: (0.9,)"),
        ({"eps": -1.0}, "Invalid epsilon value: -1.0"),
        ({"weight_decay": -0.5}, "Invalid weight_decay value: -0.5"),
        ({"friction": "dfc9"}, "Invalid friction: 'dfc9'"),
        ({"friction_slope": -1.0}, "Invalid friction_slope: -1.0"),
        ({"friction_slope": "2"}, "Invalid friction_slope: '2'"),
        ({"friction": "dfc3", "friction_slope": 2.0}, "Invalid friction_slope: 2.0"),
        ({"amsgrad": "yes"}, "Invalid amsgrad: 'yes'"),
        ({"foreach": "auto"}, "Invalid foreach: 'auto'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        DiffGrad(_p(), **kwargs)
    assert str(info.value).startswith(message)


def test_bad_param_group_option_is_named() -> None:
    opt = DiffGrad(_p())
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        opt.add_param_group({"params": _p(), "lr": -1})
    with pytest.raises(ValueError, match="Invalid friction: 'sigmoid'"):
        DiffGrad([{"params": _p(), "friction": "sigmoid"}])


def test_sparse_gradients_are_rejected() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        DiffGrad(emb.parameters()).step()


def test_friction_names_are_case_insensitive() -> None:
    DiffGrad(_p(), friction="DFC3")


@pytest.mark.parametrize("foreach", [False, True])
def test_params_without_grad_keep_their_state(foreach: bool) -> None:
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = DiffGrad([a, b], foreach=foreach)
    a.grad, b.grad = torch.randn(3), torch.randn(3)
    opt.step()
    snapshot = {k: v.clone() for k, v in opt.state[b].items()}
    b_before = b.detach().clone()
    a.grad, b.grad = torch.randn(3), None
    opt.step()
    assert torch.equal(b, b_before)
    for key, value in snapshot.items():
        assert torch.equal(opt.state[b][key], value)
    assert opt.state[a]["step"].item() == 2.0


def test_step_with_closure_returns_loss() -> None:
    p = torch.randn(3, requires_grad=True)
    opt = DiffGrad([p])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))
