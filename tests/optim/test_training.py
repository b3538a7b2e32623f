"""A small model trains with every friction variant and on both implementation paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffgrad import FRICTIONS, DiffGrad


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("friction", sorted(FRICTIONS))
def test_small_model_loss_falls(friction: str, foreach: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = DiffGrad(model.parameters(), lr=1e-2, friction=friction, foreach=foreach)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], (friction, losses[0], losses[-1])
