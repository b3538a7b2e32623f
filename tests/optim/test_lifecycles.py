"""previous_grad is the optimizer's own copy under every way PyTorch hands out gradients (docs/paper.md §2).

The published code aliased ``.grad``; whenever the next gradient landed in the same storage, Δg = 0
and ξ = 0.5 from step 2 on. Each lifecycle below must give exactly the run with fresh gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffgrad import DiffGrad

IMPLS = [False, True]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g, dtype=torch.float64))
        for _ in range(n)
    ]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def _run(lifecycle: str, foreach: bool, steps: int = 25) -> list[torch.Tensor]:
    model = _model()
    opt = DiffGrad(model.parameters(), lr=0.01, foreach=foreach)
    params = list(model.parameters())
    if lifecycle == "bucket_view":
        # As DDP(gradient_as_bucket_view=True): every .grad is a view into one flat buffer that
        # backward writes into in place, step after step.
        flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
    for x, y in _batches(steps):
        if lifecycle == "set_to_none":
            opt.zero_grad(set_to_none=True)
            _loss(model, x, y).backward()
        elif lifecycle in ("zero_in_place", "bucket_view"):
            opt.zero_grad(set_to_none=False)
            _loss(model, x, y).backward()
        elif lifecycle == "accumulation":
            # Two half-batches accumulated into the same .grad storage.
            opt.zero_grad(set_to_none=False)
            for half in (slice(0, 8), slice(8, 16)):
                (_loss(model, x[half], y[half]) / 2).backward()
        opt.step()
    if lifecycle == "bucket_view":
        assert params[0].grad.data_ptr() == flat.data_ptr(), "the grads stopped being bucket views"
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("foreach", IMPLS)
@pytest.mark.parametrize("lifecycle", ["zero_in_place", "accumulation", "bucket_view"])
def test_lifecycle_matches_fresh_gradients(lifecycle: str, foreach: bool) -> None:
    expected = _run("set_to_none", foreach)
    for actual, want in zip(_run(lifecycle, foreach), expected):
        # Accumulating two halves differs from one full batch by float64 round-off only.
        torch.testing.assert_close(actual, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("foreach", IMPLS)
def test_friction_is_not_stuck_at_one_half_when_grads_reuse_storage(foreach: bool) -> None:
    """The published-code failure mode: with in-place grads, ξ would be 0.5 (Adam at lr/2)."""
    model = _model()
    opt = DiffGrad(model.parameters(), lr=0.01, foreach=foreach)
    half_adam_model = _model()
    half_adam = torch.optim.Adam(half_adam_model.parameters(), lr=0.005)
    for x, y in _batches(5):
        for m, o in ((model, opt), (half_adam_model, half_adam)):
            o.zero_grad(set_to_none=False)
            _loss(m, x, y).backward()
            o.step()
    moved = [not torch.allclose(a, b) for a, b in zip(model.parameters(), half_adam_model.parameters())]
    assert all(moved)
    p = next(model.parameters())
    assert opt.state[p]["previous_grad"].data_ptr() != p.grad.data_ptr()
    torch.testing.assert_close(opt.state[p]["previous_grad"], p.grad)
