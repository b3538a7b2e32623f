"""PNG figures for reports, drawn from values in memory (never from the database directly).

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which renders
through the Agg canvas without importing ``pyplot``: nothing here switches the caller's backend
or leaves global figures open, and it works headless. matplotlib is imported on first use so that
importing the report package stays light.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .stats import Profile, divergence_index

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
PANEL_SIZE = (5.2, 3.8)  # inches per panel

# Fixed colours for the optimizers the lab compares, so a given optimizer looks the same in
# every figure and every report. Keys are names lower-cased with non-alphanumerics removed.
_KNOWN_COLORS = {
    "diffgrad": "#d62728",
    "adam": "#1f77b4",
    "sgdm": "#2ca02c",
    "sgd": "#2ca02c",
    "adagrad": "#9467bd",
    "adadelta": "#8c564b",
    "rmsprop": "#e377c2",
    "amsgrad": "#7f7f7f",
    "adamw": "#bcbd22",
    "radam": "#17becf",
}
# Other names hash (crc32, stable across processes unlike hash()) into this palette.
_EXTRA_COLORS = (
    "#ff7f0e",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
    "#9c9ede",
    "#cedb9c",
    "#e7ba52",
    "#e7969c",
    "#de9ed6",
)
_PROTOCOL_STYLES = {"tuned": "-", "paper": "--"}


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def optimizer_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour per optimizer name: fixed for known optimizers, hashed for the others.

    Hashed colours that collide within ``names`` move to the next free palette entry (in sorted
    name order), so one figure never shows two optimizers in the same colour.
    """
    unique = sorted(set(names))
    colors = {name: _KNOWN_COLORS[_normalise(name)] for name in unique if _normalise(name) in _KNOWN_COLORS}
    used = set(colors.values())
    for name in (n for n in unique if n not in colors):
        start = zlib.crc32(_normalise(name).encode())
        for k in range(len(_EXTRA_COLORS)):
            candidate = _EXTRA_COLORS[(start + k) % len(_EXTRA_COLORS)]
            if candidate not in used:
                break
        else:  # more optimizers than colours: repeat rather than fail
            candidate = _EXTRA_COLORS[start % len(_EXTRA_COLORS)]
        colors[name] = candidate
        used.add(candidate)
    return colors


def protocol_linestyle(protocol: str) -> str:
    """Line style of a protocol: solid for tuned, dashed for the paper's fixed settings."""
    return _PROTOCOL_STYLES.get(protocol, ":")


@dataclass(frozen=True)
class Line:
    """One labelled series; ``band`` = (lower, upper) shades a spread around it.

    ``on_axis`` draws the points at the bottom edge of the panel (``y`` ignored): for events
    without a value, such as runs that diverged at some learning rate.
    """

    label: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    color: str | None = None
    linestyle: str = "-"
    marker: str | None = None
    band: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray] | None = None
    drawstyle: str = "default"
    on_axis: bool = False


@dataclass(frozen=True)
class Panel:
    """One set of axes: its lines, labels, scales and an optional horizontal reference line."""

    lines: Sequence[Line]
    xlabel: str
    ylabel: str
    title: str = ""
    logx: bool = False
    logx_base: int = 10
    logy: bool = False
    xlim: tuple[float, float] | None = None
    ylim: tuple[float, float] | None = None
    hline: float | None = None
    hline_label: str = ""
    legend: bool = True


