"""``digits-cnn``: scikit-learn's bundled 8×8 handwritten digits (no download) and a small CNN."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .activations import make_activation
from .base import SPLITS, Budget
from .common import ClassificationWorkload, fixed_split

SPLIT_SIZES = (1197, 300, 300)  # train/val/test of the 1,797 images


@functools.lru_cache(maxsize=1)
def _load_digits() -> dict[str, tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels are 0..16
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    indices = dict(zip(SPLITS, fixed_split(len(y), SPLIT_SIZES)))
    train = x[indices["train"]]
    # Normalise with training-split statistics only, so val/test stay unseen.
    x = (x - train.mean()) / train.std()
    return {split: (x[i], y[i]) for split, i in indices.items()}


class DigitsCNN(ClassificationWorkload):
    """Two 3×3 conv layers (16, 32 channels), a 2×2 max-pool and a linear head on 8×8 digits."""

    name = "digits-cnn"
    description = "sklearn 8x8 digits (1197/300/300), 2-layer CNN; seconds on a CPU"
    # Measured on one CPU core: the budget trains in ~1 s (+1 s loading scikit-learn); Adam at
    # lr 3e-3 passes 0.97 by step 100-150 and ends at 0.98-0.99 (3 seeds), at lr 1e-3 by step ~200.
    target = 0.97
    default_budget = Budget(steps=300, batch_size=32, eval_every=50)

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        return _load_digits()

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            make_activation(self.activation),
            nn.Conv2d(16, 32, 3, padding=1),
            make_activation(self.activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )
