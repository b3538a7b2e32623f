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

* ``_single_tensor_diffgrad`` (eager; by default the CPU tensors of 32768 elements and more,
  :func:`_default_diffgrad`) steps one tensor at a time, large ones in cache-sized slices. For
  large CPU tensors u_t comes from the fused Adam kernel and ξ_t is computed in g_{t−1}'s own
  storage: about 21 memory passes per element instead of 28, and the
  passes of a slice after its first touch hit cache rather than DRAM. Small tensors (whose step
  the kernel's OpenMP region would dominate), other devices and a step traced by
  ``torch.compile`` use the explicit arithmetic.
* ``_multi_tensor_diffgrad`` writes the same equations with ``torch._foreach_*`` kernels (by
  default the small CPU tensors and every tensor on other devices).
* ``_fused_diffgrad`` traces :func:`_update_` with the explicit arithmetic over all tensors of a
  device into one ``torch.compile`` graph, so Inductor fuses each tensor's step into one pass:
  read p, g, m, v, g_{t−1}; write p, m, v, g_{t−1}. lr, β1, β2 and ε enter as a tensor and the
  graph derives the bias corrections from the step counters, so neither a scheduler nor the step
  count recompiles it. On a CPU core that loop's arithmetic costs as much as its memory traffic,
  so traced, the step takes the forms with the fewest operations per element: ξ enters as the
  divisor 1/ξ = 1 + e^{−z} (one division instead of two;
  :func:`~diffgrad.optim.friction.one_plus_exp_neg`), which keep it at the memory floor on large
  tensors (docs/performance.md).

State buffers may be stored in another dtype or 8-bit (:mod:`diffgrad.optim.state`); every path
converts them in :func:`~diffgrad.optim.state.load` / :func:`~diffgrad.optim.state.store` only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from diffgrad.optim.friction import Friction, foreach_friction_, friction_
from diffgrad.optim.modifiers import Modifiers, adanorm_, cautious_, centralized, injected, rectification
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
    tensors (a row of a table that the graph builds first) in the compiled one."""

    decay: float | Tensor  # 1 − αλ
    beta1: float | Tensor
    lerp1: float | Tensor  # 1 − β1
    beta2: float | Tensor
    lerp2: float | Tensor  # 1 − β2
    eps: float | Tensor  # ε·sqrt(1 − β2^t)
    step_size: float | Tensor  # α·r_t·sqrt(1 − β2^t) / (1 − β1^t); r_t = 1 unless rectified
    momentum_step: float | Tensor  # α·w/(1 − β1^t): the rectified warm-up's momentum step, else 0
    inject_scale: float | Tensor  # AdaInject's 1/k (1 at t = 1)
    grad_factor: float | Tensor


class _Rule(NamedTuple):
    """What a parameter group's step does: fixed for the group (constants of the compiled graph)."""

    weight_decay: float
    decoupled_weight_decay: bool
    scale_grad: bool
    friction: Friction
    modifiers: Modifiers

    @classmethod
    def of(cls, hyper: _Hyper, scale_grad: bool) -> _Rule:
        return cls(hyper.weight_decay, hyper.decoupled_weight_decay, scale_grad, hyper.friction, hyper.modifiers)

    @property
    def whole_tensor(self) -> bool:
        """Whether the step takes whole-tensor statistics (DFC3–5, AdaNorm, cautious)."""
        return self.friction.uses_stats or self.modifiers.whole_tensor


class _Hyper(NamedTuple):
    """A parameter group's hyper-parameters, as every implementation receives them."""

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    friction: Friction
    modifiers: Modifiers


class _Buffers(NamedTuple):
    """A parameter's element-wise state (or a list of them, one per parameter); None: unused."""

    exp_avg: StateBuffer
    exp_avg_sq: StateBuffer
    previous_grad: StateBuffer
    max_exp_avg_sq: StateBuffer | None = None
    previous_param: StateBuffer | None = None


# Second-moment buffers (v, v_max) are stored in the sqrt domain when quantised.
_SQRT_DOMAIN = _Buffers(False, True, False, True, False)


def _coefficients(step: float | Tensor, hyper: _Hyper, grad_factor: float | Tensor) -> _Coefficients:
    """The scalars of Eq. 13/20 at step t = ``step`` (already incremented; a float or a tensor).

    α·m̂/(sqrt(v̂) + ε) = s_t·m/(sqrt(v) + ε_t) with s_t = α·sqrt(1 − β2^t)/(1 − β1^t) and
    ε_t = ε·sqrt(1 − β2^t): equal up to round-off, with no bias-correction pass over sqrt(v).
    """
    lr, beta1, beta2, eps, weight_decay, modifiers = (
        hyper.lr, hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay, hyper.modifiers
    )
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    ratio, warm = 1.0, 0.0
    if modifiers.rectify:
        ratio, warm = rectification(step, beta2, modifiers.rectify_threshold, modifiers.rectify_warmup)
    inject_scale: float | Tensor = 1.0
    if modifiers.adainject:
        inverse_k = 1.0 / modifiers.adainject_k
        if isinstance(step, Tensor):
            inject_scale = (step > 1).to(step.dtype) * (inverse_k - 1.0) + 1.0
        elif step > 1:
            inject_scale = inverse_k
    return _Coefficients(
        decay=1 - lr * weight_decay,
        beta1=beta1,
        lerp1=1 - beta1,
        beta2=beta2,
        lerp2=1 - beta2,
        eps=eps * bias_correction2_sqrt,
        step_size=lr * ratio * bias_correction2_sqrt / bias_correction1,
        momentum_step=lr * warm / bias_correction1,
        inject_scale=inject_scale,
        grad_factor=grad_factor,
    )


def _apply_update_(
    param: Tensor,
    xi: Tensor,
    first: Tensor,
    g: Tensor,
    buffers: _Buffers,
    hp: _KernelStep | _Coefficients,
    modifiers: Modifiers,
    *,
    traced: bool,
) -> None:
    """Eq. 11–13 in place on m (from ``first``: g, or its AdaNorm/AdaInject form) and v (and
    v_max), then Eq. 20, θ ← θ − α·u with u = ξ·m̂/(sqrt(v̂) + ε), rectified and masked as
    ``modifiers`` ask. ``xi`` holds ξ, or 1/ξ when ``traced`` (see :func:`_update_`)."""
    exp_avg, exp_avg_sq, max_exp_avg_sq = buffers.exp_avg, buffers.exp_avg_sq, buffers.max_exp_avg_sq
    if isinstance(hp, _KernelStep):
        # torch's fused Adam kernel applied to a zero "parameter" leaves −α·m̂/(sqrt(v̂) + ε) in it.
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
    if traced:
        exp_avg.mul_(hp.beta1).add_(first * hp.lerp1)  # a multiply and an FMA; lerp selects and blends
    else:
        exp_avg.lerp_(first, hp.lerp1)  # one pass
    exp_avg_sq.mul_(hp.beta2).addcmul_(g, g, value=hp.lerp2)
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        exp_avg_sq = max_exp_avg_sq
    denominator = exp_avg_sq.sqrt().add_(hp.eps)
    if traced:
        denominator.mul_(xi)  # (sqrt(v) + ε_t)/ξ
    if not (modifiers.rectify or modifiers.cautious):
        if traced:
            # θ − s_t·(m/d): a division and a multiply-subtract (addcdiv's value −s_t would
            # be negated in the loop).
            param.sub_(exp_avg.div(denominator).mul_(hp.step_size))
        else:
            param.addcdiv_(xi.mul_(exp_avg), denominator, value=-hp.step_size)
        return
    # α·u = m·(ξ·s_t/(sqrt(v) + ε_t) + the rectified warm-up's α·w/(1 − β1^t)).
    update = (denominator.reciprocal_() if traced else xi.div_(denominator)).mul_(hp.step_size)
    if modifiers.rectify:
        update.add_(hp.momentum_step)
    update.mul_(exp_avg)
    if modifiers.cautious:
        cautious_(update, g)
    param.sub_(update)


def _update_(
    param: Tensor,
    grad: Tensor,
    buffers: _Buffers,
    exp_grad_norm: Tensor | None,
    hp: _KernelStep | _Coefficients,
    rule: _Rule,
    *,
    traced: bool,
) -> None:
    """One diffGrad step (Eq. 11–20, with the modifiers of ``rule``) on matching slices, in
    place; ``grad`` is only read. ``traced``: written for torch.compile's single loop (below)."""
    g = grad.mul(hp.grad_factor) if rule.scale_grad else grad
    decay = rule.weight_decay != 0.0
    if decay and not rule.decoupled_weight_decay:
        g = g.add(param, alpha=rule.weight_decay)
    first = g if exp_grad_norm is None else adanorm_(g, exp_grad_norm, rule.modifiers.adanorm_gamma)
    if buffers.previous_param is not None:
        # Δθ = θ_{t−1} − θ_t in θ_{t−1}'s storage, which then takes θ_t, before the step moves it.
        first = injected(first, buffers.previous_param.sub_(param), hp.inject_scale)
        _snapshot_([buffers.previous_param], [param])
    if decay and rule.decoupled_weight_decay:
        param.mul_(hp.decay)
    # ξ is computed in g_{t−1}'s storage, which then takes g_t: no temporary for Δg. Traced by
    # torch.compile, the step becomes one loop whose arithmetic, on a CPU core, costs as much as
    # its memory traffic, so it takes the forms with the fewest operations per element (ξ as the
    # divisor 1/ξ: one division instead of two); eager, where each operation is a pass over
    # memory, the forms with the fewest passes. (A traced step never takes _KernelStep.)
    xi = friction_(rule.friction, buffers.previous_grad.sub_(g), g, inverse=traced)
    _apply_update_(param, xi, first, g, buffers, hp, rule.modifiers, traced=traced)
    buffers.previous_grad.copy_(g)


def _one_loop(buffers: _Buffers) -> bool:
    """Whether this step is traced into a single loop, for which :func:`_update_` takes its
    traced forms. With 8-bit state the compiled loop is split at the block-wise absmax
    reductions, and Inductor 2.13 keeps the traced forms' values in full-size buffers between
    the pieces (one per state buffer, measured): there the eager forms keep one temporary."""
    return torch.compiler.is_compiling() and not any(isinstance(b, Blockwise8) for b in buffers)


def _snapshot_(targets: list[Tensor], sources: list[Tensor]) -> None:
    """targets ← sources, which the step then updates in place."""
    _foreach_copy_(targets, sources)
    if torch.compiler.is_compiling():
        # Inductor 2.13 lets a copy of a tensor that the graph later updates in place read the
        # updated values; an exact no-op (x + 0 = x) makes the copy a value of its own.
        torch._foreach_add_(targets, 0.0)


def _step_slice_(
    param: Tensor,
    grad: Tensor,
    buffers: _Buffers,
    exp_grad_norm: Tensor | None,
    hp: _KernelStep | _Coefficients,
    span: Span,
    rule: _Rule,
    *,
    copy: bool,
    keep: Tensor | None,
) -> None:
    """Load the elements ``span`` of a parameter and its state in the compute dtype, step them,
    store them back. ``span=None``: whole tensors in their own shapes (only when no buffer is
    8-bit). ``exp_grad_norm`` (AdaNorm, 0-dim) needs a span of the whole tensor."""
    dtype = compute_dtype(param)
    p, store_p = load(param, span, dtype, copy=copy)
    g, _ = load(grad, span, dtype, copy=False)
    loaded = _Buffers(
        *(None if b is None else load(b, span, dtype, copy=copy, sqrt_domain=sq) for b, sq in zip(buffers, _SQRT_DOMAIN))
    )
    norm = exp_grad_norm.clone() if copy and exp_grad_norm is not None else exp_grad_norm
    _update_(p, g, _Buffers(*(None if x is None else x[0] for x in loaded)), norm, hp, rule, traced=_one_loop(buffers))
    if store_p:
        store(param, p, span, keep=keep)
    for buffer, value, sq in zip(buffers, loaded, _SQRT_DOMAIN):
        if value is not None and value[1]:
            store(buffer, value[0], span, keep=keep, sqrt_domain=sq)
    if norm is not exp_grad_norm:
        # Through a flat view: Inductor 2.13 drops in-place writes to 0-dim float64 CPU tensors.
        store(exp_grad_norm.view(1), norm.view(1), None, keep=keep)


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
    non-zero the step leaves parameters and state untouched. ``fused`` runs the compiled
    single-pass step; ``foreach=True`` the ``torch._foreach_*`` one, ``False`` the per-tensor
    one, and ``None`` picks per tensor (:func:`_default_diffgrad`).
    """
    if foreach and fused:
        raise RuntimeError("DiffGrad: `fused` and `foreach` cannot both be True")
    for name, values, needed in (
        ("previous_params", previous_params, modifiers.adainject),
        ("exp_grad_norms", exp_grad_norms, modifiers.adanorm),
    ):
        if needed and (values is None or len(values) != len(params)):
            raise ValueError(f"diffgrad: `{name}` must hold one tensor per parameter with this modifier on")
    if modifiers.centralize:
        # Before everything else, for every path alike. (Also outside the compiled step: Inductor
        # 2.13's CPU outer-loop fusion fails on a row mean fused with the rectified update.)
        grads = [centralized(g) for g in grads]
    state = _Buffers(
        exp_avgs,
        exp_avg_sqs,
        previous_grads,
        max_exp_avg_sqs if amsgrad else None,
        previous_params if modifiers.adainject else None,
    )
    impl = (
        _fused_diffgrad
        if fused
        else _default_diffgrad
        if foreach is None
        else _multi_tensor_diffgrad
        if foreach
        else _single_tensor_diffgrad
    )
    impl(
        params,
        grads,
        state,
        exp_grad_norms if modifiers.adanorm else None,
        state_steps,
        grad_scale,
        found_inf,
        _Hyper(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, friction, modifiers),
    )


def _default_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    hyper: _Hyper,
) -> None:
    """The default eager step. Large CPU tensors take the per-tensor step, whose cache-sized
    slices beat foreach's whole-tensor passes there; the rest take the foreach step: a small
    tensor's per-tensor step is a dozen dispatches for a few thousand elements, which foreach
    turns into one dispatch per operation for all of them, and on accelerators it saves kernel
    launches (measured in benchmarks/step.py)."""
    lists = (params, grads, state, exp_grad_norms, state_steps)
    large, rest = _partition(params, lambda p: p.device.type == "cpu" and real_numel(p) >= _SERIAL_NUMEL)
    if large:
        _single_tensor_diffgrad(*_subset(large, *lists), grad_scale, found_inf, hyper)
    if rest:
        _multi_tensor_diffgrad(*_subset(rest, *lists), grad_scale, found_inf, hyper)


def _partition(params: list[Tensor], test: Callable[[Tensor], bool]) -> tuple[list[int], list[int]]:
    """The indices of ``params`` that pass ``test``, and those that do not."""
    passed: list[int] = []
    failed: list[int] = []
    for i, p in enumerate(params):
        (passed if test(p) else failed).append(i)
    return passed, failed


def _eager_grad_factor(grad_scale: Tensor | None, found_inf: Tensor | None, maximize: bool) -> float | None:
    """The eager paths' gradient factor, or None when GradScaler found non-finite gradients."""
    if found_inf is not None and found_inf.item() != 0.0:
        return None
    factor = -1.0 if maximize else 1.0
    return factor if grad_scale is None else factor / grad_scale.item()


def _at(values: list[Tensor] | None, i: int) -> Tensor | None:
    return None if values is None else values[i]


def _single_tensor_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    hyper: _Hyper,
) -> None:
    grad_factor = _eager_grad_factor(grad_scale, found_inf, hyper.maximize)
    if grad_factor is None:
        return
    hyper = hyper._replace(lr=float(hyper.lr))
    lr, weight_decay, modifiers = hyper.lr, hyper.weight_decay, hyper.modifiers
    rule = _Rule.of(hyper, scale_grad=grad_factor != 1.0)
    # torch's fused Adam kernel pays off for large plain CPU tensors only: for small ones its
    # OpenMP region costs more than their whole step, and off the CPU it would want ``step`` on
    # the device. Inside a torch.compile'd training step, the explicit arithmetic on whole tensors,
    # with the step count as a tensor (no .item() graph break, no recompilation as it grows).
    compiling = torch.compiler.is_compiling()
    for i, (param, grad, step_t) in enumerate(zip(params, grads, state_steps)):
        step_t += 1
        n = real_numel(param)
        hp: _KernelStep | _Coefficients
        if (
            compiling
            or not modifiers.adam_kernel_compatible
            or param.device.type != "cpu"
            or n < _SERIAL_NUMEL
            or is_traceable_wrapper_subclass(param)
        ):
            hp = _coefficients(step_t.to(torch.float64) if compiling else step_t.item(), hyper, grad_factor)
        else:
            hp = _KernelStep(
                step_t, lr, hyper.beta1, hyper.beta2, hyper.eps, decay=1.0 - lr * weight_decay, grad_factor=grad_factor
            )
        buffers = _Buffers(*(_at(b, i) for b in state))
        norm = _at(exp_grad_norms, i)
        spans = _spans(param, grad, buffers, whole=rule.whole_tensor, chunk=n if compiling else CHUNK)
        if (
            spans == [None]
            and not param.is_complex()
            and all(b is None or (isinstance(b, Tensor) and b.dtype == param.dtype == compute_dtype(param)) for b in buffers)
        ):
            # Real state in the parameter's own (full-precision) dtype: nothing to load or
            # store, so skip the per-slice bookkeeping, which would cost more than a small
            # tensor's arithmetic.
            _update_(param, grad, buffers, norm, hp, rule, traced=_one_loop(buffers))
            continue
        for span in spans:
            _step_slice_(param, grad, buffers, norm, hp, span, rule, copy=False, keep=None)


