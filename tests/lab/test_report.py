"""The report renderer: stats helpers, Markdown/HTML writer, plots and a full render from SQLite."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)
pytest.importorskip("matplotlib")

from diffgrad.lab.report import (  # noqa: E402
    Document,
    Image,
    Results,
    Section,
    build_sections,
    format_table,
    markdown_to_html,
    plots,
    render_report,
    stats,
    summary_sections,
)
from diffgrad.lab.report.sections import source  # noqa: E402
from diffgrad.lab.storage import RunRecord, StudyInfo  # noqa: E402

# t(0.975, df) from statistical tables, independent of the code under test.
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 9: 2.262157163, 30: 2.042272456}

# ------------------------------------------------------------------ stats


def test_t_quantiles_match_tables_and_scipy() -> None:
    for df, value in T975.items():
        assert stats.t975(df) == pytest.approx(value, abs=1e-6)
        assert stats.t975_table(df) == pytest.approx(value, abs=1e-4)
    assert stats.t975_table(35) == pytest.approx(2.0423, abs=1e-4)  # nearest smaller tabulated df
    assert stats.t975_table(1000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        stats.t975_table(0)


def test_t_table_used_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # makes `import scipy.stats` fail
    assert stats.t975(4) == pytest.approx(2.7764, abs=1e-9)


def test_mean_ci_known_values() -> None:
    ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5); half = t(0.975, 4) * sd / sqrt(5)
    assert (ci.mean, ci.n) == (3.0, 5)
    assert ci.half_width == pytest.approx(T975[4] * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    assert ci.half_width == pytest.approx(1.963243, abs=1e-6)
    dropped = stats.mean_ci([2.0, float("nan"), None, 4.0, float("inf")])
    assert (dropped.mean, dropped.n) == (3.0, 2)
    assert math.isnan(stats.mean_ci([7.0]).half_width) and stats.mean_ci([7.0]).mean == 7.0
    assert stats.mean_ci([]).n == 0


def test_target_summary_counts_never_reached_as_infinite() -> None:
    s = stats.target_summary([100, None, 300])
    assert (s.n, s.reached, s.median) == (3, 2, 300.0)
    s = stats.target_summary([100, None, None])
    assert (s.reached, s.median) == (1, math.inf)
    s = stats.target_summary([100, 200, None, 400])
    assert s.median == 300.0
    assert stats.target_summary([]).median == math.inf


def test_performance_profile_hand_example() -> None:
    inf = math.inf
    costs = {
        "p1": {"A": 10, "B": 20},
        "p2": {"A": 30, "B": 15},
        "p3": {"A": inf, "B": 40},
        "p4": {"A": inf, "B": None},  # nobody solved p4: stays in the denominator
        "p5": {"B": 50},  # A did not run: counts as failed
    }
    prof = stats.performance_profile(costs)
    assert prof.solvers == ("A", "B") and prof.problems == ("p1", "p2", "p3", "p4", "p5")
    np.testing.assert_allclose(prof.values[:, 0], [1, 2, inf, inf, inf])
    np.testing.assert_allclose(prof.values[:, 1], [2, 1, 1, inf, 1])
    np.testing.assert_allclose(prof.rho(1.0), [1 / 5, 3 / 5])
    np.testing.assert_allclose(
        prof.rho(np.array([1.0, 1.99, 2.0, 1e9, inf])), [[0.2, 0.2, 0.4, 0.4, 0.4], [0.6, 0.6, 0.8, 0.8, 0.8]]
    )
    taus, rho = prof.curve("A", 3.0)
    np.testing.assert_allclose(taus, [1, 2, 3])
    np.testing.assert_allclose(rho, [0.2, 0.4, 0.4])
    assert prof.max_finite() == 2.0


def test_performance_profile_zero_cost_ties() -> None:
    prof = stats.performance_profile({"p": {"A": 0, "B": 0, "C": 5}})
    np.testing.assert_allclose(prof.values[0], [1, 1, math.inf])


def test_regret_profile_orients_by_metric_direction() -> None:
    prof = stats.regret_profile(
        {"acc": {"A": 0.9, "B": 0.8}, "loss": {"A": 0.5, "B": 0.2, "C": float("nan")}},
        {"acc": True, "loss": False},
    )
    np.testing.assert_allclose(prof.values, [[0, 0.1, math.inf], [0.3, 0, math.inf]], atol=1e-12)
    np.testing.assert_allclose(prof.rho(0.0), [0.5, 0.5, 0.0])


def test_aggregate_curves_drops_diverged_points() -> None:
    band = stats.aggregate_curves([([0, 10, 20], [1.0, 2.0, 3.0]), ([0, 10], [3.0, float("nan")])])
    np.testing.assert_allclose(band.x, [0, 10, 20])
    np.testing.assert_allclose(band.mean, [2.0, 2.0, 3.0])
    np.testing.assert_allclose(band.hi - band.mean, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(band.n, [2, 1, 1])


def test_lr_sensitivity_groups_and_separates_failures() -> None:
    sens = stats.lr_sensitivity([(0.1, float("nan")), (0.01, 0.5), (0.001, 0.2), (0.01, 0.7)])
    np.testing.assert_allclose(sens.lr, [0.001, 0.01])
    np.testing.assert_allclose(sens.mean, [0.2, 0.6])
    np.testing.assert_array_equal(sens.n, [1, 2])
    np.testing.assert_allclose(sens.failed_lr, [0.1])


# ------------------------------------------------------------------ document


def test_markdown_to_html_subset() -> None:
    text = "\n".join(
        [
            "## Title with `code`",
            "",
            "A **bold** *new* claim & <tag>",
            "continues here.",
            "",
            format_table(["a", "b|c"], [["`x|y`", 1.5]], align="lr"),
            "",
            "- one",
            "- **two**",
            "",
            "![a plot](plots/x.png)",
        ]
    )
    out = markdown_to_html(text)
    assert "<h2>Title with <code>code</code></h2>" in out
    assert "<p>A <strong>bold</strong> <em>new</em> claim &amp; &lt;tag&gt; continues here.</p>" in out
    assert '<th>a</th><th style="text-align:right">b|c</th>' in out
    assert '<td><code>x|y</code></td><td style="text-align:right">1.5</td>' in out
    assert "<ul>\n<li>one</li>\n<li><strong>two</strong></li>\n</ul>" in out
    assert '<figure><img src="plots/x.png" alt="a plot"><figcaption>a plot</figcaption></figure>' in out


def test_document_writes_relative_image_paths(tmp_path: Path) -> None:
    png = plots.plot_lines({"adam": ([1, 2], [3, 4])}, tmp_path / "plots" / "a.png")
    doc = Document("T", [Section("S", "body", images=[Image(png, "cap")])])
    md = doc.write(tmp_path)
    assert "![cap](plots/a.png)" in md.read_text()
    assert '<img src="plots/a.png"' in (tmp_path / "report.html").read_text()


def test_document_in_a_relative_folder_links_its_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plots written under a relative output folder are linked relative to the report, not the cwd."""
    monkeypatch.chdir(tmp_path)
    out = Path("results") / "run"
    png = plots.plot_lines({"adam": ([1, 2], [3, 4])}, out / "plots" / "a.png")
    md = Document("T", [Section("S", images=[Image(png, "cap")])]).write(out)
    assert "![cap](plots/a.png)" in md.read_text()


