"""The model, data, option sets and training loops shared by the parent test process and the ranks.

Everything is float64 and seeded, so a 2-rank run and a 1-process run on the concatenated batch
differ by reduction round-off only. Functions whose name ends in ``_task`` run inside the worker
ranks (see :mod:`dist_launcher`); the others run anywhere.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from diffgrad import DiffGrad

# -- what is tested ---------------------------------------------------------------------------


def implementations() -> dict[str, dict[str, Any]]:
    """Every implementation of the step; ``fused`` joins as soon as DiffGrad accepts it."""
    impls: dict[str, dict[str, Any]] = {"per_tensor": {"foreach": False}, "foreach": {"foreach": True}}
    if "fused" in inspect.signature(DiffGrad).parameters:
        impls["fused"] = {"fused": True}
    return impls


IMPLEMENTATIONS = implementations()

OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "coupled_wd": {"weight_decay": 0.1},
    "decoupled_wd": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True},
    **{f: {"friction": f} for f in ("dfc1", "dfc2", "dfc3", "dfc4", "dfc5")},
    "dfc3_wd_amsgrad_maximize": {"friction": "dfc3", "weight_decay": 0.05, "amsgrad": True, "maximize": True},
    # Every diffGrad-family modifier: AdaNorm's ‖g‖ and the cautious mask's count are whole-tensor
    # reductions, AdaInject keeps θ_{t−1} sharded like θ, AdaNorm's e_t is a plain scalar.
    "family": {
        "rectify": True,
        "adanorm": True,
        "adainject": True,
        "cautious": True,
        "centralize": True,
        "amsgrad": True,
        "weight_decay": 0.05,
    },
}

# The fused step compiles one graph per option set and tensor layout (seconds each on 2 CPU
# cores), so the distributed tests run it with the plain options and with the set that exercises
# the most at once (DFC3's statistics, coupled decay, AMSGrad, maximize); its arithmetic is the
# per-tensor path's ``_update_``. DIFFGRAD_TEST_FUSED_OPTIONS=all gives it every option set.
FUSED_OPTION_SETS = ["plain", "dfc3_wd_amsgrad_maximize", "family"]
if os.environ.get("DIFFGRAD_TEST_FUSED_OPTIONS") == "all":
    FUSED_OPTION_SETS = list(OPTION_SETS)


def option_sets_for(impl: str) -> list[str]:
    return FUSED_OPTION_SETS if impl == "fused" else list(OPTION_SETS)


# The FSDP2 runs of these option sets use the wide model (see make_model), for fewer steps:
# it is slower, so not all.
WIDE_OPTION_SETS = ("plain", "dfc3_wd_amsgrad_maximize")
WIDE_STEPS = 4


def fsdp_setup(options: str) -> tuple[bool, int]:
    """(wide, steps) of the FSDP2 run of ``options``."""
    wide = options in WIDE_OPTION_SETS
    return wide, WIDE_STEPS if wide else STEPS


def timeout_for(impl: str) -> float:
    """Seconds a pool task of ``impl`` may take: compiling is slow on a cold cache."""
    return 400.0 if impl == "fused" else 90.0


HP = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8}
STEPS = 12
BATCH = 8  # the global batch; with 2 ranks each sees 4 rows
IN_FEATURES = 3


# An odd width (uneven dim-0 shards over 2 ranks) whose layers hold a few hundred thousand
# elements: the fused kernel splits them over its threads.
WIDE = 87383


def make_model(wide: bool = False) -> nn.Module:
    """Weights of 5×3, 3×5 and 1×3 and biases of 5, 3 and 1 elements: over 2 ranks every dim-0
    shard is uneven (3+2, 2+1), and the last layer's shards are 1 row and an empty one. ``wide``
    adds, in the middle, weights of W×3 (W odd: uneven shards) and 4×W (even shards, 2 rows
    each) elements, and a 3×4 one."""
    torch.manual_seed(0)
    w = WIDE
    middle = [nn.Linear(3, w), nn.Tanh(), nn.Linear(w, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh()] if wide else []
    return nn.Sequential(
        nn.Linear(IN_FEATURES, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), *middle, nn.Linear(3, 1)
    ).double()


def batches(steps: int = STEPS, batch: int = BATCH) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [
        (
            torch.randn(batch, IN_FEATURES, generator=g, dtype=torch.float64),
            torch.randn(batch, 1, generator=g, dtype=torch.float64),
        )
        for _ in range(steps)
    ]


def local_rows(x: Tensor, rank: int, world_size: int) -> Tensor:
    per_rank = x.shape[0] // world_size
    return x[rank * per_rank : (rank + 1) * per_rank]


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    # A mean over the rows: DDP and FSDP average gradients over ranks, so the mean of the rank
    # means is the mean over the concatenated batch.
    return ((model(x) - y) ** 2).mean()


def make_optimizer(params: Iterable[Tensor], impl: str, options: str) -> DiffGrad:
    return DiffGrad(params, **HP, **IMPLEMENTATIONS[impl], **OPTION_SETS[options])


def train(
    model: nn.Module, opt: Optimizer, data: list[tuple[Tensor, Tensor]], rank: int = 0, world_size: int = 1
) -> None:
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, local_rows(x, rank, world_size), local_rows(y, rank, world_size)).backward()
        opt.step()


def full(t: Any) -> Any:
    """The whole tensor behind a DTensor (an all-gather: call it on every rank), else ``t``."""
    if not dist.is_available():
        return t
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def snapshot(model: nn.Module, opt: Optimizer) -> dict[str, Any]:
    """Whole parameters and every optimizer state tensor, keyed by parameter name."""
    names = {p: name for name, p in model.named_parameters()}
    return {
        "params": {name: full(p.detach()).clone() for name, p in model.named_parameters()},
        "state": {
            names[p]: {key: full(value).clone() if torch.is_tensor(value) else value for key, value in st.items()}
            for p, st in opt.state.items()
        },
    }


def single_process_run(
    impl: str,
    options: str,
    steps: int = STEPS,
    optimizer: Callable | None = None,
    wide: bool = False,
    state_dict_first: bool = False,
) -> dict[str, Any]:
    """The reference: one process, the whole (concatenated) batch, plain tensors. With
    ``state_dict_first``, ``get_state_dict`` comes first (its step on zero gradients included)."""
    model = make_model(wide)
    opt = optimizer(model.parameters()) if optimizer else make_optimizer(model.parameters(), impl, options)
    if state_dict_first:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        get_state_dict(model, opt)
    train(model, opt, batches(steps))
    return snapshot(model, opt)


@functools.cache
def reference_run(
    impl: str, options: str, wide: bool = False, steps: int = STEPS, state_dict_first: bool = False
) -> dict[str, Any]:
    """:func:`single_process_run`, once per test session. The fused implementation's reference
    is the per-tensor one: that keeps ``torch.compile`` out of the test process, and the two agree
    to round-off (``tests/optim``)."""
    impl = "per_tensor" if impl == "fused" else impl
    return single_process_run(impl, options, steps, wide=wide, state_dict_first=state_dict_first)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run one case; an exception becomes its result (a string), so the other cases still run.

    Only for failures that happen on every rank alike (an unsupported operation in the step);
    a failure on one rank only would leave the others in a collective until the pool's timeout.
    """
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - DCP's CheckpointException derives from BaseException
        return "error:\n" + traceback.format_exc()


