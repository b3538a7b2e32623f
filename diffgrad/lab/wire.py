"""``diffgrad wire``: what crosses the wire in data-parallel diffGrad, measured with gloo ranks on
this machine, and a Markdown report with verdicts generated from the numbers.

Three experiments on one lab workload, each rank a process of its own (loopback gloo):

* **convergence**: exact diffGrad, 1-bit diffGrad with each reading of ξ after the freeze, 1-bit
  Adam and exact Adam (:class:`~diffgrad.distributed.OneBitDiffGrad`; the exact arms are the same
  class with no freeze within the run, i.e. a full-precision gradient all-reduce at every step),
  over seeds: final validation loss and test accuracy with 95 % CIs;
* **bytes**: what each rank sends per step, counted at the collectives
  (:class:`~diffgrad.distributed.WireCounter`), in the warm-up and in the compressed phase, and for
  the robust hook's all_gather;
* **robustness**: f of n ranks faulty (sign flip, scaled noise, "a little is enough"), DDP with the
  mean against nearest-neighbour mixing + coordinate-wise trimmed mean
  (:func:`~diffgrad.distributed.robust_comm_hook`; of the gradients, or with ``robust_momentum``
  of worker momenta as in MoNNA), diffGrad on top.

The global batch is cut into equal per-rank slices, so it must divide by the number of ranks.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffgrad.lab.claims import HELD, INCONCLUSIVE, NOT_HELD, Claim, Ranking, better_claim
from diffgrad.lab.report import format_table
from diffgrad.lab.report.stats import MeanCI, fmt_ci, mean_ci

__all__ = ["ARMS", "QUICK", "WireSettings", "run_wire"]

# name → OneBitDiffGrad options; "exact" arms never freeze within the run.
ARMS: dict[str, dict[str, Any]] = {
    "exact diffGrad": {"friction": "dfc", "exact": True},
    "1-bit diffGrad (ξ momentum)": {"friction": "dfc", "xi_source": "momentum"},
    "1-bit diffGrad (ξ frozen)": {"friction": "dfc", "xi_source": "frozen"},
    "1-bit Adam": {"friction": None},
    "exact Adam": {"friction": None, "exact": True},
}
AGGREGATION: dict[str, dict[str, Any]] = {
    "mean": {"aggregator": "mean"},
    "NNM + trimmed mean": {"aggregator": "cwtm", "mixing": True},
}


@dataclass(frozen=True)
class WireSettings:
    """Everything the experiments depend on (printed in the report)."""

    workload: str = "mnist1d-mlp"
    world_size: int = 4
    batch_size: int = 64  # global: world_size slices of batch_size/world_size rows
    steps: int = 400
    freeze_step: int = 80
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    robust_steps: int = 400
    robust_momentum: float = 0.0  # 0: the gradients are aggregated; diffGrad's own m and ξ act on the aggregate
    faulty_ranks: tuple[int, ...] = (3,)
    attacks: dict[str, float] = field(default_factory=lambda: {"sign_flip": 4.0, "noise": 10.0, "alie": 1.0})

    def check(self) -> None:
        if self.world_size < 2:
            raise ValueError(f"world_size must be at least 2, got {self.world_size}")
        if self.batch_size % self.world_size:
            raise ValueError(
                f"the global batch of {self.batch_size} does not divide into {self.world_size} equal rank slices"
            )
        if not 1 <= self.freeze_step < self.steps:
            raise ValueError(f"freeze_step must be in [1, steps={self.steps}), got {self.freeze_step}")
        if self.world_size <= 2 * len(self.faulty_ranks):
            raise ValueError(
                f"{len(self.faulty_ranks)} faulty of {self.world_size} ranks: the trimmed mean needs n > 2f"
            )


QUICK = WireSettings(steps=150, freeze_step=30, seeds=(0, 1, 2), robust_steps=100)


def run_wire(settings: WireSettings, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Run the experiments with ``settings.world_size`` gloo ranks and write ``wire.md`` in ``out_dir``."""
    settings.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = _launch(settings, progress)
    report = out / "wire.md"
    report.write_text(render(settings, results, time.perf_counter() - started), encoding="utf-8")
    (out / "wire.json").write_text(json.dumps({"settings": asdict(settings), **results}, indent=1), encoding="utf-8")
    return report


