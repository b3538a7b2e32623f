"""Time one optimizer step: DiffGrad's paths against Adam and other diffGrad implementations.

    python benchmarks/step.py                       # CPU, float32, both cases, all candidates
    python benchmarks/step.py --device cuda --dtype bfloat16 --scale 5   # GPU, 100 M+ params

Needs the ``bench`` extra (``pip install diffgrad[bench]``: pytorch_optimizer, torch-optimizer,
torchao, bitsandbytes); anchors that are not installed are skipped. Everything runs in one process, and the timed steps
of all candidates are interleaved round by round, so that on a shared machine every candidate
sees the same background load and the ratios are comparable even when the absolute times drift;
each round starts one row later than the one before, so no row always follows the same other.

Cases: ``resnet50`` is the parameter list of the CIFAR-form ResNet-50 of the paper (kuangliu's
layout: 3×3 stem, bottleneck stages [3, 4, 6, 3], 10-way linear head): 161 tensors, 23.5 M
parameters, generated here from the layer structure. ``single`` is one tensor of 25 M elements
(rounded to whole 256-element blocks, for 8-bit state). ``resnet50x4`` is the ResNet-50 list
repeated 4 times (the same shapes, 4× the tensors): only its first steps are measured, to show
whether a path's start-up grows with the number of tensors. ``small`` is 161 one-element
tensors: what is left is each optimizer's per-step overhead. ``--scale k`` multiplies the widths of
ResNet-50 by sqrt(k) (about k times the parameters) and the single tensor by k.

Columns:
  median/min ms   time of one ``step()`` (median and minimum over rounds × steps)
  x Adam fused    paired ratio to ``torch.optim.Adam(fused=True)``: in each round, this row's
                  median over its steps divided by the anchor's in the same round; the median
                  of those ratios over rounds. Drifts of the machine's speed between rounds
                  (other tenants' load on a shared VM) cancel in each round's quotient.
  GB/s            minimal traffic / median time; minimal traffic = read+write params, read
                  grads, read+write every state tensor (DiffGrad fp32: 9 × 4 B per parameter)
  state B/param   bytes of optimizer state (all tensors but ``step``) per parameter element
  peak extra MB   the most memory allocated beyond what existed before, during one (warm) step:
                  on CPU from the profiler's allocator events (``profile_memory=True``, every
                  allocation and free of the c10 CPU allocator in order, running sum, maximum),
                  on CUDA from ``torch.cuda.max_memory_allocated``; in % of the parameters' bytes
  first step s    the first ``step()`` of a fresh optimizer in a fresh process (state allocation;
                  compiled paths: building or loading their kernels). "cold": empty caches (a
                  new temporary Inductor cache folder and DiffGrad kernel cache folder for the
                  row); "warm": a second process with the caches the cold one left.

A row "device copy" times ``dst.copy_(src)`` of a buffer as large as the 9 DiffGrad tensors
together, the practical bandwidth ceiling of the device in the same run.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffgrad import DiffGrad

# Offline: bitsandbytes looks for optional kernels on the Hugging Face Hub when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

Factory = Callable[[list[Tensor]], torch.optim.Optimizer]


def resnet50_shapes(width_scale: float = 1.0, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of the CIFAR-form ResNet-50 (conv weights, BN weight/bias, linear)."""

    def w(c: int) -> int:
        return max(1, round(c * width_scale))

    shapes: list[tuple[int, ...]] = []

    def conv_bn(c_in: int, c_out: int, k: int) -> None:
        shapes.extend([(c_out, c_in, k, k), (c_out,), (c_out,)])

    conv_bn(3, w(64), 3)
    c_in = w(64)
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = w(64 * 2**stage)
        for block in range(blocks):
            conv_bn(c_in, planes, 1)
            conv_bn(planes, planes, 3)
            conv_bn(planes, 4 * planes, 1)
            if block == 0:  # projection shortcut: stride 2 or a change of width
                conv_bn(c_in, 4 * planes, 1)
            c_in = 4 * planes
    shapes.extend([(num_classes, c_in), (num_classes,)])
    return shapes


