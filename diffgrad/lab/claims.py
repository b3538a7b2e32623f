"""The report's verdicts: one rule for every claim.

A :class:`Claim` states what is claimed, the test applied to the measurement (its tolerances
and the budget it needs included) and exactly one of three outcomes:

* **held** — the measurement passes the test;
* **did not hold** — the measurement fails it;
* **inconclusive** — the measurement cannot decide: the confidence intervals overlap, there are
  too few seeds for an interval, the horizon is too short for the rate to show, a run is still
  moving when it stops, or nothing was recorded.

Comparisons of trained runs use 95 % confidence intervals over seeds (Student t): better or
worse only when the two intervals are apart. Deterministic experiments (the 1-D functions, the
regret problems) state a tolerance instead. Every function here is pure: numbers in, a claim out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diffgrad.lab.report.stats import MeanCI, fmt_ci, mean_ci

__all__ = [
    "CI_TEST",
    "HELD",
    "INCONCLUSIVE",
    "NOT_HELD",
    "VERDICTS",
    "Claim",
    "OneD",
    "Ranking",
    "best_claim",
    "better_claim",
    "calmer_claim",
    "changes_claim",
    "equivalent_claim",
    "every",
    "invariance_claim",
    "near_half_claim",
    "overshoot_claim",
    "rate_claim",
    "some",
    "some_better_claim",
]

HELD = "held"
NOT_HELD = "did not hold"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)

CI_TEST = "95 % CIs over seeds; held or did not hold only when they are apart"


@dataclass(frozen=True)
class Claim:
    """One claim, the test its measurement went through, and the outcome."""

    statement: str
    test: str
    verdict: str
    evidence: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def every(verdicts: Sequence[str]) -> str:
    """The verdict on a claim that must hold in every case (e.g. at every batch size)."""
    if NOT_HELD in verdicts:
        return NOT_HELD
    return HELD if verdicts and all(v == HELD for v in verdicts) else INCONCLUSIVE


def some(verdicts: Sequence[str]) -> str:
    """The verdict on a claim that must hold in at least one case."""
    if HELD in verdicts:
        return HELD
    return NOT_HELD if verdicts and all(v == NOT_HELD for v in verdicts) else INCONCLUSIVE


# ------------------------------------------------------------------ trained runs: 95 % CIs


# The outcome of one score against another, and the verdict it gives "the first is better".
OUTCOME_VERDICTS = {"better": HELD, "worse": NOT_HELD, "CIs overlap": INCONCLUSIVE, "too few seeds": INCONCLUSIVE}


@dataclass(frozen=True)
class Ranking:
    """Scores to compare, each a mean and 95 % CI over seeds: the optimizers on one workload of a tuned
    comparison, or the entries of a paper-protocol table at one batch size."""

    workload: str
    scores: Mapping[str, MeanCI]
    higher_is_better: bool

    @property
    def ranked(self) -> list[str]:
        """The names, best mean first; those without a finite score last."""
        sign = 1 if self.higher_is_better else -1
        return sorted(self.scores, key=lambda o: (math.isnan(self.scores[o].mean), -sign * self.scores[o].mean))

    def rank(self, name: str) -> int:
        return self.ranked.index(name) + 1

    def lead(self, a: str, b: str) -> float:
        """How far ``a``'s mean is ahead of ``b``'s in the metric's better direction (negative: behind)."""
        gap = self.scores[a].mean - self.scores[b].mean
        return gap if self.higher_is_better else -gap

    def versus(self, a: str, b: str) -> str:
        """A key of :data:`OUTCOME_VERDICTS`: better or worse only when the two 95 % CIs are apart."""
        if min(self.scores[a].n, self.scores[b].n) < 2:
            return "too few seeds"
        lead = self.lead(a, b)
        if abs(lead) <= self.scores[a].half_width + self.scores[b].half_width:
            return "CIs overlap"
        return "better" if lead > 0 else "worse"

    def standing(self, name: str) -> str:
        """``name``'s score and rank, and the best other one's (the runner-up when it leads)."""
        ranked = self.ranked
        rank = ranked.index(name) + 1
        text = f"{name} {fmt_ci(self.scores[name])} (rank {rank} of {len(ranked)})"
        if len(ranked) < 2:
            return text
        rival = ranked[1] if rank == 1 else ranked[0]
        return f"{text}; {'runner-up' if rank == 1 else 'best'} {rival} {fmt_ci(self.scores[rival])}"


def best_verdict(ranking: Ranking, name: str) -> str:
    """ "``name`` is the best": held when better than every other, did not hold when another is better."""
    outcomes = [ranking.versus(name, other) for other in ranking.scores if other != name]
    if "worse" in outcomes:
        return NOT_HELD
    return HELD if outcomes and all(o == "better" for o in outcomes) else INCONCLUSIVE


