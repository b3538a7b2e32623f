"""The diffGrad optimizer: the class, its functional core, the friction variants and a probe of ξ."""

from diffgrad.optim.diffgrad import DiffGrad
from diffgrad.optim.friction import DFC_RMS_SLOPE, FRICTIONS, Friction, get_friction
from diffgrad.optim.functional import diffgrad
from diffgrad.optim.probe import record_friction

__all__ = ["DFC_RMS_SLOPE", "FRICTIONS", "DiffGrad", "Friction", "diffgrad", "get_friction", "record_friction"]
