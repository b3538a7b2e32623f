"""PNG figures for reports, drawn from values in memory (never from the database directly).

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which renders
through the Agg canvas without importing ``pyplot``: nothing here switches the caller's backend
or leaves global figures open, and it works headless. matplotlib is imported on first use so that
importing the report package stays light.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .stats import Profile, divergence_index

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
PANEL_SIZE = (5.2, 3.8)  # inches per panel
MAX_SERIES = 6  # more series than this in one panel are split into small multiples
# Series repeated in every small multiple, so each panel compares against the same references.
ANCHORS = ("adam", "diffgrad")
XI_HALF_LABEL = "ξ = 0.5 (Adam at lr/2)"

# A fixed colour per optimizer the lab knows, so it looks the same in every figure of every report;
# all distinct, so any subset of them is distinguishable. The ten most compared optimizers take the
# tab10 colours; optimizers usually drawn together (a variant family) take hues far apart.
_KNOWN_COLORS = {
    "diffgrad": "#d62728",
    "adam": "#1f77b4",
    "sgdm": "#2ca02c",
    "adagrad": "#9467bd",
    "adadelta": "#8c564b",
    "rmsprop": "#e377c2",
    "amsgrad": "#7f7f7f",
    "adamw": "#bcbd22",
    "radam": "#17becf",
    "adam-half-lr": "#ff7f0e",
    "diffgrad-published": "#882d17",
    "diffgrad-dfc1": "#604e97",
    "diffgrad-dfc2": "#8db600",
    "diffgrad-dfc3": "#654522",
    "diffgrad-dfc4": "#e68fac",
    "diffgrad-dfc5": "#2b3d26",
    "diffgrad-amsgrad": "#5254a3",
    "diffgradw": "#8c6d31",
    "diffgrad-rect": "#e25822",
    "diffgrad-norm": "#637939",
    "diffgrad-inject": "#ce6dbd",
    "diffgrad-cautious": "#7b4173",
    "diffgrad-gc": "#008856",
    "adabelief": "#f6a600",
    "adan": "#393b79",
    "adamp": "#0067a5",
    "lion": "#b3446c",
    "diffgrad-rms": "#00a6a6",
    "diffgrad-rms-slope": "#6a3d9a",
}
# Unknown names hash (crc32, stable across processes unlike hash()) into this palette, which shares
# no colour with the known ones; past its end, further colours are generated.
_EXTRA_COLORS = (
    "#3182bd",
    "#31a354",
    "#756bb1",
    "#636363",
    "#bd9e39",
    "#ad494a",
    "#a55194",
    "#6b6ecf",
    "#e7ba52",
    "#d6616b",
    "#9c9ede",
    "#8ca252",
    "#fd8d3c",
    "#9ecae1",
    "#74c476",
    "#843c39",
)
_PROTOCOL_STYLES = {"tuned": "-", "paper": "--"}


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_KNOWN_BY_KEY = {_normalise(name): color for name, color in _KNOWN_COLORS.items()}


def _generated_colors() -> Iterator[str]:
    """Endless medium-dark colours, hues a golden angle apart, for when the palettes run out."""
    from matplotlib.colors import hsv_to_rgb, to_hex

    for k in itertools.count():
        r, g, b = hsv_to_rgb((k * 0.618034 % 1.0, 0.7, 0.4 + 0.15 * (k % 3)))
        yield to_hex((float(r), float(g), float(b)))


def _free_color(name: str, used: set[str]) -> str:
    """The first unused colour from ``name``'s hashed place in the palette, else a generated one."""
    start = zlib.crc32(_normalise(name).encode())
    candidates = (_EXTRA_COLORS[(start + k) % len(_EXTRA_COLORS)] for k in range(len(_EXTRA_COLORS)))
    return next(c for c in itertools.chain(candidates, _generated_colors()) if c not in used)