def test_source_compresses_trial_ranges() -> None:
    recs = [_record("s", "w", "o", "tuned", "final", n, 0, {}, 0.0) for n in (0, 1, 2, 5, 7, 8)]
    assert source("s", recs) == "`s` #0–2, 5, 7–8"


# ------------------------------------------------------------------ plots


def test_optimizer_colors_stable_and_distinct() -> None:
    names = ["diffgrad", "adam", "zeta", "omega", "foo_bar", "AdamW"]
    colors = plots.optimizer_colors(names)
    assert colors == plots.optimizer_colors(reversed(names))
    assert len(set(colors.values())) == len(names)
    assert colors["diffgrad"] == plots.optimizer_colors(["diffgrad"])["diffgrad"]


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_plot_trajectories_1d_and_2d(tmp_path: Path) -> None:
    from diffgrad.lab.workloads.analytic import FUNCTIONS

    f1, rosenbrock = FUNCTIONS["F1"].f, FUNCTIONS["rosenbrock"].f
    xs = torch.linspace(-1, -0.3, 50, dtype=torch.float64)[:, None]
    curves = {"adam": (xs.numpy(), f1(xs).numpy()), "diffgrad": (0.9 * xs.numpy(), f1(0.9 * xs).numpy())}
    _assert_png(plots.plot_trajectories("F1", curves, tmp_path / "t1.png", fn=f1))

    path = torch.stack([torch.linspace(-1.5, 1, 30), torch.linspace(2, 1, 30)], dim=1).double()
    out = plots.plot_trajectories(
        "Rosenbrock", {"adam": (path.numpy(), rosenbrock(path).numpy())}, tmp_path / "t2.png", fn=rosenbrock
    )
    _assert_png(out)
    with pytest.raises(ValueError):
        plots.plot_trajectories("bad", {"a": (np.zeros((3, 3)), np.zeros(3))}, tmp_path / "bad.png")