def unwrap(result: Any, what: str) -> Any:
    """A case's result from the ranks; a string is the traceback of its failure."""
    import pytest

    if isinstance(result, str):
        pytest.fail(f"{what} raised:\n{result}")
    return result


# -- comparing runs -----------------------------------------------------------------------------

# The largest absolute difference seen per kind of comparison, with its tolerance; conftest.py
# prints the table at the end of the session.
MAX_DIFFS: dict[str, tuple[float, float, float]] = {}


def assert_same_run(actual: dict[str, Any], expected: dict[str, Any], *, kind: str, rtol: float, atol: float) -> float:
    """Whole parameters and every optimizer state tensor agree; returns the largest abs difference."""
    worst = 0.0
    assert actual["params"].keys() == expected["params"].keys()
    pairs = [(name, actual["params"][name], want) for name, want in expected["params"].items()]
    assert actual["state"].keys() == expected["state"].keys()
    for name, state in expected["state"].items():
        assert actual["state"][name].keys() == state.keys(), (name, actual["state"][name].keys(), state.keys())
        pairs += [(f"{name}.{key}", actual["state"][name][key], want) for key, want in state.items()]
    for what, got, want in pairs:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")  # noqa: B023 (called at once)
        if torch.is_tensor(want) and want.is_floating_point() and want.numel():
            worst = max(worst, (got - want).abs().max().item())
    record_diff(kind, worst, rtol, atol)
    return worst


