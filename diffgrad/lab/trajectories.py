"""Optimizer paths on the analytic functions, computed once and kept in the results database.

Trajectories are pictures, not evidence (a function with two minima says little about a network),
but they are what users look at first. Like every other number, they live in the database as
artifacts, keyed by function, optimizer and settings, so reports only read them.
"""

from __future__ import annotations

import json
from typing import Any

from diffgrad.lab.registry import create_optimizer
from diffgrad.lab.storage import artifact
from diffgrad.lab.workloads.analytic import FUNCTIONS, trajectory

PREFIX = "trajectory/"
# Settings shared by every optimizer in a comparison: the paper's lr and length for its 1-D
# functions (Sec. V), a smaller lr and more steps for the 2-D ones.
STANDARD: dict[str, dict[str, Any]] = {
    **{name: {"steps": 300, "lr": 0.1} for name in ("F1", "F2", "F3")},
    **{name: {"steps": 500, "lr": 0.05} for name in ("rosenbrock", "beale", "rastrigin")},
}


def trajectory_key(function: str, optimizer: str, steps: int, hparams: dict[str, Any]) -> str:
    return f"{PREFIX}{function}/{optimizer}/{steps}/{json.dumps(hparams, sort_keys=True)}"


def stored_trajectory(storage: Any, function: str, optimizer: str, *, steps: int, **hparams: Any) -> dict[str, Any]:
    """``optimizer``'s path on ``function`` from the database (computed and stored first if missing):
    ``{"function", "optimizer", "steps", "hparams", "xs": [[θ…] per iteration], "losses": […]}``."""

    def compute() -> dict[str, Any]:
        path = trajectory(FUNCTIONS[function], lambda ps: create_optimizer(optimizer, ps, **hparams), steps)
        return {
            "function": function,
            "optimizer": optimizer,
            "steps": steps,
            "hparams": hparams,
            "xs": path.xs.tolist(),
            "losses": path.losses.tolist(),
        }

    return artifact(storage, trajectory_key(function, optimizer, steps, hparams), compute)


def record_trajectories(storage: Any, optimizers: list[str]) -> None:
    """Store every optimizer's path on every analytic function at the :data:`STANDARD` settings."""
    for function, settings in STANDARD.items():
        for optimizer in optimizers:
            stored_trajectory(storage, function, optimizer, **settings)
