"""Analytic test functions for optimizer trajectory plots: the paper's 1-D F1, F2, F3
(docs/paper.md §5, Eq. 24–26) and the 2-D Rosenbrock, Beale and Rastrigin functions.

Not workloads: no data and no model, just ``f`` and a starting point. Each ``f`` takes points of
shape [..., dim] (one point or a whole plotting grid) and returns values of shape [...]. Piecewise
functions use ``torch.where`` so autograd yields the true derivative (the paper's notebook got
F2's wrong; see docs/paper.md §5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Function:
    """A differentiable test function with its start point, minima (global first) and a plotting
    domain ((low, high) per coordinate)."""

    name: str
    f: Callable[[Tensor], Tensor]
    x0: tuple[float, ...]
    minima: tuple[tuple[float, ...], ...]
    domain: tuple[tuple[float, float], ...]

    @property
    def dim(self) -> int:
        return len(self.x0)


@dataclass(frozen=True)
class Trajectory:
    """Iterates ``xs`` [steps+1, dim] (``xs[0]`` is the start) and ``losses`` [steps+1] = f(xs)."""

    xs: Tensor
    losses: Tensor


def f1(x: Tensor) -> Tensor:
    """Eq. 24: global minimum at x = −0.3 (value 0), local minimum at x = 0.2 (value 0.05)."""
    x = x[..., 0]
    return torch.where(x <= 0, (x + 0.3) ** 2, (x - 0.2) ** 2 + 0.05)


def f2(x: Tensor) -> Tensor:
    """Eq. 25: a steep linear wall for x ≤ −0.9, then x³ + x·sin(8x) + 0.85."""
    x = x[..., 0]
    return torch.where(x <= -0.9, -40 * x - 35.15, x**3 + x * torch.sin(8 * x) + 0.85)


def f3(x: Tensor) -> Tensor:
    """Eq. 26: x² outside [−0.5, 0.5], a narrow V-shaped valley with its minimum 0 at x = 0 inside."""
    x = x[..., 0]
    inner = torch.where(x <= -0.4, 0.75 + x, torch.where(x <= 0.4, 7 * x.abs() / 8, 0.75 - x))
    return torch.where(x.abs() <= 0.5, inner, x**2)


def rosenbrock(x: Tensor) -> Tensor:
    """(1 − x)² + 100 (y − x²)²; minimum 0 at (1, 1) at the end of a curved, flat valley."""
    a, b = x[..., 0], x[..., 1]
    return (1 - a) ** 2 + 100 * (b - a**2) ** 2


def beale(x: Tensor) -> Tensor:
    """Beale's function; minimum 0 at (3, 0.5), with very steep corners."""
    a, b = x[..., 0], x[..., 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def rastrigin(x: Tensor) -> Tensor:
    """10·d + Σ (xᵢ² − 10 cos 2πxᵢ); minimum 0 at the origin among a lattice of local minima."""
    return 10 * x.shape[-1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(-1)


# F2's minima are zeros of its derivative 3x² + sin 8x + 8x·cos 8x (Newton's method, 4 decimals);
# the one at x = 0 is where the paper's Adam gets stuck.
FUNCTIONS: dict[str, Function] = {
    fn.name: fn
    for fn in (
        Function("F1", f1, (-1.0,), ((-0.3,), (0.2,)), ((-1.2, 1.2),)),
        Function("F2", f2, (-1.0,), ((-0.6429,), (0.0,), (0.5881,)), ((-1.2, 1.2),)),
        Function("F3", f3, (-1.0,), ((0.0,),), ((-1.2, 1.2),)),
        Function("rosenbrock", rosenbrock, (-2.0, 2.0), ((1.0, 1.0),), ((-2.5, 2.5), (-1.5, 3.5))),
        Function("beale", beale, (1.0, 1.5), ((3.0, 0.5),), ((-4.5, 4.5), (-4.5, 4.5))),
        Function("rastrigin", rastrigin, (-2.0, 3.5), ((0.0, 0.0),), ((-5.12, 5.12), (-5.12, 5.12))),
    )
}


def trajectory(
    fn: Function,
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    steps: int,
    x0: tuple[float, ...] | Tensor | None = None,
) -> Trajectory:
    """Run the optimizer that ``make_optimizer([x])`` builds for ``steps`` steps on ``fn`` in
    float64, from ``x0`` (default ``fn.x0``). Steps go through a closure, so line-search
    optimizers such as LBFGS work too."""
    start = torch.as_tensor(fn.x0 if x0 is None else x0, dtype=torch.float64)
    if start.shape != (fn.dim,):
        raise ValueError(f"x0 must have shape ({fn.dim},) for {fn.name}, got {tuple(start.shape)}")
    x = start.clone().requires_grad_(True)
    optimizer = make_optimizer([x])

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = fn.f(x)
        loss.backward()
        return loss

    xs = [x.detach().clone()]
    for _ in range(steps):
        optimizer.step(closure)  # type: ignore[arg-type]  # torch types the closure as returning a float, not the loss tensor
        xs.append(x.detach().clone())
    path = torch.stack(xs)
    with torch.no_grad():
        return Trajectory(xs=path, losses=fn.f(path))
