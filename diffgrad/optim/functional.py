"""The diffGrad step as a function of tensors (paper Eq. 11–20), in three implementations.

For each parameter with gradient g_t (after AMP unscaling, ``maximize`` and coupled weight decay)::

    m_t = β1·m + (1 − β1)·g_t                       Eq. 11
    v_t = β2·v + (1 − β2)·g_t²                      Eq. 12   (v_max ← max(v_max, v_t) with AMSGrad)
    ξ_t = friction(g_{t−1} − g_t),  g_0 = 0         Eq. 17–19
    θ  ← θ − α·ξ_t·m̂_t / (sqrt(v̂_t) + ε)           Eq. 13, 20

and then g_t goes into the optimizer's own ``previous_grad`` buffer (never an alias of ``.grad``).
diffGrad's step is Adam's update u_t = −α·m̂_t/(sqrt(v̂_t) + ε) scaled element-wise by ξ_t:
:func:`_update_` computes ξ_t, then θ ← θ + ξ_t·u_t (Eq. 11–13, 20), for the per-tensor and the
compiled paths, with u_t from torch's fused Adam kernel (``_KernelStep``: one pass over m, v and
u) or from explicit arithmetic (``_Coefficients``: Python floats or 0-dim tensors):

* ``_single_tensor_diffgrad`` (eager, the CPU default) steps one tensor at a time, large ones in
  cache-sized slices. For large CPU tensors u_t comes from the fused Adam kernel and ξ_t is
  computed in g_{t−1}'s own storage: about 21 memory passes per element instead of 28, and the
  passes of a slice after its first touch hit cache rather than DRAM. Small tensors (whose step
  the kernel's OpenMP region would dominate), other devices and a step traced by
  ``torch.compile`` use the explicit arithmetic.
* ``_multi_tensor_diffgrad`` writes the same equations with ``torch._foreach_*`` kernels.
* ``_fused_diffgrad`` traces :func:`_update_` with the explicit arithmetic over all tensors of a
  device into one ``torch.compile`` graph, so Inductor fuses each tensor's step into one pass:
  read p, g, m, v, g_{t−1}; write p, m, v, g_{t−1}. Step-dependent scalars (bias corrections,
  lr, betas) enter as a tensor, so neither a scheduler nor the step count recompiles it.

State buffers may be stored in another dtype or 8-bit (:mod:`diffgrad.optim.state`); every path
converts them in :func:`~diffgrad.optim.state.load` / :func:`~diffgrad.optim.state.store` only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from diffgrad.optim.friction import Friction, foreach_friction_, friction_
from diffgrad.optim.state import Blockwise8, Span, StateBuffer, compute_dtype, flat_viewable, load, real_numel, store

__all__ = ["diffgrad"]

# Elements per slice on the per-tensor path: big enough that the ~8 kernels per slice are not
# dominated by dispatch, small enough that a slice's live arrays (p, g, m, v, g_{t−1}, u; 1 MiB
# each) stay in the last-level cache. A multiple of the 8-bit block size (benchmarks/step.py).
CHUNK = 1 << 18
# Below this many elements ATen's element-wise CPU kernels run on one thread (its GRAIN_SIZE),
# while the fused Adam kernel always opens an OpenMP region.
_SERIAL_NUMEL = 32768


class _KernelStep(NamedTuple):
    """One step's hyper-parameters for torch's fused Adam kernel, which reads ``step`` itself."""

    step: Tensor
    lr: float
    beta1: float
    beta2: float
    eps: float
    decay: float  # 1 − αλ, decoupled weight decay
    grad_factor: float  # ±1/(AMP loss scale); −1 for maximize


class _Coefficients(NamedTuple):
    """One step's scalars for the explicit arithmetic: Python floats on the eager path, 0-dim
    tensors (a row of a table built before the graph runs) in the compiled one."""

    decay: float | Tensor  # 1 − αλ
    lerp1: float | Tensor  # 1 − β1
    beta2: float | Tensor
    lerp2: float | Tensor  # 1 − β2
    eps: float | Tensor  # ε·sqrt(1 − β2^t)
    step_size: float | Tensor  # α·sqrt(1 − β2^t) / (1 − β1^t)
    grad_factor: float | Tensor


def _coefficients(
    step: float | Tensor,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    grad_factor: float | Tensor,
) -> _Coefficients:
    """The scalars of Eq. 13/20 at step t = ``step`` (already incremented; a float or a tensor).

    α·m̂/(sqrt(v̂) + ε) = s_t·m/(sqrt(v) + ε_t) with s_t = α·sqrt(1 − β2^t)/(1 − β1^t) and
    ε_t = ε·sqrt(1 − β2^t): equal up to round-off, with no bias-correction pass over sqrt(v).
    """
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    return _Coefficients(
        decay=1 - lr * weight_decay,
        lerp1=1 - beta1,
        beta2=beta2,
        lerp2=1 - beta2,
        eps=eps * bias_correction2_sqrt,
        step_size=lr * bias_correction2_sqrt / bias_correction1,
        grad_factor=grad_factor,
    )


def _apply_adam_update_(
    param: Tensor,
    xi: Tensor,
    g: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    hp: _KernelStep | _Coefficients,
) -> None:
    """Eq. 11–13 in place on m and v (and v_max), then Eq. 20: θ ← θ + ξ·u with Adam's update
    u = −α·m̂/(sqrt(v̂) + ε)."""
    if isinstance(hp, _KernelStep):
        # torch's fused Adam kernel applied to a zero "parameter" leaves u in it.
        update = torch.zeros_like(g)
        torch._fused_adam_(
            [update],
            [g],
            [exp_avg],
            [exp_avg_sq],
            [] if max_exp_avg_sq is None else [max_exp_avg_sq],
            [hp.step],
            lr=hp.lr,
            beta1=hp.beta1,
            beta2=hp.beta2,
            weight_decay=0.0,
            eps=hp.eps,
            amsgrad=max_exp_avg_sq is not None,
            maximize=False,
        )
        param.addcmul_(update, xi)
        return
    exp_avg.lerp_(g, hp.lerp1)
    exp_avg_sq.mul_(hp.beta2).addcmul_(g, g, value=hp.lerp2)
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        exp_avg_sq = max_exp_avg_sq
    param.addcdiv_(xi.mul_(exp_avg), exp_avg_sq.sqrt().add_(hp.eps), value=-hp.step_size)


def _update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    previous_grad: Tensor,
    max_exp_avg_sq: Tensor | None,
    hp: _KernelStep | _Coefficients,
    *,
    weight_decay: float,
    decoupled_weight_decay: bool,
    scale_grad: bool,
    friction: Friction,
) -> None:
    """One diffGrad step (Eq. 11–20) on matching slices, in place; ``grad`` is only read."""
    g = grad.mul(hp.grad_factor) if scale_grad else grad
    if weight_decay != 0.0:
        if decoupled_weight_decay:
            param.mul_(hp.decay)
        else:
            g = g.add(param, alpha=weight_decay)
    # ξ is computed in g_{t−1}'s storage, which then takes g_t: no temporary for Δg.
    xi = friction_(friction, previous_grad.sub_(g), g)
    _apply_adam_update_(param, xi, g, exp_avg, exp_avg_sq, max_exp_avg_sq, hp)
    previous_grad.copy_(g)


# Second-moment buffers (v, v_max) are stored in the sqrt domain when quantised.
_SQRT_DOMAIN = (False, True, False, True)


def _step_slice_(
    param: Tensor,
    grad: Tensor,
    buffers: list[StateBuffer],
    hp: _KernelStep | _Coefficients,
    span: Span,
    *,
    copy: bool,
    keep: Tensor | None,
    weight_decay: float,
    decoupled_weight_decay: bool,
    scale_grad: bool,
    friction: Friction,
) -> None:
    """Load the elements ``span`` of a parameter and its state (exp_avg, exp_avg_sq,
    previous_grad and, with AMSGrad, max_exp_avg_sq) in the compute dtype, step them, store them
    back. ``span=None``: whole tensors in their own shapes (only when no buffer is 8-bit)."""
    dtype = compute_dtype(param)
    p, store_p = load(param, span, dtype, copy=copy)
    g, _ = load(grad, span, dtype, copy=False)
    loaded = [load(b, span, dtype, copy=copy, sqrt_domain=sq) for b, sq in zip(buffers, _SQRT_DOMAIN)]
    work = [t for t, _ in loaded]
    _update_(
        p,
        g,
        *work[:3],
        work[3] if len(work) > 3 else None,
        hp,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        scale_grad=scale_grad,
        friction=friction,
    )
    if store_p:
        store(param, p, span, keep=keep)
    for buffer, (value, must_store), sq in zip(buffers, loaded, _SQRT_DOMAIN):
        if must_store:
            store(buffer, value, span, keep=keep, sqrt_domain=sq)


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
    foreach: bool = False,
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
) -> None:
    """Functional diffGrad: one step over lists of parameters and their state, updated in place.

    ``max_exp_avg_sqs`` is empty unless ``amsgrad``. ``grads`` are read, never written. State
    buffers are tensors or :class:`~diffgrad.optim.state.Blockwise8`. ``grad_scale`` and
    ``found_inf`` come from ``torch.amp.GradScaler``: gradients are divided by ``grad_scale``,
    and where ``found_inf`` is non-zero the step leaves parameters and state untouched.
    ``fused`` runs the compiled single-pass step; ``foreach`` the ``torch._foreach_*`` one.
    """
    if foreach and fused:
        raise RuntimeError("DiffGrad: `fused` and `foreach` cannot both be True")
    impl = _fused_diffgrad if fused else _multi_tensor_diffgrad if foreach else _single_tensor_diffgrad
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        previous_grads,
        max_exp_avg_sqs if amsgrad else [],
        state_steps,
        grad_scale,
        found_inf,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
        friction=friction,
    )


def _eager_grad_factor(grad_scale: Tensor | None, found_inf: Tensor | None, maximize: bool) -> float | None:
    """The eager paths' gradient factor, or None when GradScaler found non-finite gradients."""
    if found_inf is not None and found_inf.item() != 0.0:
        return None
    factor = -1.0 if maximize else 1.0
    return factor if grad_scale is None else factor / grad_scale.item()


