"""The workload contract: data, model, loss, metric, default budget and target.

A workload never sees the optimizer; the runner connects the two (the AlgoPerf split between
workload and algorithm). Every workload is deterministic given its seed and needs no download.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Budget:
    """How long one training run lasts and how often it is evaluated on the validation split."""

    steps: int
    batch_size: int
    eval_every: int


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and the workload's metric on one split."""

    loss: float
    metric: float


class Workload(abc.ABC):
    """Data + model + loss + metric + default budget + target.

    Subclasses set the class attributes and implement the abstract methods. ``options`` are the
    workload's own knobs (e.g. ``activation``, ``depth``, ``data_dir``); unknown options raise.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    metric_name: ClassVar[str]  # e.g. "accuracy" or "loss"
    higher_is_better: ClassVar[bool]
    target: ClassVar[float]  # validation metric counted as "reached" for time-to-target
    default_budget: ClassVar[Budget]

    @abc.abstractmethod
    def init_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights."""

    @abc.abstractmethod
    def train_batches(self, seed: int, batch_size: int) -> Iterator[Batch]:
        """An endless, seeded stream of (augmented) training batches."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean training loss of ``model`` on ``batch`` (a scalar that requires grad)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> Evaluation:
        """Loss and metric on ``split`` ("train", "val" or "test"), in eval mode, without grad."""

    def reached(self, metric: float) -> bool:
        """Whether a validation ``metric`` meets the workload's target."""
        return metric >= self.target if self.higher_is_better else metric <= self.target


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
