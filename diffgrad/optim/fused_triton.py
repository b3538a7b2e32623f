"""diffGrad's fused step on GPUs: one Triton kernel that reads each parameter, gradient and state
element once and writes it once (paper Eq. 11–20), for all tensors of a group in one launch.

The kernel computes what ``csrc/fused_step.cpp`` computes on CPUs, in the same order::

    g  = grad·grad_factor (+ λθ, coupled decay)     first = g·ratio (AdaNorm), AdaInject's form
    θ ← θ·(1 − αλ)                                  decoupled decay
    m  = β1·m + (1 − β1)·first                      Eq. 11
    v  = β2·v + (1 − β2)·g²                         Eq. 12   (v_max = max(v_max, v): AMSGrad)
    ξ  = scale·sigmoid(slope·h(g_prev − g)/d − offset) + shift   Eq. 17–19
    θ ← θ − (ξ·s_t/(sqrt(v) + ε_t) + w_t)·m         Eq. 13, 20 (masked as cautious asks)
    g_prev ← g

with s_t = α·r_t·sqrt(1 − β2^t)/(1 − β1^t), ε_t = ε·sqrt(1 − β2^t) and the warm-up's w_t = α·w/(1 − β1^t)
(r_t, w from RAdam's rule when rectified; r_t = 1, w = 0 otherwise). d is 1, or sqrt(v̂) + ε for a
relative friction, whose slope then takes the factor sqrt(1 − β2^t).

A launch covers the tensors of one device, parameter dtype, gradient dtype, state dtypes and step
count: a table of their addresses, one program per ``BLOCK`` elements of one tensor. The groups and
tables of a parameter list are planned once and kept while its tensors live
(:mod:`diffgrad.optim.plans`); a step fills in the gradients' addresses and the coefficients.
Parameters and state are read and written in their own dtypes (bfloat16 state included) with the
arithmetic in the compute dtype. What needs a whole tensor happens first, with torch operations on the device:
centralisation, the statistics μ, ν of DFC3–5, AdaNorm's norm, and cautious masking's count (a
counting launch of the same kernel). 8-bit state is decoded before the launch and encoded after
it, as for the reference paths; non-contiguous parameters and state go through contiguous copies.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import torch
import triton
import triton.language as tl
from torch import Tensor

from diffgrad.optim.friction import Friction, abs_grad_stats
from diffgrad.optim.fused import effective_grad
from diffgrad.optim.modifiers import Modifiers, adainject_scale, adanorm_ratio_, rectification
from diffgrad.optim.plans import PlanCache
from diffgrad.optim.state import compute_dtype, real_view, staged

__all__ = ["fused_diffgrad_triton"]

BLOCK = 1024
# Rows of the address table: param, grad, exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq,
# previous_param (0 where absent), then the element counts.
_ROWS = 8
# The group's coefficients, in this order, as float64 after the table.
_COEFFICIENTS = (
    "grad_factor", "weight_decay", "decay", "beta1", "beta2", "eps", "step_size", "momentum_step",
    "inject_scale", "slope", "scale", "shift",
)  # fmt: skip
# Per-tensor scalars (compute dtype), one row per tensor: AdaNorm's ratio, the friction's slope
# and offset (DFC3–5), cautious masking's N/(Σmask + 1).
_CAUTIOUS_SCALE = 3

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def _array(addresses, row, n_tensors, tensor, DTYPE: tl.constexpr):
    return tl.load(addresses + row * n_tensors + tensor).to(tl.pointer_type(DTYPE))


# In float32, tl.sqrt and "/" compile to approximations; the _rn forms round as torch does (and
# take float32 only: in float64 the plain forms are already correctly rounded).
@triton.jit
def _sqrt(x, COMPUTE: tl.constexpr):
    if tl.float32 == COMPUTE:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _div(x, y, COMPUTE: tl.constexpr):
    if tl.float32 == COMPUTE:
        return tl.div_rn(x, y)
    else:
        return x / y


# Triton's interpreter (3.x) truncates float32 to bfloat16 where compiled code rounds to nearest
# even; rounding the bits here gives torch's rounding in both (NaN stays NaN).
@triton.jit
def _cast(x, DTYPE: tl.constexpr):
    if tl.bfloat16 == DTYPE:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


# The number of tensors varies from group to group: one compiled kernel for all of them.
@triton.jit(do_not_specialize=["n_tensors"])
def _diffgrad_kernel(
    addresses,  # int64 [_ROWS, n_tensors]
    coefficients,  # float64 [len(_COEFFICIENTS)]
    tensor_scalars,  # COMPUTE [n_tensors, 4], read with PER_TENSOR
    counts,  # int64 [n_tensors], cautious masking's Σmask (COUNT_ONLY adds to it)
    chunk_tensors,  # int32 [programs]: the tensor of each program
    chunk_starts,  # int64 [programs]: its first element
    n_tensors,
    PARAM: tl.constexpr,
    GRAD: tl.constexpr,
    EXP_AVG: tl.constexpr,
    EXP_AVG_SQ: tl.constexpr,
    PREVIOUS_GRAD: tl.constexpr,
    MAX_EXP_AVG_SQ: tl.constexpr,
    COMPUTE: tl.constexpr,
    COUPLED: tl.constexpr,
    AMSGRAD: tl.constexpr,
    ABSOLUTE: tl.constexpr,
    RELATIVE: tl.constexpr,
    PER_TENSOR: tl.constexpr,
    INJECT: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    COUNT_ONLY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    program = tl.program_id(0)
    tensor = tl.load(chunk_tensors + program)
    offsets = tl.load(chunk_starts + program) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(addresses + 7 * n_tensors + tensor)  # the table's last row: numel

    grad_factor = tl.load(coefficients + 0).to(COMPUTE)
    weight_decay = tl.load(coefficients + 1).to(COMPUTE)
    decay = tl.load(coefficients + 2).to(COMPUTE)
    beta1 = tl.load(coefficients + 3).to(COMPUTE)
    beta2 = tl.load(coefficients + 4).to(COMPUTE)
    eps = tl.load(coefficients + 5).to(COMPUTE)
    step_size = tl.load(coefficients + 6).to(COMPUTE)
    momentum_step = tl.load(coefficients + 7).to(COMPUTE)
    inject_scale = tl.load(coefficients + 8).to(COMPUTE)
    slope = tl.load(coefficients + 9).to(COMPUTE)
    scale = tl.load(coefficients + 10).to(COMPUTE)
    shift = tl.load(coefficients + 11).to(COMPUTE)
    ratio = 1.0
    offset = 0.0
    cautious_scale = 1.0
    if PER_TENSOR:
        ratio = tl.load(tensor_scalars + tensor * 4 + 0)
        slope = tl.load(tensor_scalars + tensor * 4 + 1)
        offset = tl.load(tensor_scalars + tensor * 4 + 2)
        cautious_scale = tl.load(tensor_scalars + tensor * 4 + 3)

    param_ptr = _array(addresses, 0, n_tensors, tensor, PARAM) + offsets
    exp_avg_ptr = _array(addresses, 2, n_tensors, tensor, EXP_AVG) + offsets
    exp_avg_sq_ptr = _array(addresses, 3, n_tensors, tensor, EXP_AVG_SQ) + offsets
    previous_grad_ptr = _array(addresses, 4, n_tensors, tensor, PREVIOUS_GRAD) + offsets
    theta = tl.load(param_ptr, mask=mask).to(COMPUTE)
    g = tl.load(_array(addresses, 1, n_tensors, tensor, GRAD) + offsets, mask=mask).to(COMPUTE) * grad_factor
    if COUPLED:
        g = g + weight_decay * theta
    first = g * ratio
    if INJECT:
        # Δθ = θ_{t−1} − θ_t, taken before the step moves θ; θ_{t−1} then takes θ_t.
        previous_param_ptr = _array(addresses, 6, n_tensors, tensor, COMPUTE) + offsets
        change = tl.load(previous_param_ptr, mask=mask) - theta
        if not COUNT_ONLY:
            tl.store(previous_param_ptr, theta, mask=mask)
        first = (first + change * (first * first)) * inject_scale

    m = beta1 * tl.load(exp_avg_ptr, mask=mask).to(COMPUTE) + (1.0 - beta1) * first  # Eq. 11
    v = beta2 * tl.load(exp_avg_sq_ptr, mask=mask).to(COMPUTE) + (1.0 - beta2) * (g * g)  # Eq. 12
    if not COUNT_ONLY:
        tl.store(exp_avg_ptr, _cast(m, EXP_AVG), mask=mask)
        tl.store(exp_avg_sq_ptr, _cast(v, EXP_AVG_SQ), mask=mask)
    if AMSGRAD:
        max_ptr = _array(addresses, 5, n_tensors, tensor, MAX_EXP_AVG_SQ) + offsets
        v_max = tl.load(max_ptr, mask=mask).to(COMPUTE)
        v = tl.where((v > v_max) | (v != v), v, v_max)  # torch.maximum: NaN from either side
        if not COUNT_ONLY:
            tl.store(max_ptr, _cast(v, MAX_EXP_AVG_SQ), mask=mask)

    root_eps = _sqrt(v, COMPUTE) + eps
    change = tl.load(previous_grad_ptr, mask=mask).to(COMPUTE) - g  # Eq. 17
    if not COUNT_ONLY:
        tl.store(previous_grad_ptr, _cast(g, PREVIOUS_GRAD), mask=mask)
    if ABSOLUTE:
        change = tl.abs(change)
    if RELATIVE:
        change = _div(change, root_eps, COMPUTE)
    xi = _div(scale, 1.0 + tl.exp(offset - change * slope), COMPUTE) + shift  # Eq. 18–19
    update = (_div(xi, root_eps, COMPUTE) * step_size + momentum_step) * m
    if CAUTIOUS:
        agrees = update * g > 0.0
        if COUNT_ONLY:
            tl.atomic_add(counts + tensor, tl.sum((agrees & mask).to(tl.int64), axis=0))
        update = tl.where(agrees, update * cautious_scale, 0.0)
    if not COUNT_ONLY:
        tl.store(param_ptr, _cast(theta * decay - update, PARAM), mask=mask)  # Eq. 13, 20


# ---------------------------------------------------------------------------------------------
# The launches.


@functools.lru_cache(maxsize=64)
def _chunks(device: torch.device, numels: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The tensor index and first element of every program, for tensors of these sizes."""
    tensors = [i for i, n in enumerate(numels) for _ in range(0, n, BLOCK)]
    starts = [s for n in numels for s in range(0, n, BLOCK)]
    return (
        torch.tensor(tensors, dtype=torch.int32).to(device),
        torch.tensor(starts, dtype=torch.int64).to(device),
    )


