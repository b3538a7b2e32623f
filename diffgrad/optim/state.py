"""How DiffGrad stores its per-element state: full precision, bfloat16, or 8-bit block-wise.

The arithmetic of a step always runs in a *compute dtype* (float32 for bfloat16/float16
parameters, the parameter's own real dtype otherwise). A state buffer is converted to it when it
is loaded and back when it is stored, and nowhere else: every implementation path (per-tensor,
``foreach``, compiled) goes through :func:`load` and :func:`store`, so a storage format is one
branch here, not a variant of the optimizer.

Formats, chosen per parameter when its state is created (:func:`new_buffer`):

* **plain**: a tensor shaped like the parameter, in the compute dtype (the default) or in the
  ``state_dtype`` the user asked for (``torch.bfloat16``: 2 bytes per element).
* **8-bit block-wise** (``state_dtype="8bit"``, after Dettmers et al., "8-bit Optimizers via
  Block-wise Quantization", ICLR 2022): the flattened tensor is cut into blocks of
  :data:`BLOCK` elements; each block keeps its absolute maximum in float32 and every element as
  one float8-e4m3 code of ``x / absmax · 448``, a floating-point (dynamic-exponent) codebook with
  a relative error below 1/16 across five decades under the block maximum. The second moment is
  stored as sqrt(v) (halving its dynamic range) and a zero code of sqrt(v) decodes to half the
  smallest non-zero code, so quantisation can shrink a denominator but never zero it (a zero
  sqrt(v̂) under a non-zero m̂ would turn Eq. 20 into m̂/ε). Tensors with fewer than
  :data:`MIN_QUANTIZED_NUMEL` elements (biases, norms) stay in the compute dtype, as in
  bitsandbytes: their bytes do not matter and they are often the most sensitive. So do tensors
  whose size is not a whole number of blocks (rare: one dimension a multiple of 256 suffices),
  which spares every path a padded tail (and sidesteps an Inductor 2.13 CPU bug that drops the
  tail of element loops fused with a padded block reduction). DTensor (FSDP2) parameters keep
  the compute dtype too: their flat per-element codes would not follow the sharding.

Bytes of state per parameter element (exp_avg + exp_avg_sq + previous_grad; AMSGrad adds one
more buffer of the same size): float32 12, bfloat16 6, 8-bit 3 × (1 + 4/256) ≈ 3.05.
"""

from __future__ import annotations

from typing import NamedTuple, cast, overload

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = [
    "BLOCK",
    "MIN_QUANTIZED_NUMEL",
    "Blockwise8",
    "Span",
    "StateBuffer",
    "check_state_dtype",
    "compute_dtype",
    "contiguous_copy",
    "load",
    "new_buffer",
    "pack",
    "real_numel",
    "real_view",
    "staged",
    "store",
    "unpack",
]

BLOCK = 256
MIN_QUANTIZED_NUMEL = 4096
QUANTIZED = "8bit"
_CODE = torch.float8_e4m3fn
_CODE_MAX = 448.0  # largest finite float8-e4m3fn value
# Half the smallest positive e4m3 code (2^-9): what a zero code of sqrt(v) decodes to.
_SQRT_FLOOR = 2.0**-10
# Storable dtypes for state_dtype: float16 is refused because v = g² underflows it (2^-24) for
# ordinary gradients, which zeroes the denominator of Eq. 20.
_STATE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class Blockwise8(NamedTuple):
    """One 8-bit block-wise buffer: ``codes`` (uint8 bit patterns of float8-e4m3fn, flat) and
    ``absmax`` (float32, one per block). In the optimizer's state dict these
    are two tensors, under ``key`` and ``key + "_absmax"``."""

    codes: Tensor
    absmax: Tensor


StateBuffer = Tensor | Blockwise8


def check_state_dtype(state_dtype: object) -> None:
    """Reject a ``state_dtype`` that is not ``None``, float32/float64/bfloat16 or ``"8bit"``."""
    if state_dtype is None or state_dtype == QUANTIZED or state_dtype in _STATE_DTYPES:
        return
    raise ValueError(
        f"Invalid state_dtype: {state_dtype!r} (expected None, torch.float32, torch.float64, "
        f"torch.bfloat16 or {QUANTIZED!r})"
    )


