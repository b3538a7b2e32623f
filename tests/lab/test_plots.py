"""Report figures: stable distinct colours, small multiples, legends outside the data, reference lines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from diffgrad.lab.registry import OPTIMIZERS
from diffgrad.lab.report import plots

TABLE1 = [
    "adadelta",
    "adagrad",
    "adam",
    "adam-half-lr",
    "amsgrad",
    "diffgrad",
    *(f"diffgrad-dfc{k}" for k in range(1, 6)),
    "diffgrad-published",
    "rmsprop",
    "sgdm",
]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plotting functions save, drawn, in order."""
    saved: list[Figure] = []
    save = plots._save

    def keep(fig: Figure, path: str | Path) -> Path:
        out = save(fig, path)  # saving draws the figure, so artists have their final extents
        saved.append(fig)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _data_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend_entries(ax: Axes) -> Iterator[tuple[str, tuple[str, str, str]]]:
    """(label, (colour, line style, marker)) of each labelled series drawn on ``ax``."""
    for handle, label in zip(*ax.get_legend_handles_labels()):
        line: Any = handle[0] if isinstance(handle, tuple) else handle  # error bars: their data line
        if hasattr(line, "get_linestyle") and hasattr(line, "get_marker"):
            yield label, (to_hex(line.get_color()), str(line.get_linestyle()), str(line.get_marker()))


def assert_distinct_series(fig: Figure) -> None:
    """No two differently labelled series of one panel look the same, and no panel is crowded."""
    for ax in _data_axes(fig):
        styles: dict[tuple[str, str, str], str] = {}
        for label, style in _legend_entries(ax):
            assert styles.setdefault(style, label) == label, f"{label!r} looks like {styles[style]!r}"
        colours = {to_hex(line.get_color()) for line in ax.get_lines() if line.get_label()[:1] not in ("", "_")}
        assert len(colours - {to_hex("black"), to_hex("0.45"), to_hex("0.35")}) <= plots.MAX_SERIES