def _coefficients(
    step: float, *, grad_factor: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    decoupled_weight_decay: bool, friction: Friction, modifiers: Modifiers,
) -> dict[str, float]:  # fmt: skip
    """The group's scalars at step t (Eq. 13, 20), in Python floats."""
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    ratio: float | Tensor = 1.0
    warm: float | Tensor = 0.0
    if modifiers.rectify:
        ratio, warm = rectification(step, beta2, modifiers.rectify_threshold, modifiers.rectify_warmup)
    return {
        "grad_factor": grad_factor,
        "weight_decay": weight_decay,
        "decay": 1 - lr * weight_decay if decoupled_weight_decay else 1.0,
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps * bias_correction2_sqrt,
        "step_size": lr * float(ratio) * bias_correction2_sqrt / bias_correction1,
        "momentum_step": lr * float(warm) / bias_correction1,
        "inject_scale": float(adainject_scale(step, modifiers.adainject_k)) if modifiers.adainject else 1.0,
        "slope": friction.slope * _slope_factor(step, beta2, friction),
        "scale": friction.scale,
        "shift": friction.shift,
    }


def _slope_factor(step: float, beta2: float, friction: Friction) -> float:
    """sqrt(1 − β2^t) for a relative friction, whose h/(sqrt(v̂) + ε) = sqrt(1 − β2^t)·h/(sqrt(v) + ε_t)."""
    return (1 - beta2**step) ** 0.5 if friction.relative else 1.0


