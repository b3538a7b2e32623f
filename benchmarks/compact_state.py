"""Does compact optimizer state train as well as float32? Same model, data and seeds, three
``state_dtype`` settings; prints the final training loss and held-out accuracy (mean ± std over
seeds) and the state's bytes per parameter.

    python benchmarks/compact_state.py [--steps 1000] [--seeds 5] [--fused]

The task is a teacher–student classification problem built here (no downloads): a fixed random
two-layer teacher labels Gaussian inputs into 10 classes; the student is an MLP
64 → 256 → 256 → 10 (85 k parameters; both hidden weight matrices are large enough to be stored
in 8 bits, the 10-way head and the biases stay float32). Full-batch noise is avoided by fixed
mini-batches per step and seed, so the three settings see identical data.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from diffgrad import DiffGrad

SETTINGS = {"float32": None, "bfloat16": torch.bfloat16, "8-bit": "8bit"}


def make_data(seed: int, n_train: int = 4096, n_test: int = 2048) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(10_000 + seed)
    teacher_1 = torch.randn(64, 32, generator=g) / 8
    teacher_2 = torch.randn(32, 10, generator=g)
    x = torch.randn(n_train + n_test, 64, generator=g)
    y = (torch.tanh(x @ teacher_1) @ teacher_2).argmax(dim=1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def run(state_dtype, seed: int, steps: int, fused: bool) -> tuple[float, float, float]:
    """(final training loss over the last 50 steps, held-out accuracy, state bytes/param)."""
    x, y, x_test, y_test = make_data(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = DiffGrad(model.parameters(), lr=1e-3, state_dtype=state_dtype, fused=fused)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    n_params = sum(p.numel() for p in model.parameters())
    return statistics.mean(losses[-50:]), accuracy, state_bytes / n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fused", action="store_true", help="use the compiled step")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: the table reports a standard deviation over seeds")
    print(
        f"# compact state: {args.steps} steps, {args.seeds} seeds, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| state_dtype | state B/param | final train loss | held-out accuracy |")
    print("|---|---|---|---|")
    for name, state_dtype in SETTINGS.items():
        results = [run(state_dtype, seed, args.steps, args.fused) for seed in range(args.seeds)]
        losses, accuracies, nbytes = zip(*results)
        print(
            f"| {name} | {nbytes[0]:.2f} | {statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f} "
            f"| {statistics.mean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