def optimizer_colors(names: Iterable[str]) -> dict[str, str]:
    """A distinct colour per optimizer name: fixed for the optimizers the lab registers, hashed for others.

    A known optimizer (case and punctuation ignored) has the same colour in every call, so in every
    figure. An unknown name hashes into a palette the known colours are not in; names that collide
    move to the next free colour in sorted name order, so the colours within one call are always
    distinct (as are those of two spellings of one optimizer, e.g. ``AdamW`` and ``adamw``).
    """
    colors: dict[str, str] = {}
    for name in sorted(set(names)):
        known = _KNOWN_BY_KEY.get(_normalise(name))
        colors[name] = known if known and known not in colors.values() else _free_color(name, set(colors.values()))
    return colors


def protocol_linestyle(protocol: str) -> str:
    """Line style of a protocol: solid for tuned, dashed for the paper's fixed settings."""
    return _PROTOCOL_STYLES.get(protocol, ":")


@dataclass(frozen=True)
class Line:
    """One labelled series; ``band`` = (lower, upper) shades a spread around it.

    ``on_axis`` draws the points at the bottom edge of the panel (``y`` ignored): for events
    without a value, such as runs that diverged at some learning rate. ``errorbars`` draws ``band``
    as error bars instead, for a few points. An empty ``label`` leaves the line out of the legend
    (e.g. an end marker of a labelled path in the same colour).
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
    errorbars: bool = False
    markersize: float = 4.0


@dataclass(frozen=True)
class Panel:
    """One set of axes: its lines, labels, scales and an optional horizontal reference line.

    ``background`` lines (a reference slope, the graph of a function) and ``underlay`` (called with
    the axes before anything else is drawn, e.g. for contour lines) are context: they are drawn in
    every small multiple a crowded panel is split into and do not count as series.
    """

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
    background: Sequence[Line] = ()
    underlay: Callable[[Axes], object] | None = None
    legend_title: str = ""


# ------------------------------------------------------------------ small multiples


def _series_key(line: Line) -> str:
    """What ties lines into one series: their colour (one per optimizer: its protocols, bands and
    markers stay together), else their label."""
    from matplotlib.colors import to_hex

    return to_hex(line.color) if line.color is not None else line.label


def _anchor_keys() -> frozenset[str]:
    return frozenset({*ANCHORS, *(_KNOWN_COLORS[name] for name in ANCHORS)})


def split_series(
    keys: Iterable[str], *, anchors: Collection[str] = (), max_series: int = MAX_SERIES
) -> list[list[str]]:
    """Groups of at most ``max_series`` of ``keys`` (in order, duplicates dropped) for small multiples.

    One group when they fit. Otherwise the ``anchors`` among them lead every group, and the others
    are dealt in order into as few groups as fit, of sizes differing by at most one.
    """
    unique = list(dict.fromkeys(keys))
    if len(unique) <= max_series:
        return [unique]
    lead = [k for k in unique if k in anchors][: max_series - 1]
    rest = [k for k in unique if k not in lead]
    n_groups = -(-len(rest) // (max_series - len(lead)))
    size, extra = divmod(len(rest), n_groups)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(n_groups)])
    return [lead + rest[a:b] for a, b in itertools.pairwise(bounds)]


def _only(panel: Panel, keys: Sequence[str]) -> Panel:
    """``panel`` with the lines of ``keys``, in their order (so anchors come first in the legend)."""
    rank = {key: i for i, key in enumerate(keys)}
    lines = [line for line in panel.lines if _series_key(line) in rank]
    return replace(panel, lines=sorted(lines, key=lambda line: rank[_series_key(line)]))


# ------------------------------------------------------------------ drawing


def _legend_width(panels: Sequence[Panel]) -> float:
    """Inches to add for a legend to the right of the panels, from its longest entry."""
    labels = [line.label for p in panels if p.legend for line in (*p.lines, *p.background) if line.label] + [
        p.hline_label for p in panels if p.legend and p.hline_label
    ]
    titles = [len(t) for p in panels if p.legend for t in p.legend_title.split("\n")]
    chars = max([len(label) for label in labels] + titles, default=0)
    return 0.9 + 0.062 * chars if chars else 0.0


@dataclass(frozen=True)
class _Grid:
    """Where panels go: block ``b`` (one group of series) takes ``rows_per_block`` rows of ``columns``
    cells, filled with the panels in order."""

    n_blocks: int
    n_panels: int
    columns: int

    @property
    def rows_per_block(self) -> int:
        return -(-self.n_panels // self.columns)

    def cell(self, block: int, index: int) -> tuple[int, int]:
        return block * self.rows_per_block + index // self.columns, index % self.columns

    def x_shared_below(self, block: int) -> bool:
        """Whether the cell below holds the same panel, so the x axis is read off further down."""
        return self.rows_per_block == 1 and block < self.n_blocks - 1


def _figure(
    grid: _Grid, panels: Sequence[Panel], title: str, panel_size: tuple[float, float], share_y: bool
) -> tuple[Figure, np.ndarray]:
    """The axes of ``grid`` in a constrained-layout figure with room on the right for legends.

    Each panel's copies in later blocks share its x and y axes, so split panels read on one scale;
    ``share_y`` puts every panel on one y axis. Cells past the last panel are removed.
    """
    from matplotlib.figure import Figure

    width = panel_size[0] * grid.columns + _legend_width(panels)
    fig = Figure(figsize=(width, panel_size[1] * grid.n_blocks * grid.rows_per_block), layout="constrained")
    axes = fig.subplots(grid.n_blocks * grid.rows_per_block, grid.columns, squeeze=False)
    first = axes[0, 0]
    for block in range(grid.n_blocks):
        for index in range(grid.rows_per_block * grid.columns):
            ax, ref = axes[grid.cell(block, index)], axes[grid.cell(0, index)]
            if index >= grid.n_panels:
                fig.delaxes(ax)
                continue
            if block:
                ax.sharex(ref)
            if ax is not first and (share_y or block):
                ax.sharey(first if share_y else ref)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _line_widths(lines: Sequence[Line]) -> dict[str, float]:
    """A width per series, from wide for the first (the anchors) to thin for the last: where series
    coincide (diffGrad and Adam at lr/2, say) the earlier ones still show as a rim around the later."""
    keys = list(dict.fromkeys(_series_key(line) for line in lines))
    steps = np.linspace(1.0, 0.0, len(keys)) if len(keys) > 1 else np.zeros(1)
    return {key: 1.3 + 1.7 * float(step) for key, step in zip(keys, steps)}


def _draw_line(ax: Axes, line: Line, width: float = 1.5) -> None:
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
        return
    y = np.asarray(line.y, dtype=float)
    style: dict[str, Any] = {
        "linewidth": width,
        "color": line.color,
        "linestyle": line.linestyle,
        "marker": line.marker,
        "markersize": line.markersize,
    }
    if line.errorbars and line.band is not None:
        lo, hi = (np.asarray(b, dtype=float) for b in line.band)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=3, label=line.label, **style)
        return
    ax.plot(x, y, drawstyle=line.drawstyle, label=line.label, **style)
    if line.band is not None:
        lo, hi = (np.asarray(b, dtype=float) for b in line.band)
        ax.fill_between(x, lo, hi, color=line.color, alpha=0.18, linewidth=0)


def _set_scales(ax: Axes, panel: Panel) -> None:
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


def _draw_panel(ax: Axes, panel: Panel, *, show_x: bool, show_y: bool, show_title: bool) -> None:
    """``panel`` on ``ax``; an axis whose values another panel of the grid shows gets no labels."""
    if panel.underlay is not None:
        panel.underlay(ax)
    for line in panel.background:
        _draw_line(ax, line)
    widths = _line_widths(panel.lines)
    for line in panel.lines:
        _draw_line(ax, line, widths[_series_key(line)])
    if panel.hline is not None:
        ax.axhline(panel.hline, color="0.35", linewidth=1.0, linestyle=":", label=panel.hline_label or None)
    _set_scales(ax, panel)
    ax.set_xlabel(panel.xlabel if show_x else "")
    ax.set_ylabel(panel.ylabel if show_y else "")
    ax.tick_params(labelbottom=show_x, labelleft=show_y)
    if panel.title and show_title:
        ax.set_title(panel.title, fontsize=10)
    ax.grid(True, alpha=0.3, which="both" if panel.logx or panel.logy else "major")


def _block_legend(axes: Sequence[Axes], panels: Sequence[Panel], at: Axes) -> None:
    """One legend for a block of panels, outside the data: right of ``at`` (the last panel of the
    block's first row), with the entries of every panel that wants a legend (each label once)."""
    entries: dict[str, Any] = {}
    for ax, panel in zip(axes, panels):
        if panel.legend:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
    if entries:
        title = next((p.legend_title for p in panels if p.legend and p.legend_title), None)
        at.legend(
            list(entries.values()),
            list(entries),
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            fontsize=8,
            title=title,
            title_fontsize=8,
        )


def plot_panels(
    panels: Sequence[Panel],
    path: str | Path,
    *,
    title: str = "",
    share_y: bool = False,
    columns: int | None = None,
    panel_size: tuple[float, float] = PANEL_SIZE,
) -> Path:
    """Draw ``panels`` side by side (``columns`` to a row, all by default) into one PNG at ``path``.

    With more than :data:`MAX_SERIES` series (lines of one colour, else of one label) the panels are
    repeated as blocks of small multiples, one per group of series (:func:`split_series`, led by the
    :data:`ANCHORS` present), each panel's copies on one pair of axes. Each block has its legend to
    the right of its first row. ``share_y`` puts every panel on one y axis (small multiples of one
    quantity). ``panel_size`` is in inches. Returns ``path``.
    """
    keys = (_series_key(line) for panel in panels for line in panel.lines)
    groups = split_series(keys, anchors=_anchor_keys())
    grid = _Grid(len(groups), len(panels), min(columns or len(panels), len(panels)))
    fig, axes = _figure(grid, panels, title, panel_size, share_y)
    for block, group in enumerate(groups):
        subsets = [_only(panel, group) for panel in panels]
        placed = [axes[grid.cell(block, index)] for index in range(len(panels))]
        for index, (ax, panel) in enumerate(zip(placed, subsets)):
            _draw_panel(
                ax,
                panel,
                show_x=not grid.x_shared_below(block),
                show_y=not share_y or grid.cell(block, index)[1] == 0,
                show_title=block == 0 or grid.rows_per_block > 1,
            )
        _block_legend(placed, subsets, axes[grid.cell(block, grid.columns - 1)])
    return _save(fig, path)


# ------------------------------------------------------------------ figures


def _power_law(
    curves: Iterable[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]], slope: float, label: str
) -> Line | None:
    """A grey dashed line ∝ x^slope across the curves' x range, through the geometric mean of their
    last positive values at the largest x (where an asymptotic rate shows); ``None`` without data."""
    ends, xs = [], []
    for x, y in curves:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        if keep.any():
            xs.append(x[keep])
            ends.append(np.log(y[keep][-1]))
    if not xs:
        return None
    x_lo, x_hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
    span = np.array([x_lo, x_hi])
    return Line(label, span, np.exp(np.mean(ends)) * (span / x_hi) ** slope, color="0.45", linestyle="--")