class _Tables(NamedTuple):
    """A launch's tensors as the kernel finds them: the host address table (``_ROWS`` rows of
    ``n`` entries, then room for the coefficients), the element counts, and the arrays' dtypes
    (param, grad, exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq, previous_param)."""

    host: Tensor
    numels: tuple[int, ...]
    dtypes: tuple[torch.dtype | None, ...]
    compute: torch.dtype


def _tables(arrays: Sequence[Sequence[Tensor | None]]) -> _Tables:
    """The tables of the tensors whose contiguous arrays are ``arrays`` (one row per tensor: param,
    grad, exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq or None, previous_param or None)."""
    numels = tuple(cast(Tensor, row[0]).numel() for row in arrays)
    rows = [[t.data_ptr() if t is not None else 0 for t in column] for column in zip(*arrays)]
    entries = [x for row in rows for x in row] + list(numels) + [0] * len(_COEFFICIENTS)
    dtypes = tuple(t.dtype if t is not None else None for t in arrays[0])
    return _Tables(torch.tensor(entries, dtype=torch.int64), numels, dtypes, compute_dtype(cast(Tensor, arrays[0][0])))


def _launch(
    tables: _Tables,
    coefficients: dict[str, float],
    tensor_scalars: Tensor | None,
    counts: Tensor | None,
    *,
    device: torch.device,
    coupled: bool,
    friction: Friction,
    modifiers: Modifiers,
    count_only: bool = False,
) -> None:
    """One launch over the tensors of ``tables``, with the group's ``coefficients``."""
    n = len(tables.numels)
    scalars = torch.tensor([coefficients[name] for name in _COEFFICIENTS], dtype=torch.float64)
    tables.host[_ROWS * n :] = scalars.view(torch.int64)
    # From pageable memory, torch's upload waits until the stream has run everything queued on it
    # (the backward pass); from a pinned copy it is asynchronous, and torch keeps that copy until
    # the upload has run.
    upload = tables.host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tables.host
    chunk_tensors, chunk_starts = _chunks(device, tables.numels)
    param, grad, exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq, previous_param = tables.dtypes
    assert param is not None and grad is not None and exp_avg is not None
    assert exp_avg_sq is not None and previous_grad is not None
    compute = tables.compute
    # Triton launches on the current CUDA device: make it the tensors' one.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _diffgrad_kernel[(chunk_tensors.numel(),)](
            upload,
            upload[_ROWS * n :].view(torch.float64),
            upload if tensor_scalars is None else tensor_scalars,
            upload if counts is None else counts,
            chunk_tensors,
            chunk_starts,
            n,
            PARAM=_TL_DTYPES[param],
            GRAD=_TL_DTYPES[grad],
            EXP_AVG=_TL_DTYPES[exp_avg],
            EXP_AVG_SQ=_TL_DTYPES[exp_avg_sq],
            PREVIOUS_GRAD=_TL_DTYPES[previous_grad],
            MAX_EXP_AVG_SQ=_TL_DTYPES[max_exp_avg_sq or compute],
            COMPUTE=_TL_DTYPES[compute],
            COUPLED=coupled,
            AMSGRAD=max_exp_avg_sq is not None,
            ABSOLUTE=friction.absolute,
            RELATIVE=friction.relative,
            PER_TENSOR=tensor_scalars is not None,
            INJECT=previous_param is not None,
            CAUTIOUS=modifiers.cautious,
            COUNT_ONLY=count_only,
            BLOCK=BLOCK,
        )