def assert_legends_outside(fig: Figure) -> None:
    """Every legend lies clear of every panel's data area."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent()
        for ax in _data_axes(fig):
            assert not box.overlaps(ax.get_window_extent()), legend.get_texts()[0].get_text()


# ------------------------------------------------------------------ colours


def test_every_registered_optimizer_has_its_own_fixed_colour() -> None:
    assert [name for name in OPTIMIZERS if plots._normalise(name) not in plots._KNOWN_BY_KEY] == []
    colors = plots.optimizer_colors(OPTIMIZERS)
    assert len(set(colors.values())) == len(OPTIMIZERS)
    for name in OPTIMIZERS:
        assert plots.optimizer_colors([name, "zzz-unknown"])[name] == colors[name]


def test_colours_stay_distinct_for_many_unknown_names() -> None:
    names = [*OPTIMIZERS, "AdamW", *(f"custom-{k}" for k in range(40))]
    colors = plots.optimizer_colors(names)
    assert len(set(colors.values())) == len(names)
    assert colors == plots.optimizer_colors(reversed(names))
    assert colors["adamw"] != colors["AdamW"]


# ------------------------------------------------------------------ small multiples


def test_split_series_keeps_anchors_in_every_group_and_everything_once() -> None:
    assert plots.split_series(["a", "b", "a"], anchors={"a"}) == [["a", "b"]]
    groups = plots.split_series(TABLE1, anchors=set(plots.ANCHORS))
    assert len(groups) == 3 and all(len(g) <= plots.MAX_SERIES for g in groups)
    assert all(g[:2] == ["adam", "diffgrad"] for g in groups)
    rest = [k for g in groups for k in g[2:]]
    assert rest == [n for n in TABLE1 if n not in plots.ANCHORS]


def _curve_lines(names: list[str], steps: np.ndarray, scale: float) -> list[plots.Line]:
    colors = plots.optimizer_colors(names)
    return [
        plots.Line(f"{n} (paper)", steps, scale * (1 + i) / steps, color=colors[n], linestyle="--", band=None)
        for i, n in enumerate(names)
    ]


def test_learning_curves_split_into_rows_on_shared_axes(tmp_path: Path, figures: list[Figure]) -> None:
    steps = np.array([50.0, 100.0, 120.0])
    plots.plot_learning_curves(
        _curve_lines(TABLE1, steps, 1.0),
        _curve_lines(TABLE1, steps, 2.0),
        tmp_path / "curves.png",
        title="digits-cnn",
        metric_name="accuracy",
        target=0.97,
    )
    (fig,) = figures
    axes = _data_axes(fig)
    assert len(axes) == 3 * 2
    assert_distinct_series(fig)
    assert_legends_outside(fig)
    for column in (axes[0::2], axes[1::2]):
        assert len({ax.get_ylim() for ax in column}) == 1
    every_label = {label for ax in axes[0::2] for label, _ in _legend_entries(ax)}
    assert every_label == {f"{n} (paper)" for n in TABLE1} | {"target"}
    for ax in axes[0::2]:
        labels = [label for label, _ in _legend_entries(ax)]
        assert labels[:2] == ["adam (paper)", "diffgrad (paper)"]


def test_few_series_stay_in_one_panel(tmp_path: Path, figures: list[Figure]) -> None:
    lines = _curve_lines(["adam", "diffgrad", "sgdm"], np.arange(1.0, 10.0), 1.0)
    plots.plot_lr_sensitivity(lines, tmp_path / "lr.png", title="t", metric_name="accuracy")
    (fig,) = figures
    assert len(_data_axes(fig)) == 1
    assert_distinct_series(fig)
    assert_legends_outside(fig)


# ------------------------------------------------------------------ reference lines


def test_plot_lines_draws_the_reference_slope(tmp_path: Path, figures: list[Figure]) -> None:
    t = np.arange(1.0, 1000.0)
    curves = {"adam": (t, 3 / t**0.6), "diffgrad": (t, 2 / t**0.5), "amsgrad": (t, 1 / t**0.7)}
    plots.plot_lines(curves, tmp_path / "r.png", xlabel="T", logx=True, logy=True, reference_slope=-0.5)
    (fig,) = figures
    (ax,) = _data_axes(fig)
    (reference,) = [line for line in ax.get_lines() if "slope" in str(line.get_label())]
    x, y = (np.asarray(v, dtype=float) for v in reference.get_data())
    assert np.log(y[-1] / y[0]) / np.log(x[-1] / x[0]) == pytest.approx(-0.5)
    assert x[0] == 1 and x[-1] == 999
    assert_distinct_series(fig)
    assert_legends_outside(fig)
    with pytest.raises(ValueError, match="log"):
        plots.plot_lines(curves, tmp_path / "bad.png", reference_slope=-0.5)


def test_plot_lines_hline(tmp_path: Path, figures: list[Figure]) -> None:
    plots.plot_lines({"diffgrad": ([0, 1], [0.4, 0.6])}, tmp_path / "h.png", hline=0.5, hline_label="ξ = 0.5")
    (ax,) = _data_axes(figures[0])
    assert [label for label, _ in _legend_entries(ax)] == ["diffgrad", "ξ = 0.5"]


# ------------------------------------------------------------------ friction and loss scale


def _friction_stats(level: float) -> dict[str, list[float]]:
    steps = [0.0, 10.0, 20.0]
    mean = [level, level - 0.02, level - 0.03]
    return {
        "steps": steps,
        "mean": mean,
        "q05": [m - 0.1 for m in mean],
        "q50": [m - 0.01 for m in mean],
        "q95": [m + 0.1 for m in mean],
    }


def test_plot_friction_one_panel_per_group_on_one_y_axis(tmp_path: Path, figures: list[Figure]) -> None:
    runs = ["diffgrad", *(f"diffgrad-dfc{k}" for k in range(1, 6))]
    groups = ["all", "conv", "linear", "norm", "bias"]
    curves = {run: {g: _friction_stats(0.3 + 0.05 * i) for g in groups} for i, run in enumerate(runs)}
    plots.plot_friction(curves, tmp_path / "f.png", title="friction", colors={"diffgrad": "#000080"})
    (fig,) = figures
    axes = _data_axes(fig)
    assert [ax.get_title() for ax in axes] == groups
    assert len({ax.get_ylim() for ax in axes}) == 1
    for ax in axes:
        assert any(line.get_label() == plots.XI_HALF_LABEL for line in ax.get_lines())
        assert "#000080" in {to_hex(line.get_color()) for line in ax.get_lines()}
    assert_distinct_series(fig)
    assert_legends_outside(fig)


def test_plot_scale_sensitivity_with_xi(tmp_path: Path, figures: list[Figure]) -> None:
    scales = [0.01, 1.0, 100.0]
    results = {
        name: {"scale": scales, "mean": [0.9, 0.92, 0.91], "lo": [0.88, 0.9, 0.89], "hi": [0.92, 0.94, 0.93]}
        for name in ("adam", "diffgrad")
    }
    xi = {"diffgrad": {"scale": scales, "mean": [0.5, 0.5, 0.5]}}
    plots.plot_scale_sensitivity(results, tmp_path / "s.png", title="scale", metric_name="accuracy", xi=xi)
    (fig,) = figures
    metric, friction = _data_axes(fig)
    assert metric.get_xscale() == friction.get_xscale() == "log"
    assert friction.get_ylabel() == "mean ξ"
    assert_distinct_series(fig)
    assert_legends_outside(fig)


# ------------------------------------------------------------------ trajectories


def test_trajectory_labels_say_what_happened(tmp_path: Path, figures: list[Figure]) -> None:
    from diffgrad.lab.workloads.analytic import FUNCTIONS

    f1 = FUNCTIONS["F1"]
    moving = np.linspace(-1.0, -0.3, 50)[:, None]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "adam": (moving, np.zeros(50)),
        "diffgrad": (np.full((50, 1), -1.0), np.zeros(50)),
        "diffgrad-dfc1": (np.concatenate([moving[:10], np.full((40, 1), np.nan)]), np.zeros(50)),
        **{f"diffgrad-dfc{k}": (0.9 * moving, np.zeros(50)) for k in range(2, 6)},
    }
    plots.plot_trajectories("F1", curves, tmp_path / "t.png", fn=f1.f, domain=f1.domain)
    (fig,) = figures
    labels = {label for ax in _data_axes(fig) for label, _ in _legend_entries(ax)}
    assert "diffgrad (did not move)" in labels
    assert "diffgrad-dfc1 (diverged at iteration 10)" in labels
    assert "diffgrad-dfc3 (same path as diffgrad-dfc2)" in labels
    assert len(_data_axes(fig)) == 2 * 3  # seven paths: two rows of θ, loss and F1
    assert_distinct_series(fig)
    assert_legends_outside(fig)


def test_two_d_trajectories_keep_the_legend_off_the_contours(tmp_path: Path, figures: list[Figure]) -> None:
    from diffgrad.lab.workloads.analytic import FUNCTIONS

    rosenbrock = FUNCTIONS["rosenbrock"]
    path = np.stack([np.linspace(-1.5, 1.0, 30), np.linspace(2.0, 1.0, 30)], axis=1)
    losses = np.zeros(30)
    curves = {"adam": (path, losses), "diffgrad": (path * 0.9, losses)}
    plots.plot_trajectories("rosenbrock", curves, tmp_path / "t.png", fn=rosenbrock.f, domain=rosenbrock.domain)
    (fig,) = figures
    assert [ax.get_xlabel() for ax in _data_axes(fig)] == ["θ₁", "iteration"]
    assert_distinct_series(fig)
    assert_legends_outside(fig)
