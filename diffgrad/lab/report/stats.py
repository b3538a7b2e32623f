"""Numeric summaries behind every number in a report: pure functions of measured values (numpy only).

Conventions shared by all functions: a run that never reached the target has cost ``inf``
(``None`` in a :class:`~diffgrad.lab.storage.RunRecord`), and non-finite metric values (diverged
runs) are left out of means and spreads; callers count them separately so they stay visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95 % quantiles t(0.975, df) of Student's t distribution, used when scipy is absent.
# Beyond df 30 the sparse rows are used at the nearest smaller df, which errs on the wide side.
_T975 = {
    1: 12.7062,
    2: 4.3027,
    3: 3.1824,
    4: 2.7764,
    5: 2.5706,
    6: 2.4469,
    7: 2.3646,
    8: 2.3060,
    9: 2.2622,
    10: 2.2281,
    11: 2.2010,
    12: 2.1788,
    13: 2.1604,
    14: 2.1448,
    15: 2.1314,
    16: 2.1199,
    17: 2.1098,
    18: 2.1009,
    19: 2.0930,
    20: 2.0860,
    21: 2.0796,
    22: 2.0739,
    23: 2.0687,
    24: 2.0639,
    25: 2.0595,
    26: 2.0555,
    27: 2.0518,
    28: 2.0484,
    29: 2.0452,
    30: 2.0423,
    40: 2.0211,
    60: 2.0003,
    120: 1.9799,
}
_Z975 = 1.95996


def t975_table(df: int) -> float:
    """t(0.975, df) from the built-in table (4 decimals); 1.96 beyond df 120."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return _Z975
    return _T975[max(k for k in _T975 if k <= df)]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (scipy when installed)."""
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return t975_table(df)
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(student_t.ppf(0.975, df))


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` finite values and the half-width of its 95 % confidence interval.

    ``half_width`` is NaN when ``n < 2`` (no spread can be estimated), ``mean`` when ``n == 0``.
    """

    mean: float
    half_width: float
    n: int