def test_plot_lines_log_axes(tmp_path: Path) -> None:
    t = np.arange(1, 200)
    out = plots.plot_lines(
        {"adam": (t, 1 / np.sqrt(t)), "diffgrad": (t, 0.5 / np.sqrt(t))},
        tmp_path / "r.png",
        title="R(T)/T",
        xlabel="T",
        ylabel="R(T)/T",
        logx=True,
        logy=True,
    )
    _assert_png(out)


# ------------------------------------------------------------------ full render

STEPS = list(range(0, 1001, 100))


def _record(
    study,
    workload,
    optimizer,
    protocol,
    phase,
    trial,
    seed,
    hparams,
    level,
    *,  # noqa: ANN001
    higher=True,
    target=0.8,
    test=None,
    diverged=False,
    tag="t1",
) -> RunRecord:
    """A run whose validation metric approaches ``level`` exponentially (or falls, for losses)."""
    progress = 1 - np.exp(-np.asarray(STEPS) / 250.0)
    val = (level * progress) if higher else (1.0 - (1.0 - level) * progress)
    val = [float(v) for v in val]
    if diverged:
        val[-3:] = [float("nan")] * 3
    reached = next((s for s, v in zip(STEPS, val) if (v >= target if higher else v <= target)), None)
    return RunRecord(
        study=study,
        workload=workload,
        optimizer=optimizer,
        protocol=protocol,
        phase=phase,
        trial_number=trial,
        seed=seed,
        hparams=hparams,
        steps=STEPS,
        val_metric=val,
        val_loss=[1.0 - v for v in val],
        train_loss=[float(2.0 * np.exp(-s / 300) + 0.01) for s in STEPS],
        wall_time=[s / 100.0 for s in STEPS],
        final_val_metric=val[-1],
        test_metric=test,
        test_loss=None if test is None else 0.3,
        steps_to_target=reached,
        time_to_target=None if reached is None else reached / 100.0,
        total_wall_time=10.0 + seed,
        diverged=diverged,
        tag=tag,
    )


WORKLOADS = {"toy_mlp": ("accuracy", True, 0.8), "quadratic": ("loss", False, 0.1)}


