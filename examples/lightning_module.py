"""DiffGrad in a Lightning module: ``configure_optimizers`` returns it with a scheduler stepped
every batch.

    python examples/lightning_module.py --steps 10
"""

from __future__ import annotations

import argparse
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diffgrad import DiffGrad


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 3e-3, total_steps: int = 100) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = DiffGrad(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.total_steps)
        # "interval": "step" steps the scheduler after every optimizer step (the default is per epoch).
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    # Lightning suggests more DataLoader workers for the tiny in-memory dataset; not needed here.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    L.seed_everything(0, verbose=False)
    x = torch.randn(512, 16)
    y = x[:, :4].sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)

    model = Regressor(total_steps=args.steps)
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)

    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, DiffGrad)
    step = int(optimizer.state[model.net[0].weight]["step"])
    assert step == args.steps, (step, args.steps)
    loss = trainer.callback_metrics["train_loss"].item()
    print(f"step {step}: loss {loss:.4f}, lr {trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]:.2e}")
    print(f"OK lightning_module: {step} DiffGrad steps through Lightning's Trainer")


if __name__ == "__main__":
    main()
