"""Step time and bytes on the wire of data-parallel diffGrad on a rate-limited link: exact (fp32
gradient all-reduce every step) against 1-bit (compressed momentum after the freeze).

    sudo python benchmarks/communication.py                      # 2 ranks, 100 Mbit/s, ~25 M params
    sudo python benchmarks/communication.py --rate 1gbit --width 2048 --ranks 4

The script creates a network namespace of its own, brings its loopback up and puts a ``tc`` token
bucket (``tbf``) of ``--rate`` on it, runs the gloo ranks inside that namespace (all of them on
127.0.0.1, so every byte any rank sends crosses that one limited loopback: a shared link of
``--rate``), and deletes the namespace at the end, also on errors. Each mode is run once with the
limit and once without it. Where namespaces or ``tc`` are not allowed (not root, no ``ip``, a
container without CAP_NET_ADMIN) it prints why and exits 0 without measuring.

Model: an MLP 1024 → W → W → 1024 (``--width`` W; 4096 gives 25.2 M parameters) on a fixed random
batch of 8 rows per rank, float32, ``OneBitDiffGrad`` (dfc, ξ from the momenta). Exact: no freeze
within the run; 1-bit: ``freeze_step=1``, so every timed step is compressed. The first step of
each mode is not timed.

Columns:
  step s           median wall time of one training step (forward, backward, exchange, update)
                   on rank 0, between barriers
  counted MB/step  bytes rank 0 sent per step, counted at the collectives (``WireCounter``)
  loopback MB/step bytes through the namespace's loopback per step, all ranks together
                   (``/proc/net/dev``: payload plus TCP/IP headers)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# -- inside the namespace ---------------------------------------------------------------------


def _loopback_bytes() -> int:
    """Bytes received on ``lo`` in this network namespace (what was sent on it, as it is a loop)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    raise RuntimeError("no lo in /proc/net/dev")


def _rank(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from diffgrad.distributed import OneBitDiffGrad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(0)
    w = args.width
    model = nn.Sequential(nn.Linear(1024, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1024))
    x = torch.randn(8, 1024, generator=torch.Generator().manual_seed(rank))
    freeze = 1 if args.mode == "onebit" else args.steps + 2
    opt = OneBitDiffGrad(model.parameters(), lr=1e-4, freeze_step=freeze)
    times, sent, wire = [], [], []
    for step in range(args.steps + 1):
        dist.barrier()
        counted, looped, start = opt.counter.total, _loopback_bytes(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
        dist.barrier()
        if step > 0:
            times.append(time.perf_counter() - start)
            sent.append(opt.counter.total - counted)
            wire.append(_loopback_bytes() - looped)
    if rank == 0:
        result = {
            "params": sum(p.numel() for p in model.parameters()),
            "step_s": statistics.median(times),
            "counted_bytes": statistics.median(sent),
            "loopback_bytes": statistics.median(wire),
        }
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def worker(args: argparse.Namespace) -> None:
    """Run the ranks of one mode (called inside the namespace)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(args, port, args.result), nprocs=args.ranks, start_method="spawn")


# -- outside: the namespace and the link ------------------------------------------------------


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def why_not() -> str | None:
    """Why the namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root (network namespaces and tc need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (iproute2)"
    return None


def measure(args: argparse.Namespace, mode: str, rate: str | None) -> dict[str, Any]:
    namespace = f"dgwire{os.getpid()}"
    result = Path(f"/tmp/{namespace}.json")
    try:
        _run("ip", "netns", "add", namespace)
        _run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        if rate is not None:
            # burst ≥ one 64 KiB loopback frame; latency bounds the queue
            _run("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                 "rate", rate, "burst", "256kb", "latency", "2s")  # fmt: skip
        cmd = ["ip", "netns", "exec", namespace, sys.executable, __file__, "--worker", "--mode", mode,
               "--ranks", str(args.ranks), "--width", str(args.width), "--steps", str(args.steps),
               "--result", str(result)]  # fmt: skip
        subprocess.run(cmd, check=True)
        return dict(json.loads(result.read_text()))
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        result.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--width", type=int, default=4096, help="MLP width W (default 4096: 25.2 M parameters)")
    parser.add_argument("--rate", default="100mbit", help="tc rate of the link (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("exact", "onebit"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    reason = why_not()
    if reason is None:
        try:
            _run("ip", "netns", "add", f"dgwire{os.getpid()}probe")
            _run("ip", "netns", "del", f"dgwire{os.getpid()}probe")
        except subprocess.CalledProcessError as error:
            reason = f"`ip netns add` refused: {error.stderr.strip()}"
    if reason is not None:
        print(f"communication benchmark skipped: {reason}")
        return
    rows = []
    for rate in (args.rate, None):
        for mode in ("exact", "onebit"):
            r = measure(args, mode, rate)
            rows.append((rate or "unlimited", mode, r))
            print(f"{rate or 'unlimited':>10} {mode:>6}: {r['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    print(f"{args.ranks} ranks, {rows[0][2]['params'] / 1e6:.1f} M parameters, {args.steps} timed steps per row\n")
    print("| link | exchange | step s | counted MB/step (rank 0) | loopback MB/step (all ranks) |")
    print("|---|---|---:|---:|---:|")
    for rate, mode, r in rows:
        print(
            f"| {rate} | {'fp32 all-reduce' if mode == 'exact' else '1-bit momentum'} | {r['step_s']:.3f} | "
            f"{r['counted_bytes'] / 1e6:.2f} | {r['loopback_bytes'] / 1e6:.2f} |"
        )
    for rate in (args.rate, "unlimited"):
        exact, onebit = (r for k, _, r in rows if k == rate)
        print(f"\n{rate}: exact / 1-bit step time = {exact['step_s'] / onebit['step_s']:.2f}", end="")
    print()


if __name__ == "__main__":
    main()
