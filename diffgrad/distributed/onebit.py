"""1-bit diffGrad (and 1-bit Adam, its control with the friction off) for data-parallel training.

After 1-bit Adam (Tang et al., "1-bit Adam: Communication Efficient Large-Scale Training with
Adam's Convergence Speed", ICML 2021): exact steps for a warm-up, then the second moment is frozen
and only the momentum crosses the wire, compressed to one bit per element with error feedback
(:func:`~diffgrad.distributed.compression.compressed_all_reduce`). For every parameter θ, with
ḡ the gradient averaged over the n ranks and g^i rank i's own gradient (diffGrad paper, Eq. 11–20)::

    warm-up, t ≤ T (T = freeze_step), exact diffGrad on ḡ_t (full-precision all-reduce):
        m_t = β1·m_{t−1} + (1 − β1)·ḡ_t                          Eq. 11
        v_t = β2·v_{t−1} + (1 − β2)·ḡ_t²                         Eq. 12
        ξ_t = friction(ḡ_{t−1} − ḡ_t)                            Eq. 17–19
        θ_t = θ_{t−1} − α·ξ_t·m̂_t/(sqrt(v̂_t) + ε)               Eq. 13, 20

    compressed, t > T: v stays v_T (and v̂ = v_T/(1 − β2^T)):
        m^i_t = β1·m̄_{t−1} + (1 − β1)·g^i_t                      Eq. 11, local
        m̄_t  = 1-bit average of the m^i_t                        1-bit Adam, Alg. 1
        ξ_t   : see below
        θ_t = θ_{t−1} − α·ξ_t·m̄_t/((1 − β1^t)·(sqrt(v̂_T) + ε))   Eq. 13, 20

Where ξ comes from after the freeze (``xi_source``): no rank sees ḡ_t any more, only the
synchronised momenta. The two readings:

* ``"momentum"``: the averaged gradient implied by two consecutive synchronised momenta,
  ḡ_t = (m̄_t − β1·m̄_{t−1})/(1 − β1) (Eq. 11 solved for g), so ξ_t = friction(ḡ_{t−1} − ḡ_t) as
  in Eq. 17–19. This ḡ_t carries the compression error of m̄_t, amplified by 1/(1 − β1).
* ``"frozen"``: ξ_T, the friction of the last warm-up step, kept like v.

``friction=None`` turns the friction off (ξ ≡ 1): that is 1-bit Adam, with exact Adam as warm-up.

Two ways to use it. Without DDP, the optimizer averages the gradients itself during the warm-up
(one all-reduce per step) and uses each rank's own gradient after it. With DDP, call
:meth:`OneBitDiffGrad.register_ddp`: DDP's communication hook then averages gradients during the
warm-up and stops communicating at the freeze (the optimizer does the rest). Parameters, m and v are
bit-identical on every rank; the error buffers are per rank, so each rank saves and loads its
own ``state_dict()``.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast, overload

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import Optimizer, ParamsT

from diffgrad.distributed.compression import (
    ChunkLayout,
    WireCounter,
    check_all_to_all,
    compressed_all_reduce,
    error_buffers,
)
from diffgrad.optim.diffgrad import check_adam_options
from diffgrad.optim.friction import Friction, check_friction_slope, friction_, resolve_friction
from diffgrad.optim.functional import denominator, diffgrad
from diffgrad.optim.state import StateBuffer

__all__ = ["NO_FRICTION", "XI_SOURCES", "OneBitDiffGrad", "onebit_comm_hook"]

XI_SOURCES = ("momentum", "frozen")

# ξ = 0·sigmoid(·) + 1 = 1 exactly: the friction of Adam, written as a row of the same equation.
NO_FRICTION = Friction("none", scale=0.0, shift=1.0, range="{1}")


class _Group(NamedTuple):
    """A parameter group's tensors, one list each, in the order of :func:`_onebit_diffgrad`."""

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    previous_grads: list[Tensor]
    worker_errors: list[Tensor]
    server_errors: list[Tensor]
    frozen_frictions: list[Tensor]
    state_steps: list[Tensor]