def best_claim(statement: str, rankings: Sequence[Ranking], name: str) -> Claim:
    """``name`` is the best in every ranking (e.g. at every batch size)."""
    verdicts = [best_verdict(r, name) for r in rankings]
    evidence = "; ".join(f"{r.workload}: {r.standing(name)}: {v}" for r, v in zip(rankings, verdicts))
    return Claim(statement, CI_TEST, every(verdicts), evidence)


def better_claim(statement: str, rankings: Sequence[Ranking], a: str, b: str) -> Claim:
    """``a`` is better than ``b`` in every ranking."""
    outcomes = [r.versus(a, b) for r in rankings]
    evidence = "; ".join(
        f"{r.workload}: {a} {fmt_ci(r.scores[a])} (rank {r.rank(a)} of {len(r.scores)}), "
        f"{b} {fmt_ci(r.scores[b])} (rank {r.rank(b)}): {o}"
        for r, o in zip(rankings, outcomes)
    )
    return Claim(statement, CI_TEST, every([OUTCOME_VERDICTS[o] for o in outcomes]), evidence)


def some_better_claim(statement: str, rankings: Sequence[Ranking], candidates: Sequence[str], b: str) -> Claim:
    """In every ranking, at least one of ``candidates`` is better than ``b``."""
    verdicts, evidence = [], []
    for r in rankings:
        verdicts.append(some([OUTCOME_VERDICTS[r.versus(c, b)] for c in candidates]))
        lead = next(o for o in r.ranked if o != b)
        evidence.append(f"{r.workload}: best of the others {lead} {fmt_ci(r.scores[lead])}, {b} {fmt_ci(r.scores[b])}")
    return Claim(statement, CI_TEST, every(verdicts), "; ".join(evidence))


# ------------------------------------------------------------- the loss-scale experiment


def _paired(values: Mapping[int, float], reference: Mapping[int, float]) -> MeanCI:
    """Mean and 95 % CI of the per-seed differences ``values − reference`` (seeds in both)."""
    return mean_ci([values[s] - reference[s] for s in sorted(values) if s in reference])


def _within(diff: MeanCI, tolerance: float) -> str:
    """Equivalence within ±``tolerance``: held when the whole 95 % CI of the difference lies inside,
    did not hold when it lies entirely outside, otherwise (or with fewer than 2 seeds) inconclusive."""
    if diff.n < 2:
        return INCONCLUSIVE
    if abs(diff.mean) + diff.half_width <= tolerance:
        return HELD
    return NOT_HELD if abs(diff.mean) - diff.half_width > tolerance else INCONCLUSIVE


def equivalent_claim(statement: str, a: Mapping[int, float], b: Mapping[int, float], *, tolerance: float) -> Claim:
    """Two measurements paired by seed are the same within ±``tolerance`` (see :func:`_within`)."""
    diff = _paired(a, b)
    test = f"per-seed difference, 95 % CI inside ±{tolerance:g}"
    return Claim(statement, test, _within(diff, tolerance), f"difference {fmt_ci(diff)} over {diff.n} seeds")


def invariance_claim(
    statement: str, by_scale: Mapping[float, Mapping[int, float]], *, reference: float = 1.0, tolerance: float
) -> Claim:
    """The measurement does not change with the scale: for every scale s, the 95 % CI of the per-seed
    differences from the reference scale lies inside ±``tolerance`` (held); it lies outside for some s
    (did not hold); otherwise, or with fewer than two paired seeds, inconclusive."""
    verdicts, evidence = [], []
    for scale, values in sorted(by_scale.items()):
        if scale != reference:
            diff = _paired(values, by_scale[reference])
            verdicts.append(_within(diff, tolerance))
            evidence.append(f"s = {scale:g}: change {fmt_ci(diff)} ({verdicts[-1]})")
    test = f"per-seed change from s = {reference:g}, 95 % CI inside ±{tolerance:g} at every s"
    return Claim(statement, test, every(verdicts), "; ".join(evidence))


def changes_claim(
    statement: str, by_scale: Mapping[float, Mapping[int, float]], *, reference: float = 1.0, tolerance: float
) -> Claim:
    """The measurement changes with the scale: at some scale the 95 % CI of the per-seed differences
    from the reference excludes 0 (held); at every scale it lies inside ±``tolerance``, i.e. the
    measurement is invariant (did not hold); otherwise inconclusive."""
    verdicts, evidence = [], []
    for scale, values in sorted(by_scale.items()):
        if scale != reference:
            diff = _paired(values, by_scale[reference])
            apart = diff.n >= 2 and abs(diff.mean) > diff.half_width
            within = _within(diff, tolerance) == HELD
            verdicts.append(HELD if apart else NOT_HELD if within else INCONCLUSIVE)
            evidence.append(f"s = {scale:g}: change {fmt_ci(diff)}")
    test = (
        f"per-seed change from s = {reference:g}: held when its 95 % CI excludes 0 at some s, "
        f"did not hold when it lies inside ±{tolerance:g} at every s"
    )
    return Claim(statement, test, some(verdicts), "; ".join(evidence))