def _figure(n_panels: int, title: str) -> tuple[Figure, list[Axes]]:
    """The shared figure setup: panels side by side, constrained layout, optional title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_SIZE[0] * n_panels, PANEL_SIZE[1]), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, n_panels)))
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _draw_panel(ax: Axes, panel: Panel) -> None:
    for line in panel.lines:
        x = np.asarray(line.x, dtype=float)
        if line.on_axis:
            ax.plot(
                x,
                np.full_like(x, 0.02),
                transform=ax.get_xaxis_transform(),
                color=line.color,
                marker=line.marker or "x",
                linestyle="none",
                label=line.label,
                clip_on=False,
            )
            continue
        ax.plot(
            x,
            np.asarray(line.y, dtype=float),
            color=line.color,
            linestyle=line.linestyle,
            marker=line.marker,
            markersize=4,
            drawstyle=line.drawstyle,
            label=line.label,
        )
        if line.band is not None:
            ax.fill_between(
                x,
                np.asarray(line.band[0], dtype=float),
                np.asarray(line.band[1], dtype=float),
                color=line.color,
                alpha=0.18,
                linewidth=0,
            )
    if panel.hline is not None:
        ax.axhline(panel.hline, color="black", linewidth=0.8, linestyle=":", label=panel.hline_label or None)
    if panel.logx:
        ax.set_xscale("log", base=panel.logx_base)
        if panel.logx_base != 10:
            # Plain numbers (1, 2, 4) read better than 2^k for ratios.
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if panel.logy:
        ax.set_yscale("log")
    if panel.xlim is not None:
        ax.set_xlim(*panel.xlim)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.title:
        ax.set_title(panel.title, fontsize=10)
    ax.grid(True, alpha=0.3, which="both" if panel.logx or panel.logy else "major")
    if panel.legend and ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)


def plot_panels(panels: Sequence[Panel], path: str | Path, *, title: str = "") -> Path:
    """Draw ``panels`` side by side into one PNG at ``path``; returns ``path``."""
    fig, axes = _figure(len(panels), title)
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel)
    return _save(fig, path)


def plot_lines(
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """One panel of curves ``{label: (x, y)}``, coloured by label as an optimizer name.

    For quantities computed in memory, e.g. average regret R(T)/T against T on log axes.
    """
    colors = optimizer_colors(curves)
    lines = [Line(label, x, y, color=colors[label]) for label, (x, y) in sorted(curves.items())]
    return plot_panels([Panel(lines, xlabel, ylabel, logx=logx, logy=logy)], path, title=title)


def plot_learning_curves(
    metric_lines: Sequence[Line],
    loss_lines: Sequence[Line],
    path: str | Path,
    *,
    title: str,
    metric_name: str,
    target: float | None = None,
) -> Path:
    """Validation metric (with the target as a reference line) and training loss against steps."""
    panels = [
        Panel(
            metric_lines,
            "steps",
            f"validation {metric_name}",
            hline=target,
            hline_label="target" if target is not None else "",
        ),
        Panel(loss_lines, "steps", "training loss", logy=_wants_log(line.y for line in loss_lines), legend=False),
    ]
    return plot_panels(panels, path, title=title)


def plot_lr_sensitivity(lines: Sequence[Line], path: str | Path, *, title: str, metric_name: str) -> Path:
    """Final validation metric against learning rate (log axis) over tuning runs."""
    return plot_panels([Panel(lines, "learning rate", f"final validation {metric_name}", logx=True)], path, title=title)


def plot_performance_profiles(
    profiles: Sequence[tuple[Profile, str]],
    colors: Mapping[str, str],
    styles: Mapping[str, str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Step plots ρ_s(τ) of each ``(profile, τ-axis label)``; ratio profiles get a log2 τ axis.

    ``colors`` and ``styles`` map each solver name to its colour and line style.
    """
    panels: list[Panel] = []
    for profile, xlabel in profiles:
        is_ratio = profile.baseline == 1.0
        # Extend the axis past the largest finite value so the last step is visible, ratios at
        # least to 4 (the range people read off); all-zero regrets still need a non-empty axis.
        tau_max = max(4.0, 1.5 * profile.max_finite()) if is_ratio else 1.1 * profile.max_finite() or 1.0
        lines = [
            Line(
                s, *profile.curve(s, tau_max), color=colors.get(s), linestyle=styles.get(s, "-"), drawstyle="steps-post"
            )
            for s in profile.solvers
        ]
        panels.append(
            Panel(
                lines,
                xlabel,
                "fraction of workloads ρ(τ)",
                logx=is_ratio,
                logx_base=2,
                ylim=(-0.02, 1.02),
                legend=not panels,
            )
        )
    return plot_panels(panels, path, title=title)


