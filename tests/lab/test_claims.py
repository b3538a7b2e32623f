"""The claims module: every rule gives each of its three outcomes on constructed numbers, and no other."""

from __future__ import annotations

import math

import pytest

from diffgrad.lab import claims as cl
from diffgrad.lab.report.stats import MeanCI

NAN = math.nan


def _ranking(scores: dict[str, tuple[float, float]], n: int = 3, higher_is_better: bool = True) -> cl.Ranking:
    return cl.Ranking("w", {o: MeanCI(mean, hw, n) for o, (mean, hw) in scores.items()}, higher_is_better)


def test_a_claim_has_one_of_three_verdicts() -> None:
    assert cl.VERDICTS == ("held", "did not hold", "inconclusive")
    with pytest.raises(ValueError, match="verdict must be one of"):
        cl.Claim("s", "t", "measured", "e")


@pytest.mark.parametrize(
    ("verdicts", "every", "some"),
    [
        (["held", "held"], "held", "held"),
        (["held", "inconclusive"], "inconclusive", "held"),
        (["held", "did not hold"], "did not hold", "held"),
        (["did not hold", "did not hold"], "did not hold", "did not hold"),
        (["did not hold", "inconclusive"], "did not hold", "inconclusive"),
        ([], "inconclusive", "inconclusive"),
    ],
)
def test_every_and_some(verdicts: list[str], every: str, some: str) -> None:
    assert cl.every(verdicts) == every and cl.some(verdicts) == some


def test_better_claim_needs_cis_apart() -> None:
    def verdict(a: tuple[float, float], b: tuple[float, float], n: int = 3, higher: bool = True) -> str:
        return cl.better_claim("a beats b", [_ranking({"a": a, "b": b}, n, higher)], "a", "b").verdict

    assert verdict((0.9, 0.01), (0.8, 0.01)) == "held"
    assert verdict((0.8, 0.01), (0.9, 0.01)) == "did not hold"
    assert verdict((0.85, 0.05), (0.8, 0.05)) == "inconclusive"  # ahead, CIs overlap
    assert verdict((0.9, NAN), (0.1, NAN), n=1) == "inconclusive"  # one seed: no CI
    assert verdict((0.8, 0.01), (0.9, 0.01), higher=False) == "held"  # lower is better
    # Every ranking must hold; one failure refutes.
    rankings = [_ranking({"a": (0.9, 0.01), "b": (0.8, 0.01)}), _ranking({"a": (0.7, 0.01), "b": (0.8, 0.01)})]
    claim = cl.better_claim("a beats b", rankings, "a", "b")
    assert claim.verdict == "did not hold" and "better" in claim.evidence and "worse" in claim.evidence


def test_best_claim() -> None:
    def best(scores: dict[str, tuple[float, float]]) -> cl.Claim:
        return cl.best_claim("d is best", [_ranking(scores)], "d")

    assert best({"d": (0.9, 0.01), "a": (0.8, 0.01), "b": (0.7, 0.01)}).verdict == "held"
    lost = best({"d": (0.5, 0.01), "a": (0.9, 0.01), "b": (0.6, 0.01)})
    assert lost.verdict == "did not hold" and "(rank 3 of 3); best a 0.9 ± 0.01" in lost.evidence
    close = best({"d": (0.9, 0.05), "a": (0.88, 0.05), "b": (0.5, 0.01)})
    assert close.verdict == "inconclusive" and "runner-up a" in close.evidence


def test_some_better_claim() -> None:
    def claim(v1: float, v2: float) -> cl.Claim:
        return cl.some_better_claim("a variant beats d", [_ranking({"d": (0.8, 0.01), "v1": (v1, 0.01), "v2": (v2, 0.01)})],
                                    ("v1", "v2"), "d")  # fmt: skip

    assert claim(0.9, 0.7).verdict == "held"
    assert claim(0.7, 0.7).verdict == "did not hold"
    assert claim(0.805, 0.7).verdict == "inconclusive"


def _paired(by_scale: dict[float, list[float]]) -> dict[float, dict[int, float]]:
    return {s: dict(enumerate(values, start=1)) for s, values in by_scale.items()}


