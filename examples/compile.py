"""``torch.compile`` of the model and of ``DiffGrad.step()``, and proof that the step compiles
without graph breaks.

    python examples/compile.py --steps 5

The optimizer step is compiled as torch documents it, ``@torch.compile(fullgraph=False) def
step(): opt.step()``: Dynamo traces DiffGrad's Python into one graph and Inductor turns it into a
few fused kernels. The run compares every step with an eager copy and fails if Dynamo reports a
graph break or recompiles as the step count grows.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch._dynamo.utils
from torch import nn

from diffgrad import DiffGrad


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 1))


def cosine_lr(step: int, steps: int, peak: float) -> float:
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    # Print each graph break with its reason as it happens (there should be none).
    torch._logging.set_logs(graph_breaks=True, recompiles=True)

    torch.manual_seed(0)
    eager_model = make_model()
    model = copy.deepcopy(eager_model)
    # A tensor learning rate is read by the compiled graph, so changing it in place (the schedule
    # below) reuses the graph; a float lr would be baked in as a constant and force a recompile
    # for every new value.
    opt = DiffGrad(model.parameters(), lr=torch.tensor(args.lr))
    eager_opt = DiffGrad(eager_model.parameters(), lr=torch.tensor(args.lr))

    compiled_model = torch.compile(model)

    @torch.compile(fullgraph=False)
    def step() -> None:
        opt.step()

    # The schedule is applied by hand: a torch.optim.lr_scheduler wraps opt.step in a function
    # that Dynamo never traces (the module torch.optim.lr_scheduler is on its skip list), which costs a
    # graph break in front of any optimizer's compiled step.
    for i in range(args.steps):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(64, 32, generator=g)
        y = x[:, :8].sum(dim=1, keepdim=True)
        lr = cosine_lr(i, args.steps, args.lr)
        for o in (opt, eager_opt):
            o.param_groups[0]["lr"].fill_(lr)
            o.zero_grad(set_to_none=True)

        loss = nn.functional.mse_loss(compiled_model(x), y)
        loss.backward()
        step()

        nn.functional.mse_loss(eager_model(x), y).backward()
        eager_opt.step()

    # Inductor may fuse and reorder float32 arithmetic: equal up to rounding, not bit for bit.
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    counters = torch._dynamo.utils.counters
    breaks = sum(counters["graph_break"].values())
    print(
        f"step {args.steps}: loss {loss.item():.4f}; graphs {counters['stats']['unique_graphs']}, "
        f"graph breaks {breaks}, recompiles {sum(counters['recompiles'].values())}"
    )
    assert breaks == 0, dict(counters["graph_break"])
    print(f"OK compile: {args.steps} compiled steps matched eager, no graph breaks")


if __name__ == "__main__":
    main()