def plot_lines(
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    reference_slope: float | None = None,
    hline: float | None = None,
    hline_label: str = "",
) -> Path:
    """One panel of curves ``{label: (x, y)}``, coloured by label as an optimizer name.

    For quantities computed in memory, e.g. average regret R(T)/T against T on log axes.
    ``reference_slope`` (log-log axes only) adds a grey dashed power law of that slope, e.g. −0.5
    for O(1/√T), through the curves' final values, named by its slope in the legend. ``hline``
    draws a horizontal reference at that y, named ``hline_label``.
    """
    colors = optimizer_colors(curves)
    lines = [Line(label, x, y, color=colors[label]) for label, (x, y) in sorted(curves.items())]
    background: list[Line] = []
    if reference_slope is not None:
        if not (logx and logy):
            raise ValueError("reference_slope is a power law: it needs logx=True and logy=True")
        symbol = xlabel if xlabel.isidentifier() else "x"
        slope = f"{reference_slope:g}".replace("-", "−")
        name = f"slope {slope}: $\\propto {symbol}^{{{reference_slope:g}}}$"
        reference = _power_law(curves.values(), reference_slope, name)
        background += [reference] if reference is not None else []
    panel = Panel(
        lines, xlabel, ylabel, logx=logx, logy=logy, hline=hline, hline_label=hline_label, background=background
    )
    return plot_panels([panel], path, title=title)


