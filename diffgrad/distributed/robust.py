"""Byzantine-robust gradient aggregation as a DDP communication hook, after MoNNA (Farhadkhani
et al., "Robust Collaborative Learning with Linear Gradient Overhead", ICML 2023) and nearest-
neighbour mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023).

Each of the n ranks holds a vector z_i (its gradient, or with ``momentum`` β its worker momentum
z_i = β·z_i + (1 − β)·g_i as in MoNNA); up to f of them may be faulty. Per DDP bucket::

    all_gather:  every rank gets z_1 … z_n
    NNM:         z̃_i = mean of the n − f vectors nearest to z_i (Euclidean, z_i itself included)
    aggregate:   coordinate-wise trimmed mean of the z̃_i (drop the f largest and the f smallest
                 per coordinate) or coordinate-wise median

and the bucket's gradient becomes the aggregate, identical on every rank (same gathered rows,
same arithmetic). ``"mean"`` without mixing is the non-robust control. The distances are those of
one bucket; give DDP one bucket (``bucket_cap_mb`` above the model's size) for distances over the
whole model, as in the paper. With ``momentum`` the optimizer should not add a momentum of its own
for MoNNA's setting (plain SGD); any optimizer may take the aggregate as its gradient.

Faulty ranks for tests and experiments (``attack``, ``faulty_ranks``): their rows are replaced
after the gather, identically on every rank, by an omniscient adversary who sees the honest rows
(what "a little is enough" needs):

* ``"sign_flip"``: −s·z_i;
* ``"noise"``: z_i + s·rms(z_i)·N(0, I), seeded (the same noise on every rank);
* ``"alie"``: μ − s·σ, the coordinate-wise mean and standard deviation of the honest rows
  (Baruch et al., "A Little Is Enough", NeurIPS 2019), s the attack's z.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from diffgrad.distributed.compression import WireCounter

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "RobustState",
    "aggregate",
    "attack_",
    "coordinate_median",
    "nearest_neighbour_mixing",
    "robust_comm_hook",
    "trimmed_mean",
]

AGGREGATORS = ("mean", "cwtm", "median")
ATTACKS = ("sign_flip", "noise", "alie")
DEFAULT_STRENGTH = {"sign_flip": 1.0, "noise": 1.0, "alie": 1.0}


def nearest_neighbour_mixing(vectors: Tensor, f: int) -> Tensor:
    """z̃_i = mean of the n − f rows of ``vectors`` (n × d) nearest to row i, row i included;
    ties go to the lower rank (a stable sort), so every rank picks the same neighbours."""
    n = vectors.shape[0]
    distances = torch.cdist(vectors, vectors, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.argsort(dim=1, stable=True)[:, : n - f]
    return vectors[nearest].mean(dim=1)


def trimmed_mean(vectors: Tensor, f: int) -> Tensor:
    """Coordinate-wise mean of the rows left after dropping the f largest and f smallest."""
    n = vectors.shape[0]
    return vectors.sort(dim=0).values[f : n - f].mean(dim=0)


def coordinate_median(vectors: Tensor) -> Tensor:
    """Coordinate-wise median (the mean of the two middle values when n is even)."""
    n = vectors.shape[0]
    ordered = vectors.sort(dim=0).values
    return ordered[(n - 1) // 2].add(ordered[n // 2]).div_(2)


def aggregate(vectors: Tensor, f: int, aggregator: str, mixing: bool) -> Tensor:
    """The robust aggregate of the rows of ``vectors`` (module docstring)."""
    if aggregator == "mean":
        return vectors.mean(dim=0)
    if mixing:
        vectors = nearest_neighbour_mixing(vectors, f)
    return trimmed_mean(vectors, f) if aggregator == "cwtm" else coordinate_median(vectors)


def attack_(
    vectors: Tensor, faulty_ranks: Sequence[int], attack: str, strength: float, generator: torch.Generator
) -> Tensor:
    """Replace the rows ``faulty_ranks`` of ``vectors`` by ``attack``'s (module docstring)."""
    faulty = list(faulty_ranks)
    honest = [i for i in range(vectors.shape[0]) if i not in faulty]
    if attack == "alie":
        std, mean = torch.std_mean(vectors[honest], dim=0, correction=1 if len(honest) > 1 else 0)
        vectors[faulty] = mean.sub(std, alpha=strength)
    elif attack == "sign_flip":
        vectors[faulty] = vectors[faulty].mul(-strength)
    else:
        noise = torch.randn(len(faulty), vectors.shape[1], generator=generator, dtype=vectors.dtype)
        rms = vectors[faulty].square().mean(dim=1, keepdim=True).sqrt()
        vectors[faulty] = vectors[faulty] + noise.mul_(rms * strength)
    return vectors


