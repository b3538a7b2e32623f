"""The online convex problems behind the regret section (paper Sec. IV)."""

from __future__ import annotations

import torch

from diffgrad import DiffGrad
from diffgrad.lab.online import PROBLEMS, average_regret, online_least_squares, reddi_counterexample


def test_reddi_losses_and_best_point() -> None:
    losses, best = reddi_counterexample(203)
    x = torch.tensor([0.5], dtype=torch.float64)
    assert losses(1, x).item() == 505.0 and losses(2, x).item() == -0.5 and losses(102, x).item() == 505.0
    # x* = −1: f_t(−1) = −1010 on the rare steps, +1 otherwise.
    assert best[0].item() == -1010.0 and best[1].item() == 1.0 and best.shape == (203,)


def test_least_squares_best_point_beats_any_other_fixed_point() -> None:
    losses, best = online_least_squares(500)
    other = torch.full((10,), 0.1, dtype=torch.float64)
    assert sum(losses(t, other).item() for t in range(1, 501)) > best.sum().item()


def test_average_regret_falls_on_least_squares() -> None:
    regret = average_regret(PROBLEMS["least-squares"], lambda ps: DiffGrad(ps, lr=0.1), 400)
    assert regret.shape == (400,)
    assert regret[-1] < 0.5 * regret[49]
