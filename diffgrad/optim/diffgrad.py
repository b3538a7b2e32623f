"""``DiffGrad``: the optimizer class — argument checks, parameter groups, state, dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from diffgrad.optim.friction import Friction, get_friction
from diffgrad.optim.functional import diffgrad

__all__ = ["DiffGrad"]

STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "previous_grad")


class DiffGrad(Optimizer):
    r"""diffGrad (Dubey et al., IEEE TNNLS 2019): Adam with a per-element friction on the step.

    For every element of a parameter θ, with gradient g_t at step t (``g_0 = 0``)::

        m_t  = β1·m_{t−1} + (1 − β1)·g_t                  (Eq. 11)
        v_t  = β2·v_{t−1} + (1 − β2)·g_t²                 (Eq. 12)
        m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)  (Eq. 13)
        ξ_t  = sigmoid(|g_{t−1} − g_t|)                    (Eq. 17–19, friction "dfc")
        θ_{t+1} = θ_t − α·ξ_t·m̂_t / (sqrt(v̂_t) + ε)      (Eq. 20)

    ξ ∈ [0.5, 1): elements whose gradient barely changes take half an Adam step, elements whose
    gradient changes fast take a full one.

    Args:
        params: parameters or parameter groups (dicts), as for any ``torch.optim`` optimizer.
        lr: step size α (a float or a one-element tensor; schedulers may change it).
        betas: (β1, β2), decay rates of the first and second moments.
        eps: ε, added to sqrt(v̂_t) after bias correction, as in Eq. 20.
        weight_decay: λ. Coupled (L2, the published code's choice): g_t ← g_t + λθ before the
            moments and the friction. Decoupled: θ ← θ·(1 − αλ) before the update (AdamW).
        decoupled_weight_decay: use decoupled instead of coupled weight decay.
        amsgrad: use max(v_max, v_t) in place of v_t in the denominator (AMSGrad).
        friction: the friction coefficient: ``"dfc"`` (Eq. 19, default) or one of the paper's
            variants ``"dfc1"`` … ``"dfc5"`` (Sec. VII-B, Table II; see
            :mod:`diffgrad.optim.friction` for the reading of μ and ν), or a
            :class:`~diffgrad.optim.friction.Friction`.
        maximize: maximise the objective (the gradient's sign is flipped first).
        foreach: use the ``torch._foreach_*`` implementation. ``None`` picks per device: the
            per-tensor loop on CPU (faster there) and foreach on accelerators.

    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``previous_grad``
    (g_{t−1}, the effective gradient after ``maximize`` and coupled decay, held in the optimizer's
    own buffer) and, with ``amsgrad``, ``max_exp_avg_sq``. These are the published code's keys,
    so its state dicts (and those of other DiffGrad implementations) load.

    Parameters whose ``.grad`` is ``None`` are skipped and their state is left untouched.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        friction: str | Friction = "dfc",
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad,
            friction=friction,
            maximize=maximize,
            foreach=foreach,
        )
        _check_options(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _check_options(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for name, value in self.defaults.items():
                group.setdefault(name, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if not p_state:
                    continue
                # Other implementations keep ``step`` as a Python number, or per group.
                step = p_state.get("step", group.get("step", 0))
                if not torch.is_tensor(step):
                    p_state["step"] = torch.tensor(float(step), dtype=torch.float32)
                if "previous_grad" not in p_state:
                    p_state["previous_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        previous_grads: list[Tensor],
        max_exp_avg_sqs: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("DiffGrad does not support sparse gradients; got a sparse grad")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for key in STATE_KEYS[1:]:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            previous_grads.append(state["previous_grad"])
            state_steps.append(state["step"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            previous_grads: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, previous_grads, max_exp_avg_sqs, state_steps
            )
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = _default_foreach(params)
            beta1, beta2 = group["betas"]
            diffgrad(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                previous_grads,
                max_exp_avg_sqs,
                state_steps,
                foreach=foreach,
                lr=float(group["lr"]),
                beta1=float(beta1),
                beta2=float(beta2),
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                friction=_resolve_friction(group["friction"]),
            )
        return loss


def _resolve_friction(friction: str | Friction) -> Friction:
    return friction if isinstance(friction, Friction) else get_friction(friction)


def _default_foreach(params: list[Tensor]) -> bool:
    # Measured on a 2-core CPU (benchmarks/step.py): the per-tensor loop beats foreach there,
    # while on accelerators foreach saves kernel launches, as for torch.optim.
    return all(p.device.type != "cpu" for p in params)


def _check_options(group: dict[str, Any]) -> None:
    """Reject bad hyper-parameters with an error that names the argument and the value."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        lr_value = lr.item()
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        lr_value = float(lr)
    else:
        raise ValueError(f"Invalid lr: {lr!r} (expected a float or a one-element tensor)")
    if not lr_value >= 0.0:
        raise ValueError(f"Invalid lr: {lr_value} (must be >= 0)")

    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    for index, beta in enumerate(betas):
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {index} of betas: {beta!r} (must be in [0, 1))")
    for name in ("eps", "weight_decay"):
        value = group[name]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0):
            raise ValueError(f"Invalid {name}: {value!r} (must be a float >= 0)")
    _resolve_friction(group["friction"])
    for name in ("decoupled_weight_decay", "amsgrad", "maximize"):
        if not isinstance(group[name], bool):
            raise ValueError(f"Invalid {name}: {group[name]!r} (must be a bool)")
    if group["foreach"] not in (None, True, False):
        raise ValueError(f"Invalid foreach: {group['foreach']!r} (must be None, True or False)")