def test_invariance_claim() -> None:
    base = [0.90, 0.92, 0.91]
    same = _paired({0.01: base, 1.0: base, 100.0: base})
    assert cl.invariance_claim("x", same, tolerance=0.01).verdict == "held"
    moved = _paired({0.01: base, 1.0: base, 100.0: [v - 0.2 for v in base]})
    claim = cl.invariance_claim("x", moved, tolerance=0.01)
    assert claim.verdict == "did not hold" and "s = 100" in claim.evidence
    noisy = _paired({1.0: base, 100.0: [0.90, 0.95, 0.88]})  # mean change within, CI not
    assert cl.invariance_claim("x", noisy, tolerance=0.01).verdict == "inconclusive"
    one_seed = {1.0: {1: 0.9}, 100.0: {1: 0.9}}
    assert cl.invariance_claim("x", one_seed, tolerance=0.01).verdict == "inconclusive"


def test_changes_claim() -> None:
    base = [0.90, 0.92, 0.91]
    assert cl.changes_claim("x", _paired({1.0: base, 100.0: [v + 0.1 for v in base]}), tolerance=0.01).verdict == "held"
    assert cl.changes_claim("x", _paired({1.0: base, 100.0: base}), tolerance=0.01).verdict == "did not hold"
    assert cl.changes_claim("x", _paired({1.0: base, 100.0: [0.90, 0.95, 0.88]}), tolerance=0.01).verdict == (
        "inconclusive"
    )


def test_equivalent_claim() -> None:
    a = {1: 0.90, 2: 0.92, 3: 0.91}
    assert cl.equivalent_claim("x", a, dict(a), tolerance=0.01).verdict == "held"
    assert cl.equivalent_claim("x", a, {s: v + 0.1 for s, v in a.items()}, tolerance=0.01).verdict == "did not hold"
    assert cl.equivalent_claim("x", a, {1: 0.90, 2: 0.95, 3: 0.88}, tolerance=0.01).verdict == "inconclusive"


def test_near_half_claim() -> None:
    assert cl.near_half_claim("x", {"r1": 0.99, "r2": 0.95}).verdict == "held"
    assert cl.near_half_claim("x", {"r1": 0.99, "r2": 0.5}).verdict == "did not hold"
    assert cl.near_half_claim("x", {}).verdict == "inconclusive"


def test_overshoot_claim() -> None:
    def verdict(d: float, a: float, motion: float = 0.0) -> str:
        return cl.overshoot_claim(
            "x", cl.OneD(d, 0.1, motion), cl.OneD(a, 0.1, 0.0), global_min=-0.3, tolerance=0.01
        ).verdict

    assert verdict(-0.3001, 0.2001) == "held"
    assert verdict(0.2, 0.2) == "did not hold"  # diffGrad misses it too
    assert verdict(-0.3, -0.3) == "did not hold"  # Adam does not overshoot
    assert verdict(-0.3, 0.2, motion=0.5) == "inconclusive"  # still moving: the horizon decides
    assert verdict(NAN, 0.2) == "inconclusive"


def test_calmer_claim() -> None:
    def verdict(d_final: float, d_osc: float, a_osc: float = 1.0) -> str:
        return cl.calmer_claim(
            "x", cl.OneD(d_final, d_osc, 0.0), cl.OneD(0.0, a_osc, 0.0), global_min=0.0, tolerance=0.01, margin=0.1
        ).verdict

    assert verdict(0.0, 0.5) == "held"
    assert verdict(0.0, 1.2) == "did not hold"
    assert verdict(0.5, 0.5) == "did not hold"  # does not reach the minimum
    assert verdict(0.0, 0.95) == "inconclusive"  # calmer by less than the margin


def test_rate_claim() -> None:
    assert cl.rate_claim("x", -0.6, 100_000).verdict == "held"
    lost = cl.rate_claim("x", -0.2, 100_000)
    assert lost.verdict == "did not hold" and "≤ -0.4" in lost.test
    short = cl.rate_claim("x", -0.26, 3_000)
    assert short.verdict == "inconclusive" and "horizon below 10,000" in short.evidence
    assert cl.rate_claim("x", None, 100_000).verdict == "inconclusive"
