"""Rank-side tasks of the 1-bit and robust aggregation tests (run by :mod:`dist_launcher`), the
plain-Python reference of the two-phase compressed all-reduce, and a 4-rank pool shared by them."""

from __future__ import annotations

import atexit
import io
import itertools
import struct
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from diffgrad import DiffGrad
from diffgrad.distributed import OneBitDiffGrad, RobustState, compressed_all_reduce, error_buffers, robust_comm_hook
from dist_cases import batches, local_rows, loss_fn, make_model
from dist_launcher import WorkerPool

_POOL: WorkerPool | None = None


def pool4() -> WorkerPool:
    """One pool of 4 ranks for every module of these tests (tasks may use fewer)."""
    global _POOL
    if _POOL is None:
        _POOL = WorkerPool(world_size=4)
        atexit.register(_POOL.close)
    return _POOL


# -- the compressed all-reduce ----------------------------------------------------------------


def compressed_task(inputs: list[list[list[Tensor]]]) -> dict[str, Any]:
    """Rank r all-reduces ``inputs[r][step]`` (a list of tensors) at every step; returns the
    results and the error buffers after each step."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    worker, server = error_buffers(inputs[rank][0], world_size)
    out: dict[str, Any] = {"results": [], "worker": [], "server": []}
    for tensors in inputs[rank]:
        tensors = [t.clone() for t in tensors]
        compressed_all_reduce(tensors, worker, server)
        out["results"].append(tensors)
        out["worker"].append([w.clone() for w in worker])
        out["server"].append([s.clone() for s in server])
    return out


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _compress(values: list[float]) -> list[float]:
    """C(u) on one chunk: mean |u| over it (rounded to float32, as sent) times sign(u), sign(0) = +1."""
    if not values:
        return []
    scale = _f32(sum(abs(v) for v in values) / len(values))
    return [scale if v >= 0 else -scale for v in values]


def reference_compressed(inputs: list[list[list[list[float]]]], world_size: int) -> dict[str, Any]:
    """The two-phase scheme in plain Python: inputs[rank][step][tensor] is a list of floats.
    Returns per rank the results and both error buffers (unpadded) after each step."""
    n = world_size
    sizes = [len(t) for t in inputs[0][0]]
    widths = [8 * -(-size // (8 * n)) for size in sizes]
    worker = [[[0.0] * size for size in sizes] for _ in range(n)]
    server = [[[0.0] * w for w in widths] for _ in range(n)]
    out: list[dict[str, Any]] = [{"results": [], "worker": [], "server": []} for _ in range(n)]
    for step in range(len(inputs[0])):
        # chunks[i][k][r]: rank i's compressed chunk r of tensor k
        chunks = []
        for i in range(n):
            per_tensor = []
            for k, (size, w) in enumerate(zip(sizes, widths)):
                u = [x + e for x, e in zip(inputs[i][step][k], worker[i][k])]
                c: list[float] = []
                for r in range(n):
                    c += _compress(u[r * w : min((r + 1) * w, size)])
                worker[i][k] = [a - b for a, b in zip(u, c)]
                per_tensor.append([c[r * w : min((r + 1) * w, size)] for r in range(n)])
            chunks.append(per_tensor)
        gathered: list[list[list[float]]] = [[[] for _ in range(n)] for _ in sizes]
        for r in range(n):
            for k in range(len(sizes)):
                length = len(chunks[0][k][r])
                s = [sum(chunks[i][k][r][j] for i in range(n)) / n + server[r][k][j] for j in range(length)]
                c = _compress(s)
                server[r][k] = [a - b for a, b in zip(s, c)] + [0.0] * (widths[k] - length)
                gathered[k][r] = c
        result = [list(itertools.chain.from_iterable(gathered[k])) for k in range(len(sizes))]
        for i in range(n):
            out[i]["results"].append(result)
            out[i]["worker"].append([list(e) for e in worker[i]])
            out[i]["server"].append([list(e) for e in server[i]])
    return {"per_rank": out}


# -- 1-bit diffGrad ---------------------------------------------------------------------------

HP = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8}


def _train(model: nn.Module, opt: Any, data: list, rank: int, world_size: int) -> list[float]:
    losses = []
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, local_rows(x, rank, world_size), local_rows(y, rank, world_size))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _onebit(model: nn.Module, ddp: bool, options: dict[str, Any]) -> tuple[nn.Module, OneBitDiffGrad]:
    if ddp:
        model = DDP(model)
    opt = OneBitDiffGrad(model.parameters(), **HP, **options)
    if ddp:
        assert isinstance(model, DDP)
        opt.register_ddp(model)
    return model, opt


def onebit_task(options: dict[str, Any], ddp: bool, steps: int, resume_at: int | None = None) -> dict[str, Any]:
    """Train the float64 test model with OneBitDiffGrad (``options``), with or without DDP. With
    ``resume_at`` the run stops there, saves model and optimizer through ``torch.save`` and goes on
    with a new model and optimizer loaded from it."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data = batches(steps)
    model, opt = _onebit(make_model(), ddp, options)
    split = steps if resume_at is None else resume_at
    _train(model, opt, data[:split], rank, world_size)
    if resume_at is not None:
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        model, opt = _onebit(make_model(), ddp, options)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        _train(model, opt, data[split:], rank, world_size)
    module = model.module if isinstance(model, DDP) else model
    return {"params": _params(module), "state": opt.state_dict()["state"], "bytes": dict(opt.counter.sent)}