def near_half_claim(statement: str, fractions: Mapping[str, float], *, threshold: float = 0.9) -> Claim:
    """Friction at ξ ≈ 0.5: in every run, at least ``threshold`` of the elements have |ξ − 0.5| ≤ 0.01
    (averaged over the run's evaluations). Inconclusive when no run recorded ξ."""
    if not fractions:
        return Claim(
            statement, f"share within 0.01 of 0.5 ≥ {threshold:.0%} in every run", INCONCLUSIVE, "ξ not recorded"
        )
    low = min(fractions.values())
    evidence = "; ".join(f"{run}: {share:.1%}" for run, share in fractions.items())
    test = f"share of elements with |ξ − 0.5| ≤ 0.01, mean over evaluations, ≥ {threshold:.0%} in every run"
    return Claim(statement, test, HELD if low >= threshold else NOT_HELD, evidence)


# ---------------------------------------------------------- deterministic experiments


@dataclass(frozen=True)
class OneD:
    """A 1-D run: where θ ended and how much it still moved over the last two thirds (total variation)
    and over the last tenth (to tell a settled run from one the horizon cut short)."""

    final: float
    oscillation: float
    last_motion: float


def overshoot_claim(statement: str, diffgrad: OneD, adam: OneD, *, global_min: float, tolerance: float = 0.01) -> Claim:
    """diffGrad ends within ``tolerance`` of the global minimum and Adam does not. Inconclusive when
    either run still moves by more than ``tolerance`` over its last tenth (the horizon decides)."""
    test = (
        f"final θ within {tolerance:g} of the global minimum, for diffGrad and not for Adam; "
        f"inconclusive while a run still moves more than {tolerance:g} over its last tenth"
    )
    evidence = (
        f"final θ: diffGrad {diffgrad.final:.4f}, Adam {adam.final:.4f}; motion over the last tenth: "
        f"diffGrad {diffgrad.last_motion:.3g}, Adam {adam.last_motion:.3g}"
    )
    if max(diffgrad.last_motion, adam.last_motion) > tolerance or not all(
        math.isfinite(r.final) for r in (diffgrad, adam)
    ):
        return Claim(statement, test, INCONCLUSIVE, evidence)
    reached = abs(diffgrad.final - global_min) <= tolerance and abs(adam.final - global_min) > tolerance
    return Claim(statement, test, HELD if reached else NOT_HELD, evidence)


def calmer_claim(
    statement: str, diffgrad: OneD, adam: OneD, *, global_min: float, tolerance: float = 0.01, margin: float = 0.1
) -> Claim:
    """Both end within ``tolerance`` of the global minimum and diffGrad's oscillation is below Adam's by
    more than ``margin`` (relative). Did not hold when either misses the minimum or diffGrad oscillates
    at least as much; inconclusive when it oscillates less by under the margin."""
    test = (
        f"both final θ within {tolerance:g} of {global_min:g}, and diffGrad's total variation over the last "
        f"two thirds below (1 − {margin:g}) × Adam's"
    )
    evidence = (
        f"final θ: diffGrad {diffgrad.final:.4f}, Adam {adam.final:.4f}; oscillation diffGrad "
        f"{diffgrad.oscillation:.3g}, Adam {adam.oscillation:.3g}"
    )
    both = all(abs(r.final - global_min) <= tolerance for r in (diffgrad, adam))
    if not both or diffgrad.oscillation >= adam.oscillation:
        verdict = NOT_HELD
    elif diffgrad.oscillation < (1 - margin) * adam.oscillation:
        verdict = HELD
    else:
        verdict = INCONCLUSIVE
    return Claim(statement, test, verdict, evidence)


def rate_claim(
    statement: str,
    slope: float | None,
    horizon: int,
    *,
    rate: float = -0.5,
    tolerance: float = 0.1,
    min_horizon: int = 10_000,
) -> Claim:
    """Average regret falls at least as fast as T^rate: the slope of log R(T)/T against log T over the
    last decade is at most ``rate + tolerance``. Inconclusive below ``min_horizon`` (the fit would see
    the transient, not the rate) or without a slope (R(T)/T not positive over the last decade)."""
    test = f"slope of log R(T)/T over the last decade of T ≤ {rate + tolerance:g}, at a horizon of at least {min_horizon:,}"
    shown = "n/a" if slope is None else f"{slope:.2f}"
    evidence = f"fitted slope {shown} at T = {horizon:,}"
    if slope is None or horizon < min_horizon:
        reason = "no positive R(T)/T to fit" if slope is None else f"horizon below {min_horizon:,}"
        return Claim(statement, test, INCONCLUSIVE, f"{evidence} ({reason})")
    return Claim(statement, test, HELD if slope <= rate + tolerance else NOT_HELD, evidence)