def _wants_log(series: Iterable[Sequence[float] | np.ndarray]) -> bool:
    # A log axis only helps when values are positive and span orders of magnitude.
    values = np.concatenate([np.asarray(s, dtype=float).ravel() for s in series] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    return bool(values.size) and bool(values.min() > 0) and values.max() / values.min() > 1e3


def _evaluate(fn: Callable[[Any], Any], points: np.ndarray) -> np.ndarray:
    """``fn`` on a grid of points shaped ``[..., dim]``, the convention of the lab's analytic functions."""
    import torch

    return fn(torch.as_tensor(points, dtype=torch.float64)).detach().cpu().numpy()


@dataclass(frozen=True)
class _Path:
    """One optimizer's trajectory up to its last finite iterate, and where it left the finite range."""

    name: str
    xs: np.ndarray  # (T, dim): the finite iterates
    losses: np.ndarray  # (T,)
    diverged_at: int | None  # first iteration with a non-finite parameter or loss; None if none

    @classmethod
    def of(cls, name: str, xs: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray) -> _Path:
        points, values = np.asarray(xs, dtype=float).reshape(len(xs), -1), np.asarray(losses, dtype=float)
        end = divergence_index(points, values)
        return cls(name, points[:end], values[:end], end)

    @property
    def label(self) -> str:
        return self.name if self.diverged_at is None else f"{self.name} (diverged at iteration {self.diverged_at})"


def _view_box(
    paths: Sequence[_Path], domain: Sequence[tuple[float, float]] | None, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners of the region to draw: the finite iterates of the paths that stayed
    finite, widened by ``margin`` of their range (1 where they do not move).

    A diverged path's last finite iterates are typically astronomically far out, so they would shrink
    every other path to a dot: they count only when no path stayed finite and no ``domain`` (the
    function's plotting box) is given.
    """
    dim = paths[0].xs.shape[1]
    stable = [p.xs for p in paths if p.diverged_at is None and len(p.xs)]
    if not stable and domain is not None:
        return np.array([lo for lo, _ in domain], dtype=float), np.array([hi for _, hi in domain], dtype=float)
    points = np.concatenate(stable or [*(p.xs for p in paths), np.zeros((0, dim))])
    if not len(points):  # not even a finite starting point: any box will do
        points = np.zeros((1, dim))
    lo, hi = points.min(axis=0), points.max(axis=0)
    pad = np.where(hi > lo, margin * (hi - lo), 1.0)
    return lo - pad, hi + pad


_MAX_DRAWN = 1e300  # matplotlib's log axis overflows computing its ticks near the largest float


def _padded(values: np.ndarray, log: bool) -> tuple[float, float]:
    """Limits around ``values`` (finite, positive when ``log``) with a little room on both sides."""
    lo, hi = float(values.min()), float(values.max())
    if log:
        return lo / 2, hi * 2
    pad = 0.05 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def _loss_limits(paths: Sequence[_Path], log: bool) -> tuple[float, float] | None:
    """y-limits of the loss panel once a path diverged: the stable paths' range, since a diverged path's
    last finite losses are astronomically large; every path's (up to :data:`_MAX_DRAWN`) when none is
    stable. ``None`` (matplotlib's own limits) when nothing diverged."""
    if all(p.diverged_at is None for p in paths):
        return None
    stable = [p.losses for p in paths if p.diverged_at is None]
    values = np.concatenate([*(stable or [p.losses for p in paths]), np.zeros(0)])
    values = values[(np.abs(values) < _MAX_DRAWN) & ((values > 0) if log else True)]
    return _padded(values, log) if values.size else (1.0, 10.0)


def plot_trajectories(
    fn_name: str,
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    path: str | Path,
    *,
    fn: Callable[[Any], Any] | None = None,
    domain: Sequence[tuple[float, float]] | None = None,
) -> Path:
    """Paths of optimizers on an analytic function: ``curves = {optimizer: (xs, losses)}``.

    ``xs`` has one row per iteration: shape ``(T,)`` or ``(T, 1)`` for a 1-D function, ``(T, 2)``
    for a 2-D one. 1-D: θ and loss against iteration, plus the function with the visited points
    when ``fn`` is given. 2-D: the paths over the function's contours (when ``fn`` is given) and
    loss against iteration. ``fn`` maps a float64 tensor of points shaped ``[..., dim]`` to the
    values ``[...]``, as :mod:`diffgrad.lab.workloads.analytic`'s functions do.

    A path that diverges (a parameter or the loss stops being finite) is drawn up to its last finite
    iterate, ending in a cross, and its legend says at which iteration it diverged. The region drawn
    is the one the other paths visited, or ``domain`` (``(low, high)`` per coordinate, the function's
    plotting box) when every path diverged.
    """
    colors = optimizer_colors(curves)
    paths = [_Path.of(name, xs, ys) for name, (xs, ys) in sorted(curves.items())]
    dims = {p.xs.shape[1] for p in paths}
    if len(dims) != 1 or not dims <= {1, 2}:
        raise ValueError(f"all trajectories must be 1-D or all 2-D, got dimensions {sorted(dims)}")
    (dim,) = dims
    if domain is not None and len(domain) != dim:
        raise ValueError(f"domain must give one (low, high) per coordinate, got {list(domain)}")
    diverged = any(p.diverged_at is not None for p in paths)
    ends = [
        Line("", [len(p.losses) - 1], p.losses[-1:], color=colors[p.name], marker="x", linestyle="none")
        for p in paths
        if p.diverged_at is not None and len(p.losses)
    ]
    losses = [Line(p.label, np.arange(len(p.losses)), p.losses, color=colors[p.name]) for p in paths]
    log = _wants_log(line.y for line in losses)
    loss_panel = Panel([*losses, *ends], "iteration", "loss", logy=log, ylim=_loss_limits(paths, log), legend=False)
    title = f"{fn_name}: optimizer trajectories"
    if dim == 1:
        lo, hi = (float(v[0]) for v in _view_box(paths, domain, 0.15))
        view = (lo, hi) if diverged else None  # else the default view, which shows every iterate anyway
        thetas = [Line(p.label, np.arange(len(p.xs)), p.xs[:, 0], color=colors[p.name]) for p in paths]
        panels = [Panel(thetas, "iteration", "θ", ylim=view), loss_panel]
        if fn is not None:
            grid = np.linspace(lo, hi, 400)
            values = _evaluate(fn, grid[:, None])
            on_fn = [Line(fn_name, grid, values, color="black")]
            on_fn += [
                Line(p.name, p.xs[:, 0], p.losses, color=colors[p.name], marker=".", linestyle="none") for p in paths
            ]
            finite_values = values[np.isfinite(values)]
            fn_view = _padded(finite_values, False) if diverged and finite_values.size else None
            panels.append(Panel(on_fn, "θ", fn_name, xlim=view, ylim=fn_view, legend=False))
        return plot_panels(panels, path, title=title)
    fig, (ax_path, ax_loss) = _figure(2, title)
    lower, upper = _view_box(paths, domain, 0.2)
    if fn is not None:
        gx, gy = np.meshgrid(*(np.linspace(lower[i], upper[i], 160) for i in range(2)))
        z = _evaluate(fn, np.stack([gx, gy], axis=-1))
        finite_z = z[np.isfinite(z)]
        if finite_z.size:
            # Quantile levels spread the contours evenly whatever the function's range (e.g. Rosenbrock).
            levels = np.unique(np.quantile(finite_z, np.linspace(0.0, 1.0, 25)))
            ax_path.contour(gx, gy, z, levels=levels, cmap="Greys", linewidths=0.6)
    for p in (p for p in paths if len(p.xs)):
        ax_path.plot(p.xs[:, 0], p.xs[:, 1], color=colors[p.name], linewidth=1.2, label=p.label)
        ax_path.plot(
            p.xs[-1, 0], p.xs[-1, 1], color=colors[p.name], marker="*" if p.diverged_at is None else "x", markersize=10
        )
    start = next((p.xs[0] for p in paths if len(p.xs)), None)
    if start is not None:
        ax_path.plot(start[0], start[1], color="black", marker="o", label="start")
    ax_path.set_xlim(lower[0], upper[0])
    ax_path.set_ylim(lower[1], upper[1])
    ax_path.set_xlabel("θ₁")
    ax_path.set_ylabel("θ₂")
    ax_path.legend(fontsize=8)
    _draw_panel(ax_loss, loss_panel)
    return _save(fig, path)


__all__ = [
    "DPI",
    "Line",
    "Panel",
    "optimizer_colors",
    "plot_learning_curves",
    "plot_lines",
    "plot_lr_sensitivity",
    "plot_panels",
    "plot_performance_profiles",
    "plot_trajectories",
    "protocol_linestyle",
]
