"""The diffGrad step as a function of tensors (paper Eq. 11–20), in two implementations.

``_single_tensor_diffgrad`` loops over parameters with in-place tensor ops; ``_multi_tensor_diffgrad``
does the same arithmetic with ``torch._foreach_*`` kernels over tensors grouped by device and dtype.
Both perform, for each parameter with gradient g_t (after ``maximize`` and coupled weight decay)::

    m_t = β1·m + (1 − β1)·g_t                       Eq. 11
    v_t = β2·v + (1 − β2)·g_t²                      Eq. 12   (v_max ← max(v_max, v_t) with AMSGrad)
    ξ_t = friction(g_{t−1} − g_t),  g_0 = 0         Eq. 17–19
    θ  ← θ − α·ξ_t·m̂_t / (sqrt(v̂_t) + ε)           Eq. 13, 20   (ε after bias-correcting v)

and then stores g_t in the optimizer's own ``previous_grad`` buffer (never an alias of ``.grad``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from diffgrad.optim.friction import Friction, foreach_friction_, friction_

__all__ = ["diffgrad"]


def diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    """Functional diffGrad: one step over lists of parameters and their state, updated in place.

    ``max_exp_avg_sqs`` is empty unless ``amsgrad``. ``grads`` are read, never written.
    """
    impl = _multi_tensor_diffgrad if foreach else _single_tensor_diffgrad
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        previous_grads,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        friction=friction,
    )


def _as_real(tensors: list[Tensor]) -> list[Tensor]:
    # Complex parameters are optimised as pairs of reals, element by element, like torch.optim.Adam.
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]


def _single_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    for i, (param, grad, exp_avg, exp_avg_sq, previous_grad, step_t) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, previous_grads, state_steps)
    ):
        step_t += 1
        step = step_t.item()
        if maximize:
            grad = -grad
        if weight_decay != 0.0:
            if decoupled_weight_decay:
                param.mul_(1.0 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        param, grad, exp_avg, exp_avg_sq, previous_grad = _as_real(
            [param, grad, exp_avg, exp_avg_sq, previous_grad]
        )

        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        xi = friction_(friction, torch.sub(previous_grad, grad), grad)
        previous_grad.copy_(grad)

        if amsgrad:
            (max_exp_avg_sq,) = _as_real([max_exp_avg_sqs[i]])
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            exp_avg_sq = max_exp_avg_sq

        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        param.addcdiv_(xi.mul_(exp_avg), denom, value=-lr / bias_correction1)


def _multi_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    if not params:
        return
    tensor_lists = [params, grads, exp_avgs, exp_avg_sqs, previous_grads, state_steps]
    if amsgrad:
        tensor_lists.append(max_exp_avg_sqs)
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensor_lists)  # type: ignore[arg-type]
    for (group_params, group_grads, group_exp_avgs, group_exp_avg_sqs, group_prev, group_steps, *rest), _ in (
        grouped.values()
    ):
        group_params, group_exp_avgs, group_exp_avg_sqs, group_prev = (
            _as_real(group_params),
            _as_real(group_exp_avgs),
            _as_real(group_exp_avg_sqs),
            _as_real(group_prev),
        )
        # g_t in fresh storage: .grad is the caller's and is never modified.
        g = torch._foreach_neg(_as_real(group_grads)) if maximize else _as_real(group_grads)
        torch._foreach_add_(group_steps, 1.0)
        if weight_decay != 0.0:
            if decoupled_weight_decay:
                torch._foreach_mul_(group_params, 1.0 - lr * weight_decay)
            elif maximize:
                torch._foreach_add_(g, group_params, alpha=weight_decay)
            else:
                g = torch._foreach_add(g, group_params, alpha=weight_decay)

        torch._foreach_lerp_(group_exp_avgs, g, 1.0 - beta1)
        torch._foreach_mul_(group_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(group_exp_avg_sqs, g, g, 1.0 - beta2)
        xis = foreach_friction_(friction, torch._foreach_sub(group_prev, g), g)
        torch._foreach_copy_(group_prev, g)

        second_moments = group_exp_avg_sqs
        if amsgrad:
            second_moments = _as_real(rest[0])
            torch._foreach_maximum_(second_moments, group_exp_avg_sqs)

        steps = [s.item() for s in group_steps]
        denom = torch._foreach_sqrt(second_moments)
        torch._foreach_div_(denom, [math.sqrt(1.0 - beta2**s) for s in steps])
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(xis, group_exp_avgs)
        torch._foreach_addcdiv_(group_params, xis, denom, [-lr / (1.0 - beta1**s) for s in steps])