def _single_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[StateBuffer],
    exp_avg_sqs: list[StateBuffer],
    previous_grads: list[StateBuffer],
    max_exp_avg_sqs: list[StateBuffer],
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    grad_factor = _eager_grad_factor(grad_scale, found_inf, maximize)
    if grad_factor is None:
        return
    lr = float(lr)
    # torch's fused Adam kernel pays off for large plain CPU tensors only: for small ones its
    # OpenMP region costs more than their whole step, and off the CPU it would want ``step`` on
    # the device. Inside a torch.compile'd training step, the explicit arithmetic on whole tensors,
    # with the step count as a tensor (no .item() graph break, no recompilation as it grows).
    compiling = torch.compiler.is_compiling()
    options = dict(
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        scale_grad=grad_factor != 1.0,
        friction=friction,
    )
    for i, (param, grad, step_t) in enumerate(zip(params, grads, state_steps)):
        step_t += 1
        n = real_numel(param)
        hp: _KernelStep | _Coefficients
        if compiling or param.device.type != "cpu" or n < _SERIAL_NUMEL or is_traceable_wrapper_subclass(param):
            hp = _coefficients(
                step_t.to(torch.float64) if compiling else step_t.item(),
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                weight_decay=weight_decay,
                grad_factor=grad_factor,
            )
        else:
            hp = _KernelStep(step_t, lr, beta1, beta2, eps, decay=1.0 - lr * weight_decay, grad_factor=grad_factor)
        buffers = [exp_avgs[i], exp_avg_sqs[i], previous_grads[i], *max_exp_avg_sqs[i : i + 1]]
        spans = _spans(param, grad, buffers, friction, n if compiling else CHUNK)
        if (
            spans == [None]
            and not param.is_complex()
            and all(isinstance(b, Tensor) and b.dtype == param.dtype == compute_dtype(param) for b in buffers)
        ):
            # Real state in the parameter's own (full-precision) dtype: nothing to load or
            # store, so skip the per-slice bookkeeping, which would cost more than a small
            # tensor's arithmetic.
            _update_(param, grad, *buffers[:3], buffers[3] if len(buffers) > 3 else None, hp, **options)
            continue
        for span in spans:
            _step_slice_(param, grad, buffers, hp, span, copy=False, keep=None, **options)