def record_diff(kind: str, worst: float, rtol: float, atol: float) -> None:
    previous = MAX_DIFFS.get(kind, (0.0, rtol, atol))[0]
    MAX_DIFFS[kind] = (max(previous, worst), rtol, atol)


# -- the published code's aliasing bug, as a control (docs/paper.md §2) --------------------------


class PublishedAliasingDiffGrad(Optimizer):
    """The published ``diffGrad.py`` step, modernised, keeping its bug: ``previous_grad`` is an
    alias of ``.grad``. Used only to show that the DDP bucket-view test would catch that bug."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["previous_grad"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                dfc = torch.sigmoid((state["previous_grad"] - grad).abs())
                state["previous_grad"] = grad  # the bug: a reference, not a copy
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(exp_avg * dfc, denom, value=-step_size)


def published_optimizer(params: Iterable[Tensor]) -> Optimizer:
    return PublishedAliasingDiffGrad(params, **HP)


# -- DDP ----------------------------------------------------------------------------------------


def _ddp_case(impl: str, options: str, bucket_view: bool, published: bool) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = DDP(make_model(), gradient_as_bucket_view=bucket_view)
    opt = published_optimizer(model.parameters()) if published else make_optimizer(model.parameters(), impl, options)
    params = list(model.parameters())
    reused = 0  # steps whose gradients landed in the storage of the previous step's gradients
    before: list[int] = []
    aliased = False
    for x, y in batches():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, local_rows(x, rank, world_size), local_rows(y, rank, world_size)).backward()
        now = [p.grad.untyped_storage().data_ptr() for p in params]
        reused += now == before
        before = now
        opt.step()
        if not published:
            aliased |= any(
                opt.state[p]["previous_grad"].untyped_storage().data_ptr() == p.grad.untyped_storage().data_ptr()
                for p in params
            )
    out = snapshot(model.module, opt)
    # With bucket views every .grad lives in DDP's flat bucket, step after step (DDP rebuilds its
    # buckets once, after the first step).
    out["steps_reusing_grad_storage"] = reused
    out["previous_grad_aliases_grad"] = aliased
    return out


def ddp_task(cases: list[tuple[str, str, bool]], published_cases: list[bool]) -> dict[Any, Any]:
    results: dict[Any, Any] = {}
    for impl, options, bucket_view in cases:
        results[(impl, options, bucket_view)] = guarded(lambda: _ddp_case(impl, options, bucket_view, False))  # noqa: B023 (called at once)
    for bucket_view in published_cases:
        results[("published", bucket_view)] = guarded(lambda: _ddp_case("", "", bucket_view, True))  # noqa: B023 (called at once)
    return results


# -- FSDP2 --------------------------------------------------------------------------------------


def shard_model(model: nn.Module, mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    # One FSDP unit (one all-gather and one reduce-scatter per step keep the test fast); FSDP2
    # shards every parameter on its dim 0 all the same, so the shards are uneven as planned.
    fully_shard(model, mesh=mesh)
    return model


def _fsdp_case(impl: str, options: str) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    rank, world_size = dist.get_rank(), dist.get_world_size()
    wide, steps = fsdp_setup(options)
    model = shard_model(make_model(wide), init_device_mesh("cpu", (world_size,)))
    opt = make_optimizer(model.parameters(), impl, options)
    train(model, opt, batches(steps), rank, world_size)
    out = snapshot(model, opt)
    out["local_shapes"] = {name: tuple(p.to_local().shape) for name, p in model.named_parameters()}
    # ``step`` and AdaNorm's ``exp_grad_norm`` are scalars, the same on every rank: plain tensors.
    out["state_is_dtensor"] = all(
        type(v).__name__ == "DTensor"
        for st in opt.state.values()
        for k, v in st.items()
        if k not in ("step", "exp_grad_norm")
    )
    return out


def fsdp_task(cases: list[tuple[str, str]]) -> dict[Any, Any]:
    return {(impl, options): guarded(lambda: _fsdp_case(impl, options)) for impl, options in cases}  # noqa: B023 (called at once)


# How friction_on_shards_task computes: with torch's operations, and with the stand-ins of
# diffgrad.optim.compat that older torch versions take.
FRICTION_MODES = ("torch", "stand-in")


def friction_on_shards_task(shapes: list[tuple[int, ...]], names: list[str]) -> dict[Any, Any]:
    """ξ and (μ, ν) computed on dim-0 shards (DTensor), gathered whole, for the parent to compare:
    under ``"torch"`` with the torch operations this torch version allows, under ``"stand-in"``
    with :mod:`diffgrad.optim.compat`'s stand-ins for older versions forced on."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from diffgrad.optim import compat

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    grads, prevs = friction_inputs(shapes)
    dgrads = [distribute_tensor(g, mesh, [Shard(0)]) for g in grads]
    out: dict[Any, Any] = {"local_shapes": [tuple(g.to_local().shape) for g in dgrads]}
    for mode in FRICTION_MODES:
        decomposes = compat._DTENSOR_DECOMPOSES and mode == "torch"
        with mock.patch.object(compat, "_DTENSOR_DECOMPOSES", decomposes):
            out[mode] = _frictions_on_shards(mesh, names, grads, prevs, dgrads)
    return out