def _contiguous(t: Tensor | None, dtype: torch.dtype | None, write_back: list[tuple[Tensor, Tensor]]) -> Tensor | None:
    """:func:`~diffgrad.optim.state.staged` in ``dtype`` (``t``'s own when None), and None for None."""
    return None if t is None else staged(t, dtype or real_view(t).dtype, write_back)


class _Plan(NamedTuple):
    """The launches of a parameter list that stay the same from step to step: per group of
    tensors with the same dtypes, their indices and tables (the gradients' row is filled in at each
    step: a gradient may be a new tensor), and the parameters' addresses when it was made.
    ``groups`` is None where some tensor needs a contiguous or real copy first."""

    groups: list[tuple[list[int], _Tables]] | None
    param_ptrs: list[int]


_PLANS = PlanCache[_Plan]()


def _plan(params: list[Tensor], buffers: Sequence[Sequence[Tensor] | None]) -> _Plan:
    """The cached plan for ``params`` and their state ``buffers`` (exp_avg, exp_avg_sq,
    previous_grad, max_exp_avg_sq or None, previous_param or None, one list each)."""
    tensors = [*params, *(t for values in buffers if values is not None for t in values)]
    plan = _PLANS.get(tensors)
    if plan is not None and plan.param_ptrs == [p.data_ptr() for p in params]:
        return plan
    direct = all(t.is_contiguous() and not t.is_complex() for t in tensors) and (
        buffers[4] is None or all(b.dtype == compute_dtype(p) for b, p in zip(buffers[4], params))
    )
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, param in enumerate(params):
        if param.numel():
            dtypes = tuple(None if b is None else b[i].dtype for b in [params, *buffers])
            groups.setdefault((param.device, *dtypes), []).append(i)
    # The parameter stands in for its gradient until a step fills the row in.
    tables = [
        (indices, _tables([[params[i], params[i], *(None if b is None else b[i] for b in buffers)] for i in indices]))
        for indices in groups.values()
    ]
    return _PLANS.put(tensors, _Plan(tables if direct else None, [p.data_ptr() for p in params]))


