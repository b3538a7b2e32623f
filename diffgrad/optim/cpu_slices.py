"""The default path's step for large CPU tensors: Adam's update from torch's fused Adam kernel,
scaled by ξ, in cache-sized slices.

diffGrad's step is Adam's update scaled element-wise by the friction (Eq. 20):
θ ← θ + ξ_t·u_t with u_t = −α·m̂_t/(sqrt(v̂_t) + ε). torch's CPU kernel ``torch._fused_adam_``
computes m_t, v_t (Eq. 11–13) and u_t in one pass when it is given a zero "parameter" to update.
On a CPU the eager reference path is bound by memory traffic (each of its dozen operations is a
pass over every element); here a slice of :data:`CHUNK` elements takes the kernel's pass and
then the friction's few passes while its arrays are still in the last-level cache.

What it takes (:func:`applies`): CPU tensors of at least :data:`MIN_NUMEL` elements (below that,
the kernel's OpenMP region costs more than the step, and the foreach path is faster), contiguous,
with their state stored plainly in the parameter's own float32/float64 dtype, and no modifier
that changes the moments' input or the update (rectification, AdaNorm, AdaInject, cautious
masking; centralisation, which only changes g_t, applies). ``benchmarks/step.py`` times it as the
default path against the reference paths; ``tests/optim/test_paths.py`` checks it against them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from diffgrad.optim.friction import Friction, friction_
from diffgrad.optim.modifiers import Modifiers, centralized

__all__ = ["CHUNK", "MIN_NUMEL", "applies", "diffgrad_"]

# Elements per slice: enough that a slice's ~8 kernels are not dominated by dispatch, few enough
# that its live arrays (p, g, m, v, g_{t−1}, u: 1 MiB each in float32) stay in the last-level cache.
CHUNK = 1 << 18
# ATen's element-wise CPU kernels run on one thread below this many elements (its GRAIN_SIZE),
# while the fused Adam kernel always opens an OpenMP region.
MIN_NUMEL = 32768


def applies(state: Any, i: int, modifiers: Modifiers) -> bool:
    """Whether parameter ``i`` of the step's lists (``functional._State``) takes this step."""
    param = state.params[i]
    buffers = [state.exp_avgs[i], state.exp_avg_sqs[i], state.previous_grads[i]]
    buffers += [state.max_exp_avg_sqs[i]] if state.max_exp_avg_sqs else []
    return (
        modifiers.adam_kernel_compatible
        and param.device.type == "cpu"
        and param.dtype in (torch.float32, torch.float64)
        and param.numel() >= MIN_NUMEL
        and not is_traceable_wrapper_subclass(param)
        and all(isinstance(t, Tensor) and t.dtype == param.dtype and t.is_contiguous() for t in buffers)
        and param.is_contiguous()
        and state.grads[i].is_contiguous()
    )


def diffgrad_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    grad_factor: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    friction: Friction,
    modifiers: Modifiers,
) -> None:
    """One diffGrad step (Eq. 11–20) of the tensors :func:`applies` to, slice by slice."""
    for i, param in enumerate(params):
        state_steps[i] += 1
        grad = centralized(grads[i]) if modifiers.centralize else grads[i]
        # DFC3–5's statistics are of the whole tensor: those tensors are stepped whole.
        chunk = param.numel() if friction.uses_stats else CHUNK
        for lo in range(0, param.numel(), chunk):
            span = slice(lo, lo + chunk)
            p, m, v, g_prev = (t.view(-1)[span] for t in (param, exp_avgs[i], exp_avg_sqs[i], previous_grads[i]))
            g = grad.reshape(-1)[span] * grad_factor  # g_t, a copy: the caller's .grad is only read
            if weight_decay != 0 and not decoupled_weight_decay:
                g.add_(p, alpha=weight_decay)
            if weight_decay != 0 and decoupled_weight_decay:
                p.mul_(1 - lr * weight_decay)
            update = torch.zeros_like(g)  # the kernel's "parameter": it leaves u_t in it
            torch._fused_adam_(
                [update], [g], [m], [v], [max_exp_avg_sqs[i].view(-1)[span]] if amsgrad else [], [state_steps[i]],
                lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=amsgrad, maximize=False,
            )  # fmt: skip
            (xi,) = friction_(friction, [g_prev.sub_(g)], [g])  # ξ_t in g_{t−1}'s storage, which then takes g_t
            p.addcmul_(update, xi)
            g_prev.copy_(g)
