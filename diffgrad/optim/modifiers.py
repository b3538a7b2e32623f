"""The diffGrad family: modifiers that compose with the step of Eq. 11–20.

Each modifier is one small function of tensors, written once and called by every implementation
(per-tensor, foreach and the compiled fused step). With u the per-element update before the
learning rate (diffGrad: u = ξ·m̂/(sqrt(v̂) + ε)) and g_t the effective gradient (after
``maximize``, AMP unscaling and coupled weight decay):

* **gradient centralisation** (Yong et al., ECCV 2020): for tensors with ≥ 2 dims,
  g ← g − mean of g over all dims but the first, before everything else (:func:`centralized`);
* **AdaNorm** (diffGradNorm; Dubey, Singh, Chaudhuri, WACV 2023): e_t = γ·e_{t−1} + (1 − γ)·‖g_t‖₂
  per tensor; s_t = (e_t/‖g_t‖₂)·g_t if e_t > ‖g_t‖₂ else g_t; s_t replaces g_t in the first moment
  only (:func:`adanorm_`);
* **AdaInject** (diffGradInject; Dubey, Basha, Singh, Chaudhuri, IEEE TAI 2023): for t > 1 the
  first moment takes (s_t + Δθ_t ⊙ s_t²)/k with Δθ_t = θ_{t−1} − θ_t; t = 1 takes s_t
  (:func:`injected`);
* **rectification** (diffRGrad, RAdam's rule): u ← r_t·u once ρ_t ≥ the threshold, and a warm-up
  step before (:func:`rectification`);
* **cautious masking** (Liang et al., "Cautious Optimizers", 2024): u ← u ⊙ 1[u ⊙ g_t > 0] ·
  N / (Σ 1[u ⊙ g_t > 0] + 1) over the N elements of the tensor (:func:`cautious_`).

Reductions (‖g‖, means, Σmask) are over the whole tensor; on a DTensor (FSDP2) they are DTensor
reductions, so every shard sees the whole-tensor value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "WARMUPS",
    "Modifiers",
    "adainject_scale",
    "adanorm_",
    "adanorm_ratio_",
    "cautious_",
    "centralized",
    "injected",
    "rectification",
]

# What the rectified step does while ρ_t is under the threshold: a bias-corrected momentum-SGD
# step θ ← θ − α·m̂ (the family paper's reading), or no update.
WARMUPS = ("sgd", "skip")


@dataclass(frozen=True)
class Modifiers:
    """Which modifiers a parameter group uses, with their hyper-parameters."""

    rectify: bool = False
    rectify_threshold: float = 5.0
    rectify_warmup: str = "sgd"
    adanorm: bool = False
    adanorm_gamma: float = 0.95
    adainject: bool = False
    adainject_k: float = 2.0
    cautious: bool = False
    centralize: bool = False

    @property
    def adam_kernel_compatible(self) -> bool:
        """Whether the step is Adam's update times ξ on g itself (what torch's fused Adam
        kernel computes): no modifier touches the moments' input or the update."""
        return not (self.rectify or self.adanorm or self.adainject or self.cautious)

    @property
    def whole_tensor(self) -> bool:
        """Whether the step needs whole-tensor reductions (so it cannot run slice by slice)."""
        return self.adanorm or self.cautious


def centralized(grad: Tensor) -> Tensor:
    """g − mean(g) over every dim but the first, for tensors with ≥ 2 dims (a new tensor)."""
    if grad.dim() < 2:
        return grad
    return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


def _whole(value: Tensor) -> Tensor:
    # A DTensor reduction comes back as a (replicated or partial) DTensor: the optimizer keeps
    # scalar state as a plain tensor, as it does ``step``.
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if full_tensor is not None else value


def adanorm_ratio_(g: Tensor, exp_grad_norm: Tensor, gamma: float) -> Tensor:
    """AdaNorm: update e_t (``exp_grad_norm``, 0-dim, in place) with ‖g_t‖₂ and return the factor
    s_t/g_t: e_t/‖g_t‖₂ where e_t > ‖g_t‖₂, else 1 (also for a zero gradient, which stays zero)."""
    norm = _whole(torch.linalg.vector_norm(g)).to(exp_grad_norm.dtype)
    exp_grad_norm.mul_(gamma).add_(norm, alpha=1.0 - gamma)
    rescaled = (exp_grad_norm > norm) & (norm > 0)
    return torch.where(rescaled, exp_grad_norm / torch.where(rescaled, norm, 1.0), 1.0)


def adanorm_(g: Tensor, exp_grad_norm: Tensor, gamma: float) -> Tensor:
    """AdaNorm: update e_t (see :func:`adanorm_ratio_`) and return s_t."""
    return g * adanorm_ratio_(g, exp_grad_norm, gamma)


def adainject_scale(step: float | Tensor, k: float) -> float | Tensor:
    """AdaInject's factor at step t: 1/k for t > 1, and 1 at t = 1, where Δθ = 0 (the previous
    parameters start as the parameters), so the first step takes plain s_1."""
    if isinstance(step, Tensor):
        return torch.where(step > 1, torch.full_like(step, 1.0 / k), torch.ones_like(step))
    return 1.0 / k if step > 1 else 1.0


def injected(s: Tensor, param_change: Tensor, scale: float | Tensor) -> Tensor:
    """AdaInject: the first moment's input scale·(s + Δθ ⊙ s²), Δθ = θ_{t−1} − θ_t, with
    ``scale`` from :func:`adainject_scale`."""
    return s.addcmul(param_change, s.square()).mul_(scale)


def rectification(
    step: float | Tensor, beta2: float, threshold: float, warmup: str
) -> tuple[float | Tensor, float | Tensor]:
    """RAdam's rule at step t: (r_t, 0) once ρ_t ≥ ``threshold``, else (0, w) with w = 1 for the
    momentum-SGD warm-up and 0 for ``"skip"``. The step is then θ ← θ − α·(r_t·u + w·m̂).

    ρ∞ = 2/(1 − β2) − 1, ρ_t = ρ∞ − 2·t·β2^t/(1 − β2^t),
    r_t = sqrt((ρ_t − 4)(ρ_t − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρ_t)).
    ``step`` is a float (eager paths) or a float64 tensor (compiled path, no host synchronisation).
    """
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2**step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    ratio_squared = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    warm = 1.0 if warmup == "sgd" else 0.0
    if isinstance(rho_t, Tensor):
        adaptive = rho_t >= threshold
        # Below ρ_t = 4 the square is negative; those steps take the warm-up branch anyway.
        return torch.where(adaptive, ratio_squared.clamp_min(0.0).sqrt(), 0.0), (~adaptive).to(rho_t.dtype) * warm
    return (ratio_squared**0.5, 0.0) if rho_t >= threshold else (0.0, warm)


def cautious_(update: Tensor, g: Tensor) -> Tensor:
    """Cautious masking, in place on ``update`` (a descent direction: θ ← θ − α·update)."""
    mask = (update * g > 0).to(update.dtype)
    return update.mul_(mask.mul_(update.numel() / (_whole(mask.sum()) + 1.0)))