def _spans(param: Tensor, grad: Tensor, buffers: list[StateBuffer], friction: Friction, chunk: int) -> list[Span]:
    """How to cut one parameter's step into slices of at most ``chunk`` elements.

    Whole tensors keep their own shape (span ``None``) when every tensor involved is plain and
    contiguous (the fused Adam kernel pairs elements by memory order); otherwise, and for 8-bit
    state and 0-dim tensors, they go flat (Inductor 2.13 drops in-place writes to 0-dim float64
    CPU tensors; their flat views are written correctly). DFC3–5 take statistics of the whole
    gradient: never sliced.
    """
    n = real_numel(param)
    if is_traceable_wrapper_subclass(param):
        # A DTensor's (FSDP2) local shard cannot be flattened or sliced in global terms.
        return [None]
    if param.dim() == 0 or not all(isinstance(t, Tensor) and flat_viewable(t) for t in (param, grad, *buffers)):
        return [(0, n)]
    if n <= chunk or friction.uses_stats:
        return [None]
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


def _foreach_copy_(targets: list[Tensor], sources: list[Tensor]) -> None:
    # DTensor (FSDP2) has no sharding rule for aten._foreach_copy_ (torch 2.13): copy one by one.
    if any(is_traceable_wrapper_subclass(t) for t in targets):
        for target, source in zip(targets, sources):
            target.copy_(source)
    else:
        torch._foreach_copy_(targets, sources)


