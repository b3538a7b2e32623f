"""Friction coefficients ξ of diffGrad (paper Eq. 18–19 and Sec. VII-B, Table II).

Every variant in the paper has the same shape, a scaled logistic of the gradient change
Δg_t = g_{t−1} − g_t (Eq. 17)::

    ξ = scale · sigmoid(slope · h(Δg) − offset) + shift,    h = |·| or the identity

where slope and offset are constants, or for DFC3–DFC5 come from the statistics μ, ν of |g_t|
(slope = ν^p, offset = μ). This project's scale-free friction ``dfc-rms`` (docs/paper.md §10)
takes h(Δg) relative to the step's denominator, |Δg|/(sqrt(v̂_t) + ε). So each variant is a row
of numbers (:class:`Friction`: plain data, which pickles, deep-copies and loads with
``torch.load(weights_only=True)``), and one function, :func:`friction_`, computes all of them for
every implementation path.

Reading of μ and ν for DFC3–DFC5. The paper defines them as "the mean and standard deviation of
absolute gradients of the batch". We read that as: per parameter tensor, over all of its elements,
of |g_t| (the current, effective gradient), with the population standard deviation (divisor N, so
a one-element tensor has ν = 0). Under sharding (FSDP2) the statistics are of the whole tensor.
Note that the paper's stated range [0.5, 1] for DFC3–5 does not hold: ξ < 0.5 when ν·|Δg| < μ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffgrad.optim.compat import foreach_sigmoid_, std_mean

__all__ = [
    "DFC_RMS_SLOPE",
    "FRICTIONS",
    "Friction",
    "abs_grad_stats",
    "check_friction_slope",
    "friction_",
    "get_friction",
    "resolve_friction",
]

# κ of dfc-rms: ξ = sigmoid(κ·|Δg|/(sqrt(v̂_t) + ε)) (docs/paper.md §10).
DFC_RMS_SLOPE = 1.0


@dataclass(frozen=True)
class Friction:
    """One friction variant: ξ = scale · sigmoid(slope · h(Δg)/d − offset) + shift.

    With ``stat_power`` set (DFC3–5), slope = ν^stat_power and offset = μ, the statistics of |g_t|
    over the tensor; otherwise slope is the constant ``slope`` and offset = 0. With ``relative``
    (dfc-rms, docs/paper.md §10), d = sqrt(v̂_t) + ε, the denominator of the step (Eq. 20), which
    makes ξ independent of the gradient's scale; otherwise d = 1.
    """

    name: str
    absolute: bool = True  # h = |·|; DFC1 is the only variant without it
    slope: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    stat_power: float | None = None
    range: str = "[0.5, 1)"
    relative: bool = False

    @property
    def uses_stats(self) -> bool:
        return self.stat_power is not None

    def stat_slope(self, nu: Tensor) -> Tensor:
        """The slope ν^p of DFC3–5 (exact for the paper's p = 1, 2, ½)."""
        p = self.stat_power
        assert p is not None, "only the frictions with stats (DFC3–5) have a slope ν^p"
        return nu if p == 1.0 else nu.square() if p == 2.0 else nu.sqrt() if p == 0.5 else nu.pow(p)


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
        Friction("dfc3", stat_power=1.0, range="(0, 1)"),
        Friction("dfc4", stat_power=2.0, range="(0, 1)"),
        Friction("dfc5", stat_power=0.5, range="(0, 1)"),
        # dfc-rms (this project's, docs/paper.md §10): sigmoid(κ·|Δg|/(sqrt(v̂_t) + ε)).
        Friction("dfc-rms", slope=DFC_RMS_SLOPE, relative=True),
    )
}

# A checkpoint whose param groups hold a Friction loads with torch.load's default weights_only=True.
torch.serialization.add_safe_globals([Friction])


def get_friction(name: str) -> Friction:
    """The variant called ``name`` (case-insensitive); unknown names raise ``ValueError``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in FRICTIONS:
        raise ValueError(f"Invalid friction: {name!r}; expected one of {sorted(FRICTIONS)} or a Friction")
    return FRICTIONS[key]


def resolve_friction(friction: str | Friction, slope: float | None = None) -> Friction:
    """The variant ``friction`` names (or ``friction`` itself), with ``slope`` in place of its own
    when given (``DiffGrad``'s ``friction_slope``)."""
    resolved = friction if isinstance(friction, Friction) else get_friction(friction)
    return resolved if slope is None else dataclasses.replace(resolved, slope=float(slope))


def check_friction_slope(friction: Friction, slope: object) -> None:
    """Raise ``ValueError`` unless ``slope`` (an optimizer's ``friction_slope``) is None, or a
    finite float ≥ 0 for a friction with a constant slope."""
    if slope is None:
        return
    if not (isinstance(slope, (int, float)) and not isinstance(slope, bool) and math.isfinite(slope) and slope >= 0):
        raise ValueError(f"Invalid friction_slope: {slope!r} (must be None or a finite float >= 0)")
    if friction.uses_stats:
        raise ValueError(
            f"Invalid friction_slope: {slope!r} (friction {friction.name!r} takes its slope from ν; "
            "friction_slope applies to the frictions with a constant slope)"
        )


def abs_grad_stats(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, ν): mean and population standard deviation of |g| over the whole tensor (DFC3–5); an
    empty tensor, which has no element to damp, gets (0, 0) instead of std_mean's NaN and warning."""
    magnitude = grad.abs()
    if magnitude.numel() == 0:
        zero = magnitude.new_zeros(())
        return zero, zero
    nu, mu = std_mean(magnitude, correction=0)
    return mu, nu


def friction_(
    friction: Friction,
    deltas: list[Tensor] | tuple[Tensor, ...],
    grads: Sequence[Tensor],
    denoms: Sequence[Tensor] | None = None,
) -> list[Tensor] | tuple[Tensor, ...]:
    """ξ_t for each tensor (Eq. 18–19, Table II; docs/paper.md §10), computed in place in the
    tensors of Δg_t = g_{t−1} − g_t (``deltas``), which are returned; ``grads`` (g_t) give DFC3–5
    their μ, ν, and ``denoms``, the step's sqrt(v̂_t) + ε (AMSGrad: of the maximum), are what a
    ``relative`` friction divides by."""
    if friction.absolute:
        torch._foreach_abs_(deltas)
    if friction.relative:
        if denoms is None:
            raise ValueError(f"friction_: friction {friction.name!r} needs `denoms`, the step's sqrt(v̂_t) + ε")
        torch._foreach_div_(deltas, list(denoms))
    if friction.uses_stats:
        mus, nus = zip(*(abs_grad_stats(g) for g in grads))
        torch._foreach_mul_(deltas, [friction.stat_slope(nu) for nu in nus])
        torch._foreach_sub_(deltas, list(mus))
    elif friction.slope != 1.0:
        torch._foreach_mul_(deltas, friction.slope)
    foreach_sigmoid_(deltas)
    if friction.scale != 1.0 or friction.shift != 0.0:
        torch._foreach_mul_(deltas, friction.scale)
        torch._foreach_add_(deltas, friction.shift)
    return deltas
