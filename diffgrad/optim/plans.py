"""A cache of the fused kernels' launch plans, kept from step to step for the same tensors."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Generic, TypeVar

from torch import Tensor

__all__ = ["PlanCache"]

P = TypeVar("P")


class PlanCache(Generic[P]):
    """Plans for lists of tensors, keyed by the tensors' identities. A plan is dropped as soon as
    one of its tensors is freed, so that an identity reused by a new tensor never finds a plan made
    for the old one; what can change in place (a parameter's storage) the caller checks."""

    def __init__(self) -> None:
        self._plans: dict[tuple[int, ...], tuple[P, list[weakref.ref]]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, tensors: Sequence[Tensor]) -> P | None:
        entry = self._plans.get(tuple(map(id, tensors)))
        return None if entry is None else entry[0]

    def put(self, tensors: Sequence[Tensor], plan: P) -> P:
        key = tuple(map(id, tensors))
        drop = functools.partial(self._drop, key)
        self._plans[key] = (plan, [weakref.ref(t, drop) for t in tensors])
        return plan

    def _drop(self, key: tuple[int, ...], _: object) -> None:
        self._plans.pop(key, None)
