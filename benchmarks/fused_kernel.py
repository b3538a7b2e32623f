"""Time DiffGrad's fused CPU kernel (``fused=True``) against ``torch.optim.Adam(fused=True)``.

    python benchmarks/fused_kernel.py                  # ResNet-50 list, 20 rounds x 3 steps
    python benchmarks/fused_kernel.py --rounds 40 --threads 1 --clock cpu

--clock cpu times steps by the process's CPU time instead of the wall clock: with one thread it
leaves out the time the process waits while other tenants run (with several it would count
OpenMP's spin-waiting, so it is meant for --threads 1). On a loaded machine the wall-clock ratio
at several threads is dominated by how each optimizer's threads get descheduled (Adam's step
opens one OpenMP region per tensor, each waiting at its barrier for a preempted thread).

Everything is timed in one process, the rows interleaved round by round (each round starting one
row later), so that on a shared machine every row sees the same background load; a row's ratio
is the median over rounds of (its median step time in the round) / (Adam's in the same round),
given with the quartiles of those per-round ratios.

Also measured:
  first step      in a new process: the time to build the kernel library ("cold": an empty
                  $DIFFGRAD_CACHE_DIR) or to load it ("warm": a second process, the same cache),
                  then the first ``step()`` of a fresh optimizer, which allocates its state (as
                  Adam's first step, timed alike); for the ResNet-50 list and for it repeated
                  four times (the build does not depend on the number of tensors)
  peak extra      the most CPU memory allocated during one warm step beyond what existed
                  before it (benchmarks/step.py's allocator-event count), in % of the
                  parameters' bytes
  small tensors   one step over 161 one-element tensors (per-step overhead), median of rounds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step import peak_extra_bytes, resnet50_shapes  # noqa: E402

from diffgrad import DiffGrad  # noqa: E402

ROWS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "Adam fused": lambda p: torch.optim.Adam(p, fused=True),
    "DiffGrad fused fp32 state": lambda p: DiffGrad(p, fused=True),
    "DiffGrad fused bf16 state": lambda p: DiffGrad(p, fused=True, state_dtype=torch.bfloat16),
    "DiffGrad fused 8-bit state": lambda p: DiffGrad(p, fused=True, state_dtype="8bit"),
}
TARGETS = {"DiffGrad fused fp32 state": 1.35, "DiffGrad fused bf16 state": 1.20, "DiffGrad fused 8-bit state": 1.60}

# Run in a child process: the time to build or load the kernel library, then the time of the
# first step of a fresh optimizer (which also allocates the state: zero-filled new memory).
_FIRST_STEP = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from step import resnet50_shapes
from diffgrad import DiffGrad
from diffgrad.optim import fused
params = [torch.zeros(s, requires_grad=True) for _ in range({repeat}) for s in resnet50_shapes()]
for p in params:
    p.grad = torch.full_like(p, 1e-3)
start = time.perf_counter()
if {diffgrad}:
    fused.library()
library = time.perf_counter() - start
opt = DiffGrad(params, fused=True) if {diffgrad} else torch.optim.Adam(params, fused=True)
start = time.perf_counter()
opt.step()
print(library, time.perf_counter() - start)
"""


def _params(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3)
    return params


def interleaved(
    optimizers: dict[str, torch.optim.Optimizer], rounds: int, steps: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Per round and row, the median time of ``steps`` steps; rows rotated round by round."""
    names = list(optimizers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples = []
            for _ in range(steps):
                start = clock()
                optimizers[name].step()
                samples.append(clock() - start)
            times[name].append(statistics.median(samples))
    return times


def ratio_summary(row: list[float], anchor: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios."""
    ratios = [a / b for a, b in zip(row, anchor)]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q1, q3


def first_step_seconds(cache_dir: str, repeat: int, diffgrad: bool = True) -> tuple[float, float]:
    """(seconds to build or load the kernel, seconds of the first step) in a new process."""
    env = {**os.environ, "DIFFGRAD_CACHE_DIR": cache_dir}
    code = _FIRST_STEP.format(bench=str(Path(__file__).parent), repeat=repeat, diffgrad=diffgrad)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    library, step = out.stdout.split()
    return float(library), float(step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall clock or process CPU time")
    parser.add_argument("--skip-first-step", action="store_true", help="skip the cold/warm first-step runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = resnet50_shapes()
    numel = sum(math.prod(s) for s in shapes)
    print(
        f"# DiffGrad fused CPU kernel — torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} rounds x {args.steps} steps, {args.clock} clock"
    )

    print(f"\n## ResNet-50 list: {len(shapes)} tensors, {numel / 1e6:.2f} M float32 parameters\n")
    params = _params(shapes)
    param_bytes = numel * 4
    optimizers = {name: factory(params) for name, factory in ROWS.items()}
    peaks = {}
    for name, opt in optimizers.items():
        opt.step()
        peaks[name] = peak_extra_bytes(opt.step, torch.device("cpu"))
    times = interleaved(optimizers, args.rounds, args.steps, clock)
    anchor = times["Adam fused"]
    print("| row | median ms | x Adam fused: median [q1, q3] | min | max | target | peak extra MB (% params) |")
    print("|---|---|---|---|---|---|---|")
    for name in ROWS:
        ratios = [a / b for a, b in zip(times[name], anchor)]
        median, q1, q3 = ratio_summary(times[name], anchor)
        target = f"<= {TARGETS[name]:.2f} {'met' if median <= TARGETS[name] else 'MISSED'}" if name in TARGETS else ""
        print(
            f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {median:.3f} [{q1:.3f}, {q3:.3f}] "
            f"| {min(ratios):.3f} | {max(ratios):.3f} | {target} "
            f"| {peaks[name] / 2**20:.2f} ({100 * peaks[name] / param_bytes:.2f} %) |"
        )
    del optimizers, params

    print("\n## 161 one-element tensors (per-step overhead)\n")
    small = _params([(1,)] * 161)
    optimizers = {name: ROWS[name](small) for name in ("Adam fused", "DiffGrad fused fp32 state")}
    for opt in optimizers.values():
        opt.step()
    times = interleaved(optimizers, args.rounds, 20, clock)
    for name, values in times.items():
        print(f"- {name}: {statistics.median(values) * 1e3:.3f} ms per step (median of rounds)")

    if not args.skip_first_step:
        print("\n## First step (each in a new process; cold: an empty kernel cache, warm: the same cache again)\n")
        print("| list | cold: build s | cold: first step s | warm: load s | warm: first step s | Adam fused first step s |")
        print("|---|---|---|---|---|---|")
        for repeat in (1, 4):
            with tempfile.TemporaryDirectory(prefix="diffgrad-cache-") as cache:
                cold = first_step_seconds(cache, repeat)
                warm = first_step_seconds(cache, repeat)
                _, adam = first_step_seconds(cache, repeat, diffgrad=False)
            print(
                f"| ResNet-50 x{repeat} ({161 * repeat} tensors) | {cold[0]:.2f} | {cold[1]:.2f} | {warm[0]:.3f} "
                f"| {warm[1]:.2f} | {adam:.2f} |"
            )


if __name__ == "__main__":
    main()