# -- the ranks --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(settings: WireSettings, progress: bool) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "results.json"
        ctx = mp.get_context("spawn")
        port = _free_port()
        procs = [
            ctx.Process(target=_rank_main, args=(rank, settings, port, str(result_path), progress))
            for rank in range(settings.world_size)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [(rank, p.exitcode) for rank, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"wire: rank(s) failed: {failed} (their tracebacks are above)")
        return dict(json.loads(result_path.read_text(encoding="utf-8")))


def _rank_main(rank: int, settings: WireSettings, port: int, result_path: str, progress: bool) -> None:
    import torch
    import torch.distributed as dist

    from diffgrad.lab.provenance import current_provenance
    from diffgrad.lab.workloads import get_workload

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=settings.world_size)
    try:
        workload = get_workload(settings.workload)
        say: Callable[[str], None] = print if progress and rank == 0 else (lambda _: None)
        convergence = []
        for seed in settings.seeds:
            for arm, options in ARMS.items():
                convergence.append({"arm": arm, "seed": seed, **_convergence_run(workload, settings, options, seed)})
                say(f"wire: {arm}, seed {seed}: {convergence[-1]['val_loss']:.4f}")
        robustness = []
        for seed in settings.seeds:
            for attack in ("none", *settings.attacks):
                for aggregation in AGGREGATION:
                    result = _robust_run(workload, settings, attack, aggregation, seed)
                    robustness.append({"attack": attack, "aggregation": aggregation, "seed": seed, **result})
                    say(f"wire: {attack}, {aggregation}, seed {seed}: {result['test_accuracy']:.4f}")
        if rank == 0:
            results = {
                "convergence": convergence,
                "robustness": robustness,
                "provenance": current_provenance("cpu").describe(),
                "parameters": sum(p.numel() for p in workload.init_model(0).parameters()),
            }
            Path(result_path).write_text(json.dumps(results), encoding="utf-8")
    finally:
        dist.destroy_process_group()


def _rank_rows(batch: Any, rank: int, world_size: int) -> Any:
    x, y = batch
    per_rank = x.shape[0] // world_size
    return x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]


