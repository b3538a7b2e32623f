"""``DiffGrad``: the optimizer class — argument checks, parameter groups, state, dispatch."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from diffgrad.optim.friction import Friction, check_friction_slope, resolve_friction
from diffgrad.optim.functional import diffgrad
from diffgrad.optim.modifiers import WARMUPS, Modifiers
from diffgrad.optim.state import (
    StateBuffer,
    buffer_tensors,
    check_state_dtype,
    compute_dtype,
    convert_buffer,
    get_buffer,
    new_buffer,
)

__all__ = ["DiffGrad"]

STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "previous_grad")
# Buffer keys, with whether each holds second moments (stored as sqrt(v) when 8-bit).
_BUFFERS = {"exp_avg": False, "exp_avg_sq": True, "previous_grad": False, "max_exp_avg_sq": True}


class DiffGrad(Optimizer):
    r"""diffGrad (Dubey et al., IEEE TNNLS 2020): Adam with a per-element friction on the step.

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
            :mod:`diffgrad.optim.friction` for the reading of μ and ν), this project's
            scale-free ``"dfc-rms"``, ξ_t = sigmoid(κ·|g_{t−1} − g_t|/(sqrt(v̂_t) + ε)), whose ξ
            does not change when the loss is multiplied by a constant (docs/paper.md §10), or a
            :class:`~diffgrad.optim.friction.Friction`.
        friction_slope: the friction's slope, replacing the variant's own: κ of ``"dfc-rms"``
            (default :data:`~diffgrad.optim.friction.DFC_RMS_SLOPE`), the factor of Δg in
            ``"dfc"`` (1), ``"dfc1"`` (1) and ``"dfc2"`` (0.5). ``None`` (default): the variant's.
            DFC3–5 take their slope from ν and refuse one.
        maximize: maximise the objective (the gradient's sign is flipped first).
        foreach: ``True``: the ``torch._foreach_*`` implementation; ``False``: the per-tensor
            loop. ``None`` (default): CPU tensors take the fused kernel where a C++ compiler can
            build it (else the per-tensor loop), tensors on other devices the foreach path.
        fused: use the single-pass kernel: one pass over every element reads θ, g and the state
            and writes θ and the state. For CPU tensors it is C++ (:mod:`diffgrad.optim.fused`),
            compiled once per machine on first use (a few seconds) and cached on disk; for CUDA
            tensors a Triton kernel (:mod:`diffgrad.optim.fused_triton`).
            Cannot be combined with ``foreach``.
        rectify: rectified diffGrad (diffRGrad): RAdam's rectification of the step; see
            :mod:`diffgrad.optim.modifiers` for this and the other modifiers' equations.
        rectify_threshold: ρ_t from which the rectified step applies (RAdam: 5; at least 4).
        rectify_warmup: the steps before that: ``"sgd"`` (θ ← θ − α·m̂, momentum SGD) or
            ``"skip"`` (no update).
        adanorm: AdaNorm (diffGradNorm): the first moment takes g_t rescaled to the running norm
            e_t = γ·e_{t−1} + (1 − γ)·‖g_t‖₂ when that is larger than ‖g_t‖₂.
        adanorm_gamma: γ of AdaNorm.
        adainject: AdaInject (diffGradInject): the first moment takes (g_t + Δθ_t ⊙ g_t²)/k,
            Δθ_t = θ_{t−1} − θ_t (from the second step on).
        adainject_k: k of AdaInject.
        cautious: cautious masking: elements whose update disagrees in sign with the gradient are
            not updated; the others are scaled by N/(kept + 1).
        centralize: gradient centralisation: tensors with ≥ 2 dims take g minus its mean over all
            dims but the first, before everything else.
        state_dtype: storage of exp_avg, exp_avg_sq, previous_grad (and max_exp_avg_sq).
            ``None``: the compute dtype (float32 for bfloat16/float16 parameters, else the
            parameter's dtype); ``torch.bfloat16``; ``torch.float32``/``torch.float64``; or
            ``"8bit"``: block-wise float8 codes with a float32 scale per 256 elements
            (:mod:`diffgrad.optim.state`; tensors under 4096 elements stay in the compute dtype).
            The arithmetic always runs in the compute dtype.

    State bytes per parameter element (exp_avg + exp_avg_sq + previous_grad; AMSGrad adds a
    fourth buffer of the same size), against Adam's 8 in float32:

    ==================  =========================  =====================
    ``state_dtype``     bytes per element          with ``amsgrad=True``
    ==================  =========================  =====================
    None (float32)      12                         16
    ``torch.bfloat16``  6                          8
    ``"8bit"``          3 × (1 + 4/256) ≈ 3.05     ≈ 4.06
    ==================  =========================  =====================

    State per parameter: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``previous_grad``
    (g_{t−1}, the effective gradient after ``maximize`` and coupled decay, held in the optimizer's
    own buffer) and, with ``amsgrad``, ``max_exp_avg_sq``. These are the published code's keys,
    so its state dicts (and those of other DiffGrad implementations) load. An 8-bit buffer is
    stored as uint8 codes under its key plus ``<key>_absmax``; ``exp_avg_sq`` then holds sqrt(v).
    Loading a state dict converts its buffers to this optimizer's ``state_dtype``. The modifiers
    add ``previous_param`` (AdaInject: θ_{t−1}, in the compute dtype whatever ``state_dtype``, as
    Δθ is a difference of nearly equal values) and ``exp_grad_norm`` (AdaNorm: e_t, a 0-dim
    tensor); a state without them (a checkpoint from before the modifier was turned on) starts
    them at θ and 0.

    Mixed precision: parameters may be bfloat16 or float16 (updated in float32 arithmetic and
    rounded once). ``torch.amp.GradScaler`` passes its scale and inf flag to :meth:`step` on
    every path (``_step_supports_amp_scaling``), so float16 gradients need no separate
    ``unscale_``; a step with non-finite gradients leaves parameters and state untouched.

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
        friction_slope: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        rectify: bool = False,
        rectify_threshold: float = 5.0,
        rectify_warmup: str = "sgd",
        adanorm: bool = False,
        adanorm_gamma: float = 0.95,
        adainject: bool = False,
        adainject_k: float = 2.0,
        cautious: bool = False,
        centralize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad,
            friction=friction,
            friction_slope=friction_slope,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
            rectify=rectify,
            rectify_threshold=rectify_threshold,
            rectify_warmup=rectify_warmup,
            adanorm=adanorm,
            adanorm_gamma=adanorm_gamma,
            adainject=adainject,
            adainject_k=adainject_k,
            cautious=cautious,
            centralize=centralize,
            # torch.optim's base class adds this key to every group on load; DiffGrad's step is
            # not differentiable, so it is always False (and a loaded state dict equals the saved one).
            differentiable=False,
        )
        _check_options(defaults)
        super().__init__(params, defaults)
        # GradScaler hands its scale and inf flag to step() instead of unscaling the gradients.
        self._step_supports_amp_scaling = True

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
                    self._set_buffer(p_state, "previous_grad", new_buffer(p, group["state_dtype"]))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping this optimizer's ``state_dtype``: the loaded buffers keep
        their saved dtypes and are then converted to it. ``state_dtype`` is a memory layout of
        this process, not a hyper-parameter of the checkpoint (``torch.optim`` would instead cast
        every buffer to its parameter's dtype, which rounds float32 state of bfloat16 parameters
        and breaks 8-bit codes)."""
        state_dtypes = [group["state_dtype"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        for group, state_dtype in zip(self.param_groups, state_dtypes):
            group["state_dtype"] = state_dtype
            for p, saved_id in zip(group["params"], saved_ids):
                saved = state_dict["state"].get(saved_id)
                if not saved:
                    continue
                state = self.state[p]
                for key, value in saved.items():
                    if key != "step" and torch.is_tensor(value):
                        state[key] = value.to(device=p.device)
                for key, sqrt_domain in _BUFFERS.items():
                    if key in state:
                        buffer = convert_buffer(get_buffer(state, key), p, state_dtype, sqrt_domain=sqrt_domain)
                        self._set_buffer(state, key, buffer)

    @staticmethod
    def _set_buffer(state: dict[str, Any], key: str, buffer: StateBuffer) -> None:
        state.pop(key + "_absmax", None)
        state.update(buffer_tensors(key, buffer))

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[StateBuffer],
        exp_avg_sqs: list[StateBuffer],
        previous_grads: list[StateBuffer],
        max_exp_avg_sqs: list[StateBuffer],
        state_steps: list[Tensor],
        previous_params: list[Tensor],
        exp_grad_norms: list[Tensor],
    ) -> None:
        # Read once per group: this loop runs over every parameter at every step.
        fused, state_dtype = group["fused"], group["state_dtype"]
        amsgrad, adainject, adanorm = group["amsgrad"], group["adainject"], group["adanorm"]
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("DiffGrad does not support sparse gradients; got a sparse grad")
            state = self.state[p]
            if not state:
                if fused and not (torch.is_floating_point(p) or p.is_complex()):
                    raise RuntimeError(
                        f"DiffGrad(fused=True) needs floating-point or complex parameters; got {p.dtype}"
                    )
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for key in STATE_KEYS[1:]:
                    self._set_buffer(state, key, new_buffer(p, state_dtype))
            if amsgrad and "max_exp_avg_sq" not in state:
                self._set_buffer(state, "max_exp_avg_sq", new_buffer(p, state_dtype))
            if adainject and "previous_param" not in state:
                # θ_{t−1} = θ_t before the first step: Δθ_1 = 0.
                state["previous_param"] = new_buffer(p, None).copy_(p)
            if adanorm and "exp_grad_norm" not in state:
                state["exp_grad_norm"] = torch.zeros((), dtype=compute_dtype(p), device=p.device)
            params.append(p)
            grads.append(grad)
            exp_avgs.append(get_buffer(state, "exp_avg"))
            exp_avg_sqs.append(get_buffer(state, "exp_avg_sq"))
            previous_grads.append(get_buffer(state, "previous_grad"))
            state_steps.append(state["step"])
            if amsgrad:
                max_exp_avg_sqs.append(get_buffer(state, "max_exp_avg_sq"))
            if adainject:
                previous_params.append(state["previous_param"])
            if adanorm:
                exp_grad_norms.append(state["exp_grad_norm"])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Set by torch.amp.GradScaler.step for the duration of this call.
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[StateBuffer] = []
            exp_avg_sqs: list[StateBuffer] = []
            previous_grads: list[StateBuffer] = []
            max_exp_avg_sqs: list[StateBuffer] = []
            state_steps: list[Tensor] = []
            previous_params: list[Tensor] = []
            exp_grad_norms: list[Tensor] = []
            self._init_group(
                group,
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                previous_grads,
                max_exp_avg_sqs,
                state_steps,
                previous_params,
                exp_grad_norms,
            )
            if not params:
                continue
            beta1, beta2 = group["betas"]
            diffgrad(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                previous_grads,
                max_exp_avg_sqs,
                state_steps,
                grad_scale,
                found_inf,
                previous_params=previous_params,
                exp_grad_norms=exp_grad_norms,
                foreach=group["foreach"],
                fused=bool(group["fused"]),
                lr=group["lr"],
                beta1=float(beta1),
                beta2=float(beta2),
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                friction=resolve_friction(group["friction"], group["friction_slope"]),
                modifiers=_modifiers(group),
            )
        return loss


def _modifiers(group: dict[str, Any]) -> Modifiers:
    return Modifiers(**{name: group[name] for name in Modifiers.__dataclass_fields__})


def check_adam_options(lr: object, betas: object, eps: object, weight_decay: object) -> None:
    """Reject a bad ``lr`` (a float or a one-element tensor), ``betas``, ``eps`` or
    ``weight_decay`` with an error that names the argument and the value (the phrases
    ``torch.optim`` uses)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid learning rate: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        lr_value = lr.item()
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        lr_value = float(lr)
    else:
        raise ValueError(f"Invalid learning rate: {lr!r} (lr must be a float or a one-element tensor)")
    if not lr_value >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr_value} (lr must be >= 0)")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    for index, beta in enumerate(betas):
        if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {index}: {beta!r} (betas[{index}] must be in [0, 1))")
    for name, phrase, value in (("eps", "epsilon value", eps), ("weight_decay", "weight_decay value", weight_decay)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0):
            raise ValueError(f"Invalid {phrase}: {value!r} ({name} must be a float >= 0)")


