"""``mnist1d-cnn`` and ``mnist1d-mlp``: MNIST-1D (Greydanus, 2020) from the ``mnist1d`` package's
procedural generator, which runs offline (its downloader is never used)."""

from __future__ import annotations

import functools
import random

import torch
from torch import Tensor, nn

from .activations import make_activation
from .base import Budget
from .common import ClassificationWorkload, fixed_split

NUM_SAMPLES = 5000  # the generator's default; its 80/20 split gives 4,000 train and 1,000 test
VAL_SIZE = 500  # carved from the generator's training part
SEQ_LEN = 40


@functools.lru_cache(maxsize=1)
def _load_mnist1d() -> dict[str, tuple[Tensor, Tensor]]:
    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = NUM_SAMPLES
    # The generator reseeds Python's and NumPy's global RNGs; restore them for the caller.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.as_tensor(x, dtype=torch.float32).unsqueeze(1), torch.as_tensor(y, dtype=torch.int64)

    x, y = tensors(data["x"], data["y"])
    train, val = fixed_split(len(y), (len(y) - VAL_SIZE, VAL_SIZE))
    return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": tensors(data["x_test"], data["y_test"])}


class _MNIST1D(ClassificationWorkload):
    """MNIST-1D data (3,500/500/1,000 sequences of length 40, shape [N, 1, 40]); models differ."""

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        return _load_mnist1d()


class MNIST1DCNN(_MNIST1D):
    """Three 1-D conv layers (32 channels; two stride-2) and a linear head."""

    name = "mnist1d-cnn"
    description = "MNIST-1D (3500/500/1000, generated offline), 3-layer 1-D CNN; seconds on a CPU"
    # Measured on one CPU core: ~5.5 s (+2.3 s generating the data once per process); Adam at
    # lr 1e-2 passes 0.90 by step 400-600 and ends at 0.93-0.96, at lr 3e-3 by step ~1100.
    target = 0.90
    default_budget = Budget(steps=1500, batch_size=64, eval_every=100)

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2),
            make_activation(self.activation),
            nn.Conv1d(32, 32, 3, stride=2, padding=1),
            make_activation(self.activation),
            nn.Conv1d(32, 32, 3, stride=2, padding=1),
            make_activation(self.activation),
            nn.Flatten(),
            nn.Linear(32 * SEQ_LEN // 4, 10),
        )


class MNIST1DMLP(_MNIST1D):
    """Two hidden layers of 100 units."""

    name = "mnist1d-mlp"
    description = "MNIST-1D (3500/500/1000, generated offline), MLP 40-100-100-10; seconds on a CPU"
    # Measured on one CPU core: ~2 s; the MLP overfits and its val accuracy plateaus at 0.60-0.64;
    # Adam at lr 1e-2 passes 0.58 by step ~600, at lr 3e-3 by step 600-1200.
    target = 0.58
    default_budget = Budget(steps=2000, batch_size=64, eval_every=100)

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(SEQ_LEN, 100),
            make_activation(self.activation),
            nn.Linear(100, 100),
            make_activation(self.activation),
            nn.Linear(100, 10),
        )