class OneBitDiffGrad(Optimizer):
    r"""1-bit diffGrad: exact diffGrad for ``freeze_step`` steps, then frozen v and a 1-bit,
    error-compensated momentum all-reduce (module docstring for the equations).

    Args:
        params: parameters or parameter groups; every one needs a gradient at every step, on every
            rank, and all ranks must list the same parameters in the same order.
        lr: step size α.
        betas: (β1, β2).
        eps: ε, added to sqrt(v̂) as in Eq. 20.
        weight_decay: λ, coupled (g ← g + λθ, as in :class:`~diffgrad.optim.DiffGrad`).
        freeze_step: T ≥ 1, the number of exact warm-up steps; v is frozen after step T.
        friction: a friction of :mod:`diffgrad.optim.friction` (default ``"dfc"``, Eq. 19), or
            ``None`` for ξ ≡ 1 (1-bit Adam).
        xi_source: where ξ comes from after the freeze: ``"momentum"`` or ``"frozen"``.
        maximize: maximise the objective (the gradient's sign is flipped first), as in
            :class:`~diffgrad.optim.DiffGrad`.
        friction_slope: the friction's slope in place of the variant's own (κ of ``"dfc-rms"``),
            as in :class:`~diffgrad.optim.DiffGrad`; ``None`` keeps the variant's.
        group: the process group (default: the world).

    Constructing it is collective: every rank checks, with one byte per rank, that the backend has
    ``all_to_all``. ``counter`` (a :class:`~diffgrad.distributed.compression.WireCounter`) counts
    the bytes this rank sends, the DDP hook's included.

    State per parameter: ``step``, ``exp_avg`` (m̄), ``exp_avg_sq`` (v, frozen after T),
    ``previous_grad`` (ḡ_{t−1}), ``worker_error`` (δ, padded to a multiple of 8·n),
    ``server_error`` (ε, 1/n of that) and, with ``xi_source="frozen"``, ``frozen_friction`` (ξ_T).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        freeze_step: int,
        friction: str | Friction | None = "dfc",
        xi_source: str = "momentum",
        maximize: bool = False,
        friction_slope: float | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        check_adam_options(lr, betas, eps, weight_decay)
        if isinstance(freeze_step, bool) or not isinstance(freeze_step, int) or freeze_step < 1:
            raise ValueError(f"Invalid freeze_step: {freeze_step!r}; expected an integer >= 1 (warm-up steps)")
        if xi_source not in XI_SOURCES:
            raise ValueError(f"Invalid xi_source: {xi_source!r}; expected one of {XI_SOURCES}")
        if not isinstance(maximize, bool):
            raise ValueError(f"Invalid maximize: {maximize!r} (must be a bool)")
        if friction is None:
            if friction_slope is not None:
                raise ValueError(f"Invalid friction_slope: {friction_slope!r} (friction=None has no slope)")
            friction = NO_FRICTION
        else:
            friction = resolve_friction(friction)
            check_friction_slope(friction, friction_slope)
            friction = resolve_friction(friction, friction_slope)
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("OneBitDiffGrad needs an initialised torch.distributed process group")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            freeze_step=freeze_step,
            friction=friction,
            xi_source=xi_source,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.counter = WireCounter()
        self._ddp_averages = False
        self._layouts: dict[int, ChunkLayout] = {}
        check_all_to_all(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # A state dict saved before an option existed loads with that option's default.
        for group in self.param_groups:
            for name, value in self.defaults.items():
                group.setdefault(name, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # One freeze for every group: the DDP hook stops averaging all gradients at once.
        freeze_step = self.param_groups[-1]["freeze_step"]
        if freeze_step != self.param_groups[0]["freeze_step"]:
            self.param_groups.pop()
            raise ValueError(
                f"Invalid freeze_step: {freeze_step!r}; every parameter group must freeze at the same step "
                f"({self.param_groups[0]['freeze_step']})"
            )

    @property
    def compressing(self) -> bool:
        """Whether the next step is a compressed one (the warm-up is over)."""
        group = self.param_groups[0]
        state = self.state.get(group["params"][0], {})
        return bool(state) and int(state["step"]) >= group["freeze_step"]

    def register_ddp(self, model: DistributedDataParallel) -> None:
        """Let ``model``'s gradient all-reduce be :func:`onebit_comm_hook`: averaged gradients
        during the warm-up, none after it. The optimizer then never averages gradients itself."""
        model.register_comm_hook(self, onebit_comm_hook)
        self._ddp_averages = True

    def _init_group(self, group: dict[str, Any]) -> _Group:
        lists = _Group([], [], [], [], [], [], [], [], [])
        for p in group["params"]:
            if p.grad is None:
                raise RuntimeError(
                    "OneBitDiffGrad: every parameter needs a gradient at every step on every rank "
                    "(the ranks exchange all of them); found one with .grad None"
                )
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for key in ("exp_avg", "exp_avg_sq", "previous_grad"):
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                (worker,), (server,) = error_buffers([p], self.world_size)
                state["worker_error"], state["server_error"] = worker, server
            lists.params.append(p)
            lists.grads.append(p.grad)
            lists.state_steps.append(state["step"])
            for key in ("exp_avg", "exp_avg_sq", "previous_grad", "worker_error", "server_error"):
                getattr(lists, key + "s").append(state[key])
            if "frozen_friction" in state:
                lists.frozen_frictions.append(state["frozen_friction"])
        return lists

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step on every rank together (collective); ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        compressing = self.compressing
        for index, group in enumerate(self.param_groups):
            lists = self._init_group(group)
            beta1, beta2 = group["betas"]
            hyper: dict[str, Any] = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                         weight_decay=group["weight_decay"], friction=group["friction"],
                                         maximize=group["maximize"])  # fmt: skip
            if not compressing:
                if not self._ddp_averages:
                    self._average(lists.grads)
                freezing = group["xi_source"] == "frozen" and int(lists.state_steps[0]) + 1 == group["freeze_step"]
                if freezing:
                    grads = _effective_grads(lists.grads, lists.params, hyper["weight_decay"], hyper["maximize"])
                    deltas = [prev.sub(g) for prev, g in zip(lists.previous_grads, grads)]
                _warmup_diffgrad(lists, hyper)
                if freezing:
                    self._freeze_friction(lists, hyper, deltas, grads)
                continue
            if index not in self._layouts:
                self._layouts[index] = ChunkLayout([p.numel() for p in lists.params], self.world_size)
            _onebit_diffgrad(
                *lists,
                **hyper,
                freeze_step=group["freeze_step"],
                xi_source=group["xi_source"],
                communicate=functools.partial(
                    compressed_all_reduce, group=self.group, counter=self.counter, layout=self._layouts[index]
                ),
            )
        return loss

    def _average(self, grads: list[Tensor]) -> None:
        """ḡ = Σ_i (g^i / n) in full precision, one all-reduce (the division first, as DDP does)."""
        flat = torch.cat([g.reshape(-1) for g in grads]).div_(self.world_size)
        self.counter.record("all_reduce", flat, self.world_size)
        dist.all_reduce(flat, group=self.group)
        for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(chunk.view_as(g))

    def _freeze_friction(self, lists: _Group, hyper: dict[str, Any], deltas: list[Tensor], grads: list[Tensor]) -> None:
        """Keep ξ_T of the last warm-up step (``xi_source="frozen"``): from Δg_T = ḡ_{T−1} − ḡ_T
        (``deltas``, taken before the step) and, for a friction relative to the step's
        denominator, sqrt(v̂_T) + ε after it."""
        step = int(lists.state_steps[0])
        denoms = [denominator(v, step, hyper["beta2"], hyper["eps"]) for v in lists.exp_avg_sqs]
        for p, xi in zip(lists.params, friction_(hyper["friction"], deltas, grads, denoms=denoms)):  # Eq. 17–19
            self.state[p]["frozen_friction"] = xi


def onebit_comm_hook(optimizer: OneBitDiffGrad, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook of :meth:`OneBitDiffGrad.register_ddp`: DDP's own averaging
    (g/n, then a full-precision all-reduce) while the optimizer warms up, and no communication once it
    compresses (the bucket keeps this rank's gradient; the momentum is exchanged instead)."""
    if optimizer.compressing:
        future: torch.futures.Future[Tensor] = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future
    optimizer.counter.record("all_reduce", bucket.buffer(), optimizer.world_size)
    return default_hooks.allreduce_hook(cast("dist.ProcessGroup", optimizer.group), bucket)