def _run_plan(
    plan: _Plan,
    params: list[Tensor],
    grads: list[Tensor],
    state_steps: list[Tensor],
    coefficients: Callable[[float], dict[str, float]],
    launch: Callable[..., None],
) -> bool:
    """The plan's launches, if every step count is the same and every gradient is laid out as
    its parameter; else False, with nothing done."""
    steps = {step_t.item() for step_t in state_steps}
    if len(steps) != 1 or any(g.dtype != p.dtype or not g.is_contiguous() for g, p in zip(grads, params)):
        return False
    scalars = coefficients(steps.pop())
    assert plan.groups is not None
    for indices, tables in plan.groups:
        n = len(indices)
        tables.host[n : 2 * n] = torch.tensor([grads[i].data_ptr() for i in indices], dtype=torch.int64)
        launch(tables, scalars, None, None, device=params[indices[0]].device)
    return True


def fused_diffgrad_triton(
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
    """One diffGrad step (Eq. 11–20 and the modifiers) by the Triton kernel, in place, with the
    arguments of the reference paths in :mod:`diffgrad.optim.functional` (which calls it for
    ``fused=True`` on GPUs, with 8-bit state already decoded): ``grad_factor`` is ±1/(AMP loss
    scale); ``max_exp_avg_sqs`` is empty without AMSGrad, ``previous_params``/``exp_grad_norms``
    empty unless AdaInject/AdaNorm is on. ``grads`` are read, never written."""
    torch._foreach_add_(state_steps, 1)
    whole_tensor = friction.uses_stats or modifiers.adanorm or modifiers.centralize
    coupled = weight_decay != 0.0 and not decoupled_weight_decay
    coefficients = functools.partial(
        _coefficients, lr=float(lr), beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, friction=friction, modifiers=modifiers,
    )  # fmt: skip
    launch = functools.partial(_launch, coupled=coupled and not whole_tensor, friction=friction, modifiers=modifiers)
    if not (whole_tensor or modifiers.cautious):
        buffers = [exp_avgs, exp_avg_sqs, previous_grads, max_exp_avg_sqs if amsgrad else None,
                   previous_params if modifiers.adainject else None]  # fmt: skip
        plan = _plan(params, buffers)
        at_step = functools.partial(coefficients, grad_factor=grad_factor)
        if plan.groups is not None and _run_plan(plan, params, grads, state_steps, at_step, launch):
            return

    # One launch per device, parameter dtype, gradient dtype, state dtypes and step count t.
    groups: dict[tuple[float, tuple[object, ...]], list[int]] = {}
    for i, (param, step_t) in enumerate(zip(params, state_steps)):
        if param.numel() == 0:
            continue
        v_max = max_exp_avg_sqs[i].dtype if amsgrad else None
        dtypes = (param.dtype, grads[i].dtype, exp_avgs[i].dtype, exp_avg_sqs[i].dtype, previous_grads[i].dtype, v_max)
        groups.setdefault((step_t.item(), (param.device, *dtypes)), []).append(i)

    for (step, _), indices in groups.items():
        scalars = coefficients(step, grad_factor=1.0 if whole_tensor else grad_factor)
        write_back: list[tuple[Tensor, Tensor]] = []
        arrays: list[list[Tensor | None]] = []
        per_tensor: list[Tensor] = []
        for i in indices:
            param = params[i]
            compute = compute_dtype(param)
            grad = grads[i]
            if whole_tensor:
                # g_t of the whole tensor first (the kernel then takes it as it is).
                grad = effective_grad(grad, param, grad_factor, modifiers.centralize, weight_decay if coupled else 0.0)
            arrays.append([
                _contiguous(param, None, write_back),
                _contiguous(grad, None, []),
                _contiguous(exp_avgs[i], None, write_back),
                _contiguous(exp_avg_sqs[i], None, write_back),
                _contiguous(previous_grads[i], None, write_back),
                _contiguous(max_exp_avg_sqs[i] if amsgrad else None, None, write_back),
                _contiguous(previous_params[i] if modifiers.adainject else None, compute, write_back),
            ])  # fmt: skip
            if friction.uses_stats or modifiers.adanorm or modifiers.cautious:
                g = arrays[-1][1]
                assert g is not None
                one = torch.ones((), dtype=compute, device=param.device)
                ratio = adanorm_ratio_(g, exp_grad_norms[i], modifiers.adanorm_gamma) if modifiers.adanorm else one
                slope, offset = one * scalars["slope"], one * 0.0
                if friction.uses_stats:
                    mu, nu = abs_grad_stats(g)
                    slope = friction.stat_slope(nu) * _slope_factor(step, beta2, friction)
                    offset = mu
                per_tensor.append(torch.stack([ratio.to(compute), slope.to(compute), offset.to(compute), one]))
        tensor_scalars = torch.stack(per_tensor) if per_tensor else None
        tables = _tables(arrays)
        device = params[indices[0]].device
        if modifiers.cautious:
            # The count pass, then N/(Σmask + 1) in the compute dtype, as the reference paths'
            # tensor arithmetic.
            assert tensor_scalars is not None
            counts = torch.zeros(len(arrays), dtype=torch.int64, device=tensor_scalars.device)
            launch(tables, scalars, tensor_scalars, counts, device=device, count_only=True)
            dtype = tensor_scalars.dtype
            numels = torch.tensor([cast(Tensor, row[0]).numel() for row in arrays], dtype=dtype, device=counts.device)
            tensor_scalars[:, _CAUTIOUS_SCALE] = numels / (counts.to(dtype) + 1.0)
        launch(tables, scalars, tensor_scalars, None, device=device)
        for target, copy in write_back:
            target.copy_(copy)
