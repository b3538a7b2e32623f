"""Robust aggregation (diffgrad.distributed.robust) as a DDP hook on 4 gloo ranks, one of them
faulty: the robust aggregate keeps the honest mean's direction under every attack where the plain
mean loses it to at least one, and bad settings are refused."""

from __future__ import annotations

import pytest
import torch

from diffgrad.distributed.robust import coordinate_median, nearest_neighbour_mixing, trimmed_mean
from wire_cases import pool4, robust_error_task, robust_task

D = 64
STEPS = 3
HONEST = torch.linspace(-1.0, 1.0, D, dtype=torch.float64).sin_().add_(0.3)
ATTACKS = {"sign_flip": 10.0, "noise": 30.0, "alie": 3.0}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def _worst_cosine(settings: dict) -> float:
    ranks = pool4().run(robust_task, settings, HONEST, 0.3, STEPS, world_size=4)
    for rank in ranks[1:]:  # every rank gets the same aggregate
        assert all(torch.equal(a, b) for a, b in zip(rank["aggregated"], ranks[0]["aggregated"]))
    return min(_cosine(a, h) for a, h in zip(ranks[0]["aggregated"], ranks[0]["honest_mean"]))


@pytest.fixture(scope="module")
def cosines():
    out = {}
    for attack, strength in ATTACKS.items():
        for aggregator in ("mean", "cwtm", "median"):
            settings = {"f": 1, "aggregator": aggregator, "attack": attack, "faulty_ranks": [3], "strength": strength}
            out[attack, aggregator] = _worst_cosine(settings)
    return out


@pytest.mark.parametrize("aggregator", ["cwtm", "median"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_robust_aggregate_keeps_the_honest_direction(cosines, attack, aggregator) -> None:
    assert cosines[attack, aggregator] > 0.9, cosines


def test_the_plain_mean_is_steered_by_one_faulty_rank(cosines) -> None:
    """The control that gives the test above its power: the attacks are strong enough to turn the mean."""
    assert cosines["sign_flip", "mean"] < 0.0 and cosines["noise", "mean"] < 0.5, cosines


def test_without_faults_cwtm_with_mixing_stays_close_to_the_mean() -> None:
    assert _worst_cosine({"f": 1, "aggregator": "cwtm"}) > 0.98


def test_worker_momentum_and_bytes() -> None:
    ranks = pool4().run(robust_task, {"f": 1, "momentum": 0.9}, HONEST, 0.3, STEPS, world_size=4)
    assert ranks[0]["bytes"] == {"all_gather": STEPS * 3 * D * 8}  # (n−1)·numel·8 bytes per step


def test_aggregators_on_known_rows() -> None:
    rows = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [100.0, -100.0]])
    assert trimmed_mean(rows, 1).tolist() == [1.5, 10.5]
    assert coordinate_median(rows).tolist() == [1.5, 10.5]
    mixed = nearest_neighbour_mixing(rows, 1)
    assert mixed[0].tolist() == [1.0, 11.0]  # the three nearest of row 0: rows 0, 1, 2
    assert mixed[3].tolist() == pytest.approx([(100.0 + 0.0 + 1.0) / 3, (-100.0 + 10.0 + 11.0) / 3])  # rows 3, 0, 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"f": 2}, "Invalid f: 2 faulty of 4 ranks; 'cwtm' needs more than 2f ranks (at least 5)"),
        ({"f": -1}, "Invalid f: -1"),
        ({"f": 1, "aggregator": "krum"}, "Invalid aggregator: 'krum'"),
        ({"f": 1, "attack": "flip"}, "Invalid attack: 'flip'"),
        ({"f": 1, "attack": "alie"}, "attack 'alie' needs faulty_ranks"),
        ({"f": 1, "faulty_ranks": [4]}, "Invalid faulty_ranks: [4] not in 0..3"),
        ({"f": 1, "momentum": 1.0}, "Invalid momentum: 1.0"),
    ],
)
def test_bad_settings_raise_clear_errors(settings, message) -> None:
    assert all(message in got for got in pool4().run(robust_error_task, settings, world_size=4))
