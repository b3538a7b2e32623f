"""Mixed-precision training with DiffGrad: autocast, GradScaler, an LR scheduler, and a checkpoint
that resumes exactly.

    python examples/train_amp.py                  # CPU: bfloat16 autocast
    python examples/train_amp.py --device cuda    # GPU: float16 autocast with loss scaling

The run trains for --steps steps, saves a checkpoint halfway, resumes a fresh model from it and
checks that the resumed run ends with the same parameters as the uninterrupted one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from diffgrad import DiffGrad


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 4))


def batch(step: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Synthetic data that depends only on the step, so a resumed run sees the same batches.
    g = torch.Generator().manual_seed(step)
    x = torch.randn(64, 32, generator=g)
    y = (x[:, :4] * 2.0).argmax(dim=1)
    return x.to(device), y.to(device)


class Run:
    """Model, optimizer, scheduler and scaler: everything a checkpoint has to hold."""

    def __init__(self, device: str, steps: int) -> None:
        torch.manual_seed(0)
        self.device = device
        # CUDA autocast uses float16, whose small range needs loss scaling; bfloat16 (the CPU
        # choice) has float32's range, so its scaler is disabled and step() runs as usual.
        self.amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
        self.model = make_model().to(device)
        self.optimizer = DiffGrad(self.model.parameters(), lr=3e-3, weight_decay=1e-2, decoupled_weight_decay=True)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=3e-3, total_steps=steps)
        self.scaler = torch.amp.GradScaler(device, enabled=self.amp_dtype == torch.float16)
        self.step = 0

    def train_step(self) -> float:
        x, y = batch(self.step, self.device)
        with torch.autocast(self.device, dtype=self.amp_dtype):
            loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # DiffGrad takes the scaler's scale and inf flag inside step(): no unscale_ needed, and a
        # step with inf/NaN gradients leaves parameters and optimizer state untouched.
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def save(self, path: Path) -> None:
        torch.save(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
            path,
        )

    def load(self, path: Path) -> None:
        # weights_only: a checkpoint file can only give back tensors and plain data, never run code.
        checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        self.step = checkpoint["step"]
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    steps = max(args.steps, 2)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        run = Run(args.device, steps)
        for _ in range(steps):
            if run.step == steps // 2:
                run.save(checkpoint)
            loss = run.train_step()
        print(f"step {run.step}: loss {loss:.4f}, lr {run.scheduler.get_last_lr()[0]:.2e}")

        resumed = Run(args.device, steps)
        resumed.load(checkpoint)
        while resumed.step < steps:
            resumed.train_step()

    for a, b in zip(run.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    print(f"OK train_amp: resumed at step {steps // 2} and matched the uninterrupted run exactly")


if __name__ == "__main__":
    main()