# The diffGrad family's options (diffgrad/optim/modifiers.py), one row each with --modifiers.
MODIFIERS = ("rectify", "adanorm", "adainject", "cautious", "centralize")


def candidates(fused_variants: bool, modifiers: bool = False) -> dict[str, Factory]:
    """The optimizers to time, by row name; the first is the anchor of the ratios.
    DiffGrad's fused rows run the C++ kernel on CPU and the Triton kernel on CUDA."""
    rows: dict[str, Factory] = {
        "Adam fused (anchor)": lambda p: torch.optim.Adam(p, fused=True),
        "Adam default": lambda p: torch.optim.Adam(p),
        "Adam foreach": lambda p: torch.optim.Adam(p, foreach=True),
    }
    try:
        import pytorch_optimizer

        rows["pytorch_optimizer DiffGrad per-tensor"] = lambda p: pytorch_optimizer.DiffGrad(p, foreach=False)
        rows["pytorch_optimizer DiffGrad foreach"] = lambda p: pytorch_optimizer.DiffGrad(p, foreach=True)
    except ImportError:
        print("pytorch_optimizer not installed: its rows are skipped", file=sys.stderr)
    try:
        import torch_optimizer

        rows["torch-optimizer DiffGrad"] = lambda p: torch_optimizer.DiffGrad(p)
    except ImportError:
        print("torch-optimizer not installed: its row is skipped", file=sys.stderr)
    if fused_variants:
        try:
            from torchao.optim import AdamW4bit, AdamW8bit

            rows["torchao AdamW8bit"] = lambda p: AdamW8bit(p, weight_decay=0.0)
            rows["torchao AdamW4bit"] = lambda p: AdamW4bit(p, weight_decay=0.0)
        except ImportError:
            print("torchao not installed: its rows are skipped", file=sys.stderr)
        try:
            import bitsandbytes

            rows["bitsandbytes Adam8bit"] = lambda p: bitsandbytes.optim.Adam8bit(p)
        except ImportError:
            print("bitsandbytes not installed: its row is skipped", file=sys.stderr)
    rows["DiffGrad default"] = lambda p: DiffGrad(p)
    rows["DiffGrad per-tensor"] = lambda p: DiffGrad(p, foreach=False)
    rows["DiffGrad foreach"] = lambda p: DiffGrad(p, foreach=True)
    if fused_variants:
        rows["DiffGrad default bf16 state"] = lambda p: DiffGrad(p, state_dtype=torch.bfloat16)
        rows["DiffGrad default 8-bit state"] = lambda p: DiffGrad(p, state_dtype="8bit")
    rows["DiffGrad fused"] = lambda p: DiffGrad(p, fused=True)
    if fused_variants:
        rows["DiffGrad fused bf16 state"] = lambda p: DiffGrad(p, fused=True, state_dtype=torch.bfloat16)
        rows["DiffGrad fused 8-bit state"] = lambda p: DiffGrad(p, fused=True, state_dtype="8bit")
    if modifiers:
        for path, options in (("default", {}), ("fused", {"fused": True})):
            for name in MODIFIERS:
                rows[f"DiffGrad {path} +{name}"] = lambda p, o={**options, name: True}: DiffGrad(p, **o)
    return rows


@dataclass
class Row:
    name: str
    rounds: list[list[float]] = field(default_factory=list)  # step times (s), one list per round
    cold_s: float = math.nan
    warm_s: float = math.nan
    state_bytes: int = 0
    peak_extra: int = 0
    traffic: int = 0

    @property
    def times(self) -> list[float]:
        return [t for times in self.rounds for t in times]


def paired_ratio(row: Row, anchor: Row) -> float:
    """Median over rounds of row's median / anchor's median in the same round (a row timed
    once, such as the device copy, against the anchor's overall median)."""
    if len(row.rounds) != len(anchor.rounds):
        return statistics.median(row.times) / statistics.median(anchor.times)
    return statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(row.rounds, anchor.rounds))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The clock of the timed steps: wall time, or with --clock cpu the process's CPU time, which with