def _ranks_identical(model: Any) -> bool:
    """Whether every rank holds bitwise the same parameters (an all_gather of them)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, flat) for g in gathered)


def _convergence_run(workload: Any, settings: WireSettings, options: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch.distributed as dist

    from diffgrad.distributed import OneBitDiffGrad

    rank = dist.get_rank()
    options = dict(options)
    freeze = settings.steps + 1 if options.pop("exact", False) else settings.freeze_step
    model = workload.init_model(seed)
    opt = OneBitDiffGrad(model.parameters(), lr=settings.lr, freeze_step=freeze, **options)
    batches = workload.train_batches(seed, settings.batch_size)
    started = time.perf_counter()
    warmup_bytes = 0
    for step in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        workload.loss(model, _rank_rows(next(batches), rank, settings.world_size)).backward()
        opt.step()
        if step + 1 == min(freeze, settings.steps):
            warmup_bytes = opt.counter.total
    seconds = time.perf_counter() - started
    val, test = workload.evaluate(model, "val"), workload.evaluate(model, "test")
    compressed_steps = max(settings.steps - freeze, 0)
    return {
        "val_loss": val.loss,
        "test_accuracy": test.metric,
        "seconds": seconds,
        "ranks_identical": _ranks_identical(model),
        "warmup_bytes_per_step": warmup_bytes / min(freeze, settings.steps),
        "compressed_bytes_per_step": (opt.counter.total - warmup_bytes) / compressed_steps
        if compressed_steps
        else None,
    }


def _robust_run(workload: Any, settings: WireSettings, attack: str, aggregation: str, seed: int) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from diffgrad.distributed import RobustState, robust_comm_hook
    from diffgrad.optim import DiffGrad

    rank = dist.get_rank()
    model = DistributedDataParallel(workload.init_model(seed))
    attacked: dict[str, Any] = {} if attack == "none" else {"attack": attack, "strength": settings.attacks[attack]}
    state = RobustState(
        len(settings.faulty_ranks),
        momentum=settings.robust_momentum,
        faulty_ranks=settings.faulty_ranks if attacked else (),
        seed=seed,
        **AGGREGATION[aggregation],
        **attacked,
    )
    model.register_comm_hook(state, robust_comm_hook)
    opt = DiffGrad(model.parameters(), lr=settings.lr)
    batches = workload.train_batches(seed, settings.batch_size)
    for _ in range(settings.robust_steps):
        opt.zero_grad(set_to_none=True)
        workload.loss(model, _rank_rows(next(batches), rank, settings.world_size)).backward()
        opt.step()
    return {
        "test_accuracy": workload.evaluate(model.module, "test").metric,
        "bytes_per_step": state.counter.total / settings.robust_steps,
    }


# -- the report -------------------------------------------------------------------------------


def _cis(rows: Iterable[dict[str, Any]], key: str, **match: Any) -> MeanCI:
    return mean_ci(r[key] for r in rows if all(r[k] == v for k, v in match.items()))


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:,.1f} KiB"


def render(settings: WireSettings, results: dict[str, Any], seconds: float) -> str:
    """The Markdown report of one :func:`run_wire`."""
    conv, rob = results["convergence"], results["robustness"]
    n, f = settings.world_size, len(settings.faulty_ranks)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# What crosses the wire: data-parallel diffGrad on gloo",
        "",
        f"Generated {date} in {seconds / 60:.1f} min; {results['provenance']}. Workload `{settings.workload}` "
        f"({results['parameters']:,} parameters), {n} ranks (processes, gloo over loopback), global batch "
        f"{settings.batch_size} ({settings.batch_size // n} rows per rank), lr {settings.lr}, seeds "
        f"{', '.join(map(str, settings.seeds))}. Every number is a mean over the seeds with its 95 % CI "
        f"(Student t); verdicts: {HELD} or {NOT_HELD} only when the two CIs are apart, else {INCONCLUSIVE}.",
        "",
        "## Bytes sent per rank per step",
        "",
        "Counted at the collectives (`WireCounter`: all-reduce 2(n−1)/n, all_to_all (n−1)/n, all_gather "
        "(n−1) times the rank's input), means over the runs.",
        "",
    ]
    exact = mean_ci(r["warmup_bytes_per_step"] for r in conv if r["arm"] == "exact diffGrad").mean
    onebit = mean_ci(r["compressed_bytes_per_step"] for r in conv if r["arm"] == "1-bit diffGrad (ξ momentum)").mean
    robust = mean_ci(r["bytes_per_step"] for r in rob if r["aggregation"] == "NNM + trimmed mean").mean
    lines.append(
        format_table(
            ["exchange", "bytes per rank per step", "vs fp32 all-reduce"],
            [
                ["fp32 gradient all-reduce (exact, and the 1-bit warm-up)", _kib(exact), "1"],
                ["1-bit momentum (all_to_all + all_gather)", _kib(onebit), f"1/{exact / onebit:.1f}"],
                [f"robust hook (all_gather of the {n} ranks' vectors)", _kib(robust), f"{robust / exact:.2f}"],
            ],
            "lrr",
        )
    )
    identical = all(r["ranks_identical"] for r in conv)
    lines += [
        "",
        "## Convergence",
        "",
        f"{settings.steps} steps; the 1-bit arms run exact for {settings.freeze_step} steps, then freeze v and "
        f"exchange the 1-bit momentum. Parameters bitwise identical on all ranks at the end of every run: "
        f"{'yes' if identical else 'NO'}.",
        "",
    ]
    rows = []
    for arm in ARMS:
        rows.append(
            [
                arm,
                fmt_ci(_cis(conv, "val_loss", arm=arm)),
                fmt_ci(_cis(conv, "test_accuracy", arm=arm)),
                f"{mean_ci(r['seconds'] for r in conv if r['arm'] == arm).mean:.1f}",
            ]
        )
    lines.append(format_table(["optimizer", "final val loss", "test accuracy", "train s"], rows, "lrrr"))
    loss = Ranking(settings.workload, {arm: _cis(conv, "val_loss", arm=arm) for arm in ARMS}, higher_is_better=False)
    claims = [
        better_claim("Exact diffGrad ends with a lower val loss than 1-bit diffGrad (ξ momentum): compression costs",
                     [loss], "exact diffGrad", "1-bit diffGrad (ξ momentum)"),
        better_claim("Exact diffGrad ends with a lower val loss than 1-bit diffGrad (ξ frozen)",
                     [loss], "exact diffGrad", "1-bit diffGrad (ξ frozen)"),
        better_claim("1-bit diffGrad (ξ momentum) ends lower than 1-bit Adam",
                     [loss], "1-bit diffGrad (ξ momentum)", "1-bit Adam"),
        better_claim("1-bit diffGrad: ξ from the momenta ends lower than ξ frozen",
                     [loss], "1-bit diffGrad (ξ momentum)", "1-bit diffGrad (ξ frozen)"),
        better_claim("Exact Adam ends with a lower val loss than 1-bit Adam", [loss], "exact Adam", "1-bit Adam"),
        better_claim("Exact diffGrad ends lower than exact Adam", [loss], "exact diffGrad", "exact Adam"),
    ]  # fmt: skip
    lines += ["", *_claim_lines(claims)]

    lines += [
        "",
        "## Robustness",
        "",
        f"{f} of {n} ranks faulty (rank {', '.join(map(str, settings.faulty_ranks))}); DDP with the robust hook "
        f"(worker momentum β = {settings.robust_momentum}, all_gather, then the aggregation), diffGrad on the "
        f"aggregate, {settings.robust_steps} steps. Attack strengths: "
        + ", ".join(f"{a} {s}" for a, s in settings.attacks.items())
        + ". Test accuracy:",
        "",
    ]
    attacks = ("none", *settings.attacks)
    lines.append(
        format_table(
            ["attack", *AGGREGATION],
            [[a, *(fmt_ci(_cis(rob, "test_accuracy", attack=a, aggregation=g)) for g in AGGREGATION)] for a in attacks],
            "l" + "r" * len(AGGREGATION),
        )
    )
    robust_claims = []
    for a in settings.attacks:
        ranking = Ranking(a, {g: _cis(rob, "test_accuracy", attack=a, aggregation=g) for g in AGGREGATION}, True)
        robust_claims.append(
            better_claim(f"Under {a}, NNM + trimmed mean ends more accurate than the mean", [ranking],
                         "NNM + trimmed mean", "mean")
        )  # fmt: skip
    lines += ["", *_claim_lines(robust_claims), ""]
    lines.append("Settings: `" + json.dumps(asdict(settings)) + "`")
    return "\n".join(lines) + "\n"


def _claim_lines(claims: Iterable[Claim]) -> list[str]:
    return [f"- **{c.verdict}**: {c.statement}. {c.evidence}." for c in claims]
