"""The workload registry: every workload by name, built with its options.

``get_workload("digits-cnn", activation="elu")`` returns a ready :class:`Workload`; the CIFAR
workloads need ``data_dir``. Importing this package is cheap: data and heavy packages (scikit-learn,
mnist1d) load on first use.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import Budget, Evaluation, Workload
from .charlm import CharLM
from .cifar import Cifar10ResNet, Cifar100ResNet
from .digits import DigitsCNN
from .mnist1d import MNIST1DCNN, MNIST1DMLP

WORKLOADS: dict[str, type[Workload]] = {
    cls.name: cls for cls in (DigitsCNN, MNIST1DCNN, MNIST1DMLP, CharLM, Cifar10ResNet, Cifar100ResNet)
}


def workload_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, each with its default (``inspect.Parameter.empty`` if required)."""
    params = inspect.signature(_workload_class(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_workload(name: str, **options: Any) -> Workload:
    """Build workload ``name`` with ``options``; unknown names, unknown or missing options and
    invalid values raise ValueError naming them."""
    accepted = workload_options(name)
    for option, value in options.items():
        if option not in accepted:
            raise ValueError(
                f"workload {name!r} has no option {option!r} (got {option}={value!r}); "
                f"valid options: {', '.join(accepted) or 'none'}"
            )
    missing = [o for o, default in accepted.items() if default is inspect.Parameter.empty and o not in options]
    if missing:
        raise ValueError(f"workload {name!r} needs the option(s) {', '.join(missing)}")
    return WORKLOADS[name](**options)


def list_workloads() -> list[tuple[str, str]]:
    """(name, description) of every registered workload, in registry order."""
    return [(name, cls.description) for name, cls in WORKLOADS.items()]


def _workload_class(name: str) -> type[Workload]:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; valid names: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]


__all__ = ["WORKLOADS", "Budget", "Evaluation", "Workload", "get_workload", "list_workloads", "workload_options"]