class RobustState:
    """Settings and per-bucket memory of :func:`robust_comm_hook`.

    Args:
        f: the number of faulty ranks tolerated; ``"cwtm"`` and ``"median"`` need n > 2f.
        aggregator: ``"cwtm"`` (default), ``"median"``, or ``"mean"`` (not robust, the control).
        mixing: nearest-neighbour mixing before the aggregator.
        momentum: β of the worker momentum (0: the gradients themselves are aggregated).
        attack: ``None`` or one of :data:`ATTACKS`, applied to the rows of ``faulty_ranks``.
        faulty_ranks: the ranks that attack.
        strength: the attack's s (default 1).
        seed: seeds the ``"noise"`` attack.
        group: the process group (default: the world).
    """

    def __init__(
        self,
        f: int,
        aggregator: str = "cwtm",
        *,
        mixing: bool = True,
        momentum: float = 0.0,
        attack: str | None = None,
        faulty_ranks: Sequence[int] = (),
        strength: float | None = None,
        seed: int = 0,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        world_size = dist.get_world_size(group)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"Invalid aggregator: {aggregator!r}; expected one of {AGGREGATORS}")
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"Invalid f: {f!r}; expected the number of faulty ranks, an integer >= 0")
        if aggregator != "mean" and world_size <= 2 * f:
            raise ValueError(
                f"Invalid f: {f} faulty of {world_size} ranks; {aggregator!r} needs more than 2f ranks "
                f"(at least {2 * f + 1})"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}; expected 0 <= momentum < 1")
        if attack is not None and attack not in ATTACKS:
            raise ValueError(f"Invalid attack: {attack!r}; expected None or one of {ATTACKS}")
        bad = [r for r in faulty_ranks if not 0 <= r < world_size]
        if bad:
            raise ValueError(f"Invalid faulty_ranks: {bad} not in 0..{world_size - 1}")
        if attack is not None and not faulty_ranks:
            raise ValueError(f"attack {attack!r} needs faulty_ranks")
        self.f, self.aggregator, self.mixing, self.momentum = f, aggregator, mixing, momentum
        self.attack, self.faulty_ranks = attack, tuple(faulty_ranks)
        self.strength = DEFAULT_STRENGTH.get(attack or "", 1.0) if strength is None else strength
        self.seed, self.group, self.world_size = seed, group, world_size
        self.counter = WireCounter()
        self.momenta: dict[int, Tensor] = {}
        self.calls: dict[int, int] = {}

    def state_dict(self) -> dict[str, Any]:
        """The worker momenta and call counts per bucket (the settings are the constructor's)."""
        return {"momenta": dict(self.momenta), "calls": dict(self.calls)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momenta = {int(k): v.clone() for k, v in state["momenta"].items()}
        self.calls = {int(k): int(v) for k, v in state["calls"].items()}


def robust_comm_hook(state: RobustState, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: the bucket's gradient becomes the robust aggregate of the ranks'
    gradients or momenta (module docstring). Register with ``model.register_comm_hook(state, robust_comm_hook)``."""
    grad = bucket.buffer()
    index = bucket.index()
    mine = grad
    if state.momentum > 0:
        momentum = state.momenta.get(index)
        if momentum is None:
            # z_1 = g_1: starting from 0 would shrink the first steps by (1 − β).
            momentum = state.momenta[index] = grad.clone()
        else:
            momentum.lerp_(grad, 1 - state.momentum)
        mine = momentum
    gathered = torch.empty(state.world_size, grad.numel(), dtype=grad.dtype, device=grad.device)
    state.counter.record("all_gather", mine, state.world_size)
    dist.all_gather(list(gathered.unbind(0)), mine.reshape(-1), group=state.group)
    calls = state.calls.get(index, 0)
    state.calls[index] = calls + 1
    if state.attack is not None:
        generator = torch.Generator().manual_seed(state.seed * 1_000_003 + index * 10_007 + calls)
        attack_(gathered, state.faulty_ranks, state.attack, state.strength, generator)
    grad.copy_(aggregate(gathered, state.f, state.aggregator, state.mixing).view_as(grad))
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(grad)
    return future