def _multi_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[StateBuffer],
    exp_avg_sqs: list[StateBuffer],
    previous_grads: list[StateBuffer],
    max_exp_avg_sqs: list[StateBuffer],
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    if not params:
        return
    grad_factor = _eager_grad_factor(grad_scale, found_inf, maximize)
    if grad_factor is None:
        return
    lr = float(lr)
    amsgrad = bool(max_exp_avg_sqs)
    for indices in _by_device_and_dtype(params):
        group_params = [params[i] for i in indices]
        buffer_lists = [[b[i] for i in indices] for b in (exp_avgs, exp_avg_sqs, previous_grads, max_exp_avg_sqs) if b]
        # Whole tensors in the compute dtype: views of plain buffers, converted copies otherwise.
        dtype = compute_dtype(group_params[0])
        spans = [
            _spans(p, grads[i], [b[j] for b in buffer_lists], friction, real_numel(p))[0]
            for j, (i, p) in enumerate(zip(indices, group_params))
        ]
        loaded = [
            [load(b, span, dtype, copy=False, sqrt_domain=sq) for b, span in zip(blist, spans)]
            for blist, sq in zip([group_params, *buffer_lists], (False, *_SQRT_DOMAIN))
        ]
        p, m, v, prev, *rest = [[t for t, _ in tensors] for tensors in loaded]
        g = [load(grads[i], span, dtype, copy=False)[0] for i, span in zip(indices, spans)]
        group_steps = [state_steps[i] for i in indices]

        torch._foreach_add_(group_steps, 1.0)
        # The caller's .grad is only read: a changed g_t goes into new tensors.
        if grad_factor != 1.0:
            g = torch._foreach_mul(g, grad_factor)
        if weight_decay != 0.0:
            if decoupled_weight_decay:
                torch._foreach_mul_(p, 1.0 - lr * weight_decay)
            else:
                g = torch._foreach_add(g, p, alpha=weight_decay)
        coefficients = [
            _coefficients(t.item(), lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, grad_factor=grad_factor)
            for t in group_steps
        ]
        torch._foreach_lerp_(m, g, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1.0 - beta2)
        second_moments = v
        if amsgrad:
            second_moments = rest[0]
            torch._foreach_maximum_(second_moments, v)
        # ξ in g_{t−1}'s storage, which then takes g_t.
        torch._foreach_sub_(prev, g)
        xis = foreach_friction_(friction, prev, g)
        denom = torch._foreach_sqrt(second_moments)
        torch._foreach_add_(denom, [c.eps for c in coefficients])
        torch._foreach_mul_(xis, m)
        torch._foreach_addcdiv_(p, xis, denom, [-c.step_size for c in coefficients])
        _foreach_copy_(prev, g)

        for targets, tensors, sq in zip([group_params, *buffer_lists], loaded, (False, *_SQRT_DOMAIN)):
            for target, (value, must_store), span in zip(targets, tensors, spans):
                if must_store:
                    store(target, value, span, sqrt_domain=sq)