def compute_dtype(param: Tensor) -> torch.dtype:
    """The dtype the step's arithmetic runs in for ``param``."""
    dtype = param.real.dtype if param.is_complex() else param.dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def real_numel(param: Tensor) -> int:
    """Number of real elements: a complex parameter is optimised as pairs of reals."""
    return param.numel() * (2 if param.is_complex() else 1)


@overload
def new_buffer(param: Tensor, state_dtype: None) -> Tensor: ...


@overload
def new_buffer(param: Tensor, state_dtype: torch.dtype | str | None) -> StateBuffer: ...


def new_buffer(param: Tensor, state_dtype: torch.dtype | str | None) -> StateBuffer:
    """A zero state buffer for ``param`` in the format that ``state_dtype`` asks for."""
    n = real_numel(param)
    quantizable = n >= MIN_QUANTIZED_NUMEL and n % BLOCK == 0 and not is_traceable_wrapper_subclass(param)
    if state_dtype == QUANTIZED and quantizable:
        return Blockwise8(
            torch.zeros(n, dtype=torch.uint8, device=param.device),
            torch.zeros(n // BLOCK, dtype=torch.float32, device=param.device),
        )
    dtype = compute_dtype(param) if state_dtype in (None, QUANTIZED) else cast(torch.dtype, state_dtype)
    if param.is_complex() and dtype == param.real.dtype:
        # Complex state for a complex parameter, as torch.optim keeps it.
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    return torch.zeros_like(real_view(param), dtype=dtype, memory_format=torch.preserve_format)


def real_view(t: Tensor) -> Tensor:
    """``t`` as real numbers: a complex tensor's ``view_as_real``, any other tensor itself."""
    return torch.view_as_real(t) if t.is_complex() else t


def staged(t: Tensor, dtype: torch.dtype, write_back: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``t`` as a contiguous real array in ``dtype`` for a kernel: its real view where that is one,
    else a contiguous copy, with (view, copy) appended to ``write_back`` for the copy back."""
    real = real_view(t)
    if real.is_contiguous() and real.dtype == dtype:
        return real
    copy = contiguous_copy(real, dtype)
    write_back.append((real, copy))
    return copy


def contiguous_copy(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous copy of ``t`` in ``dtype`` (on ``t``'s device)."""
    # Not t.to(dtype, memory_format=torch.contiguous_format): for a view_as_real of a
    # non-contiguous complex tensor in its own dtype, torch 2.13 returns it with the same strides.
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def flat_viewable(t: Tensor) -> bool:
    """Whether ``t`` (a plain buffer, parameter or gradient) has a flat view in element order."""
    return real_view(t).is_contiguous()


Span = tuple[int, int] | None  # elements lo:hi of the flattened real tensor, or None: all, unflattened


def load(
    buffer: StateBuffer, span: Span, dtype: torch.dtype, *, copy: bool, sqrt_domain: bool = False
) -> tuple[Tensor, bool]:
    """The elements ``span`` of ``buffer`` in ``dtype``, and whether they must be stored back:
    False when the result is a view of ``buffer`` that in-place math updates directly.

    ``span=None`` (plain buffers only) keeps the tensor's own shape and strides. ``copy`` asks
    for fresh storage even where a view would do (the compiled step needs it to leave a skipped
    step's state untouched). ``sqrt_domain`` marks a buffer of second moments.
    """
    if isinstance(buffer, Blockwise8):
        assert span is not None, "8-bit state is flat: load it by element span"
        lo, hi = span
        codes = buffer.codes[lo:hi].view(_CODE).to(torch.float32).view(-1, BLOCK)
        if sqrt_domain:
            codes = codes.clamp_min(_SQRT_FLOOR)
        values = (codes * (buffer.absmax[lo // BLOCK : hi // BLOCK, None] / _CODE_MAX)).view(-1)
        if sqrt_domain:
            values = values.square()
        return values.to(dtype, copy=True), True
    real = real_view(buffer)
    if span is None:
        part, is_view = real, True
    elif real.is_contiguous():
        part, is_view = real.view(-1)[span[0] : span[1]], True
    else:
        # Only whole tensors get here: the per-tensor path does not slice non-contiguous ones.
        part, is_view = real.reshape(-1), False
    if copy or part.dtype != dtype or not is_view:
        return part.to(dtype, copy=True), True
    return part, False


def store(
    buffer: StateBuffer, value: Tensor, span: Span, *, keep: Tensor | None = None, sqrt_domain: bool = False
) -> None:
    """Write ``value`` (the elements ``span``, compute dtype) into ``buffer`` in its format.

    Where ``keep`` (a 0-dim bool tensor) is true, the stored bytes are left as they were: that is
    how the compiled step skips a step with non-finite gradients without a host synchronisation.
    """
    if isinstance(buffer, Blockwise8):
        assert span is not None, "8-bit state is flat: store it by element span"
        lo, hi = span
        x = value.to(torch.float32)
        if sqrt_domain:
            x = x.sqrt()
        x = x.view(-1, BLOCK)
        absmax = x.abs().amax(dim=1)
        # x / absmax first (at most 1), then · 448: 448 / absmax overflows for tiny blocks, and
        # an all-zero block divides by the smallest normal float instead of by zero.
        inverse = 1.0 / absmax.clamp_min(torch.finfo(torch.float32).tiny)
        codes = (x * inverse[:, None] * _CODE_MAX).to(_CODE).view(torch.uint8).view(-1)
        _write(buffer.codes[lo:hi], codes, keep)
        _write(buffer.absmax[lo // BLOCK : hi // BLOCK], absmax, keep)
        return
    real = real_view(buffer)
    if span is not None and real.is_contiguous():
        _write(real.view(-1)[span[0] : span[1]], value, keep)
    else:
        _write(real, value.view(real.shape), keep)


def _write(target: Tensor, value: Tensor, keep: Tensor | None) -> None:
    if keep is not None:
        value = torch.where(keep, target, value.to(target.dtype))
    target.copy_(value)


def unpack(buffer: StateBuffer, param: Tensor, *, sqrt_domain: bool = False) -> tuple[Tensor, bool]:
    """``buffer``'s values as a real tensor shaped like ``param`` (complex parameters as
    ``view_as_real``) in ``param``'s compute dtype, and whether :func:`pack` must write them back:
    False where they are the buffer's own storage, True for a decoded copy. This and :func:`pack`
    are the only places where an implementation path meets a storage format."""
    dtype = compute_dtype(param)
    if isinstance(buffer, Blockwise8):
        values, _ = load(buffer, (0, real_numel(param)), dtype, copy=False, sqrt_domain=sqrt_domain)
        return values.view(real_view(param).shape), True
    return load(buffer, None, dtype, copy=False)


def pack(buffer: StateBuffer, value: Tensor, *, sqrt_domain: bool = False) -> None:
    """Store ``value`` (a decoded copy from :func:`unpack`, updated) into ``buffer``'s format."""
    if isinstance(buffer, Blockwise8):
        store(buffer, value.reshape(-1), (0, value.numel()), sqrt_domain=sqrt_domain)
    else:
        real_view(buffer).copy_(value)


def buffer_tensors(key: str, buffer: StateBuffer) -> dict[str, Tensor]:
    """The state-dict entries of one buffer: ``{key: tensor}``, or codes and ``key_absmax``."""
    if isinstance(buffer, Blockwise8):
        return {key: buffer.codes, key + "_absmax": buffer.absmax}
    return {key: buffer}


def get_buffer(state: dict[str, Tensor], key: str) -> StateBuffer:
    """The buffer stored under ``key`` in a parameter's state (the inverse of :func:`buffer_tensors`)."""
    absmax = state.get(key + "_absmax")
    return Blockwise8(state[key], absmax) if absmax is not None else state[key]


def convert_buffer(
    buffer: StateBuffer, param: Tensor, state_dtype: torch.dtype | str | None, *, sqrt_domain: bool
) -> StateBuffer:
    """``buffer`` re-encoded in the format :func:`new_buffer` gives ``param`` (e.g. after loading a
    checkpoint written with another ``state_dtype`` or by another implementation)."""
    target = new_buffer(param, state_dtype)
    if _same_format(buffer, target):
        return buffer
    span = (0, real_numel(param))
    values, _ = load(buffer, span, compute_dtype(param), copy=True, sqrt_domain=sqrt_domain)
    store(target, values, span, sqrt_domain=sqrt_domain)
    return target


def _same_format(a: StateBuffer, b: StateBuffer) -> bool:
    if isinstance(a, Blockwise8) or isinstance(b, Blockwise8):
        return isinstance(a, Blockwise8) and isinstance(b, Blockwise8) and a.codes.shape == b.codes.shape
    return a.dtype == b.dtype and a.shape == b.shape
