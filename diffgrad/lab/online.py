"""Online convex problems for the regret claim (paper Sec. IV): R(T)/T should fall like 1/sqrt(T).

Regret R(T) = Σ_t [f_t(θ_t) − f_t(θ*)] with θ* the best fixed point in hindsight, in the online
setting of Adam's analysis: the learner sees f_t only after committing to θ_t, steps with
α_t = α/sqrt(t), and is projected back onto the feasible box after every step. One run to the
horizon T gives R(t)/t for every t ≤ T. Like a workload, a problem knows nothing of the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]
LossSequence = Callable[[int, Tensor], Tensor]  # (t, θ) -> f_t(θ), t = 1, 2, …


@dataclass(frozen=True)
class OnlineProblem:
    """A named sequence of convex losses on the box [−radius, radius]^dim.

    ``instance(horizon)`` returns the losses f_1..f_T and the values f_t(θ*) of the best fixed point.
    """

    name: str
    description: str
    dim: int
    radius: float
    instance: Callable[[int], tuple[LossSequence, Tensor]]


def reddi_counterexample(horizon: int, big: float = 1010.0, period: int = 101) -> tuple[LossSequence, Tensor]:
    """f_t(x) = C·x when t mod period = 1, else −x, on [−1, 1] (Reddi et al., ICLR 2018, Sec. 3).

    The rare large gradient is the informative one: x* = −1, but Adam's second moment forgets it
    and Adam drifts towards +1, the worst point; AMSGrad remembers it.
    """
    t = torch.arange(1, horizon + 1)
    slopes = torch.where(t % period == 1, big, -1.0).double()
    return (lambda step, x: slopes[step - 1] * x.sum()), -slopes  # f_t(x*) at x* = −1


def online_least_squares(horizon: int, dim: int = 10, noise: float = 0.5, seed: int = 0) -> tuple[LossSequence, Tensor]:
    """f_t(θ) = ½(a_tᵀθ − b_t)², a_t ~ N(0, I), b_t = a_tᵀθ_true + noise; θ* by least squares."""
    g = torch.Generator().manual_seed(seed)
    theta_true = torch.rand(dim, generator=g, dtype=torch.float64) - 0.5
    a = torch.randn(horizon, dim, generator=g, dtype=torch.float64)
    b = a @ theta_true + noise * torch.randn(horizon, generator=g, dtype=torch.float64)
    # θ* is unconstrained least squares; it lies well inside the box [−2, 2]^dim used below.
    theta_star = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return (lambda step, x: 0.5 * (a[step - 1] @ x - b[step - 1]) ** 2), 0.5 * (a @ theta_star - b) ** 2


PROBLEMS: dict[str, OnlineProblem] = {
    p.name: p
    for p in (
        OnlineProblem("reddi", "f_t(x) = 1010x if t mod 101 = 1, else −x; x ∈ [−1, 1]", 1, 1.0, reddi_counterexample),
        OnlineProblem(
            "least-squares", "f_t(θ) = ½(a_tᵀθ − b_t)², a_t ~ N(0, I₁₀); θ ∈ [−2, 2]¹⁰", 10, 2.0, online_least_squares
        ),
    )
}


def average_regret(problem: OnlineProblem, make_optimizer: OptimizerFactory, horizon: int) -> Tensor:
    """R(t)/t for t = 1..horizon. The optimizer's lr is α; the step at t uses α/sqrt(t)."""
    losses, best = problem.instance(horizon)
    theta = torch.zeros(problem.dim, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([theta])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 / math.sqrt(k + 1))
    seen = torch.empty(horizon, dtype=torch.float64)
    for t in range(1, horizon + 1):
        optimizer.zero_grad()
        loss = losses(t, theta)
        loss.backward()
        seen[t - 1] = loss.detach()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            theta.clamp_(-problem.radius, problem.radius)
    return torch.cumsum(seen - best, 0) / torch.arange(1, horizon + 1, dtype=torch.float64)