def _by_device_and_dtype(params: list[Tensor]) -> list[list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, compute_dtype(p)), []).append(i)
    return list(groups.values())


def _fused_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[StateBuffer],
    exp_avg_sqs: list[StateBuffer],
    previous_grads: list[StateBuffer],
    max_exp_avg_sqs: list[StateBuffer],
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    friction: Friction,
) -> None:
    if not params:
        return
    for indices in _by_device_and_dtype(params):
        device = params[indices[0]].device
        steps = [state_steps[i] for i in indices]
        torch._foreach_add_(steps, 1.0)
        device_found_inf = None if found_inf is None else found_inf.to(device, non_blocking=True)
        grad_factor: float | Tensor = -1.0 if maximize else 1.0
        if grad_scale is not None:
            grad_factor = grad_factor / grad_scale.to(device, torch.float64, non_blocking=True)
        scalars = _coefficients(
            torch.stack(steps).to(torch.float64),
            lr=lr.to(device, torch.float64, non_blocking=True) if isinstance(lr, Tensor) else lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            grad_factor=grad_factor,
        )
        # One row of scalars per tensor, computed here (a few tiny kernels) rather than in the
        # compiled graph, where Inductor would re-evaluate β^t inside every element loop.
        table = torch.stack(
            [torch.as_tensor(x, dtype=torch.float64, device=device).expand(len(indices)) for x in scalars], dim=1
        )
        _compiled_fused_step()(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [[b[i] for i in indices] for b in (exp_avgs, exp_avg_sqs, previous_grads, max_exp_avg_sqs) if b],
            table,
            device_found_inf,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            scale_grad=maximize or grad_scale is not None,
            friction=friction,
        )
        if device_found_inf is not None:
            torch._foreach_sub_(steps, [device_found_inf] * len(steps))


def _fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    buffer_lists: list[list[StateBuffer]],
    table: Tensor,
    found_inf: Tensor | None,
    *,
    weight_decay: float,
    decoupled_weight_decay: bool,
    scale_grad: bool,
    friction: Friction,
) -> None:
    """The traced body of the fused step: :func:`_step_slice_` on every whole tensor."""
    keep = None if found_inf is None else found_inf != 0
    for i, (param, grad) in enumerate(zip(params, grads)):
        _step_slice_(
            param,
            grad,
            [b[i] for b in buffer_lists],
            _Coefficients(*table[i].unbind()),
            _spans(param, grad, [b[i] for b in buffer_lists], friction, real_numel(param))[0],
            copy=True,
            keep=keep,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            scale_grad=scale_grad,
            friction=friction,
        )


@functools.cache
def _compiled_fused_step() -> Callable[..., None]:
    # Shapes are static (dynamic=False: no symbolic-size kernels) and everything that changes
    # from step to step is a tensor, so a parameter group compiles once. Groups of different
    # shapes each add an entry; allow more of them than Dynamo's default of 8 where supported.
    limits = {"recompile_limit": 64} if "recompile_limit" in inspect.signature(torch.compile).parameters else {}
    # Dynamo's guards already pin every input's size and stride; Inductor's own re-check of
    # them costs ~2 µs per tensor per step (five tensors per parameter).
    options = {"size_asserts": False, "alignment_asserts": False}
    return torch.compile(_fused_step, dynamic=False, fullgraph=True, options=options, **limits)