def _frictions_on_shards(
    mesh: Any, names: list[str], grads: list[Tensor], prevs: list[Tensor], dgrads: list[Tensor]
) -> dict[Any, Any]:
    from torch.distributed.tensor import Shard, distribute_tensor

    from diffgrad.optim.friction import abs_grad_stats, friction_, get_friction

    results: dict[Any, Any] = {}
    results["stats"] = guarded(lambda: [tuple(full(s).item() for s in abs_grad_stats(g)) for g in dgrads])
    for name in names:
        friction = get_friction(name)

        def per_tensor() -> list[Tensor]:
            return [
                full(friction_(friction, [distribute_tensor(p - g, mesh, [Shard(0)])], [dg])[0])  # noqa: B023 (called at once)
                for p, g, dg in zip(prevs, grads, dgrads)
            ]

        def foreach() -> list[Tensor]:
            deltas = [distribute_tensor(p - g, mesh, [Shard(0)]) for p, g in zip(prevs, grads)]
            return [full(xi) for xi in friction_(friction, deltas, dgrads)]  # noqa: B023 (called at once)

        results[(name, "per_tensor")] = guarded(per_tensor)
        results[(name, "foreach")] = guarded(foreach)
    return results


def friction_inputs(shapes: list[tuple[int, ...]]) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(s, generator=g, dtype=torch.float64) * (i + 1) for i, s in enumerate(shapes)]
    prevs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return grads, prevs


# -- distributed checkpoint ----------------------------------------------------------------------


def checkpoint_state(model: nn.Module, opt: Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd}