def _effective_grads(grads: list[Tensor], params: list[Tensor], weight_decay: float, maximize: bool) -> list[Tensor]:
    """g_t as the step uses it: negated to maximise, then with coupled weight decay, g + λθ (new
    tensors only where they differ from the gradients)."""
    if maximize:
        grads = [g.neg() for g in grads]
    return grads if weight_decay == 0 else [g.add(p, alpha=weight_decay) for g, p in zip(grads, params)]


def _warmup_diffgrad(lists: _Group, hyper: dict[str, Any]) -> None:
    """Exact diffGrad on the averaged gradients: the reference per-tensor path of
    :func:`diffgrad.optim.functional.diffgrad` (the same arithmetic as ``DiffGrad(foreach=False)``)."""
    diffgrad(
        lists.params,
        lists.grads,
        list[StateBuffer](lists.exp_avgs),
        list[StateBuffer](lists.exp_avg_sqs),
        list[StateBuffer](lists.previous_grads),
        [],
        lists.state_steps,
        foreach=False,
        decoupled_weight_decay=False,
        amsgrad=False,
        **hyper,
    )


def _onebit_diffgrad(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    previous_grads: list[Tensor],
    worker_errors: list[Tensor],
    server_errors: list[Tensor],
    frozen_frictions: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    friction: Friction,
    maximize: bool,
    freeze_step: int,
    xi_source: str,
    communicate: Callable[..., None],
) -> None:
    """One compressed step (t > T) over a parameter group, in the order of the module docstring."""
    grads = _effective_grads(grads, params, weight_decay, maximize)
    with_friction = friction != NO_FRICTION
    implied = xi_source == "momentum" and with_friction
    # β1·m̄_{t−1}, kept to recover ḡ_t from the synchronised momenta.
    scaled_previous = [m.mul(beta1) for m in exp_avgs] if implied else []
    for exp_avg, grad, step_t in zip(exp_avgs, grads, state_steps):
        step_t += 1
        exp_avg.lerp_(grad, 1 - beta1)  # Eq. 11, this rank's m^i_t
    communicate(exp_avgs, worker_errors, server_errors)  # m̄_t (1-bit Adam, Alg. 1)

    for i, (param, exp_avg, exp_avg_sq, step_t) in enumerate(zip(params, exp_avgs, exp_avg_sqs, state_steps)):
        denom = denominator(exp_avg_sq, freeze_step, beta2, eps)  # v̂ stays v_T/(1 − β2^T)
        update = exp_avg.clone()
        if implied:
            average_grad = scaled_previous[i].sub_(exp_avg).div_(beta1 - 1)  # ḡ_t = (m̄_t − β1·m̄_{t−1})/(1 − β1)
            deltas = [previous_grads[i].sub(average_grad)]
            (xi,) = friction_(friction, deltas, [average_grad], denoms=[denom])  # Eq. 17–19
            previous_grads[i].copy_(average_grad)
            update.mul_(xi)
        elif with_friction:
            update.mul_(frozen_frictions[i])
        bias_correction1 = 1 - beta1 ** step_t.item()  # Eq. 13
        param.sub_(update.div_(denom).mul_(lr / bias_correction1))  # Eq. 20