# one thread leaves out the time the process waits while other tenants of a shared machine run
# (with several threads it would count OpenMP's spin-waiting).
CLOCK: Callable[[], float] = time.perf_counter


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = CLOCK()
    fn()
    _sync(device)
    return CLOCK() - start


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for k, t in s.items()
        if torch.is_tensor(t) and k != "step"
    )


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most memory allocated on ``device`` beyond the starting point while ``fn`` runs."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def device_copy_seconds(nbytes: int, device: torch.device, repeats: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)
    times = [_timed(lambda: dst.copy_(src), device) for _ in range(repeats)]
    return statistics.median(times)


def run_case(
    name: str,
    shapes: list[tuple[int, ...]],
    rows: dict[str, Factory],
    device: torch.device,
    dtype: torch.dtype,
    rounds: int,
    steps: int,
) -> list[Row]:
    numel = sum(math.prod(s) for s in shapes)
    print(f"\n## {name}: {len(shapes)} tensors, {numel / 1e6:.2f} M parameters, {dtype}, {device}", file=sys.stderr)
    params = _params(shapes, device, dtype)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    results = {row: Row(row) for row in rows}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for row, factory in rows.items():
        print(f"  state and first step: {row}", file=sys.stderr, flush=True)
        opt = factory(params)
        opt.step()
        optimizers[row] = opt
        results[row].state_bytes = _state_bytes(opt)
        results[row].traffic = 2 * param_bytes + param_bytes + 2 * results[row].state_bytes
        results[row].peak_extra = peak_extra_bytes(opt.step, device)
    names = list(optimizers)
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        # A step's time depends on the step before it (what that one left in the caches, the
        # pages it freed): each round starts one row later, so every row follows the others in turn.
        for row in names[r % len(names) :] + names[: r % len(names)]:
            results[row].rounds.append([_timed(optimizers[row].step, device) for _ in range(steps)])
    copy = device_copy_seconds(9 * numel * 4, device, repeats=rounds * steps)
    del optimizers, params
    gc.collect()
    out = list(results.values())
    out.append(Row("device copy", rounds=[[copy]], traffic=2 * 9 * numel * 4))
    for row in out:
        row.state_bytes_per_param = row.state_bytes / numel  # type: ignore[attr-defined]
        row.peak_pct = 100 * row.peak_extra / param_bytes  # type: ignore[attr-defined]
    return out


def case_shapes(case: str, scale: float) -> list[tuple[int, ...]]:
    if case == "resnet50":
        return resnet50_shapes(math.sqrt(scale))
    if case == "resnet50x4":
        return resnet50_shapes(math.sqrt(scale)) * 4
    if case == "small":
        return [(1,)] * 161
    if case == "single":
        # 25 M rounded to whole 256-element blocks, so that 8-bit state applies.
        return [(round(25_000_000 * scale / 256) * 256,)]
    raise SystemExit(f"unknown case {case!r}")


def _params(shapes: list[tuple[int, ...]], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes]
    for p in params:
        # Small gradients keep every optimizer's updates tame while they share the parameters.
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3).to(device, dtype)
    return params