def plot_learning_curves(
    metric_lines: Sequence[Line],
    loss_lines: Sequence[Line],
    path: str | Path,
    *,
    title: str,
    metric_name: str,
    target: float | None = None,
) -> Path:
    """Validation metric (with the target as a reference line) and training loss against steps.

    More than :data:`MAX_SERIES` optimizers become rows of small multiples (see :func:`plot_panels`).
    """
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


FrictionStats = Mapping[str, Sequence[float]]


def _friction_lines(label: str, stats: FrictionStats, color: str) -> list[Line]:
    """Mean ξ (labelled, with the q05–q95 band when given) and the median dashed, in one colour."""
    steps = stats["steps"]
    band = (stats["q05"], stats["q95"]) if "q05" in stats and "q95" in stats else None
    lines = [Line(label, steps, stats["mean"], color=color, band=band)]
    if "q50" in stats:
        lines.append(Line("", steps, stats["q50"], color=color, linestyle="--"))
    return lines


def plot_friction(
    curves: Mapping[str, Mapping[str, FrictionStats]],
    path: str | Path,
    *,
    title: str,
    colors: Mapping[str, str] | None = None,
) -> Path:
    """The friction coefficient ξ during training, one panel per parameter group.

    ``curves = {run: {group: stats}}``: a run label (an optimizer name, which picks its colour unless
    ``colors`` maps it) to, per parameter group (e.g. "all", "conv", "linear", "norm", "bias"),
    ``stats = {"steps": [...], "mean": [...], "q05": [...], "q50": [...], "q95": [...]}``: ξ's mean
    (solid), its 5–95 % quantile band (shaded) and median (dashed) at each step; the quantiles are
    optional. Groups appear in order of first appearance, on one y axis, each with the reference
    ξ = 0.5 at which diffGrad's step is Adam's at half the learning rate.
    """
    palette = {**optimizer_colors(curves), **(colors or {})}
    groups = list(dict.fromkeys(group for by_group in curves.values() for group in by_group))
    panels = [
        Panel(
            [
                line
                for run, by_group in curves.items()
                if group in by_group
                for line in _friction_lines(run, by_group[group], palette[run])
            ],
            "steps",
            "ξ",
            title=group,
            hline=0.5,
            hline_label=XI_HALF_LABEL,
            legend_title="solid: mean, dashed: median,\nband: 5–95 % quantiles",
        )
        for group in groups
    ]
    return plot_panels(panels, path, title=title, share_y=True, columns=3, panel_size=(4.2, 3.2))