def _check_options(group: dict[str, Any]) -> None:
    """Reject bad hyper-parameters with an error that names the argument and the value."""
    check_adam_options(group["lr"], group["betas"], group["eps"], group["weight_decay"])
    check_friction_slope(resolve_friction(group["friction"]), group["friction_slope"])
    for name in (
        "decoupled_weight_decay",
        "amsgrad",
        "maximize",
        "rectify",
        "adanorm",
        "adainject",
        "cautious",
        "centralize",
    ):
        if not isinstance(group[name], bool):
            raise ValueError(f"Invalid {name}: {group[name]!r} (must be a bool)")
    if group.get("differentiable", False):
        raise ValueError("Invalid differentiable: True (DiffGrad's step is not differentiable)")
    for name in ("foreach", "fused"):
        if group[name] not in (None, True, False):
            raise ValueError(f"Invalid {name}: {group[name]!r} (must be None, True or False)")
    if group["foreach"] and group["fused"]:
        raise ValueError("Invalid foreach/fused: `fused=True` and `foreach=True` cannot be used together")
    check_state_dtype(group["state_dtype"])
    threshold = group["rectify_threshold"]
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold >= 4.0):
        raise ValueError(f"Invalid rectify_threshold: {threshold!r} (must be a float >= 4; r_t needs rho_t >= 4)")
    if group["rectify_warmup"] not in WARMUPS:
        raise ValueError(f"Invalid rectify_warmup: {group['rectify_warmup']!r} (must be one of {', '.join(WARMUPS)})")
    gamma = group["adanorm_gamma"]
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0.0 <= gamma < 1.0):
        raise ValueError(f"Invalid adanorm_gamma: {gamma!r} (must be in [0, 1))")
    k = group["adainject_k"]
    if not (isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0.0):
        raise ValueError(f"Invalid adainject_k: {k!r} (must be a float > 0)")