def _build_db(url: str) -> dict[str, list[RunRecord]]:
    """Studies written exactly as the storage contract says; returns the records per study."""
    rng = np.random.default_rng(0)
    # One storage object for all studies: same database as passing the URL, without reconnecting.
    storage = optuna.storages.RDBStorage(url)
    written: dict[str, list[RunRecord]] = {}
    plan = [  # (workload, optimizer, protocol, tag, tuned levels per lr or None, final level, seeds, test?)
        ("toy_mlp", "adam", "tuned", "t1", True, 0.88, 5, True),
        ("toy_mlp", "diffgrad", "tuned", "t1", True, 0.90, 5, True),
        ("toy_mlp", "sgdm", "paper", "t1", False, 0.70, 3, True),
        ("quadratic", "adam", "tuned", "t1", True, 0.05, 4, False),
        ("quadratic", "diffgrad", "tuned", "t1", True, 0.04, 4, False),
        ("toy_mlp", "adam", "paper", "other", False, 0.85, 2, True),
    ]
    for workload, optimizer, protocol, tag, tuned, level, seeds, with_test in plan:
        metric, higher, target = WORKLOADS[workload]
        name = f"{tag}-{workload}-{optimizer}-{protocol}"
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize" if higher else "minimize")
        info = StudyInfo(
            workload=workload,
            optimizer=optimizer,
            protocol=protocol,
            metric_name=metric,
            higher_is_better=higher,
            target=target,
            steps=1000,
            batch_size=32,
            eval_every=100,
            workload_options={"width": 8},
            search_space={"lr": [1e-4, 1e-1]},
            tag=tag,
            tuning_budget=4 if tuned else 0,
        )
        study.set_user_attr("info", dataclasses.asdict(info))
        recs = []
        trial = 0
        if tuned:
            for lr, scale in ((1e-3, 0.9), (3e-3, 1.0), (1e-2, 0.97), (1e-1, None)):
                recs.append(
                    _record(
                        name,
                        workload,
                        optimizer,
                        protocol,
                        "tune",
                        trial,
                        0,
                        {"lr": lr},
                        level * (scale or 1),
                        higher=higher,
                        target=target,
                        diverged=scale is None,
                        tag=tag,
                    )
                )
                trial += 1
        for seed in range(seeds):
            test = float(level + rng.normal(0, 0.01)) if with_test else None
            recs.append(
                _record(
                    name,
                    workload,
                    optimizer,
                    protocol,
                    "final",
                    trial,
                    seed,
                    {"lr": 3e-3},
                    level + rng.normal(0, 0.005),
                    higher=higher,
                    target=target,
                    test=test,
                    tag=tag,
                )
            )
            trial += 1
        # Optuna cannot complete a trial with a NaN value, so a diverged run is stored with the worst
        # score as its objective while its record keeps the NaN.
        study.add_trials(
            [
                optuna.trial.create_trial(
                    value=rec.final_val_metric if math.isfinite(rec.final_val_metric) else (0.0 if higher else 1e9),
                    user_attrs={"record": rec.to_attr()},
                    state=optuna.trial.TrialState.COMPLETE,
                )
                for rec in recs
            ]
        )
        written[name] = recs
    # A study that has started but has no finished run yet.
    empty = optuna.create_study(storage=storage, study_name="t1-toy_mlp-adagrad-tuned", direction="maximize")
    empty.set_user_attr(
        "info",
        dataclasses.asdict(
            StudyInfo(
                workload="toy_mlp",
                optimizer="adagrad",
                protocol="tuned",
                metric_name="accuracy",
                higher_is_better=True,
                target=0.8,
                steps=1000,
                batch_size=32,
                eval_every=100,
                tag="t1",
            )
        ),
    )
    return written


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[RunRecord]]]:
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'results.db'}"
    written = _build_db(url)
    md = render_report(url, root / "out", title="Test report", tag="t1")
    return md, written


def test_render_writes_all_files(rendered) -> None:  # noqa: ANN001
    md, _ = rendered
    out = md.parent
    assert md.name == "report.md" and (out / "report.html").is_file()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == [
        "curves_quadratic-t1.png",
        "curves_toy-mlp-t1.png",
        "lr_quadratic-t1.png",
        "lr_toy-mlp-t1.png",
        "performance_profile.png",
    ]
    for name in pngs:
        _assert_png(out / "plots" / name)


def test_markdown_sections_and_numbers(rendered) -> None:  # noqa: ANN001
    md, written = rendered
    text = md.read_text()
    for heading in (
        "# Test report",
        "## Overview",
        "## Summary",
        "## Learning curves",
        "## Learning-rate sensitivity",
        "## Steps and time to target",
        "## Performance profile",
        "### toy_mlp [t1]",
        "### quadratic [t1]",
    ):
        assert heading + "\n" in text, heading
    assert "other-toy_mlp" not in text  # the tag filter dropped the study tagged "other"
    assert "`t1-toy_mlp-adagrad-tuned` (no runs)" in text
    assert text.count("Tuned optimizers: 4 tuning trials each.") == 2
    for study, recs in written.items():
        if study.startswith("other"):
            continue
        final = [r for r in recs if r.phase == "final"]
        with_test = final[0].test_metric is not None
        values = np.array([r.test_metric if with_test else r.final_val_metric for r in final])
        mean = values.mean()
        half = T975[len(values) - 1] * values.std(ddof=1) / math.sqrt(len(values))
        row = next(
            line
            for line in text.splitlines()
            if f"`{study}` #{final[0].trial_number}–" in line and line.startswith("| ") and "±" in line
        )
        assert f"{mean:.4g} ± {half:.4g}" in row, (study, row)
        assert f"| {'test' if with_test else 'val'} |" in row
        steps = sorted(r.steps_to_target if r.steps_to_target is not None else math.inf for r in final)
        median = float(np.median(steps))
        reached = sum(s != math.inf for s in steps)
        shown = f"{median:.10g}" if math.isfinite(median) else "not reached"
        assert f"{shown} ({reached}/{len(final)})" in row
    # The best mean of each workload is bold; sgdm never reaches 0.8 accuracy.
    rows = [line for line in text.splitlines() if "±" in line]
    assert [line.split(" | ")[0] for line in rows if "| **" in line] == ["| diffgrad", "| diffgrad"]
    sgdm = next(line for line in rows if "`t1-toy_mlp-sgdm-paper`" in line)
    assert "not reached (0/3)" in sgdm
    # lr sensitivity: best tuning trial and its source.
    tune = [r for r in written["t1-toy_mlp-adam-tuned"] if r.phase == "tune"]
    best = max((r for r in tune if math.isfinite(r.final_val_metric)), key=lambda r: r.final_val_metric)
    assert (
        f"| adam | tuned | 4 | 0.001 – 0.1 | {best.hparams['lr']:.4g} | {best.final_val_metric:.4g} | "
        f"#{best.trial_number} | 1 | `t1-toy_mlp-adam-tuned` #0–3 |"
    ) in text
    # performance profile: diffgrad reaches first on both workloads, sgdm on none.
    assert "| diffgrad (tuned) | 2/2 | 2/2 | 2/2 | 2/2 | 2/2 |" in text
    assert "| sgdm (paper) | 0/2 | 0/2 | 0/2 | 0/2 | 0/2 |" in text


