"""The diffGrad step as a function of tensors (paper Eq. 11–20): the dispatcher and the two
reference implementations.

For each parameter θ with gradient g_t (after AMP unscaling, ``maximize`` and coupled weight
decay; the family's modifiers are explicit calls into :mod:`diffgrad.optim.modifiers`)::

    m_t = β1·m_{t−1} + (1 − β1)·g_t                  Eq. 11
    v_t = β2·v_{t−1} + (1 − β2)·g_t²                 Eq. 12   (AMSGrad: v_max ← max(v_max, v_t))
    m̂_t = m_t/(1 − β1^t),  v̂_t = v_t/(1 − β2^t)     Eq. 13
    ξ_t = friction(g_{t−1} − g_t),  g_0 = 0          Eq. 17–19   (dfc-rms: docs/paper.md §10)
    θ_t = θ_{t−1} − α·ξ_t·m̂_t/(sqrt(v̂_t) + ε)       Eq. 20

and g_t then goes into the optimizer's own ``previous_grad`` buffer (never an alias of ``.grad``).

* :func:`_single_tensor_diffgrad` writes these equations for one tensor at a time;
* :func:`_multi_tensor_diffgrad` writes the same equations with ``torch._foreach_*`` kernels;
* ``fused=True`` runs a single-pass kernel: :mod:`diffgrad.optim.fused` (C++) for CPU tensors,
  :mod:`diffgrad.optim.fused_triton` (Triton) for CUDA tensors;
* ``foreach=None`` (the default) runs that kernel for CPU tensors where it can be built (a C++
  compiler is present), else the per-tensor path, and the foreach path on other devices; under
  ``torch.compile``, which cannot trace the kernel, the reference paths.

The reference paths see plain tensors in the compute dtype only: compact state (bfloat16,
8-bit) and low-precision parameters are unpacked before them and packed after them
(:func:`diffgrad.optim.state.unpack` / :func:`~diffgrad.optim.state.pack`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_value
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from diffgrad.optim import fused as fused_kernel
from diffgrad.optim.compat import foreach_copy_
from diffgrad.optim.friction import Friction, friction_
from diffgrad.optim.modifiers import (
    Modifiers,
    adainject_scale,
    adanorm_,
    cautious_,
    centralized,
    injected,
    rectification,
)
from diffgrad.optim.state import Blockwise8, StateBuffer, compute_dtype, pack, real_numel, unpack

__all__ = ["denominator", "diffgrad"]

# With compact state, the reference paths unpack this many elements at a time at most, so that
# their decoded copies stay small next to the state they stand for.
UNPACK_NUMEL = 1 << 22


class _State(NamedTuple):
    """The step's per-parameter tensors, one list each (empty where an option is off), in the
    order of the reference paths' signature. ``previous_params`` (AdaInject) and
    ``exp_grad_norms`` (AdaNorm, 0-dim) are kept in the compute dtype."""

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[StateBuffer]
    exp_avg_sqs: list[StateBuffer]
    previous_grads: list[StateBuffer]
    max_exp_avg_sqs: list[StateBuffer]
    state_steps: list[Tensor]
    previous_params: list[Tensor]
    exp_grad_norms: list[Tensor]

    def subset(self, indices: list[int]) -> _State:
        return _State(*cast("Iterator[Any]", ([values[i] for i in indices] if values else [] for values in self)))


# Which lists a step updates and must write back after unpacking (the gradients are only read),
# and which hold second moments (stored as sqrt(v) when 8-bit).
# One flag per field of _State, in its order.
_WRITTEN = (True, False, True, True, True, True, False, True, False)
_SQRT_DOMAIN = (False, False, False, True, False, True, False, False, False)
_UNPACKED = (True, True, True, True, True, True, False, True, False)


def diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[StateBuffer],
    exp_avg_sqs: list[StateBuffer],
    previous_grads: list[StateBuffer],
    max_exp_avg_sqs: list[StateBuffer],
    state_steps: list[Tensor],
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    *,
    previous_params: list[Tensor] | None = None,
    exp_grad_norms: list[Tensor] | None = None,
    foreach: bool | None = None,
    fused: bool = False,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    friction: Friction,
    modifiers: Modifiers = Modifiers(),
) -> None:
    """Functional diffGrad: one step over lists of parameters and their state, updated in place.

    ``max_exp_avg_sqs`` is empty unless ``amsgrad``; ``previous_params`` (θ_{t−1}) is needed with
    ``modifiers.adainject`` and ``exp_grad_norms`` (0-dim) with ``modifiers.adanorm``. ``grads``
    are read, never written. State buffers are tensors or
    :class:`~diffgrad.optim.state.Blockwise8`. ``grad_scale`` and ``found_inf`` come from
    ``torch.amp.GradScaler``: gradients are divided by ``grad_scale``, and where ``found_inf`` is
    non-zero the step leaves parameters and state untouched. ``fused`` runs the single-pass
    kernel; ``foreach=True`` the ``torch._foreach_*`` step, ``False`` the per-tensor one, and
    ``None`` picks per tensor.
    """
    if foreach and fused:
        raise RuntimeError("DiffGrad: `fused` and `foreach` cannot both be True")
    for name, values, needed in (
        ("max_exp_avg_sqs", max_exp_avg_sqs, amsgrad),
        ("previous_params", previous_params, modifiers.adainject),
        ("exp_grad_norms", exp_grad_norms, modifiers.adanorm),
    ):
        if needed and (values is None or len(values) != len(params)):
            raise ValueError(f"diffgrad: `{name}` must hold one tensor per parameter with this option on")
    if not params or (found_inf is not None and found_inf.item() != 0.0):
        return
    state = _State(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        previous_grads,
        max_exp_avg_sqs if amsgrad else [],
        state_steps,
        (previous_params or []) if modifiers.adainject else [],
        (exp_grad_norms or []) if modifiers.adanorm else [],
    )
    hyper = dict(
        # ±1/(AMP loss scale), negative to maximise: the one factor every path applies to g_t.
        grad_factor=(-1.0 if maximize else 1.0) / (1.0 if grad_scale is None else grad_scale.item()),
        lr=_get_value(lr),
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad,
        friction=friction,
        modifiers=modifiers,
    )
    if fused:
        _fused_diffgrad(state, hyper)
    elif foreach is None:
        _default_diffgrad(state, hyper)
    else:
        _stepped_unpacked(_multi_tensor_diffgrad if foreach else _single_tensor_diffgrad, state, hyper)


def _single_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    previous_params: list[Tensor],
    exp_grad_norms: list[Tensor],
    *,
    grad_factor: float,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    friction: Friction,
    modifiers: Modifiers,
) -> None:
    for i, param in enumerate(params):
        exp_avg, exp_avg_sq, previous_grad, step_t = exp_avgs[i], exp_avg_sqs[i], previous_grads[i], state_steps[i]
        step_t += 1
        step = _step_value(step_t)

        # g_t: unscaled (AMP), negated (maximize), centralised, with coupled decay; a new tensor
        # wherever it differs from the caller's .grad, which is only read.
        grad = grads[i] if grad_factor == 1.0 else grads[i] * grad_factor
        if modifiers.centralize:
            grad = centralized(grad)
        if weight_decay != 0 and not decoupled_weight_decay:
            grad = grad.add(param, alpha=weight_decay)
        first = grad  # the first moment's input
        if modifiers.adanorm:
            first = adanorm_(first, exp_grad_norms[i], modifiers.adanorm_gamma)
        if modifiers.adainject:
            param_change = previous_params[i].sub_(param)  # Δθ_t = θ_{t−1} − θ_t
            first = injected(first, param_change, adainject_scale(step, modifiers.adainject_k))
            previous_params[i].copy_(param)
        if weight_decay != 0 and decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)

        exp_avg.lerp_(first, 1 - beta1)  # Eq. 11
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # Eq. 12
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            exp_avg_sq = max_exp_avg_sqs[i]

        bias_correction1 = 1 - beta1**step  # Eq. 13
        denom = denominator(exp_avg_sq, step, beta2, eps)

        (xi,) = friction_(friction, [previous_grad.sub(grad)], [grad], [denom])  # Eq. 17–19; docs/paper.md §10
        previous_grad.copy_(grad)

        update = xi.mul_(exp_avg).div_(denom)  # ξ·m/(sqrt(v̂) + ε), m̂'s 1/(1 − β1^t) in the step size
        if modifiers.rectify:
            ratio, warmup = rectification(step, beta2, modifiers.rectify_threshold, modifiers.rectify_warmup)
            update.mul_(ratio).add_(exp_avg * warmup)
        if modifiers.cautious:
            cautious_(update, grad)
        param.sub_(update.mul_(lr / bias_correction1))  # Eq. 20


def _multi_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    previous_params: list[Tensor],
    exp_grad_norms: list[Tensor],
    *,
    grad_factor: float,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    friction: Friction,
    modifiers: Modifiers,
) -> None:
    tensor_lists = cast(
        "list[list[Tensor | None]]",
        [params, grads, exp_avgs, exp_avg_sqs, previous_grads, max_exp_avg_sqs, state_steps, previous_params,
         exp_grad_norms],
    )  # fmt: skip
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensor_lists)
    for (
        device_params,
        device_grads,
        device_exp_avgs,
        device_exp_avg_sqs,
        device_previous_grads,
        device_max_exp_avg_sqs,
        device_state_steps,
        device_previous_params,
        device_exp_grad_norms,
    ), _ in cast("dict[Any, tuple[list[list[Tensor]], Any]]", grouped).values():
        torch._foreach_add_(device_state_steps, 1)
        steps = [_step_value(step_t) for step_t in device_state_steps]

        grad = device_grads if grad_factor == 1.0 else torch._foreach_mul(device_grads, grad_factor)
        if modifiers.centralize:
            grad = [centralized(g) for g in grad]
        if weight_decay != 0 and not decoupled_weight_decay:
            grad = torch._foreach_add(grad, device_params, alpha=weight_decay)
        first = grad
        if modifiers.adanorm:
            first = [adanorm_(s, e, modifiers.adanorm_gamma) for s, e in zip(first, device_exp_grad_norms)]
        if modifiers.adainject:
            param_changes = torch._foreach_sub(device_previous_params, device_params)
            scales = [adainject_scale(step, modifiers.adainject_k) for step in steps]
            first = [injected(s, change, scale) for s, change, scale in zip(first, param_changes, scales)]
            foreach_copy_(device_previous_params, device_params)
        if weight_decay != 0 and decoupled_weight_decay:
            torch._foreach_mul_(device_params, 1 - lr * weight_decay)

        torch._foreach_lerp_(device_exp_avgs, first, 1 - beta1)  # Eq. 11
        torch._foreach_mul_(device_exp_avg_sqs, beta2)  # Eq. 12
        torch._foreach_addcmul_(device_exp_avg_sqs, grad, grad, 1 - beta2)
        if amsgrad:
            torch._foreach_maximum_(device_max_exp_avg_sqs, device_exp_avg_sqs)
            device_exp_avg_sqs = device_max_exp_avg_sqs

        bias_correction1 = [1 - beta1**step for step in steps]  # Eq. 13
        bias_correction2_sqrt = [(1 - beta2**step) ** 0.5 for step in steps]
        denoms = torch._foreach_sqrt(device_exp_avg_sqs)  # sqrt(v̂_t) + ε
        torch._foreach_div_(denoms, bias_correction2_sqrt)
        torch._foreach_add_(denoms, eps)

        xis = friction_(friction, torch._foreach_sub(device_previous_grads, grad), grad, denoms)  # Eq. 17–19
        foreach_copy_(device_previous_grads, grad)

        updates = xis
        torch._foreach_mul_(updates, device_exp_avgs)
        torch._foreach_div_(updates, denoms)
        if modifiers.rectify:
            ratios, warmups = zip(*(rectification(step, beta2, modifiers.rectify_threshold,
                                                  modifiers.rectify_warmup) for step in steps))  # fmt: skip
            torch._foreach_mul_(updates, list(ratios))
            torch._foreach_add_(updates, torch._foreach_mul(device_exp_avgs, list(warmups)))
        if modifiers.cautious:
            for update, g in zip(updates, grad):
                cautious_(update, g)
        torch._foreach_mul_(updates, [lr / bc for bc in bias_correction1])  # Eq. 20
        torch._foreach_sub_(device_params, updates)


def denominator(exp_avg_sq: Tensor, step: float | Tensor, beta2: float, eps: float) -> Tensor:
    """sqrt(v̂_t) + ε of one tensor (Eq. 13, 20), new; ``exp_avg_sq`` is v_t (AMSGrad: v_max)."""
    return (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)


def _step_value(step_t: Tensor) -> float | Tensor:
    """t as a Python float; under ``torch.compile``, where reading it would break the graph, as a
    float64 0-dim tensor, so that β^t is as exact as with the float."""
    return step_t.to(torch.float64) if torch.compiler.is_compiling() else step_t.item()


def _stepped_unpacked(impl: Any, state: _State, hyper: dict[str, Any]) -> None:
    """Run a reference path on ``state`` unpacked to plain compute-dtype tensors; with compact
    state, at most :data:`UNPACK_NUMEL` elements at a time."""
    for indices in _batches(state):
        with _unpacked(state.subset(indices)) as plain:
            impl(*plain, **hyper)


def _batches(state: _State) -> Iterator[list[int]]:
    """All parameters at once when nothing needs a decoded copy, else runs of at most
    :data:`UNPACK_NUMEL` elements (one parameter at least)."""
    compact = any(isinstance(b, Blockwise8) or b.dtype != compute_dtype(p)
                  for buffers in state[2:6] for b, p in zip(buffers, state.params))  # fmt: skip
    if not compact:
        yield list(range(len(state.params)))
        return
    batch: list[int] = []
    size = 0
    for i, param in enumerate(state.params):
        if batch and size + real_numel(param) > UNPACK_NUMEL:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += real_numel(param)
    yield batch


@contextmanager
def _unpacked(state: _State) -> Iterator[_State]:
    """``state`` as plain real tensors in the compute dtype; on exit, the updated values are
    packed back into the buffers that were decoded or converted."""
    fields = cast("tuple[list[Any], ...]", state)
    lists = [
        [unpack(t, p, sqrt_domain=sqrt_domain) for t, p in zip(values, state.params)] if unpacked else None
        for values, unpacked, sqrt_domain in zip(fields, _UNPACKED, _SQRT_DOMAIN)
    ]
    yield _State(
        *cast(
            "Iterator[Any]",
            (values if pairs is None else [t for t, _ in pairs] for values, pairs in zip(fields, lists)),
        )
    )
    for values, pairs, written, sqrt_domain in zip(fields, lists, _WRITTEN, _SQRT_DOMAIN):
        if written and pairs is not None:
            for target, (value, must_pack) in zip(values, pairs):
                if must_pack:
                    pack(target, value, sqrt_domain=sqrt_domain)


def _default_diffgrad(state: _State, hyper: dict[str, Any]) -> None:
    """The default step: CPU tensors take the fused kernel where it can be built, else the
    per-tensor path; tensors on other devices the foreach path (one launch per operation for all
    of them). Under ``torch.compile``, which cannot trace the kernel, CPU tensors take the
    per-tensor path."""
    cpu = [i for i, p in enumerate(state.params) if p.device.type == "cpu"]
    other = [i for i, p in enumerate(state.params) if p.device.type != "cpu"]
    if cpu and not torch.compiler.is_compiling() and _kernel_available():
        _fused_diffgrad(state.subset(cpu), hyper)
    elif cpu:
        _stepped_unpacked(_single_tensor_diffgrad, state.subset(cpu), hyper)
    if other:
        _stepped_unpacked(_multi_tensor_diffgrad, state.subset(other), hyper)


@functools.cache
def _kernel_available() -> bool:
    """Whether the fused kernel is built or can be built here (once per process)."""
    try:
        fused_kernel.library()
    except (RuntimeError, OSError):
        return False
    return True


# Dynamo cannot trace the kernels' launches: inside torch.compile the call runs as it is, at one
# graph break, instead of Dynamo trying (and breaking at) each line that prepares it.
@torch.compiler.disable
def _fused_diffgrad(state: _State, hyper: dict[str, Any]) -> None:
    """The single-pass kernels: the C++ one for CPU tensors, the Triton one for CUDA tensors. A
    DTensor (FSDP2) parameter's element-wise step needs only its local shard; one whose step
    takes whole-tensor statistics (DFC3–5, AdaNorm, cautious) needs collectives, which the
    per-tensor path's DTensor reductions provide."""
    sharded = [i for i, p in enumerate(state.params) if is_traceable_wrapper_subclass(p)]
    if sharded and (hyper["friction"].uses_stats or hyper["modifiers"].whole_tensor):
        _stepped_unpacked(_single_tensor_diffgrad, state.subset(sharded), hyper)
        state = state.subset([i for i in range(len(state.params)) if i not in set(sharded)])
    elif sharded:
        state = _State(*([_local(t) for t in values] for values in state))
    by_device: dict[str, list[int]] = {}
    for i, p in enumerate(state.params):
        by_device.setdefault(p.device.type, []).append(i)
    for device in by_device:
        if device not in ("cpu", "cuda"):
            raise RuntimeError(
                f"DiffGrad(fused=True) supports CPU and CUDA tensors; got a parameter on {device} "
                "(use the default foreach=None there)"
            )
    for device, indices in by_device.items():
        step = fused_kernel.fused_diffgrad_cpu if device == "cpu" else _fused_diffgrad_cuda
        step(*(state if len(indices) == len(state.params) else state.subset(indices)), **hyper)


def _fused_diffgrad_cuda(*tensors: list[Any], **hyper: Any) -> None:
    """The Triton kernel, on plain and bfloat16 state as it is stored; 8-bit state is decoded
    before it and encoded after it, as for the reference paths."""
    try:
        from diffgrad.optim.fused_triton import fused_diffgrad_triton
    except ImportError as error:
        raise RuntimeError(
            f"DiffGrad(fused=True) on CUDA tensors runs a Triton kernel, and Triton does not import here ({error}); "
            "install the triton that matches your torch, or use the default foreach=None"
        ) from error
    state = _State(*tensors)
    if any(isinstance(b, Blockwise8) for buffers in state[2:6] for b in buffers):
        _stepped_unpacked(fused_diffgrad_triton, state, hyper)
    else:
        fused_diffgrad_triton(*cast("tuple[Any, ...]", state), **hyper)


def _local(t: Any) -> Any:
    """A DTensor's local shard (the same storage: in-place updates reach the DTensor)."""
    return cast(Any, t).to_local() if is_traceable_wrapper_subclass(t) else t
