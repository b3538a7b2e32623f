"""Stand-ins for torch operations that a tensor type lacks in some torch versions.

The reference paths call these where they would call the torch operation. Each names what it
works around and the torch versions it applies to; outside those, it is the torch operation.
All concern DTensor (FSDP2's parameters and their state), whose sharding rules cover fewer
operations than plain tensors, and fewer still in older releases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["foreach_copy_", "foreach_sigmoid_", "std_mean"]

# torch 2.13 propagates shardings through a decomposition where an operation has no rule of its
# own (aten._foreach_sigmoid_, aten.std_mean); torch 2.11 does not.
_DTENSOR_DECOMPOSES = torch.__version__ >= "2.13"


def _has_dtensor(tensors: Sequence[Tensor]) -> bool:
    return any(is_traceable_wrapper_subclass(t) for t in tensors)


def foreach_copy_(targets: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """``torch._foreach_copy_``. DTensor has no sharding rule for ``aten._foreach_copy_`` (torch
    2.11 and 2.13): one ``copy_`` per tensor there."""
    if _has_dtensor(targets):
        for target, source in zip(targets, sources):
            target.copy_(source)
    else:
        torch._foreach_copy_(list(targets), list(sources))


def foreach_sigmoid_(tensors: Sequence[Tensor]) -> None:
    """``torch._foreach_sigmoid_``. DTensor has no sharding rule for ``aten._foreach_sigmoid_``
    before torch 2.13: one ``sigmoid_`` per tensor there (the same values)."""
    if not _DTENSOR_DECOMPOSES and _has_dtensor(tensors):
        for t in tensors:
            t.sigmoid_()
    else:
        torch._foreach_sigmoid_(list(tensors))


def std_mean(x: Tensor, correction: int) -> tuple[Tensor, Tensor]:
    """``torch.std_mean(x, correction=correction)`` over all elements. DTensor has no sharding
    rule for ``aten.std_mean`` before torch 2.13: ``std`` and ``mean`` apart there, each reduced
    over every shard."""
    if not _DTENSOR_DECOMPOSES and is_traceable_wrapper_subclass(x):
        return x.std(correction=correction), x.mean()
    return torch.std_mean(x, correction=correction)