def ddp_diffgrad_task(steps: int, options: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The exact control: DDP and DiffGrad's per-tensor reference path (with ``options``)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = DDP(make_model())
    _train(
        model, DiffGrad(model.parameters(), **HP, **(options or {}), foreach=False), batches(steps), rank, world_size
    )
    return _params(model.module)


def onebit_error_task(options: dict[str, Any]) -> str:
    """The message of the error OneBitDiffGrad(``options``) raises on this rank; ``options["groups"]``
    (if given) holds the settings of a second parameter group."""
    options = dict(options)
    params = list(make_model().parameters())
    second = options.pop("groups", [])
    groups = [{"params": params[:1]}, *({"params": params[1:], **g} for g in second)] if second else params
    try:
        OneBitDiffGrad(groups, **options)
    except (ValueError, RuntimeError) as error:
        return str(error)
    return "no error"


def no_all_to_all_task() -> str:
    """Build OneBitDiffGrad where the backend refuses all_to_all, with the error c10d raises for a
    backend that does not implement it (a backend cannot be defined in Python here)."""
    group = dist.new_group(backend="gloo")
    real = dist.all_to_all_single

    def refused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Backend custom does not support alltoall_base")

    dist.all_to_all_single = refused  # type: ignore[assignment]
    try:
        OneBitDiffGrad(make_model().parameters(), freeze_step=2, group=group)
    except ValueError as error:
        return str(error)
    finally:
        dist.all_to_all_single = real
    return "no error"


# -- robust aggregation -----------------------------------------------------------------------


def robust_task(settings: dict[str, Any], honest: Tensor, spread: float, steps: int) -> dict[str, Any]:
    """Each rank's gradient is ``honest`` plus its own noise of size ``spread``; DDP with the
    robust hook (``settings`` for :class:`RobustState`) returns the aggregated gradient per step and
    the honest ranks' mean (the faulty ranks' true gradients left out)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DDP(nn.Linear(honest.numel(), 1, bias=False).double())
    state = RobustState(**settings)
    model.register_comm_hook(state, robust_comm_hook)
    out: dict[str, Any] = {"aggregated": [], "honest_mean": [], "bytes": None}
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 * step)
        noise = torch.randn(world_size, honest.numel(), generator=g, dtype=torch.float64) * spread
        targets = honest.unsqueeze(0) + noise
        model.zero_grad(set_to_none=True)
        model(targets[rank].unsqueeze(0)).sum().backward()  # d/dw (w·x) = x
        honest_ranks = [r for r in range(world_size) if r not in state.faulty_ranks]
        out["aggregated"].append(model.module.weight.grad.reshape(-1).clone())
        out["honest_mean"].append(targets[honest_ranks].mean(0))
    out["bytes"] = dict(state.counter.sent)
    return out


def robust_error_task(settings: dict[str, Any]) -> str:
    try:
        RobustState(**settings)
    except ValueError as error:
        return str(error)
    return "no error"


def script_task(path: str) -> None:
    """Run the script at ``path`` as ``__main__`` (it initialises its own process group)."""
    import runpy

    runpy.run_path(path, run_name="__main__")