ScaleStats = Mapping[str, Sequence[float]]


def _scale_lines(results: Mapping[str, ScaleStats], colors: Mapping[str, str]) -> list[Line]:
    """Mean with error bars (when ``lo`` and ``hi`` are given) against scale, each optimizer's points
    nudged sideways by a few per cent so that bars at one scale do not hide each other."""
    nudges = 10 ** (0.025 * (np.arange(len(results)) - (len(results) - 1) / 2))
    return [
        Line(
            name,
            np.asarray(stats["scale"], dtype=float) * nudge,
            stats["mean"],
            color=colors[name],
            marker="o",
            band=(stats["lo"], stats["hi"]) if "lo" in stats and "hi" in stats else None,
            errorbars=True,
        )
        for nudge, (name, stats) in zip(nudges, results.items())
    ]


def plot_scale_sensitivity(
    results: Mapping[str, ScaleStats],
    path: str | Path,
    *,
    title: str,
    metric_name: str,
    xi: Mapping[str, ScaleStats] | None = None,
) -> Path:
    """How an optimizer's outcome depends on the scale s by which the loss is multiplied.

    ``results = {optimizer: {"scale": [0.01, 1, 100], "mean": [...], "lo": [...], "hi": [...]}}``: the
    final ``metric_name`` (mean, with its 95 % confidence interval ``lo``–``hi`` as error bars) at each
    scale, on a log s axis. ``xi`` (same layout, ``lo``/``hi`` optional) adds a panel of mean ξ
    against s with the reference ξ = 0.5, each optimizer in its colour.
    """
    palette = optimizer_colors([*results, *(xi or {})])
    panels = [Panel(_scale_lines(results, palette), "loss scale s", f"final {metric_name}", logx=True)]
    if xi is not None:
        panels.append(
            Panel(
                _scale_lines(xi, palette),
                "loss scale s",
                "mean ξ",
                logx=True,
                hline=0.5,
                hline_label=XI_HALF_LABEL,
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
    def stood_still(self) -> bool:
        """Whether every finite iterate is the first one (up to rounding): the optimizer never moved."""
        return bool(len(self.xs)) and bool(
            np.all(np.abs(self.xs - self.xs[0]) <= 1e-12 * np.maximum(1.0, np.abs(self.xs[0])))
        )

    def label(self, twin: str | None = None) -> str:
        """The name, with what happened when it is not a plain path: diverged, did not move, or
        followed the same path as ``twin`` (whose line it hides)."""
        notes = [
            f"diverged at iteration {self.diverged_at}"
            if self.diverged_at is not None
            else "did not move"
            if self.stood_still
            else ""
        ]
        notes += [f"same path as {twin}"] if twin else []
        notes = [n for n in notes if n]
        return f"{self.name} ({'; '.join(notes)})" if notes else self.name


def _twins(paths: Sequence[_Path]) -> dict[str, str]:
    """For each path that retraces an earlier one exactly, that earlier path's name."""
    twins: dict[str, str] = {}
    for i, p in enumerate(paths):
        same = (q.name for q in paths[:i] if q.xs.shape == p.xs.shape and np.array_equal(q.xs, p.xs))
        if (twin := next(same, None)) is not None:
            twins[p.name] = twin
    return twins


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
    twins = _twins(paths)
    labels = {p.name: p.label(twins.get(p.name)) for p in paths}
    ends = [
        Line("", [len(p.losses) - 1], p.losses[-1:], color=colors[p.name], marker="x", linestyle="none")
        for p in paths
        if p.diverged_at is not None and len(p.losses)
    ]
    losses = [Line(labels[p.name], np.arange(len(p.losses)), p.losses, color=colors[p.name]) for p in paths]
    log = _wants_log(line.y for line in losses)
    loss_panel = Panel([*losses, *ends], "iteration", "loss", logy=log, ylim=_loss_limits(paths, log), legend=False)
    if dim == 1:
        panels = _one_d_panels(fn_name, paths, labels, colors, fn, domain)
    else:
        panels = [_two_d_panel(paths, labels, colors, fn, domain)]
    return plot_panels(
        [*panels[:1], loss_panel, *panels[1:]],
        path,
        title=f"{fn_name}: optimizer trajectories",
        panel_size=(4.4, 3.4),
    )


def _one_d_panels(
    fn_name: str,
    paths: Sequence[_Path],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    fn: Callable[[Any], Any] | None,
    domain: Sequence[tuple[float, float]] | None,
) -> list[Panel]:
    """θ against iteration, and the graph of ``fn`` with the visited points when it is given."""
    diverged = any(p.diverged_at is not None for p in paths)
    lo, hi = (float(v[0]) for v in _view_box(paths, domain, 0.15))
    view = (lo, hi) if diverged else None  # else the default view, which shows every iterate anyway
    thetas = [Line(labels[p.name], np.arange(len(p.xs)), p.xs[:, 0], color=colors[p.name]) for p in paths]
    panels = [Panel(thetas, "iteration", "θ", ylim=view)]
    if fn is not None:
        grid = np.linspace(lo, hi, 400)
        values = _evaluate(fn, grid[:, None])
        graph = Line(fn_name, grid, values, color="black", linestyle="-")
        points = [Line(p.name, p.xs[:, 0], p.losses, color=colors[p.name], marker=".", linestyle="none") for p in paths]
        finite_values = values[np.isfinite(values)]
        fn_view = _padded(finite_values, False) if diverged and finite_values.size else None
        panels.append(Panel(points, "θ", fn_name, xlim=view, ylim=fn_view, legend=False, background=[graph]))
    return panels


def _two_d_panel(
    paths: Sequence[_Path],
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    fn: Callable[[Any], Any] | None,
    domain: Sequence[tuple[float, float]] | None,
) -> Panel:
    """The paths in the plane, over the contour lines of ``fn`` when it is given; each path ends in
    a star, or in a cross where it diverged, and the shared start is a black dot."""
    lower, upper = _view_box(paths, domain, 0.2)

    def contours(ax: Axes) -> None:
        gx, gy = np.meshgrid(*(np.linspace(lower[i], upper[i], 160) for i in range(2)))
        z = _evaluate(fn, np.stack([gx, gy], axis=-1)) if fn is not None else np.zeros(0)
        finite_z = z[np.isfinite(z)]
        if finite_z.size:
            # Quantile levels spread the contours evenly whatever the function's range (e.g. Rosenbrock).
            levels = np.unique(np.quantile(finite_z, np.linspace(0.0, 1.0, 25)))
            ax.contour(gx, gy, z, levels=levels, cmap="Greys", linewidths=0.6)

    drawn = [p for p in paths if len(p.xs)]
    lines = [Line(labels[p.name], p.xs[:, 0], p.xs[:, 1], color=colors[p.name]) for p in drawn]
    lines += [
        Line(
            "",
            p.xs[-1:, 0],
            p.xs[-1:, 1],
            color=colors[p.name],
            marker="*" if p.diverged_at is None else "x",
            linestyle="none",
            markersize=10,
        )
        for p in drawn
    ]
    start = [Line("start", drawn[0].xs[:1, 0], drawn[0].xs[:1, 1], color="black", marker="o", linestyle="none")]
    return Panel(
        lines,
        "θ₁",
        "θ₂",
        xlim=(lower[0], upper[0]),
        ylim=(lower[1], upper[1]),
        background=start if drawn else [],
        underlay=contours if fn is not None else None,
    )


__all__ = [
    "ANCHORS",
    "DPI",
    "MAX_SERIES",
    "XI_HALF_LABEL",
    "Line",
    "Panel",
    "optimizer_colors",
    "plot_friction",
    "plot_learning_curves",
    "plot_lines",
    "plot_lr_sensitivity",
    "plot_panels",
    "plot_performance_profiles",
    "plot_scale_sensitivity",
    "plot_trajectories",
    "protocol_linestyle",
    "split_series",
]
