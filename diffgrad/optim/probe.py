"""Reading the friction ξ_t (Eq. 17–19; docs/paper.md §10) that one ``DiffGrad`` step applied.

No path keeps ξ: the reference paths drop it after the update and the fused kernel never writes
it. :func:`record_friction` computes it again from what the step leaves in the optimizer's state,
with the same :func:`~diffgrad.optim.friction.friction_` and the same denominator as the step, so
there is one spelling of ξ. It installs nothing in the optimizer: an optimizer outside the
``with`` block pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.optim import Optimizer

from diffgrad.optim.diffgrad import DiffGrad
from diffgrad.optim.friction import friction_, resolve_friction
from diffgrad.optim.functional import denominator
from diffgrad.optim.state import get_buffer, unpack

__all__ = ["record_friction"]


@contextmanager
def record_friction(optimizer: Optimizer) -> Iterator[dict[Tensor, Tensor]]:
    """Record the ξ_t of the ``DiffGrad`` step taken inside the ``with`` block::

        with record_friction(optimizer) as xi:
            optimizer.step()
        xi[p]  # float32, shaped like p (complex p: like its view_as_real)

    On entry it copies g_{t−1}, the optimizer's ``previous_grad`` (g_0 = 0 for a parameter without
    state); on exit, for each parameter the step updated, it takes g_t from the new
    ``previous_grad`` (the effective gradient: unscaled, after ``maximize``, coupled decay and
    centralisation) and the denominator sqrt(v̂_t) + ε from the new ``exp_avg_sq`` (AMSGrad:
    ``max_exp_avg_sq``) and step, and computes ξ_t = friction(g_{t−1} − g_t) with the group's
    friction and ``friction_slope``. Parameters without a gradient are absent, and so is every
    parameter of a step that AMP's ``GradScaler`` skipped; the dictionary is filled only when
    the block ends without an exception. With compact state (``state_dtype``), g_t and v_t are
    the stored, rounded values, so ξ_t is the applied one up to the format's precision.

    Raises ``TypeError`` for an optimizer that is not a ``DiffGrad``, and ``RuntimeError`` if the
    block took more than one step.
    """
    if not isinstance(optimizer, DiffGrad):
        raise TypeError(f"record_friction: expected a DiffGrad optimizer, got {type(optimizer).__name__}")
    before = {p: _previous(optimizer.state.get(p), p) for group in optimizer.param_groups for p in group["params"]}
    frictions: dict[Tensor, Tensor] = {}
    yield frictions
    with torch.no_grad():
        for group in optimizer.param_groups:
            friction = resolve_friction(group["friction"], group["friction_slope"])
            for p in group["params"]:
                state = optimizer.state.get(p)
                if not state or p not in before:
                    continue
                step_before, previous = before[p]
                step = state["step"].item()
                if step == step_before:
                    continue
                if step != step_before + 1:
                    raise RuntimeError(
                        f"record_friction: a parameter took {step - step_before:g} steps in the block; it records one"
                    )
                grad, _ = unpack(get_buffer(state, "previous_grad"), p)
                second_moment = get_buffer(state, "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq")
                exp_avg_sq, _ = unpack(second_moment, p, sqrt_domain=True)
                denom = denominator(exp_avg_sq, step, group["betas"][1], group["eps"])
                delta = grad.neg() if previous is None else previous - grad  # Δg_t = g_{t−1} − g_t, Eq. 17
                (xi,) = friction_(friction, [delta], [grad], [denom])
                frictions[p] = xi.to(torch.float32)


def _previous(state: dict[str, Tensor] | None, param: Tensor) -> tuple[float, Tensor | None]:
    """A parameter's step count and a copy of its g_{t−1} (None before its first step: g_0 = 0)."""
    if not state:
        return 0.0, None
    previous, _ = unpack(get_buffer(state, "previous_grad"), param)
    return state["step"].item(), previous.clone()
