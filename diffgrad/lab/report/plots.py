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

from .stats import Profile

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
    "#ff7f0e", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
    "#31a354", "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7ba52", "#e7969c", "#de9ed6",
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
            ax.plot(x, np.full_like(x, 0.02), transform=ax.get_xaxis_transform(), color=line.color,
                    marker=line.marker or "x", linestyle="none", label=line.label, clip_on=False)
            continue
        ax.plot(x, np.asarray(line.y, dtype=float), color=line.color, linestyle=line.linestyle,
                marker=line.marker, markersize=4, drawstyle=line.drawstyle, label=line.label)
        if line.band is not None:
            ax.fill_between(x, np.asarray(line.band[0], dtype=float), np.asarray(line.band[1], dtype=float),
                            color=line.color, alpha=0.18, linewidth=0)
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
        Panel(metric_lines, "steps", f"validation {metric_name}", hline=target,
              hline_label="target" if target is not None else ""),
        Panel(loss_lines, "steps", "training loss", logy=_wants_log(l.y for l in loss_lines), legend=False),
    ]
    return plot_panels(panels, path, title=title)


def plot_lr_sensitivity(lines: Sequence[Line], path: str | Path, *, title: str, metric_name: str) -> Path:
    """Final validation metric against learning rate (log axis) over tuning runs."""
    return plot_panels([Panel(lines, "learning rate", f"final validation {metric_name}", logx=True)], path,
                       title=title)


def plot_performance_profiles(
    profiles: Sequence[tuple[Profile, str]], colors: Mapping[str, str], styles: Mapping[str, str],
    path: str | Path, *, title: str = "",
) -> Path:
    """Step plots ρ_s(τ) of each ``(profile, τ-axis label)``; ratio profiles get a log2 τ axis.

    ``colors`` and ``styles`` map each solver name to its colour and line style.
    """
    panels = []
    for profile, xlabel in profiles:
        is_ratio = profile.baseline == 1.0
        # Extend the axis past the largest finite value so the last step is visible, ratios at
        # least to 4 (the range people read off); all-zero regrets still need a non-empty axis.
        tau_max = max(4.0, 1.5 * profile.max_finite()) if is_ratio else 1.1 * profile.max_finite() or 1.0
        lines = [Line(s, *profile.curve(s, tau_max), color=colors.get(s), linestyle=styles.get(s, "-"),
                      drawstyle="steps-post") for s in profile.solvers]
        panels.append(Panel(lines, xlabel, "fraction of workloads ρ(τ)", logx=is_ratio, logx_base=2,
                            ylim=(-0.02, 1.02), legend=not panels))
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


def plot_trajectories(
    fn_name: str,
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    path: str | Path,
    *,
    fn: Callable[[Any], Any] | None = None,
) -> Path:
    """Paths of optimizers on an analytic function: ``curves = {optimizer: (xs, losses)}``.

    ``xs`` has one row per iteration: shape ``(T,)`` or ``(T, 1)`` for a 1-D function, ``(T, 2)``
    for a 2-D one. 1-D: θ and loss against iteration, plus the function with the visited points
    when ``fn`` is given. 2-D: the paths over the function's contours (when ``fn`` is given) and
    loss against iteration. ``fn`` maps a float64 tensor of points shaped ``[..., dim]`` to the
    values ``[...]``, as :mod:`diffgrad.lab.workloads.analytic`'s functions do.
    """
    colors = optimizer_colors(curves)
    items = sorted(curves.items())
    paths = {name: np.asarray(xs, dtype=float).reshape(len(xs), -1) for name, (xs, _) in items}
    dims = {p.shape[1] for p in paths.values()}
    if len(dims) != 1 or not dims <= {1, 2}:
        raise ValueError(f"all trajectories must be 1-D or all 2-D, got dimensions {sorted(dims)}")
    losses = [Line(name, np.arange(len(ys)), ys, color=colors[name]) for name, (_, ys) in items]
    loss_panel = Panel(losses, "iteration", "loss", logy=_wants_log(l.y for l in losses), legend=False)
    title = f"{fn_name}: optimizer trajectories"
    if dims == {1}:
        thetas = [Line(name, np.arange(len(p)), p[:, 0], color=colors[name]) for name, p in paths.items()]
        panels = [Panel(thetas, "iteration", "θ"), loss_panel]
        if fn is not None:
            visited = np.concatenate(list(paths.values()))[:, 0]
            lo, hi = visited.min(), visited.max()
            margin = 0.15 * (hi - lo) or 1.0
            grid = np.linspace(lo - margin, hi + margin, 400)
            on_fn = [Line(fn_name, grid, _evaluate(fn, grid[:, None]), color="black")]
            on_fn += [Line(name, p[:, 0], ys, color=colors[name], marker=".", linestyle="none")
                      for (name, (_, ys)), p in zip(items, paths.values())]
            panels.append(Panel(on_fn, "θ", fn_name, legend=False))
        return plot_panels(panels, path, title=title)
    fig, (ax_path, ax_loss) = _figure(2, title)
    if fn is not None:
        visited = np.concatenate(list(paths.values()))
        lo, hi = visited.min(axis=0), visited.max(axis=0)
        margin = np.where(hi > lo, 0.2 * (hi - lo), 1.0)
        gx, gy = np.meshgrid(*(np.linspace(lo[i] - margin[i], hi[i] + margin[i], 160) for i in range(2)))
        z = _evaluate(fn, np.stack([gx, gy], axis=-1))
        # Quantile levels spread the contours evenly whatever the function's range (e.g. Rosenbrock).
        levels = np.unique(np.quantile(z[np.isfinite(z)], np.linspace(0.0, 1.0, 25)))
        ax_path.contour(gx, gy, z, levels=levels, cmap="Greys", linewidths=0.6)
    for name, p in paths.items():
        ax_path.plot(p[:, 0], p[:, 1], color=colors[name], linewidth=1.2, label=name)
        ax_path.plot(p[-1, 0], p[-1, 1], color=colors[name], marker="*", markersize=10)
    first = next(iter(paths.values()))
    ax_path.plot(first[0, 0], first[0, 1], color="black", marker="o", label="start")
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
