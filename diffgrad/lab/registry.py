"""Optimizers by name: ours, the paper's baselines from ``torch.optim``, peers and controls.

Each name maps to an :class:`OptimizerSpec` (in the spirit of timm's ``OptimInfo``): the class,
its default hyper-parameters, the search space of the ``tuned`` protocol and the extra package it
needs. The registry knows nothing of workloads; :func:`create_optimizer` is the one place in the
lab where optimizers are built.

Defaults are the constructor defaults of each class (PyTorch's for ``torch.optim``,
pytorch_optimizer's for the peers) plus what makes the name mean what it says (SGDM's momentum
0.9 from the paper, ``amsgrad=True``, a friction variant, decoupled decay, one diffGrad-family
modifier of docs/paper.md §8 switched on). The paper's protocol
(docs/paper.md §6: "PyTorch defaults for every optimizer, one learning rate for all") is read as
lr = 1e-3 for every optimizer — Adadelta (torch default lr 1.0), Adagrad and RMSprop (1e-2)
included — with every other argument at these defaults; the runner applies that learning rate,
the specs keep the classes' own defaults.

Search spaces are log-uniform learning-rate ranges, declared per optimizer: [1e-5, 1e-1] for the
Adam family, [1e-4, 1] for SGDM and Adagrad (no per-coordinate normalisation of the step size /
an accumulator that only shrinks it), [1e-3, 10] for Adadelta (its lr multiplies an already
unit-scaled update, default 1.0) and [1e-6, 1e-2] for Lion (sign updates want ~10x smaller steps).
``diffgrad-rms-slope`` also searches the slope κ of the scale-free friction over [0.1, 10].
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch.optim import Optimizer

from diffgrad.optim import DiffGrad, Friction

__all__ = [
    "OPTIMIZERS",
    "LogUniform",
    "OptimizerSpec",
    "PublishedDiffGrad",
    "create_optimizer",
    "get_optimizer_spec",
    "list_optimizers",
    "unavailable_note",
]

LAB_EXTRA = "pip install 'diffgrad[lab]'"


@dataclass(frozen=True)
class LogUniform:
    """A hyper-parameter searched on a log scale in [low, high]."""

    low: float
    high: float

    def to_attr(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": True}


ADAPTIVE_LR = LogUniform(1e-5, 1e-1)
NON_ADAPTIVE_LR = LogUniform(1e-4, 1.0)
FRICTION_SLOPE = LogUniform(0.1, 10.0)  # κ of the scale-free friction, around |Δg|/sqrt(v̂) = O(1)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer by name.

    ``target`` is the class, or ``"module:Class"`` for classes from optional packages, imported on
    first use so that listing names never imports them. ``lr_scale`` multiplies the learning rate
    given to the class (the ``adam-half-lr`` control).
    """

    name: str
    description: str
    target: type[Optimizer] | str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: Mapping[str, LogUniform] = field(default_factory=lambda: {"lr": ADAPTIVE_LR})
    requires: str | None = None  # import name of the extra package, None for torch/diffgrad
    lr_scale: float = 1.0

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def optimizer_class(self) -> type[Optimizer]:
        if not isinstance(self.target, str):
            return self.target
        if not self.available:
            raise ValueError(f"optimizer {self.name!r} needs the {self.requires} package: {LAB_EXTRA}")
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    def hparam_names(self) -> list[str]:
        """The keyword arguments the class accepts (those hidden in ``**kwargs`` are not)."""
        parameters = list(inspect.signature(self.optimizer_class()).parameters.values())[1:]  # drop params
        variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        return [p.name for p in parameters if p.kind not in variadic]

    def factory(self, params: Iterable[Any], **hparams: Any) -> Optimizer:
        """Build the optimizer on ``params``: defaults, overridden by ``hparams``."""
        cls = self.optimizer_class()
        valid = self.hparam_names()
        unknown = sorted(set(hparams) - set(valid))
        if unknown:
            raise ValueError(
                f"optimizer {self.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(valid)}"
            )
        kwargs = {**self.defaults, **hparams}
        if self.lr_scale != 1.0:
            kwargs["lr"] = kwargs.get("lr", inspect.signature(cls).parameters["lr"].default) * self.lr_scale
        return cls(params, **kwargs)


