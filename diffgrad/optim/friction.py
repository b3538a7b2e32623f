"""Friction coefficients ξ of diffGrad (paper Eq. 18–19 and Sec. VII-B, Table II).

Every variant in the paper has the same shape, a scaled logistic of the gradient change
Δg_t = g_{t−1} − g_t (Eq. 17)::

    ξ = scale · sigmoid(slope · h(Δg) − offset) + shift,    h = |·| or the identity

where slope and offset are constants, or for DFC3–DFC5 come from the statistics μ, ν of |g_t|
(offset = μ),

so each variant is a row of numbers (:class:`Friction`), and one kernel per implementation path
(:func:`friction_`, :func:`foreach_friction_`) computes all of them. That keeps the per-tensor,
``foreach`` and compiled steps identical by construction.

Reading of μ and ν for DFC3–DFC5. The paper defines them as "the mean and standard deviation of
absolute gradients of the batch". We read that as: per parameter tensor, over all of its elements,
of |g_t| (the current, effective gradient), with the population standard deviation (divisor N, so
a one-element tensor has ν = 0). Under sharding (FSDP2) the statistics are of the whole tensor.
Note that the paper's stated range [0.5, 1] for DFC3–5 does not hold: ξ < 0.5 when ν·|Δg| < μ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FRICTIONS", "Friction", "abs_grad_stats", "friction_", "foreach_friction_", "get_friction", "one_plus_exp_neg"]

_LOG2_E = 1.4426950408889634
# (integer type of the same width, mantissa bits, exponent bias) of the IEEE formats
_FLOAT_LAYOUT = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}
# the slope as a function of (μ, ν), the statistics of |g_t|
_StatFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Friction:
    """One friction variant: ξ = scale · sigmoid(slope · h(Δg) − offset) + shift.

    With ``stat_slope`` set, slope = stat_slope(μ, ν) and offset = μ; otherwise offset = 0.
    """

    name: str
    absolute: bool = True  # h = |·|; DFC1 is the only variant without it
    slope: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    stat_slope: _StatFn | None = None  # slope from (μ, ν), replaces ``slope`` when set
    range: str = "[0.5, 1)"

    @property
    def uses_stats(self) -> bool:
        return self.stat_slope is not None


FRICTIONS: dict[str, Friction] = {
    f.name: f
    for f in (
        # DFC, Eq. 19: AbsSig, the paper's default.
        Friction("dfc"),
        # DFC1: the sigmoid of the signed change.
        Friction("dfc1", absolute=False, range="(0, 1)"),
        # DFC2: 9 / (1 + exp(−0.5·|Δg|)) − 4 = 9·sigmoid(0.5·|Δg|) − 4.
        Friction("dfc2", slope=0.5, scale=9.0, shift=-4.0, range="[0.5, 5)"),
        # DFC3–DFC5: sigmoid(s(ν)·|Δg| − μ) with s(ν) = ν, ν², sqrt(ν).
        Friction("dfc3", stat_slope=lambda mu, nu: nu, range="(0, 1)"),
        Friction("dfc4", stat_slope=lambda mu, nu: nu * nu, range="(0, 1)"),
        Friction("dfc5", stat_slope=lambda mu, nu: nu.sqrt(), range="(0, 1)"),
    )
}


def get_friction(name: str) -> Friction:
    """The variant called ``name`` (case-insensitive); unknown names raise ``ValueError``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in FRICTIONS:
        raise ValueError(f"Invalid friction: {name!r}; expected one of {sorted(FRICTIONS)}")
    return FRICTIONS[key]