def fmt(x: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``n/a`` when not finite."""
    return f"{x:.{digits}g}" if math.isfinite(x) else "n/a"


def fmt_ci(ci: MeanCI) -> str:
    """``mean ± half-width`` of a 95 % CI; the mean alone (with n) when no spread exists."""
    if ci.n == 0:
        return "n/a"
    if ci.n == 1:
        return f"{fmt(ci.mean)} (n=1)"
    return f"{fmt(ci.mean)} ± {fmt(ci.half_width)}"


def finite(values: Iterable[float | None]) -> np.ndarray:
    """The finite values, as a float array (``None``, NaN and infinities dropped)."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values: Iterable[float | None]) -> MeanCI:
    """Mean and Student-t 95 % confidence half-width over the finite ``values`` (e.g. seeds)."""
    arr = finite(values)
    n = int(arr.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n == 1:
        return MeanCI(mean, math.nan, 1)
    half = t975(n - 1) * float(arr.std(ddof=1)) / math.sqrt(n)
    return MeanCI(mean, half, n)


@dataclass(frozen=True)
class TargetSummary:
    """How ``reached`` of ``n`` runs met the target, and the median cost over all ``n``.

    Runs that never reached count as infinitely expensive, so ``median`` is ``inf`` unless more
    than half of the runs reached: a median of the successful runs alone would flatter an
    optimizer that usually fails.
    """

    n: int
    reached: int
    median: float


def target_summary(costs: Sequence[float | None]) -> TargetSummary:
    """Summarise steps (or seconds) to target; ``None`` or ``inf`` means never reached."""
    arr = np.asarray([math.inf if c is None else c for c in costs], dtype=float)
    arr[np.isnan(arr)] = math.inf
    if arr.size == 0:
        return TargetSummary(0, 0, math.inf)
    return TargetSummary(int(arr.size), int(np.isfinite(arr).sum()), float(np.median(arr)))


@dataclass(frozen=True)
class Profile:
    """A performance profile: one value per (problem, solver); ρ(τ) = share of problems ≤ τ.

    ``values`` are ratios to the best solver (Dolan & Moré 2002; ``baseline`` 1) or regrets to the
    best solver (``baseline`` 0); ``inf`` where a solver failed or did not run on a problem.
    """

    problems: tuple[str, ...]
    solvers: tuple[str, ...]
    values: np.ndarray  # shape (len(problems), len(solvers))
    baseline: float

    def rho(self, tau: float | np.ndarray) -> np.ndarray:
        """ρ_s(τ) for every solver (axis 0) and every ``tau`` (axis 1 when ``tau`` is an array)."""
        taus = np.atleast_1d(np.asarray(tau, dtype=float))
        if self.values.shape[0] == 0:
            result = np.zeros((len(self.solvers), taus.size))
        else:
            # Failures (inf) never count, not even at τ = inf, so ρ(inf) is the share solved.
            values = self.values[:, :, None]
            result = (np.isfinite(values) & (values <= taus[None, None, :])).mean(axis=0)
        return result[:, 0] if np.ndim(tau) == 0 else result

    def curve(self, solver: str, tau_max: float) -> tuple[np.ndarray, np.ndarray]:
        """Breakpoints (τ, ρ) of one solver's step function from ``baseline`` to ``tau_max``.

        Meant for a ``steps-post`` line: ρ jumps at each finite value of the solver.
        """
        index = self.solvers.index(solver)
        column = self.values[:, index]
        taus = np.unique(np.concatenate([[self.baseline], column[np.isfinite(column)], [tau_max]]))
        taus = taus[taus <= tau_max]
        return taus, self.rho(taus)[index]

    def max_finite(self) -> float:
        """The largest finite value (``baseline`` if none), to size a plot's τ axis."""
        vals = self.values[np.isfinite(self.values)]
        return float(vals.max()) if vals.size else self.baseline


def _table(data: Mapping[str, Mapping[str, float]]) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    problems = tuple(sorted(data))
    solvers = tuple(sorted({s for row in data.values() for s in row}))
    table = np.full((len(problems), len(solvers)), math.inf)
    for i, p in enumerate(problems):
        for j, s in enumerate(solvers):
            value = data[p].get(s)
            if value is not None and not math.isnan(value):
                table[i, j] = value
    return problems, solvers, table


def performance_profile(costs: Mapping[str, Mapping[str, float]]) -> Profile:
    """Dolan–Moré profile of ``costs[problem][solver]`` (lower is better, ``inf`` = failed).

    A solver missing from a problem counts as failed on it. A problem that every solver failed
    stays in the denominator: nobody gets credit for it, which is what "fraction of workloads
    solved" should mean.
    """
    problems, solvers, table = _table(costs)
    if table.size == 0:
        return Profile(problems, solvers, table, 1.0)
    best = table.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A zero best cost (target met at the first evaluation) makes only the zero-cost solvers
        # tie at ratio 1; everyone else is infinitely worse.
        ratios = np.where(best > 0, table / best, np.where(table == 0, 1.0, math.inf))
    ratios[~np.isfinite(table)] = math.inf
    return Profile(problems, solvers, ratios, 1.0)


def regret_profile(scores: Mapping[str, Mapping[str, float]], higher_is_better: Mapping[str, bool]) -> Profile:
    """Profile of final-metric regret: distance to the best solver's score, in metric units.

    Complements :func:`performance_profile` when targets are rarely reached. Regret of a missing
    or non-finite score is ``inf``.
    """
    problems, solvers, table = _table(scores)
    if table.size == 0:
        return Profile(problems, solvers, table, 0.0)
    # Flip higher-is-better metrics so lower is better everywhere; non-finite scores are failures.
    sign = np.array([-1.0 if higher_is_better[p] else 1.0 for p in problems])[:, None]
    signed = np.where(np.isfinite(table), table * sign, math.inf)
    best = signed.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        regrets = np.where(np.isfinite(signed), signed - best, math.inf)
    return Profile(problems, solvers, regrets, 0.0)


@dataclass(frozen=True)
class Band:
    """A mean curve over runs with its ±1 standard deviation, on the union of evaluation points."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray  # runs contributing at each point


def aggregate_curves(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Band:
    """Mean ± std of curves ``(x, y)`` that may stop at different points (e.g. after divergence).

    Each point averages the runs that have a finite value there, so a diverged seed drops out of
    the band instead of turning it into NaN.
    """
    xs = [np.asarray(x, dtype=float) for x, _ in curves]
    grid = np.unique(np.concatenate(xs)) if xs else np.zeros(0)
    stack = np.full((len(curves), grid.size), np.nan)
    for i, (x, (_, y)) in enumerate(zip(xs, curves)):
        stack[i, np.searchsorted(grid, x)] = np.asarray(y, dtype=float)
    stack[~np.isfinite(stack)] = np.nan
    n = np.isfinite(stack).sum(axis=0)
    keep = n > 0
    stack, grid, n = stack[:, keep], grid[keep], n[keep]
    mean = np.nanmean(stack, axis=0) if stack.size else np.zeros(0)
    std = np.nanstd(stack, axis=0) if stack.size else np.zeros(0)
    return Band(grid, mean, mean - std, mean + std, n)


@dataclass(frozen=True)
class Sensitivity:
    """Mean final metric at each distinct learning rate (finite runs only), and the failures."""

    lr: np.ndarray
    mean: np.ndarray
    n: np.ndarray
    failed_lr: np.ndarray  # learning rates of runs whose final metric was not finite


def lr_sensitivity(points: Iterable[tuple[float, float]]) -> Sensitivity:
    """Group ``(lr, final metric)`` pairs by learning rate, sorted by learning rate."""
    pairs = np.asarray(list(points), dtype=float).reshape(-1, 2)
    ok = np.isfinite(pairs[:, 1])
    lrs, inverse, counts = np.unique(pairs[ok, 0], return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=pairs[ok, 1], minlength=lrs.size)
    return Sensitivity(lrs, sums / np.maximum(counts, 1), counts, np.sort(pairs[~ok, 0]))


def divergence_index(xs: Sequence[Sequence[float]] | np.ndarray, losses: Sequence[float] | np.ndarray) -> int | None:
    """The first iteration of a trajectory whose parameters ``xs[i]`` or loss ``losses[i]`` are not
    finite; ``None`` when the whole path stays finite."""
    points = np.asarray(xs, dtype=float).reshape(len(xs), -1)
    values = np.asarray(losses, dtype=float)
    if len(points) != len(values):
        raise ValueError(
            f"a trajectory needs one loss per iterate, got {len(points)} iterates and {len(values)} losses"
        )
    bad = ~(np.isfinite(points).all(axis=1) & np.isfinite(values))
    return int(bad.argmax()) if bad.any() else None