def _spans(param: Tensor, grad: Tensor, buffers: _Buffers, *, whole: bool, chunk: int) -> list[Span]:
    """How to cut one parameter's step into slices of at most ``chunk`` elements.

    Whole tensors keep their own shape (span ``None``) when every tensor involved is plain and
    contiguous (the fused Adam kernel pairs elements by memory order); otherwise, and for 8-bit
    state and 0-dim tensors, they go flat (Inductor 2.13 drops in-place writes to 0-dim float64
    CPU tensors; their flat views are written correctly). A step that takes whole-tensor
    statistics (``whole``) is never sliced.
    """
    n = real_numel(param)
    if is_traceable_wrapper_subclass(param):
        # A DTensor's (FSDP2) local shard cannot be flattened or sliced in global terms.
        return [None]
    tensors = (param, grad, *(b for b in buffers if b is not None))
    if param.dim() == 0 or not all(isinstance(t, Tensor) and flat_viewable(t) for t in tensors):
        return [(0, n)]
    if n <= chunk or whole:
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
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    hyper: _Hyper,
) -> None:
    if not params:
        return
    grad_factor = _eager_grad_factor(grad_scale, found_inf, hyper.maximize)
    if grad_factor is None:
        return
    hyper = hyper._replace(lr=float(hyper.lr))
    lr, beta1, beta2, weight_decay, modifiers = hyper.lr, hyper.beta1, hyper.beta2, hyper.weight_decay, hyper.modifiers
    for indices in _by_device_and_dtype(params):
        group_params, group_grads, buffer_lists, norms, group_steps = _subset(
            indices, params, grads, state, exp_grad_norms, state_steps
        )
        # Whole tensors in the compute dtype: views of plain buffers, converted copies otherwise.
        dtype = compute_dtype(group_params[0])
        spans = [
            _spans(p, g, _Buffers(*(_at(b, j) for b in buffer_lists)), whole=True, chunk=real_numel(p))[0]
            for j, (p, g) in enumerate(zip(group_params, group_grads))
        ]
        loaded = [
            None if blist is None else [load(b, span, dtype, copy=False, sqrt_domain=sq) for b, span in zip(blist, spans)]
            for blist, sq in zip((group_params, *buffer_lists), (False, *_SQRT_DOMAIN))
        ]
        p, m, v, prev, v_max, previous_p = [None if tensors is None else [t for t, _ in tensors] for tensors in loaded]
        g = [load(grad, span, dtype, copy=False)[0] for grad, span in zip(group_grads, spans)]

        torch._foreach_add_(group_steps, 1.0)
        # The caller's .grad is only read: a changed g_t goes into new tensors.
        if grad_factor != 1.0:
            g = torch._foreach_mul(g, grad_factor)
        decay = weight_decay != 0.0
        if decay and not hyper.decoupled_weight_decay:
            g = torch._foreach_add(g, p, alpha=weight_decay)
        coefficients = [_coefficients(t.item(), hyper, grad_factor) for t in group_steps]
        first = g if norms is None else [adanorm_(x, e, modifiers.adanorm_gamma) for x, e in zip(g, norms)]
        if previous_p is not None:
            torch._foreach_sub_(previous_p, p)
            first = [injected(s, change, c.inject_scale) for s, change, c in zip(first, previous_p, coefficients)]
            _snapshot_(previous_p, p)
        if decay and hyper.decoupled_weight_decay:
            torch._foreach_mul_(p, 1.0 - lr * weight_decay)
        torch._foreach_lerp_(m, first, 1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1.0 - beta2)
        second_moments = v
        if v_max is not None:
            torch._foreach_maximum_(v_max, v)
            second_moments = v_max
        # ξ in g_{t−1}'s storage, which then takes g_t.
        torch._foreach_sub_(prev, g)
        xis = foreach_friction_(hyper.friction, prev, g)
        denominators = torch._foreach_sqrt(second_moments)
        torch._foreach_add_(denominators, [c.eps for c in coefficients])
        torch._foreach_mul_(xis, m)
        if modifiers.rectify or modifiers.cautious:
            torch._foreach_div_(xis, denominators)
            torch._foreach_mul_(xis, [c.step_size for c in coefficients])
            if modifiers.rectify:
                torch._foreach_add_(xis, torch._foreach_mul(m, [c.momentum_step for c in coefficients]))
            if modifiers.cautious:
                for update, grad in zip(xis, g):
                    cautious_(update, grad)
            torch._foreach_sub_(p, xis)
        else:
            torch._foreach_addcdiv_(p, xis, denominators, [-c.step_size for c in coefficients])
        _foreach_copy_(prev, g)

        for targets, tensors, sq in zip((group_params, *buffer_lists), loaded, (False, *_SQRT_DOMAIN)):
            if targets is None:
                continue
            for target, (value, must_store), span in zip(targets, tensors, spans):
                if must_store:
                    store(target, value, span, sqrt_domain=sq)


