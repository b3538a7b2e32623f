"""The activation functions of the paper's Table III (docs/paper.md §6), by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# LeakyReLU's slope 0.1 is the paper's (Table III), not PyTorch's default 0.01.
_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "selu": nn.SELU,
}

ACTIVATIONS: tuple[str, ...] = tuple(_FACTORIES)


def check_activation(name: str) -> str:
    """Return ``name`` if it is a known activation, else raise ValueError listing the valid ones."""
    if name not in _FACTORIES:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def make_activation(name: str) -> nn.Module:
    """A fresh activation module: "relu", "leaky_relu" (slope 0.1), "elu" or "selu"."""
    return _FACTORIES[check_activation(name)]()
