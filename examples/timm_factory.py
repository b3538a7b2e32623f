"""DiffGrad in timm's optimizer factory: after ``register_timm()``,
``timm.optim.create_optimizer_v2(model, opt="diffgrad")`` returns a ``DiffGrad``.

    python examples/timm_factory.py --steps 5

timm's factory then does what it does for its own optimizers: parameter groups without weight
decay for biases and normalisation weights, and ``opt="lookahead_diffgrad"`` for Lookahead. The
model is one of timm's small test models, built without pretrained weights; the data are random.
"""

from __future__ import annotations

import argparse

import timm
import timm.optim
import torch
from torch import nn

from diffgrad import DiffGrad
from diffgrad.integrations.timm import register_timm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    register_timm()  # the name "diffgrad"; register_timm("diffgradw", decoupled_weight_decay=True) adds a variant
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=4, img_size=32)
    optimizer = timm.optim.create_optimizer_v2(model, opt="diffgrad", lr=1e-3, weight_decay=0.05)
    assert isinstance(optimizer, DiffGrad)
    decays = sorted({group["weight_decay"] for group in optimizer.param_groups})
    print(f"{type(optimizer).__name__} with {len(optimizer.param_groups)} parameter groups, weight decay {decays}")

    for _ in range(args.steps):
        x = torch.randn(8, 3, 32, 32)
        y = torch.randint(0, 4, (8,))
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    print(f"step {args.steps}: loss {loss.item():.4f}")
    print(f"OK timm_factory: create_optimizer_v2(opt='diffgrad') returned DiffGrad and trained {args.steps} steps")


if __name__ == "__main__":
    main()
