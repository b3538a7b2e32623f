"""The diffGrad optimizer: the class, its functional core and the friction variants."""

from diffgrad.optim.diffgrad import DiffGrad
from diffgrad.optim.friction import FRICTIONS, Friction, get_friction
from diffgrad.optim.functional import diffgrad

__all__ = ["FRICTIONS", "DiffGrad", "Friction", "diffgrad", "get_friction"]