def first_steps(row: str, case: str, argv: list[str]) -> tuple[float, float]:
    """(cold, warm) seconds of ``row``'s first step on ``case``, each in a new process: cold with
    empty Inductor, Triton and DiffGrad kernel caches, warm with what the cold process left there."""
    cache = tempfile.mkdtemp(prefix="diffgrad-bench-cache-")
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "DIFFGRAD_CACHE_DIR": f"{cache}/diffgrad",
    }
    command = [sys.executable, __file__, *argv, "--cases", case, "--first-step-of", row]
    try:
        seconds = []
        for _ in ("cold", "warm"):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                print(f"  first step of {row} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return math.nan, math.nan
            seconds.append(float(done.stdout.split()[-1]))
        return seconds[0], seconds[1]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def first_step_table(times: dict[str, dict[str, tuple[float, float]]], cases: list[str]) -> str:
    head = "| optimizer | " + " | ".join(f"{case} cold s | {case} warm s" for case in cases)
    lines = [head + " |", "|" + "---|" * (1 + 2 * len(cases))]
    for row, by_case in times.items():
        cells = [f"{by_case[c][0]:.2f} | {by_case[c][1]:.2f}" if c in by_case else " | " for c in cases]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    anchor = rows[0]
    head = (
        "| optimizer | median ms | min ms | x Adam fused | GB/s | state B/param | peak extra MB (% params) "
        "| first step cold s | warm s |"
    )
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        med = statistics.median(row.times)
        peak = "" if row.name == "device copy" else f"{row.peak_extra / 2**20:.1f} ({row.peak_pct:.1f} %)"
        state = "" if row.name == "device copy" else f"{row.state_bytes_per_param:.2f}"
        first = "| |" if row.name == "device copy" else f"| {row.cold_s:.2f} | {row.warm_s:.2f} |"
        lines.append(
            f"| {row.name} | {med * 1e3:.1f} | {min(row.times) * 1e3:.1f} | {paired_ratio(row, anchor):.2f} "
            f"| {row.traffic / med / 1e9:.1f} | {state} | {peak} {first}"
        )
    return "\n".join(lines)


def check_targets(rows: list[Row]) -> list[str]:
    """The issue's targets that this case can check, each with its number and verdict."""
    med = {row.name: statistics.median(row.times) for row in rows}
    by = {row.name: row for row in rows}
    anchor = by["Adam fused (anchor)"]
    checks: list[tuple[str, float, bool]] = []
    if "DiffGrad fused" in by:
        ratio = paired_ratio(by["DiffGrad fused"], anchor)
        checks.append(("fused <= 1.35 x Adam(fused=True)", ratio, ratio <= 1.35))
        checks.append(
            (
                "fused peak extra memory <= 5 % of param bytes (%)",
                by["DiffGrad fused"].peak_pct,
                by["DiffGrad fused"].peak_pct <= 5,
            )  # type: ignore[attr-defined]
        )
    for name, limit in (("DiffGrad fused bf16 state", 1.20), ("DiffGrad fused 8-bit state", 1.60)):
        if name in by:
            ratio = paired_ratio(by[name], anchor)
            checks.append((f"{name} <= {limit} x Adam(fused=True)", ratio, ratio <= limit))
    if "DiffGrad default" in by and "Adam default" in by:
        ratio = paired_ratio(by["DiffGrad default"], by["Adam default"])
        checks.append(("DiffGrad default <= 0.7 x Adam's default path", ratio, ratio <= 0.7))
    po = [by[k] for k in by if k.startswith("pytorch_optimizer")]
    if po:
        fastest = min(po, key=lambda row: med[row.name])
        for name, need in (("DiffGrad fused", 2.5), ("DiffGrad default", 1.2)):
            if name in by:
                speedup = paired_ratio(fastest, by[name])
                checks.append((f"{name} >= {need} x faster than pytorch_optimizer's fastest", speedup, speedup >= need))
    for name, limit in (("DiffGrad fused bf16 state", 6.0), ("DiffGrad fused 8-bit state", 3.5)):
        if name in by:
            value = by[name].state_bytes_per_param  # type: ignore[attr-defined]
            checks.append((f"{name}: state bytes/param <= {limit}", value, value <= limit))
    if "device copy" in med and "DiffGrad fused" in med:
        frac = (by["DiffGrad fused"].traffic / med["DiffGrad fused"]) / (by["device copy"].traffic / med["device copy"])
        checks.append(("fused bandwidth / device copy bandwidth (GPU target >= 0.8)", frac, frac >= 0.8))
    return [f"- {'met' if ok else 'MISSED'}: {text}: {value:.2f}" for text, value, ok in checks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--cases",
        default="resnet50,resnet50x4,single,small",
        help="comma-separated: resnet50, resnet50x4, single, small",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (for --threads 1)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="parameter count multiplier (GPU: 5 for 100 M+)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per candidate per round")
    parser.add_argument("--only", default="", help="comma-separated substrings: keep matching rows (+ anchor)")
    parser.add_argument("--no-compact", action="store_true", help="skip the bf16/8-bit state rows")
    parser.add_argument("--modifiers", action="store_true", help="add a row per diffGrad-family modifier")
    parser.add_argument("--no-first-step", action="store_true", help="skip the cold/warm first-step processes")
    parser.add_argument("--first-step-of", metavar="ROW", help=argparse.SUPPRESS)  # one first step, in a child
    args = parser.parse_args(argv)

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = candidates(fused_variants=not args.no_compact, modifiers=args.modifiers)
    if args.first_step_of:
        opt = rows[args.first_step_of](_params(case_shapes(args.cases, args.scale), device, dtype))
        print(_timed(opt.step, device))
        return
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        rows = {k: v for i, (k, v) in enumerate(rows.items()) if i == 0 or any(s in k for s in keep)}
    child_argv = ["--device", args.device, "--dtype", args.dtype, "--scale", str(args.scale)]
    child_argv += ["--threads", str(args.threads)] if args.threads else []
    child_argv += ["--no-compact"] * args.no_compact + ["--modifiers"] * args.modifiers
    print(
        f"# DiffGrad step benchmark — torch {torch.__version__}, {device}"
        f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}),"
        f" {time.strftime('%Y-%m-%d')}, {args.rounds} rounds x {args.steps} steps, {args.clock} clock"
    )
    cases = args.cases.split(",")
    first: dict[str, dict[str, tuple[float, float]]] = {row: {} for row in rows}
    for case in cases:
        shapes = case_shapes(case, args.scale)
        numel = sum(math.prod(s) for s in shapes)
        if not args.no_first_step and case != "small":
            # The 4x list's point is the first step: DiffGrad's rows and the anchor only.
            for row in [r for i, r in enumerate(rows) if case != "resnet50x4" or i == 0 or r.startswith("DiffGrad")]:
                print(f"  first steps in new processes: {case}, {row}", file=sys.stderr, flush=True)
                first[row][case] = first_steps(row, case, child_argv)
        if case == "resnet50x4":
            continue
        result = run_case(case, shapes, rows, device, dtype, args.rounds, args.steps)
        for row in result:
            row.cold_s, row.warm_s = first.get(row.name, {}).get(case, (math.nan, math.nan))
        print(f"\n### {case}: {len(shapes)} tensors, {numel / 1e6:.2f} M parameters, {args.dtype}\n")
        print(table(result))
        print()
        print("\n".join(check_targets(result)))
        sys.stdout.flush()
    if not args.no_first_step:
        print("\n### First steps, new processes (cold: empty caches; warm: the cold run's caches)\n")
        print(first_step_table({r: t for r, t in first.items() if t}, cases))
        if "resnet50" in cases and "resnet50x4" in cases:
            for row in (r for r in rows if r.startswith("DiffGrad fused")):
                single, repeated = first[row].get("resnet50"), first[row].get("resnet50x4")
                if single and repeated:
                    ratio = repeated[0] / single[0]
                    print(
                        f"- {'met' if ratio <= 1.2 else 'MISSED'}: {row}: first step (cold) on the 4x list "
                        f"<= 1.2 x on the list: {ratio:.2f}"
                    )
        for row in (r for r in rows if r.startswith("DiffGrad fused")):
            if "resnet50" in first[row]:
                cold, warm = first[row]["resnet50"]
                print(f"- {'met' if cold <= 30 else 'MISSED'}: {row}: first step (cold) <= 30 s: {cold:.2f}")
                print(f"- {'met' if warm <= 3 else 'MISSED'}: {row}: first step (warm) <= 3 s: {warm:.2f}")


if __name__ == "__main__":
    main()
