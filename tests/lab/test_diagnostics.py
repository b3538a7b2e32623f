"""Friction diagnostics and the loss scale: what the training loop records, and how the lab plans and
names loss-scaled runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffgrad.lab import runner
from diffgrad.lab.diagnostics import friction_curves, friction_summary, layer_kinds, run_average
from diffgrad.lab.storage import load_records
from diffgrad.lab.train import train
from diffgrad.lab.workloads.base import Budget
from test_runner import TinyWorkload, _one_thread  # noqa: F401  (the tiny workload and its fixture)

BUDGET = Budget(steps=20, batch_size=16, eval_every=8)


def test_layer_kinds() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(4, 2), nn.Embedding(3, 2))
    assert layer_kinds(model) == {
        "0.weight": "conv",
        "0.bias": "bias",
        "1.weight": "norm",
        "1.bias": "bias",
        "3.weight": "linear",
        "3.bias": "bias",
        "4.weight": "embedding",
    }


def test_friction_summary_statistics() -> None:
    model = nn.Linear(100, 1)
    xi = {model.weight: torch.linspace(0.5, 0.6, 100).reshape(1, 100), model.bias: torch.tensor([0.9])}
    summary = friction_summary(model, xi)
    weight = summary["tensors"]["weight"]
    assert weight["kind"] == "linear" and weight["numel"] == 100
    assert weight["mean"] == pytest.approx(0.55) and weight["q50"] == pytest.approx(0.55)
    assert weight["q05"] == pytest.approx(0.505) and weight["q95"] == pytest.approx(0.595)
    assert weight["near_half"] == pytest.approx(0.1)  # 10 of 100 within 0.01 of ½
    everything = summary["groups"]["all"]
    assert everything["numel"] == 101 and everything["mean"] == pytest.approx((55 + 0.9) / 101)
    assert summary["groups"]["bias"]["near_half"] == 0.0


def test_friction_curves_average_runs_at_shared_steps() -> None:
    def run(mean: float, steps: tuple[int, ...]) -> list[dict]:
        stats = {"mean": mean, "q05": mean, "q50": mean, "q95": mean, "near_half": 1.0, "numel": 1}
        return [{"step": s, "tensors": {}, "groups": {"all": stats, "linear": stats}} for s in steps]

    curves = friction_curves([run(0.5, (8, 16)), run(0.7, (8, 16, 20))])
    assert list(curves) == ["all", "linear"]  # overall first
    assert curves["all"]["steps"] == [8.0, 16.0] and curves["all"]["mean"] == pytest.approx([0.6, 0.6])
    assert run_average(run(0.5, (8, 16)), "near_half") == 1.0 and run_average([], "near_half") is None
    assert run_average(run(0.5, (8, 16)) + run(0.7, (20,)), "mean") == pytest.approx(0.7 / 3 + 1 / 3)


def test_train_records_friction_at_each_evaluation_only_for_diffgrad() -> None:
    result = train(TinyWorkload(), "diffgrad", {"lr": 1e-2}, seed=1, budget=BUDGET)
    assert [entry["step"] for entry in result.friction] == result.steps == [8, 16, 20]
    first = result.friction[0]
    assert set(first["tensors"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(first["groups"]) == {"all", "linear", "bias"}
    assert all(0.5 <= g["q05"] <= g["q50"] <= g["q95"] < 1 for g in first["groups"].values())
    assert train(TinyWorkload(), "adam", {"lr": 1e-2}, seed=1, budget=BUDGET).friction == []
    assert train(TinyWorkload(), "diffgrad-published", {"lr": 1e-2}, seed=1, budget=BUDGET).friction == []


def test_recording_friction_does_not_change_the_run() -> None:
    # The probe only reads state: the same run with a different evaluation cadence ends identically.
    sparse = train(TinyWorkload(), "diffgrad", {"lr": 1e-2}, seed=2, budget=Budget(20, 16, 20))
    dense = train(TinyWorkload(), "diffgrad", {"lr": 1e-2}, seed=2, budget=Budget(20, 16, 1))
    assert len(dense.friction) == 20 and len(sparse.friction) == 1
    assert dense.val_metric[-1] == sparse.val_metric[-1] and dense.val_loss[-1] == sparse.val_loss[-1]


def test_loss_scale_leaves_adam_and_moves_diffgrad() -> None:
    # A power of two scales every gradient exactly; with ε negligible Adam's steps are unchanged.
    def run(optimizer: str, scale: float):
        return train(TinyWorkload(), optimizer, {"lr": 1e-2, "eps": 1e-30}, seed=1, budget=BUDGET, loss_scale=scale)

    assert run("adam", 64.0).val_loss == run("adam", 1.0).val_loss
    assert run("adam", 64.0).train_loss == run("adam", 1.0).train_loss  # recorded unscaled
    scaled, plain = run("diffgrad", 64.0), run("diffgrad", 1.0)
    assert scaled.val_loss != plain.val_loss
    assert scaled.friction[-1]["groups"]["all"]["mean"] > plain.friction[-1]["groups"]["all"]["mean"]


def test_loss_scale_names_the_study_and_reaches_the_records(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    plan = runner.plan_study(TinyWorkload(), "adam", protocol="paper", seeds=1, loss_scale=100)
    assert plan.name == "tiny[loss_scale=100]/adam/paper"
    assert runner.plan_study(TinyWorkload(), "adam", protocol="paper", loss_scale=1.0).name == "tiny/adam/paper"
    for bad in (0, -1.0, math.inf, math.nan, True):
        with pytest.raises(runner.ConfigError, match="loss_scale must be a positive, finite number"):
            runner.plan_study(TinyWorkload(), "adam", protocol="paper", loss_scale=bad)
    runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=1, storage=url, progress=False, loss_scale=100)
    runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=1, storage=url, progress=False)
    assert sorted(r.loss_scale for r in load_records(url)) == [1.0, 100.0]
