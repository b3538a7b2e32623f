"""Pieces shared by the workloads: seeded initialisation, fixed splits, evaluation mode, and a
base class for classification on in-memory tensors (digits, MNIST-1D, CIFAR)."""

from __future__ import annotations

import abc
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import check_activation
from .base import Batch, Evaluation, Workload, check_split, seeded_generator


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def fixed_split(n: int, sizes: Sequence[int], seed: int = 0) -> list[Tensor]:
    """Disjoint index tensors of the given ``sizes``, cut in order from one fixed permutation of
    ``range(n)``; the split depends only on ``seed``, never on a training seed."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {tuple(sizes)} need {sum(sizes)} items, only {n} exist")
    perm = torch.randperm(n, generator=seeded_generator(seed))
    bounds = [0, *itertools.accumulate(sizes)]
    return [perm[a:b] for a, b in itertools.pairwise(bounds)]


def epochs_to_steps(epochs: int, train_size: int, batch_size: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``train_size`` items; the last batch of an epoch
    may be partial, as with a DataLoader's ``drop_last=False``."""
    return epochs * math.ceil(train_size / batch_size)


def is_int(value: object) -> bool:
    """An integer (NumPy's too, as samplers hand out), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_batch_size(batch_size: int, train_size: int) -> None:
    """Raise ValueError unless ``batch_size`` is an int in [1, ``train_size``]."""
    if not is_int(batch_size) or not 1 <= batch_size <= train_size:
        raise ValueError(f"batch_size must be an int in [1, {train_size}], got {batch_size!r}")


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives, so CPU-built batches can follow it."""
    return next(model.parameters()).device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; the model's previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class ClassificationWorkload(Workload):
    """Classification on fixed in-memory train/val/test tensors with cross-entropy and accuracy.

    Subclasses provide :meth:`load_splits` and :meth:`build_model`; they may override
    :meth:`augment` (training batches only, e.g. random crops) and :meth:`preprocess` (every batch,
    e.g. uint8 -> normalised float), which lets large image sets stay compact in memory.
    """

    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    eval_batch_size: ClassVar[int] = 1000

    def __init__(self, *, activation: str = "relu") -> None:
        self.activation = check_activation(activation)

    @abc.abstractmethod
    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """(inputs, int64 labels) for each of "train", "val", "test"; called once per instance."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A new model, initialised from torch's global RNG (seeded by :meth:`init_model`)."""

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random training-time augmentation of a raw batch; none by default."""
        return x

    def preprocess(self, x: Tensor) -> Tensor:
        """Turn a raw (possibly augmented) batch into model input; identity by default."""
        return x

    @functools.cached_property
    def _splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        return self.load_splits()

    def data(self, split: str) -> tuple[Tensor, Tensor]:
        """The raw (inputs, labels) of ``split``; shared tensors, do not modify them."""
        check_split(split)
        return self._splits[split]

    def init_model(self, seed: int) -> nn.Module:
        return seeded_init(seed, self.build_model)

    def train_batches(self, seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless epochs, each a fresh seeded permutation of the training split."""
        x, y = self.data("train")
        check_batch_size(batch_size, len(y))
        return self._epochs(x, y, batch_size, seeded_generator(seed))

    def _epochs(self, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            for idx in torch.randperm(len(y), generator=generator).split(batch_size):
                yield self.preprocess(self.augment(x[idx], generator)), y[idx]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        device = model_device(model)
        x, y = batch
        return F.cross_entropy(model(x.to(device)), y.to(device))

    def evaluate(self, model: nn.Module, split: str) -> Evaluation:
        x, y = self.data(split)
        device = model_device(model)
        total_loss, correct = 0.0, 0
        with evaluating(model):
            for xb, yb in zip(x.split(self.eval_batch_size), y.split(self.eval_batch_size)):
                logits = model(self.preprocess(xb).to(device))
                yb = yb.to(device)
                total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == yb).sum().item())
        return Evaluation(loss=total_loss / len(y), metric=correct / len(y))
