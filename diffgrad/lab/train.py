"""The lab's one training loop: a workload, an optimizer by name, a seed, a budget and a schedule.

Everything that could favour one optimizer is the same for all of them: the model's initial
weights and the order of batches depend only on the seed, every optimizer gets the same learning
rate schedule, gradients are freshly allocated each step (``zero_grad(set_to_none=True)``), and
the run stops at the first non-finite loss.

``loss_scale`` multiplies the training loss before the backward pass (so every gradient), for the
loss-scale experiment: Adam's steps do not depend on it (up to ε), diffGrad's friction does. The
recorded losses are the workload's own, unscaled. For diffGrad, the friction ξ of each step that
is followed by an evaluation is recorded (:mod:`diffgrad.lab.diagnostics`); other steps run as they
are.

Timing follows AlgoPerf: ``wall_time`` and ``time_to_target`` count training time only (batches,
forward, backward, optimizer step), not the evaluations, whose cost does not depend on the
optimizer, nor the recording of ξ; ``total_wall_time`` is the whole run, evaluations included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler, MultiStepLR

from diffgrad.lab.diagnostics import friction_summary
from diffgrad.lab.registry import PublishedDiffGrad, create_optimizer
from diffgrad.lab.workloads.base import Budget, Workload
from diffgrad.optim import DiffGrad, record_friction

__all__ = ["SCHEDULES", "RunResult", "make_schedule", "train", "worst_metric"]

# The paper's schedule (docs/paper.md §6): lr for epochs 1–80 of 100, then lr/10.
STEP_DECAY_AT = 0.8
STEP_DECAY_FACTOR = 0.1


def _constant(optimizer: Optimizer, steps: int) -> LRScheduler:
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def _step(optimizer: Optimizer, steps: int) -> LRScheduler:
    return MultiStepLR(optimizer, milestones=[round(STEP_DECAY_AT * steps)], gamma=STEP_DECAY_FACTOR)


SCHEDULES: dict[str, Callable[[Optimizer, int], LRScheduler]] = {"constant": _constant, "step": _step}


def make_schedule(name: str, optimizer: Optimizer, steps: int) -> LRScheduler:
    """The learning-rate schedule ``name`` over a run of ``steps`` optimizer steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](optimizer, steps)


@dataclass
class RunResult:
    """What one training run measured (the fields of a :class:`~diffgrad.lab.storage.RunRecord`
    that do not identify the run)."""

    seed: int
    hparams: dict[str, Any]
    steps: list[int]
    val_metric: list[float]
    val_loss: list[float]
    train_loss: list[float]
    wall_time: list[float]
    final_val_metric: float
    test_metric: float | None
    test_loss: float | None
    steps_to_target: int | None
    time_to_target: float | None
    total_wall_time: float
    diverged: bool
    friction: list[dict[str, Any]] = field(default_factory=list)  # ξ at each evaluation (diffGrad only)


def worst_metric(workload: Workload) -> float:
    """The score of a diverged run: worse than any finite value of the workload's metric."""
    return -math.inf if workload.higher_is_better else math.inf


@contextmanager
def _deterministic() -> Iterator[None]:
    # Free on CPU; on GPUs it selects deterministic kernels (warn_only: never fail a run over it).
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def train(
    workload: Workload,
    optimizer_name: str,
    hparams: Mapping[str, Any],
    *,
    seed: int,
    budget: Budget,
    schedule: str = "constant",
    test: bool = False,
    device: str | torch.device = "cpu",
    on_eval: Callable[[int, float], None] | None = None,
    loss_scale: float = 1.0,
) -> RunResult:
    """Train ``workload``'s model with optimizer ``optimizer_name`` for ``budget.steps`` steps.

    The validation split is evaluated every ``budget.eval_every`` steps and after the last step;
    ``on_eval(step, val_metric)`` is called after each evaluation (progress bars, Optuna's
    ``trial.report``). ``test=True`` adds a final evaluation on the test split — only final runs
    ask for it, so selection never sees test. A non-finite training or validation loss stops the
    run: it is marked diverged and its final scores are the workload's worst. ``loss_scale``
    multiplies the loss that is differentiated (not the recorded one).

    The same (workload, optimizer, hparams, seed, budget, schedule) gives the same numbers on the
    same machine: global RNGs are seeded with ``seed`` inside a forked RNG state (dropout and the
    like), the workload seeds initial weights and batch order, and deterministic algorithms are on.
    """
    started = time.perf_counter()
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = workload.init_model(seed).to(device)
        model.train()
        optimizer = create_optimizer(optimizer_name, model.parameters(), **hparams)
        scheduler = make_schedule(schedule, optimizer, budget.steps)
        batches = workload.train_batches(seed, budget.batch_size)

        curve: dict[str, list] = {"steps": [], "val_metric": [], "val_loss": [], "train_loss": [], "wall_time": []}
        friction: list[dict[str, Any]] = []
        # The published code's ξ is ½ by construction after step 1 (registry.PublishedDiffGrad).
        probe_friction = isinstance(optimizer, DiffGrad) and not isinstance(optimizer, PublishedDiffGrad)
        steps_to_target = time_to_target = None
        train_time = loss_sum = 0.0
        losses_since_eval = 0
        diverged = False
        for step in range(1, budget.steps + 1):
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = workload.loss(model, next(batches))
            loss_value = loss.item()  # also a device sync, so the timing below is honest
            if not math.isfinite(loss_value):
                diverged = True
                break
            (loss * loss_scale if loss_scale != 1.0 else loss).backward()
            evaluated = step % budget.eval_every == 0 or step == budget.steps
            xi = None
            if probe_friction and evaluated:
                # The probe's own work (a copy of g_{t−1} before the step, ξ after it) is not
                # training: only the step inside it counts.
                train_time += time.perf_counter() - tick
                with record_friction(optimizer) as xi:
                    tick = time.perf_counter()
                    optimizer.step()
                    train_time += time.perf_counter() - tick
                tick = time.perf_counter()
            else:
                optimizer.step()
            scheduler.step()
            train_time += time.perf_counter() - tick
            loss_sum += loss_value
            losses_since_eval += 1

            if not evaluated:
                continue
            val = workload.evaluate(model, "val")
            if not math.isfinite(val.loss):
                diverged = True
                break
            for key, value in zip(curve, (step, val.metric, val.loss, loss_sum / losses_since_eval, train_time)):
                curve[key].append(value)
            loss_sum, losses_since_eval = 0.0, 0
            if xi:
                friction.append({"step": step, **friction_summary(model, xi)})
            if steps_to_target is None and workload.reached(val.metric):
                steps_to_target, time_to_target = step, train_time
            if on_eval is not None:
                on_eval(step, val.metric)

        worst = worst_metric(workload)
        if diverged:
            final_val_metric, test_metric, test_loss = worst, (worst if test else None), (math.inf if test else None)
        else:
            final_val_metric = curve["val_metric"][-1]
            test_metric = test_loss = None
            if test:
                evaluation = workload.evaluate(model, "test")
                test_metric, test_loss = evaluation.metric, evaluation.loss

    return RunResult(
        seed=seed,
        hparams=dict(hparams),
        **curve,
        final_val_metric=final_val_metric,
        test_metric=test_metric,
        test_loss=test_loss,
        steps_to_target=steps_to_target,
        time_to_target=time_to_target,
        total_wall_time=time.perf_counter() - started,
        diverged=diverged,
        friction=friction,
    )