# ξ ≡ 0.5: the friction the published code ends up with from its second step on (docs/paper.md §2).
ALIASED_FRICTION = Friction("aliased", scale=0.0, shift=0.5, range="{0.5}")


class PublishedDiffGrad(DiffGrad):
    """diffGrad as the published ``diffGrad.py`` behaves when ``.grad`` storage is reused.

    The published code keeps ``state['previous_grad'] = grad``, a reference to ``p.grad`` rather
    than a copy (docs/paper.md §2). Whenever the next gradient is written into the same storage —
    ``zero_grad(set_to_none=False)`` (PyTorch's behaviour when the paper was written), gradient
    accumulation, DDP with ``gradient_as_bucket_view`` — Δg = 0 from step 2 on, so ξ = 0.5 and the
    optimizer is exactly Adam at half the learning rate. Step 1 is unaffected (g_0 = 0, so
    ξ_1 = sigmoid(|g_1|)).

    This class reproduces that regardless of how gradients are managed: a parameter group uses the
    paper's friction while any of its parameters with a gradient has not stepped yet, and the
    constant ξ = 0.5 afterwards. The switch is derived from the per-parameter ``step`` in the
    optimizer state each time, so it survives ``state_dict``/``load_state_dict`` and the saved
    groups hold the plain friction name. (If parameters of one group receive their first gradient
    at different steps, the group switches when all of them have stepped.) Everything else follows
    :class:`~diffgrad.optim.DiffGrad` (ε after bias correction, as in the paper), so comparing with
    ``diffgrad`` isolates the aliasing.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, maximize=maximize, foreach=foreach)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        frictions = [group["friction"] for group in self.param_groups]
        for group in self.param_groups:
            if self._past_first_step(group):
                group["friction"] = ALIASED_FRICTION
        try:
            return super().step(closure)
        finally:
            for group, friction in zip(self.param_groups, frictions):
                group["friction"] = friction

    def _past_first_step(self, group: dict[str, Any]) -> bool:
        stepped = [self.state[p].get("step", 0) >= 1 for p in group["params"] if p.grad is not None]
        return bool(stepped) and all(stepped)


def _specs() -> list[OptimizerSpec]:
    friction_variants = [
        OptimizerSpec(
            f"diffgrad-dfc{k}",
            f"diffGrad with the paper's friction variant DFC{k} (Sec. VII-B, Table II)",
            DiffGrad,
            {"friction": f"dfc{k}"},
        )
        for k in range(1, 6)
    ]
    # The diffGrad family (docs/paper.md §8): one modifier each, every other option at DiffGrad's default.
    family = [
        OptimizerSpec(f"diffgrad-{suffix}", description, DiffGrad, {option: True})
        for suffix, option, description in (
            (
                "rect",
                "rectify",
                "diffRGrad: diffGrad with RAdam's rectification and momentum-SGD warm-up (Liu et al., ICLR 2020)",
            ),
            (
                "norm",
                "adanorm",
                "diffGradNorm: diffGrad with AdaNorm's gradient-norm correction of the first "
                "moment (Dubey et al., WACV 2023)",
            ),
            (
                "inject",
                "adainject",
                "diffGradInject: diffGrad with AdaInject's Δθ ⊙ g² injection into the first "
                "moment (Dubey et al., IEEE TAI 2023)",
            ),
            (
                "cautious",
                "cautious",
                "diffGrad with cautious masking of update components that disagree in sign "
                'with the gradient (Liang et al., "Cautious Optimizers", 2024)',
            ),
            ("gc", "centralize", "diffGrad with gradient centralisation of ≥2-D tensors (Yong et al., ECCV 2020)"),
        )
    ]
    peers = "pytorch_optimizer"
    return [
        OptimizerSpec("diffgrad", "diffGrad, friction DFC = sigmoid(|Δg|) (the paper's default)", DiffGrad),
        *friction_variants,
        OptimizerSpec("diffgrad-amsgrad", "diffGrad with AMSGrad's max of second moments", DiffGrad, {"amsgrad": True}),
        # The scale-free friction (docs/paper.md §10), at its default κ and with κ searched alongside lr.
        OptimizerSpec(
            "diffgrad-rms",
            "diffGrad with the scale-free friction sigmoid(κ·|Δg|/(sqrt(v̂) + ε)) at its default κ (docs/paper.md §10)",
            DiffGrad,
            {"friction": "dfc-rms"},
        ),
        OptimizerSpec(
            "diffgrad-rms-slope",
            "diffGrad with the scale-free friction, its slope κ tuned along with lr (docs/paper.md §10)",
            DiffGrad,
            {"friction": "dfc-rms"},
            {"lr": ADAPTIVE_LR, "friction_slope": FRICTION_SLOPE},
        ),
        OptimizerSpec(
            "diffgradw",
            "diffGrad with decoupled (AdamW-style) weight decay 1e-2",
            DiffGrad,
            {"decoupled_weight_decay": True, "weight_decay": 1e-2},
        ),
        *family,
        OptimizerSpec(
            "diffgrad-published",
            "the published code's behaviour (aliased previous_grad): Adam at lr/2 after step 1 (docs/paper.md §2)",
            PublishedDiffGrad,
        ),
        OptimizerSpec(
            "sgdm",
            "SGD with momentum 0.9 (torch.optim.SGD)",
            torch.optim.SGD,
            {"momentum": 0.9},
            {"lr": NON_ADAPTIVE_LR},
        ),
        OptimizerSpec("adagrad", "Adagrad (torch.optim.Adagrad)", torch.optim.Adagrad, {}, {"lr": NON_ADAPTIVE_LR}),
        OptimizerSpec(
            "adadelta", "Adadelta (torch.optim.Adadelta)", torch.optim.Adadelta, {}, {"lr": LogUniform(1e-3, 10.0)}
        ),
        OptimizerSpec("rmsprop", "RMSprop (torch.optim.RMSprop)", torch.optim.RMSprop),
        OptimizerSpec("amsgrad", "Adam with amsgrad=True (torch.optim.Adam)", torch.optim.Adam, {"amsgrad": True}),
        OptimizerSpec("adam", "Adam (torch.optim.Adam)", torch.optim.Adam),
        OptimizerSpec("adamw", "AdamW, weight decay 1e-2 (torch.optim.AdamW)", torch.optim.AdamW),
        OptimizerSpec(
            "adam-half-lr",
            "control: Adam at half the given lr, what the published diffGrad code runs (docs/paper.md §7); "
            "identical to adam once lr is tuned",
            torch.optim.Adam,
            lr_scale=0.5,
        ),
        OptimizerSpec("adabelief", "AdaBelief (pytorch_optimizer)", f"{peers}:AdaBelief", requires=peers),
        OptimizerSpec("adan", "Adan (pytorch_optimizer)", f"{peers}:Adan", requires=peers),
        OptimizerSpec("adamp", "AdamP (pytorch_optimizer)", f"{peers}:AdamP", requires=peers),
        OptimizerSpec(
            "lion",
            "Lion, sign updates (pytorch_optimizer)",
            f"{peers}:Lion",
            search_space={"lr": LogUniform(1e-6, 1e-2)},
            requires=peers,
        ),
        OptimizerSpec("radam", "RAdam, rectified Adam (pytorch_optimizer)", f"{peers}:RAdam", requires=peers),
    ]


OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in _specs()}


def list_optimizers(*, include_unavailable: bool = False) -> list[OptimizerSpec]:
    """The registered optimizers, in registry order; by default only those whose package is
    installed (see :func:`unavailable_note` for the others)."""
    return [spec for spec in OPTIMIZERS.values() if include_unavailable or spec.available]


def unavailable_note() -> str | None:
    """A line naming the optimizers whose extra package is missing, or None if all are usable."""
    missing = [spec for spec in OPTIMIZERS.values() if not spec.available]
    if not missing:
        return None
    packages = sorted({spec.requires for spec in missing if spec.requires})
    names = ", ".join(spec.name for spec in missing)
    return f"{names} need {', '.join(packages)}: {LAB_EXTRA}"


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The spec called ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in OPTIMIZERS:
        valid = ", ".join(spec.name for spec in list_optimizers())
        raise ValueError(f"unknown optimizer {name!r}; valid names: {valid}")
    return OPTIMIZERS[name]


def create_optimizer(name: str, params: Iterable[Any], **hparams: Any) -> Optimizer:
    """Build optimizer ``name`` on ``params`` with its defaults overridden by ``hparams``."""
    return get_optimizer_spec(name).factory(params, **hparams)