def _by_device_and_dtype(params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` by device and compute dtype (torch's C++ grouping by storage dtype,
    under half the per-step cost of a Python loop over hundreds of tensors, then merged)."""
    if not params:
        return []
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for (device, _), (tensors, indices) in _group_tensors_by_device_and_dtype([params], with_indices=True).items():
        groups.setdefault((device, compute_dtype(tensors[0][0])), []).extend(indices)
    return [sorted(indices) for indices in groups.values()]


def _fused_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    state_steps: list[Tensor],
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    hyper: _Hyper,
) -> None:
    if not params:
        return
    lr, maximize = hyper.lr, hyper.maximize
    rule = _Rule.of(hyper, scale_grad=maximize or grad_scale is not None)
    sharded, plain = _partition(params, is_traceable_wrapper_subclass)
    if sharded and rule.whole_tensor:
        # Whole-tensor statistics of a sharded (FSDP2) parameter need collectives: those
        # parameters take the eager step, whose DTensor reductions provide them.
        lists = (params, grads, state, exp_grad_norms, state_steps)
        _single_tensor_diffgrad(*_subset(sharded, *lists), grad_scale, found_inf, hyper)
        params, grads, state, exp_grad_norms, state_steps = _subset(plain, *lists)
    elif sharded:
        # An element-wise step needs nothing of a DTensor but its local shard, so the compiled
        # step gets the shards. (Given DTensors, torch 2.13's AOTAutograd cache would key them by
        # their global shape: ranks with uneven shards would load each other's compiled code.)
        params, grads = [_local(p) for p in params], [_local(g) for g in grads]
        state = _Buffers(*(None if b is None else [_local(t) for t in b] for b in state))
    for indices in _by_device_and_dtype(params):
        group_params, group_grads, group_state, group_norms, steps = _subset(
            indices, params, grads, state, exp_grad_norms, state_steps
        )
        device = group_params[0].device
        device_found_inf = None if found_inf is None else found_inf.to(device, non_blocking=True)
        grad_factor: float | Tensor = -1.0 if maximize else 1.0
        if grad_scale is not None:
            grad_factor = grad_factor / grad_scale.to(device, torch.float64, non_blocking=True)
        # β1, β2, ε (and a float lr) enter as one tensor, so that neither a scheduler that changes
        # them (OneCycleLR cycles β1) nor the step count recompiles the graph.
        floats = [hyper.beta1, hyper.beta2, hyper.eps] + ([] if isinstance(lr, Tensor) else [lr])
        hyper_values = torch.tensor(floats, dtype=torch.float64).to(device, non_blocking=True)
        device_lr = lr.to(device, torch.float64, non_blocking=True) if isinstance(lr, Tensor) else None
        _compiled_fused_step()(
            group_params,
            group_grads,
            group_state,
            group_norms,
            steps,
            hyper_values,
            device_lr,
            grad_factor,
            device_found_inf,
            rule,
        )


def _local(t: StateBuffer) -> StateBuffer:
    """A DTensor's local shard (the same storage: in-place updates reach the DTensor)."""
    return t.to_local() if is_traceable_wrapper_subclass(t) else t


def _subset(
    indices: list[int],
    params: list[Tensor],
    grads: list[Tensor],
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    state_steps: list[Tensor],
) -> tuple[list[Tensor], list[Tensor], _Buffers, list[Tensor] | None, list[Tensor]]:
    """The step's lists restricted to the parameters ``indices``."""
    return (
        [params[i] for i in indices],
        [grads[i] for i in indices],
        _Buffers(*(None if b is None else [b[i] for i in indices] for b in state)),
        None if exp_grad_norms is None else [exp_grad_norms[i] for i in indices],
        [state_steps[i] for i in indices],
    )


def _fused_step(
    params: list[Tensor],
    grads: list[Tensor],
    state: _Buffers,
    exp_grad_norms: list[Tensor] | None,
    steps: list[Tensor],
    hyper_values: Tensor,
    lr: Tensor | None,
    grad_factor: float | Tensor,
    found_inf: Tensor | None,
    rule: _Rule,
) -> None:
    """The traced body of the fused step: :func:`_step_slice_` on every whole tensor.

    ``hyper_values`` holds β1, β2, ε and, unless ``lr`` is given, the float lr; ``steps`` the
    counters t − 1, incremented here, in the graph, rather than by one small kernel per tensor
    before it.
    """
    hyper = _Hyper(
        lr=hyper_values[3] if lr is None else lr,
        beta1=hyper_values[0],
        beta2=hyper_values[1],
        eps=hyper_values[2],
        weight_decay=rule.weight_decay,
        decoupled_weight_decay=rule.decoupled_weight_decay,
        maximize=False,  # in grad_factor
        friction=rule.friction,
        modifiers=rule.modifiers,
    )
    scalars = _coefficients(torch.stack(steps).to(torch.float64) + 1.0, hyper, grad_factor)
    # One row of Eq. 13/20's scalars per tensor. Inductor 2.13 keeps the stacked table in a buffer
    # of its own, built by one small loop, which the element loops read (inlined, β^t would be
    # re-evaluated at every vector iteration; checked in the generated code). It is stored in the
    # compute dtype, as Inductor reloads a scalar at every vector iteration: a broadcast load,
    # not a load, a conversion and a broadcast.
    dtype, device = compute_dtype(params[0]), hyper_values.device
    table = torch.stack(
        [torch.as_tensor(x, dtype=torch.float64, device=device).expand(len(params)).to(dtype) for x in scalars], dim=1
    )
    keep = None if found_inf is None else found_inf != 0
    for step in steps:
        step.add_(1.0 if keep is None else (~keep).to(step.dtype))
    for i, (param, grad) in enumerate(zip(params, grads)):
        buffers = _Buffers(*(_at(b, i) for b in state))
        span = _spans(param, grad, buffers, whole=True, chunk=real_numel(param))[0]
        hp = _Coefficients(*table[i].unbind())
        _step_slice_(param, grad, buffers, _at(exp_grad_norms, i), hp, span, rule, copy=True, keep=keep)


@functools.cache
def _compiled_fused_step() -> Callable[..., None]:
    # Shapes are static (dynamic=False: no symbolic-size kernels) and everything that changes
    # from step to step is a tensor, so a parameter group compiles once. Groups of different
    # shapes each add an entry; allow more of them than Dynamo's default of 8 where supported.
    limits = {"recompile_limit": 64} if "recompile_limit" in inspect.signature(torch.compile).parameters else {}
    # Dynamo's guards already pin every input's size and stride; Inductor's own re-check of
    # them costs ~2 µs per tensor per step (five tensors per parameter).
    options: dict[str, Any] = {"size_asserts": False, "alignment_asserts": False}
    # a·b + c as one fused multiply-add (one rounding, within the reference's round-off):
    # Inductor's C++ default keeps them apart (twice the instructions in 1/ξ's polynomial).
    # The option is a mode string in recent torch and an on/off flag in older releases.
    from torch._inductor import config as inductor_config  # on first use: Inductor loads lazily

    contract = getattr(inductor_config.cpp, "enable_floating_point_contract_flag", None)
    if contract is not None:
        options["cpp.enable_floating_point_contract_flag"] = "fast" if isinstance(contract, str) else True
    return torch.compile(_fused_step, dynamic=False, fullgraph=True, options=options, **limits)