def abs_grad_stats(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, ν): mean and population standard deviation of |g| over the whole tensor (DFC3–5)."""
    nu, mu = torch.std_mean(grad.abs(), correction=0)
    return mu, nu


def friction_(friction: Friction, delta: Tensor, grad: Tensor, *, inverse: bool = False) -> Tensor:
    """Turn Δg = g_{t−1} − g_t into ξ, in place in ``delta``'s storage, and return it; or with
    ``inverse``, return 1/ξ.

    For the plain logistic (scale 1, shift 0: DFC, DFC1, DFC3–5), 1/ξ = 1 + e^{−z} takes no
    division, so a step that divides by (sqrt(v̂) + ε)/ξ divides once per element where
    ξ·m̂/(sqrt(v̂) + ε) divides twice (the logistic's own 1/(1 + e^{−z}) and the update's).
    Where z ≥ 0 (|Δg| with a constant slope: DFC), :func:`one_plus_exp_neg` computes it in a
    dozen multiply-adds.
    """
    z = delta.abs_() if friction.absolute else delta
    if friction.uses_stats:
        mu, nu = abs_grad_stats(grad)
        z.mul_(friction.stat_slope(mu, nu)).sub_(mu)
    elif friction.slope != 1.0:
        z.mul_(friction.slope)
    affine = friction.scale != 1.0 or friction.shift != 0.0
    if inverse and not affine:
        nonnegative = friction.absolute and not friction.uses_stats
        return one_plus_exp_neg(z) if nonnegative else z.neg_().exp_().add_(1.0)
    xi = z.sigmoid_()
    if affine:
        xi.mul_(friction.scale).add_(friction.shift)
    return xi.reciprocal_() if inverse else xi


def one_plus_exp_neg(z: Tensor) -> Tensor:
    """1 + e^{−z} for z ≥ 0 (NaN stays NaN), to within about one unit in the last place.

    On a CPU core the fused step's arithmetic costs as much as its memory traffic, and a library
    e^x (SLEEF's, within one ulp of e^x itself) cost more than the rest of the step's
    element-wise work (measured: docs/performance.md). Next to the 1, only e^{−z}'s absolute
    error matters, which allows a shorter evaluation:

        e^{−z} = 2^{−n}·e^{−r},  n = round(z·log2 e),  r = z − n·ln 2 ∈ [−ln2/2, ln2/2],

    with e^{−r} from its Taylor polynomial (degree 7 in float32, 13 in float64: truncation
    error below 2^{−(p+4)}, p the mantissa bits) and 2^{−n} written into the exponent field.
    Rounding ln 2 moves e^{−z} by at most 2^{−n}·n·u·ln 2 < u (u the unit round-off). Beyond
    z = (p + 2)·ln 2, e^{−z} is below a quarter unit of 1, so z is clamped there.
    """
    bits, mantissa, bias = _FLOAT_LAYOUT[z.dtype]
    degree = next(d for d in range(1, 30) if (math.log(2) / 2) ** (d + 1) / math.factorial(d + 1) < 2.0 ** -(mantissa + 4))
    z = z.clamp(max=(mantissa + 2) * math.log(2))
    n = torch.round(z * _LOG2_E)
    minus_r = n * math.log(2) - z
    taylor = minus_r * (1.0 / math.factorial(degree)) + 1.0 / math.factorial(degree - 1)
    for k in range(degree - 2, -1, -1):
        taylor = taylor * minus_r + 1.0 / math.factorial(k)
    two_to_minus_n = torch.bitwise_left_shift(bias - n.to(bits), mantissa).view(z.dtype)
    return taylor * two_to_minus_n + 1.0


def foreach_friction_(friction: Friction, deltas: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """:func:`friction_` over lists of tensors with ``torch._foreach_*`` kernels."""
    if friction.absolute:
        torch._foreach_abs_(deltas)
    if friction.uses_stats:
        mus, nus = zip(*(abs_grad_stats(g) for g in grads))
        torch._foreach_mul_(deltas, [friction.stat_slope(mu, nu) for mu, nu in zip(mus, nus)])
        torch._foreach_sub_(deltas, list(mus))
    elif friction.slope != 1.0:
        torch._foreach_mul_(deltas, friction.slope)
    torch._foreach_sigmoid_(deltas)
    if friction.scale != 1.0 or friction.shift != 0.0:
        torch._foreach_mul_(deltas, friction.scale)
        torch._foreach_add_(deltas, friction.shift)
    return deltas