def test_html_matches_markdown(rendered) -> None:  # noqa: ANN001
    md, _ = rendered
    text, page = md.read_text(), (md.parent / "report.html").read_text()
    n_tables = sum(1 for line in text.splitlines() if re.fullmatch(r"\|(:?-+:?\|)+", line))
    assert n_tables == page.count("<table>") == 7
    for png in (md.parent / "plots").glob("*.png"):
        assert f'<img src="plots/{png.name}"' in page
    assert "<script" not in page and "http" not in page
    assert "<h2>Performance profile</h2>" in page and "<code>t1-toy_mlp-adam-tuned</code>" in page


def test_render_is_deterministic_and_handles_empty_db(rendered, tmp_path: Path) -> None:  # noqa: ANN001
    md, _ = rendered
    url = f"sqlite:///{md.parent.parent / 'results.db'}"
    again = render_report(url, tmp_path / "again", title="Test report", tag="t1")
    assert again.read_text() == md.read_text()
    empty = render_report(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "empty")
    assert "No final runs in the database." in empty.read_text()
    assert not (tmp_path / "empty" / "plots").exists()


def test_sections_without_study_info_or_spread(tmp_path: Path) -> None:
    """Records alone (no StudyInfo), one seed each and no test score still give a readable report."""
    records = [
        _record(f"s-{opt}", "w", opt, "paper", "final", 0, 0, {"lr": 1e-3}, level, tag="")
        for opt, level in (("adam", 0.9), ("diffgrad", 0.7))
    ]
    sections = build_sections(Results.from_records(records, {}), tmp_path / "plots")
    text = Document("T", sections).write(tmp_path).read_text()
    assert "No study description stored for this workload" in text
    assert f"| val | {records[0].final_val_metric:.4g} (n=1) |" in text
    assert "| adam (paper) | 1/1 | 1/1 | 1/1 | 1/1 | 0/0 |" in text  # no info: no regret profile
    assert "**" not in text.split("## Summary")[1].split("## Learning curves")[0]


def test_summary_flags_unequal_budgets() -> None:
    def info(optimizer: str, steps: int, tuning_budget: int) -> StudyInfo:
        return StudyInfo(
            workload="w",
            optimizer=optimizer,
            protocol="tuned",
            metric_name="accuracy",
            higher_is_better=True,
            target=0.8,
            steps=steps,
            batch_size=32,
            eval_every=100,
            tuning_budget=tuning_budget,
        )

    infos = {"a": info("adam", 1000, 20), "d": info("diffgrad", 2000, 30)}
    records = [
        _record(s, "w", i.optimizer, "tuned", "final", 0, 0, {"lr": 1e-3}, 0.9, tag="") for s, i in infos.items()
    ]
    text = "\n".join(s.markdown for s in summary_sections(Results.from_records(records, infos)))
    assert "differ in budget, batch size, target, metric or schedule" in text
    assert "different tuning budgets (20, 30 trials)" in text
