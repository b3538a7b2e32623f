"""diffGrad's fused CPU step: one hand-written C++ kernel (``csrc/fused_step.cpp``) that reads
each parameter, gradient and state element once and writes it once (paper Eq. 11–20).

The kernel is compiled once per machine with the system's C++ compiler (``g++ -O3
-march=native -fopenmp``; ``$CXX`` to choose another) into a cache folder
(``$DIFFGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffgrad``, else ``~/.cache/diffgrad``), keyed by
a hash of the source, the compiler's version, the flags and the CPU; it is loaded with
:mod:`ctypes`. Its OpenMP code runs in the OpenMP runtime that torch already loaded (torch's
``libgomp.so.1``), with ``torch.get_num_threads()`` threads.

What the kernel cannot do element by element happens here, with torch operations, tensor by
tensor: gradient centralisation, the statistics μ, ν of |g| (DFC3–5) and AdaNorm's norm, which
need the effective gradient of the whole tensor first. Parameters the kernel does not read in
place (float16, complex, non-contiguous) go through contiguous real copies written back after.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from diffgrad.optim.friction import Friction, abs_grad_stats
from diffgrad.optim.modifiers import Modifiers, adanorm_ratio_, centralized
from diffgrad.optim.plans import PlanCache
from diffgrad.optim.state import Blockwise8, StateBuffer, compute_dtype, contiguous_copy, real_view, staged

__all__ = ["effective_grad", "fused_diffgrad_cpu", "library"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"
# Compiler flags, GCC's spelling (clang accepts them too). -fno-math-errno and -fno-trapping-math
# let GCC vectorise sqrt and the kernel's branch-free selects (no errno and no floating-point
# exception flag is read); neither changes a computed value. -mprefer-vector-width=512: GCC 12
# tunes AVX-512 CPUs for 256-bit vectors, and the 8-bit and bfloat16 codecs run faster in 512-bit
# ones (on CPUs without AVX-512 the flag has no effect).
_FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-std=c++17",
    "-fopenmp",
    "-fPIC",
    "-shared",
)

# Storage formats, as fused_step.cpp numbers them.
_ABSENT, _FLOAT32, _FLOAT64, _BFLOAT16, _BLOCKWISE8 = range(5)
_FORMATS = {torch.float32: _FLOAT32, torch.float64: _FLOAT64, torch.bfloat16: _BFLOAT16}
# Parameter dtypes the kernel reads and writes in place (float16 and complex ones are copied).
_DIRECT_PARAM_DTYPES = frozenset(_FORMATS)
_SLOTS = 5  # exp_avg, exp_avg_sq, previous_grad, max_exp_avg_sq, previous_param


class _Hyper(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_double) for name in (
            "lr", "beta1", "beta2", "eps", "weight_decay", "grad_factor",
            "friction_slope", "friction_scale", "friction_shift", "rectify_threshold", "adainject_k",
        )),
        *((name, ctypes.c_int32) for name in (
            "coupled_weight_decay", "decoupled_weight_decay", "amsgrad", "friction_absolute", "rectify",
            "rectify_sgd_warmup", "adainject", "cautious", "num_threads", "friction_relative",
        )),
    ]  # fmt: skip


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_void_p * _SLOTS),
        ("absmax", ctypes.c_void_p * _SLOTS),
        ("step", ctypes.c_void_p),
        ("numel", ctypes.c_int64),
        ("param_format", ctypes.c_int32),
        ("grad_format", ctypes.c_int32),
        ("state_format", ctypes.c_int32 * _SLOTS),
        ("reserved", ctypes.c_int32),
    ]


class _TensorScalars(ctypes.Structure):
    _fields_ = [("ratio", ctypes.c_double), ("slope", ctypes.c_double), ("offset", ctypes.c_double)]


# ---------------------------------------------------------------------------------------------
# Building and loading the library.


def _cache_dir() -> Path:
    explicit = os.environ.get("DIFFGRAD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "diffgrad"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() + platform.machine()
    wanted = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _compiler() -> str:
    for candidate in filter(None, (os.environ.get("CXX"), "g++", "c++")):
        path = shutil.which(candidate)
        if path:
            return path
    raise RuntimeError(
        "DiffGrad(fused=True) on CPU builds its kernel with a C++17 compiler with OpenMP, and none "
        "was found: install g++ (e.g. `apt-get install g++`) or set $CXX to one."
    )


def _openmp_runtime() -> Path:
    """torch's own libgomp, which the kernel links to so that one OpenMP runtime serves both."""
    return Path(torch.__file__).parent / "lib" / "libgomp.so.1"


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernel, built on first use (and cached on disk for later processes)."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    runtime = _openmp_runtime()
    link = [str(runtime), f"-Wl,-rpath,{runtime.parent}"] if runtime.exists() else []
    source = _SOURCE.read_bytes()
    parts: tuple[str | bytes, ...] = (source, version, *_FLAGS, *link, _cpu_signature())
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x for x in parts)).hexdigest()[:20]
    folder = _cache_dir() / key
    target = folder / "fused_step.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # Each process builds under its own name and renames: concurrent builds never see a
        # half-written library, and the last rename wins with an identical file.
        fd, partial = tempfile.mkstemp(prefix="fused_step.", suffix=".so.partial", dir=folder)
        os.close(fd)
        try:
            result = subprocess.run(
                [compiler, *_FLAGS, str(_SOURCE), "-o", partial, *link], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise RuntimeError(f"DiffGrad: building the fused CPU kernel failed:\n{result.stderr}")
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    lib = ctypes.CDLL(str(target))
    lib.dg_step.argtypes = [
        ctypes.POINTER(_Hyper),
        ctypes.POINTER(_Tensor),
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(_TensorScalars),
    ]
    lib.dg_step.restype = None
    for name in ("dg_encode_blockwise8", "dg_decode_blockwise8", "dg_encode_bfloat16"):
        getattr(lib, name).restype = None
    return lib


# ---------------------------------------------------------------------------------------------
# Describing tensors to the kernel.


def _buffer_format(buffer: StateBuffer | None, compute: torch.dtype) -> int | None:
    """The kernel's format code for a buffer it can update in place, or None if it cannot."""
    if buffer is None:
        return _ABSENT
    if isinstance(buffer, Blockwise8):
        return _BLOCKWISE8
    real = real_view(buffer)
    if not real.is_contiguous() or real.dtype not in (compute, torch.bfloat16):
        return None
    return _FORMATS[real.dtype]


class _Prepared(NamedTuple):
    """One parameter as the kernel sees it: a description and the arrays it updates, with what
    must be copied back into the caller's tensors afterwards."""

    desc: _Tensor
    param: Tensor
    write_back: list[tuple[Tensor, Tensor]]  # (caller's tensor, contiguous copy)


def _describe(param: Tensor, buffers: Sequence[StateBuffer | None], step: Tensor) -> _Prepared | None:
    """The kernel's view of a parameter whose tensors it can update in place, else None."""
    compute = compute_dtype(param)
    if param.is_complex() or param.dtype not in _DIRECT_PARAM_DTYPES or not param.is_contiguous():
        return None
    formats = [_buffer_format(b, compute) for b in buffers]
    if any(f is None for f in formats) or not (step.dtype == torch.float32 and step.numel() == 1):
        return None
    desc = _Tensor()
    desc.numel = param.numel()
    desc.param_format = desc.grad_format = _FORMATS[param.dtype]
    desc.step = step.data_ptr()
    for slot, (buffer, fmt) in enumerate(zip(buffers, formats)):
        desc.state_format[slot] = fmt
        if isinstance(buffer, Blockwise8):
            desc.state[slot], desc.absmax[slot] = buffer.codes.data_ptr(), buffer.absmax.data_ptr()
        elif buffer is not None:
            desc.state[slot] = buffer.data_ptr()
    return _Prepared(desc, param, [])


def _staged(param: Tensor, buffers: Sequence[StateBuffer | None], step: Tensor) -> _Prepared:
    """Contiguous real copies (in the compute dtype for the parameter) of what the kernel cannot
    update in place; the pairs to copy back after the step."""
    compute = compute_dtype(param)
    write_back: list[tuple[Tensor, Tensor]] = []
    work_param = staged(param, param.dtype if param.dtype in _DIRECT_PARAM_DTYPES else compute, write_back)
    work_buffers = [
        b
        if b is None or isinstance(b, Blockwise8)
        else staged(b, b.dtype if b.dtype == torch.bfloat16 else compute, write_back)
        for b in buffers
    ]
    work_step = step if step.dtype == torch.float32 else step.to(torch.float32)
    if work_step is not step:
        write_back.append((step, work_step))
    prepared = _describe(work_param, work_buffers, work_step)
    assert prepared is not None
    return _Prepared(prepared.desc, work_param, write_back)


def _grad_for(param: Tensor, grad: Tensor) -> Tensor:
    """The gradient as the kernel reads it: contiguous and real, in the dtype of the parameter's
    array or in the compute dtype."""
    real = real_view(grad)
    if real.is_contiguous() and real.dtype in (param.dtype, compute_dtype(param)):
        return real
    return contiguous_copy(real, compute_dtype(param))


def effective_grad(
    grad: Tensor, param: Tensor, grad_factor: float, centralize: bool, coupled_weight_decay: float
) -> Tensor:
    """g_t as the step uses it, contiguous, in the compute dtype, in the reference paths' order:
    grad·grad_factor, centralised, + λθ (coupled decay). The fused kernels take it where an
    option needs the whole effective gradient first."""
    g = real_view(grad).to(compute_dtype(param))
    if grad_factor != 1.0:
        g = g.mul(grad_factor)
    if centralize:
        g = centralized(g)
    if coupled_weight_decay != 0.0:
        g = g.add(real_view(param).to(g.dtype), alpha=coupled_weight_decay)
    return g.contiguous()


# ---------------------------------------------------------------------------------------------
# Plans: the descriptions of a parameter list's tensors, cached while none of them is freed.


class _Plan:
    """The kernel's descriptions of the parameters it updates in place (``direct``, by index),
    the indices it cannot (``staged``), and the parameters' addresses when the plan was made."""

    def __init__(
        self, params: list[Tensor], state: Sequence[Sequence[StateBuffer | None]], steps: list[Tensor]
    ) -> None:
        self.direct: list[int] = []
        self.staged: list[int] = []
        descs: list[_Tensor] = []
        for i, (param, step) in enumerate(zip(params, steps)):
            prepared = _describe(param, [buffers[i] for buffers in state], step)
            if prepared is None:
                self.staged.append(i)
            else:
                self.direct.append(i)
                descs.append(prepared.desc)
        self.descs = (_Tensor * len(descs))(*descs)
        self.param_ptrs = [params[i].data_ptr() for i in self.direct]
        self.param_array = (ctypes.c_void_p * len(descs))(*self.param_ptrs)
        self.grad_array = (ctypes.c_void_p * len(descs))()
        self.grad_dtypes = [params[i].dtype for i in self.direct]


_PLANS = PlanCache[_Plan]()


def _plan(params: list[Tensor], state: Sequence[Sequence[StateBuffer | None]], steps: list[Tensor]) -> _Plan:
    """The cached plan for these tensors (:class:`~diffgrad.optim.plans.PlanCache`). State
    buffers do not move; a parameter whose storage was replaced is noticed by address."""
    tensors = [*params, *steps]
    for buffers in state:
        for b in buffers:
            if isinstance(b, Blockwise8):
                tensors.extend(b)
            elif b is not None:
                tensors.append(b)
    plan = _PLANS.get(tensors)
    if plan is not None and plan.param_ptrs == [params[i].data_ptr() for i in plan.direct]:
        return plan
    return _PLANS.put(tensors, _Plan(params, state, steps))


# ---------------------------------------------------------------------------------------------
# The step.


def _hyper(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool,
    amsgrad: bool, grad_factor: float, friction: Friction, modifiers: Modifiers, *, effective_grads: bool,
) -> _Hyper:  # fmt: skip
    return _Hyper(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        grad_factor=1.0 if effective_grads else grad_factor,
        friction_slope=friction.slope,
        friction_scale=friction.scale,
        friction_shift=friction.shift,
        rectify_threshold=modifiers.rectify_threshold,
        adainject_k=modifiers.adainject_k,
        coupled_weight_decay=weight_decay != 0.0 and not decoupled_weight_decay and not effective_grads,
        decoupled_weight_decay=weight_decay != 0.0 and decoupled_weight_decay,
        amsgrad=amsgrad,
        friction_absolute=friction.absolute,
        rectify=modifiers.rectify,
        rectify_sgd_warmup=modifiers.rectify_warmup == "sgd",
        adainject=modifiers.adainject,
        cautious=modifiers.cautious,
        num_threads=torch.get_num_threads(),
        friction_relative=friction.relative,
    )


def _adanorm_ratio(g: Tensor, exp_grad_norm: Tensor, gamma: float) -> float:
    """AdaNorm's update of e_t (``exp_grad_norm``, in place) and the factor s_t/g_t, without the
    full-size s_t."""
    return adanorm_ratio_(g, exp_grad_norm, gamma).item()


def _run(hyper: _Hyper, descs: ctypes.Array, params: ctypes.Array, grads: ctypes.Array, scalars: object) -> None:
    library().dg_step(ctypes.byref(hyper), descs, len(descs), params, grads, scalars)


def _step_one(
    hyper: _Hyper,
    prepared: _Prepared,
    grad: Tensor,
    scalars: _TensorScalars | None,
) -> None:
    """The kernel on one (possibly staged) parameter, then the copies back."""
    kernel_grad = _grad_for(prepared.param, grad)
    prepared.desc.grad_format = _FORMATS[kernel_grad.dtype]
    descs = (_Tensor * 1)(prepared.desc)
    _run(
        hyper,
        descs,
        (ctypes.c_void_p * 1)(prepared.param.data_ptr()),
        (ctypes.c_void_p * 1)(kernel_grad.data_ptr()),
        None if scalars is None else ctypes.byref(scalars),
    )
    for target, copy in prepared.write_back:
        target.copy_(copy)


def fused_diffgrad_cpu(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[StateBuffer],
    exp_avg_sqs: list[StateBuffer],
    previous_grads: list[StateBuffer],
    max_exp_avg_sqs: list[StateBuffer],
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
    """One diffGrad step (Eq. 11–20 and the modifiers) of CPU tensors, in place, by the fused
    kernel, with the arguments of the reference paths in :mod:`diffgrad.optim.functional`
    (which calls it for ``fused=True`` after its checks): ``grad_factor`` is ±1/(AMP loss scale);
    ``max_exp_avg_sqs`` is empty without AMSGrad, ``previous_params``/``exp_grad_norms`` empty
    unless AdaInject/AdaNorm is on. ``grads`` are read, never written.
    """
    if not params:
        return
    state: list[Sequence[StateBuffer | None]] = [
        exp_avgs,
        exp_avg_sqs,
        previous_grads,
        max_exp_avg_sqs if amsgrad else [None] * len(params),
        previous_params if modifiers.adainject else [None] * len(params),
    ]
    # Centralisation and the whole-tensor statistics (DFC3–5, AdaNorm) need the effective
    # gradient of the whole tensor first: those steps go tensor by tensor, with one effective
    # gradient alive at a time, which the kernel then takes as g_t.
    whole_tensor = friction.uses_stats or modifiers.adanorm or modifiers.centralize
    hyper = _hyper(
        float(lr), beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, grad_factor, friction, modifiers,
        effective_grads=whole_tensor,
    )  # fmt: skip
    indices: Sequence[int] = range(len(params))
    if not whole_tensor:
        plan = _plan(params, state, state_steps)
        if _run_plan(plan, hyper, grads):
            indices = plan.staged
    coupled_weight_decay = weight_decay if not decoupled_weight_decay else 0.0
    for i in indices:
        param, step = params[i], state_steps[i]
        buffers = [b[i] for b in state]
        prepared = _describe(param, buffers, step) or _staged(param, buffers, step)
        grad = grads[i]
        scalars = None
        if whole_tensor:
            grad = effective_grad(grad, param, grad_factor, modifiers.centralize, coupled_weight_decay)
            scalars = _TensorScalars(ratio=1.0, slope=friction.slope, offset=0.0)
            if friction.uses_stats:
                mu, nu = abs_grad_stats(grad)
                scalars.slope, scalars.offset = friction.stat_slope(nu).item(), mu.item()
            if modifiers.adanorm:
                scalars.ratio = _adanorm_ratio(grad, exp_grad_norms[i], modifiers.adanorm_gamma)
        _step_one(hyper, prepared, grad, scalars)


def _run_plan(plan: _Plan, hyper: _Hyper, grads: list[Tensor]) -> bool:
    """The kernel on every parameter of the plan at once; False (and nothing done) if some
    gradient is not laid out as its parameter (those steps then go tensor by tensor)."""
    if not plan.direct:
        return True
    grad_ptrs: list[ctypes.c_void_p | int | None] = []
    for i, dtype in zip(plan.direct, plan.grad_dtypes):
        g = grads[i]
        if g.dtype != dtype or not g.is_contiguous():
            return False
        grad_ptrs.append(g.data_ptr())
    plan.grad_array[:] = grad_ptrs
    _run(hyper, plan.descs, plan.param_array, plan.grad_array, None)
    return True
