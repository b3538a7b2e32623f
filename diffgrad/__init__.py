"""diffGrad for PyTorch (Dubey et al., IEEE TNNLS 2020) and a lab that measures when it helps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["FRICTIONS", "DiffGrad", "Friction", "record_friction"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from diffgrad.optim import FRICTIONS, DiffGrad, Friction, record_friction


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `diffgrad --help` does not pay for importing torch.
    if name in __all__:
        import diffgrad.optim

        return getattr(diffgrad.optim, name)
    raise AttributeError(f"module 'diffgrad' has no attribute {name!r}")