def load_checkpoint(model: nn.Module, opt: Optimizer, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = checkpoint_state(model, opt)
    dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _fsdp_model_and_opt(impl: str, options: str) -> tuple[nn.Module, Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh

    model = shard_model(make_model(), init_device_mesh("cpu", (dist.get_world_size(),)))
    return model, make_optimizer(model.parameters(), impl, options)


def _dcp_save_case(impl: str, options: str, path: str, save_at: int, steps: int) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    rank, world_size = dist.get_rank(), dist.get_world_size()
    model, opt = _fsdp_model_and_opt(impl, options)
    data = batches(steps)
    train(model, opt, data[:save_at], rank, world_size)
    at_save = snapshot(model, opt)
    dcp.save(checkpoint_state(model, opt), checkpoint_id=path)
    train(model, opt, data[save_at:], rank, world_size)
    return {"at_save": at_save, "final": snapshot(model, opt)}


def _dcp_resume_case(impl: str, options: str, path: str, save_at: int, steps: int) -> dict[str, Any]:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model, opt = _fsdp_model_and_opt(impl, options)
    load_checkpoint(model, opt, path)
    loaded = snapshot(model, opt)
    train(model, opt, batches(steps)[save_at:], rank, world_size)
    return {"loaded": loaded, "final": snapshot(model, opt)}


def dcp_save_task(cases: list[tuple[str, str, str]], save_at: int, steps: int) -> dict[Any, Any]:
    """FSDP2 on every rank, per (impl, options, path): train ``save_at`` steps, save the model and
    optimizer with DCP, train on to ``steps`` (the uninterrupted run)."""
    return {
        (impl, options): guarded(lambda: _dcp_save_case(impl, options, path, save_at, steps))  # noqa: B023 (called at once)
        for impl, options, path in cases
    }


def dcp_resume_task(cases: list[tuple[str, str, str]], save_at: int, steps: int) -> dict[Any, Any]:
    """FSDP2 on every rank, per (impl, options, path): a fresh model and optimizer load the
    checkpoint at ``path`` and train on to ``steps``."""
    return {
        (impl, options): guarded(lambda: _dcp_resume_case(impl, options, path, save_at, steps))  # noqa: B023 (called at once)
        for impl, options, path in cases
    }


def single_process_checkpoint_run(
    impl: str, options: str, path: str, save_at: int, steps: int, mode: str
) -> dict[str, Any]:
    """No process group at all, plain tensors: ``mode`` "save" trains ``save_at`` steps, saves with
    DCP and trains on to ``steps``; "resume" loads ``path`` into a fresh model and trains on."""
    import torch.distributed.checkpoint as dcp

    model = make_model()
    opt = make_optimizer(model.parameters(), impl, options)
    data = batches(steps)
    if mode == "save":
        train(model, opt, data[:save_at])
        at_save = snapshot(model, opt)
        dcp.save(checkpoint_state(model, opt), checkpoint_id=path, no_dist=True)
        train(model, opt, data[save_at:])
        return {"at_save": at_save, "final": snapshot(model, opt)}
    load_checkpoint(model, opt, path)
    loaded = snapshot(model, opt)
    train(model, opt, data[save_at:])
    return {"loaded": loaded, "final": snapshot(model, opt)}


# -- torch.compile of a whole training step --------------------------------------------------------


def _compile_case(impl: str, options: str, backend: str) -> dict[str, Any]:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    out: dict[str, Any] = {}
    for mode in ("eager", "compiled"):
        model = make_model()
        opt = make_optimizer(model.parameters(), impl, options)

        def train_step(x: Tensor, y: Tensor) -> Tensor:
            opt.zero_grad(set_to_none=True)  # noqa: B023 (called at once)
            loss = loss_fn(model, x, y)  # noqa: B023 (called at once)
            loss.backward()
            opt.step()  # noqa: B023 (called at once)
            return loss.detach()

        step = torch.compile(train_step, backend=backend) if mode == "compiled" else train_step
        losses, graphs = [], []
        for x, y in batches():
            losses.append(step(x, y).clone())
            graphs.append(counters["stats"]["unique_graphs"])
        out[mode] = {**snapshot(model, opt), "losses": torch.stack(losses)}
    out["unique_graphs_per_step"] = graphs
    out["graph_breaks"] = sorted({reason.splitlines()[0] for reason in counters["graph_break"]})
    out["recompile_limit_hit"] = any("recompile limit" in reason for reason in counters["unimplemented"])
    return out


def compile_task(cases: list[tuple[str, str]], backend: str) -> dict[Any, Any]:
    """Per (impl, options): the same run eagerly and with ``torch.compile(train_step)``, where
    ``train_step`` is zero_grad, forward, backward and ``optimizer.step()``."""
    return {(impl, options): guarded(lambda: _compile_case(impl, options, backend)) for impl, options in cases}  # noqa: B023 (called at once)


def single_process_checkpoint_task(cases: list[tuple[str, str, str]], save_at: int, steps: int, mode: str) -> dict:
    """:func:`single_process_checkpoint_run` per (impl, options, path), in a worker with no
    process group (so a compiled step is compiled there, not in the test process)."""
    return {
        (impl, options): guarded(lambda: single_process_checkpoint_run(impl, options, path, save_at, steps, mode))  # noqa: B023 (called at once)
        for impl, options, path in cases
    }


def second_job_task(impl: str, options: str, steps: int) -> dict[str, Any]:
    """Two "jobs" in a row on the same machine, each starting from ``get_state_dict`` (as every
    DCP save or resume does: with no optimizer state yet it runs one step on zero gradients).
    Between them Dynamo forgets what it compiled, so the second job's compiled step, if any, comes
    from the rank's Inductor cache folder on disk. Returns the second job's model and state after
    ``steps`` steps of training."""
    import torch._dynamo
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world_size = dist.get_rank(), dist.get_world_size()
    for _job in range(2):
        torch._dynamo.reset()
        model, opt = _fsdp_model_and_opt(impl, options)
        get_state_dict(model, opt)
    train(model, opt, batches(steps), rank, world_size)
    return snapshot(model, opt)
