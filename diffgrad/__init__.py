"""diffGrad for PyTorch (Dubey et al., IEEE TNNLS 2019) and a lab that measures when it helps."""

from diffgrad.optim import FRICTIONS, DiffGrad, Friction

__all__ = ["FRICTIONS", "DiffGrad", "Friction"]
__version__ = "0.1.0"
