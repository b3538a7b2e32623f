"""Report sections built from stored run records: tables, figures and the text around them.

Everything here reads :class:`~diffgrad.lab.storage.RunRecord` and
:class:`~diffgrad.lab.storage.StudyInfo` only; numbers come from :mod:`.stats`, figures from
:mod:`.plots`. Every table row names the study and trial numbers its numbers come from.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage import RunRecord, StudyInfo, load_artifacts, load_records, load_study_infos, redact_url
from . import plots
from .document import Image, Section, format_table
from .stats import (
    MeanCI,
    aggregate_curves,
    divergence_index,
    fmt,
    fmt_ci,
    lr_sensitivity,
    mean_ci,
    performance_profile,
    regret_profile,
    target_summary,
)

LR_KEY = "lr"  # the hyper-parameter plotted in the learning-rate sensitivity section
FINAL, TUNE = "final", "tune"


@dataclass(frozen=True)
class Cell:
    """One study: one optimizer under one protocol on one workload, with its finished runs."""

    study: str
    workload: str
    optimizer: str
    protocol: str
    tag: str
    info: StudyInfo | None
    final: tuple[RunRecord, ...]
    tune: tuple[RunRecord, ...]
    loss_scale: float = 1.0

    @property
    def label(self) -> str:
        """The name used for this optimizer/protocol pair in legends and across workloads."""
        scale = f", loss ×{self.loss_scale:g}" if self.loss_scale != 1.0 else ""
        return f"{self.optimizer} ({self.protocol}{scale})"

    @property
    def runs(self) -> tuple[RunRecord, ...]:
        """Every finished run of the study, final and tuning."""
        return (*self.final, *self.tune)


@dataclass(frozen=True)
class Problem:
    """The studies of one workload within one tag: the rows of one comparison."""

    workload: str
    tag: str
    cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return f"{self.workload} [{self.tag}]" if self.tag else self.workload

    @property
    def slug(self) -> str:
        """A file-name-safe form of :attr:`name`, for plot files."""
        return re.sub(r"[^a-z0-9]+", "-", f"{self.workload}-{self.tag}".lower()).strip("-")

    @property
    def finished(self) -> tuple[Cell, ...]:
        """The studies with final-phase runs: the rows of the result tables."""
        return tuple(c for c in self.cells if c.final)

    @property
    def info(self) -> StudyInfo | None:
        """The first study's description (metric, direction, target, budget), if any was stored."""
        return next((c.info for c in self.cells if c.info is not None), None)


@dataclass(frozen=True)
class Results:
    """The contents of a results database, grouped into problems (sorted by tag, then workload)."""

    problems: tuple[Problem, ...]

    @classmethod
    def from_records(
        cls, records: Iterable[RunRecord], infos: dict[str, StudyInfo], *, tag: str | None = None
    ) -> Results:
        """Group ``records`` by study and studies by (tag, workload); ``tag`` keeps one tag only.

        Studies with an info but no finished run are kept (with no runs) so a report shows them.
        """
        by_study: dict[str, list[RunRecord]] = defaultdict(list)
        for rec in records:
            if tag is None or rec.tag == tag:
                by_study[rec.study].append(rec)
        for study, info in infos.items():
            if tag is None or info.tag == tag:
                by_study.setdefault(study, [])
        groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
        for study in sorted(by_study):
            recs = sorted(by_study[study], key=lambda r: r.trial_number)
            study_info = infos.get(study)
            # A study without an info has runs (it is in by_study because of them).
            named: StudyInfo | RunRecord = study_info if study_info else recs[0]
            cell = Cell(
                study=study,
                workload=named.workload,
                optimizer=named.optimizer,
                protocol=named.protocol,
                tag=named.tag,
                info=study_info,
                final=tuple(r for r in recs if r.phase == FINAL),
                tune=tuple(r for r in recs if r.phase == TUNE),
                loss_scale=named.loss_scale,
            )
            groups[(cell.tag, cell.workload)].append(cell)
        problems = []
        for (tag_, workload), cells in sorted(groups.items()):
            cells.sort(key=lambda c: (c.optimizer, c.protocol, c.study))
            labels = [c.label for c in cells]
            if len(set(labels)) != len(labels):
                raise ValueError(
                    f"two studies share an optimizer, protocol and loss scale on {workload!r} tag {tag_!r}: "
                    f"{[c.study for c in cells]}; give them different tags"
                )
            problems.append(Problem(workload, tag_, tuple(cells)))
        return cls(tuple(problems))

    @classmethod
    def load(cls, storage_url: str, *, tag: str | None = None) -> Results:
        """Read a results database through :mod:`diffgrad.lab.storage`."""
        return cls.from_records(load_records(storage_url), load_study_infos(storage_url), tag=tag)

    @property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(c for p in self.problems for c in p.cells)

    def colors(self) -> dict[str, str]:
        """Colour of each optimizer, shared by all figures of one report."""
        return plots.optimizer_colors(c.optimizer for c in self.cells)


# ---------------------------------------------------------------- formatting


def diverged(record: RunRecord) -> bool:
    """Whether a run left the finite range: flagged by the runner, or holding a non-finite loss or
    metric (records written by other tools need not set the flag)."""
    values = (*record.val_metric, *record.val_loss, *record.train_loss, record.final_val_metric)
    return record.diverged or not all(math.isfinite(v) for v in values)


def _diverged_note(cells: Sequence[Cell]) -> str:
    """A bullet per study with diverged final runs (their seeds and trials), or "" when none diverged."""
    lines = []
    for c in cells:
        runs = [r for r in c.final if diverged(r)]
        if runs:
            seeds = ", ".join(str(r.seed) for r in runs)
            lines.append(
                f"- {c.label}: {len(runs)} of {len(c.final)} diverged "
                f"(seed{'s' if len(runs) > 1 else ''} {seeds}; {source(c.study, runs)})"
            )
    return (
        "**Diverged runs** (left out of the means; their curves stop where they diverged):\n\n" + "\n".join(lines)
        if lines
        else ""
    )


def fmt_steps(x: float) -> str:
    return f"{x:.10g}" if math.isfinite(x) else "not reached"


def source(study: str, records: Sequence[RunRecord]) -> str:
    """``study #trials`` with runs of consecutive trial numbers shortened to ranges."""
    numbers = sorted({r.trial_number for r in records})
    spans: list[str] = []
    start: int | None = None
    prev: int | None = None
    for n in [*numbers, None]:
        if start is not None and (n is None or prev is None or n != prev + 1):
            spans.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if n is not None and start is None:
            start = n
        prev = n
    return f"`{study}` #{', '.join(spans)}" if spans else f"`{study}` (no runs)"


def _hparams(records: Sequence[RunRecord]) -> str:
    settings = {json.dumps(r.hparams, sort_keys=True) for r in records}
    if len(settings) != 1:
        return "varies by seed"
    return ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in sorted(records[0].hparams.items()))


def _final_scores(cell: Cell) -> tuple[str, MeanCI]:
    """The split reported for a cell (test, or val if any run lacks a test score) and its CI."""
    if all(r.test_metric is not None for r in cell.final):
        return "test", mean_ci(r.test_metric for r in cell.final)
    return "val", mean_ci(r.final_val_metric for r in cell.final)


def _direction(info: StudyInfo | None) -> str:
    if info is None:
        return ""
    return " ↑" if info.higher_is_better else " ↓"


def _problem_header(problem: Problem) -> str:
    """One paragraph with the workload's metric, target and budget, flagging unequal settings."""
    info = problem.info
    if info is None:
        return "No study description stored for this workload (metric direction and target unknown)."
    text = (
        f"Metric `{info.metric_name}` ({'higher' if info.higher_is_better else 'lower'} is better), "
        f"target {fmt(info.target)}; budget {info.steps} steps at batch size {info.batch_size}, "
        f"evaluated every {info.eval_every} steps, `{info.schedule}` learning-rate schedule"
    )
    if info.workload_options:
        text += f"; options `{json.dumps(info.workload_options, sort_keys=True)}`"
    text += "."
    described = [c.info for c in problem.cells if c.info is not None]
    # A budget of 0 means the runner did not record one.
    budgets = sorted({i.tuning_budget for i in described if i.protocol == "tuned" and i.tuning_budget > 0})
    if len(budgets) == 1:
        text += f" Tuned optimizers: {budgets[0]} tuning trials each."
    # A fair comparison gives every optimizer the same budget, schedule and tuning effort (docs/paper.md §7).
    if len({(i.steps, i.batch_size, i.target, i.metric_name, i.schedule) for i in described}) > 1:
        text += (
            "\n\n**Note:** the studies of this workload differ in budget, batch size, target, metric or "
            "schedule (see each study's info), so their rows are not a like-for-like comparison."
        )
    if len(budgets) > 1:
        text += f"\n\n**Note:** the tuned studies had different tuning budgets ({', '.join(map(str, budgets))} trials)."
    return text


def _style(cell: Cell, colors: dict[str, str]) -> dict[str, Any]:
    return {"color": colors[cell.optimizer], "linestyle": plots.protocol_linestyle(cell.protocol)}


def _problems_with(results: Results, attr: str) -> list[Problem]:
    return [p for p in results.problems if any(getattr(c, attr) for c in p.cells)]


# ---------------------------------------------------------------- sections


def overview_sections(results: Results, storage_url: str | None = None) -> list[Section]:
    """What the report covers and how its numbers are computed."""
    cells = results.cells
    n_final = sum(len(c.final) for c in cells)
    n_tune = sum(len(c.tune) for c in cells)
    lines = []
    if storage_url is not None:
        lines.append(f"Database: `{redact_url(storage_url)}`.")
    n_diverged = sum(diverged(r) for c in cells for r in c.runs)
    lines.append(
        f"{len(cells)} studies on {len({p.workload for p in results.problems})} workloads; "
        f"{n_final} final runs and {n_tune} tuning runs"
        + (f", of which {n_diverged} diverged (marked as such below)." if n_diverged else ".")
    )
    runs = [r for c in cells for r in c.runs]
    if runs:
        lines.append(provenance_summary(runs))
    method = [
        "- **Final metric**: mean over the seeds of the *final* phase (the chosen setting re-run with "
        "fresh seeds) with a 95 % Student-t confidence interval, on the test split, or on validation where "
        "a study stored no test score (column *split*). Diverged runs (a non-finite loss or metric) are "
        "left out of the means and counted in the column *diverged*. The best mean is in bold; it is better than another only where "
        "the two CIs are apart.",
        "- **Steps to target**: the runner's first evaluation whose validation metric met the workload's "
        "target; median over all seeds, a seed that never reached counting as infinitely slow, so a median "
        "exists only when more than half of the seeds reached.",
        "- **Learning curves**: mean ± 1 std over the final-phase seeds at each evaluation.",
        f"- **Learning-rate sensitivity**: final validation metric of each tuning run against its `{LR_KEY}`.",
        "- **Performance profile** (Dolan & Moré): ρ(τ) is the fraction of workloads on which an optimizer's "
        "median steps to target is within a factor τ of the best optimizer's.",
        "- **Source**: the Optuna study and trial numbers whose records give each row.",
    ]
    body = "\n".join(lines) + "\n\n" + "\n".join(method)
    empty = [c for c in cells if not c.final]
    if empty:
        body += "\n\nStudies without finished final runs (left out of the tables below):\n\n" + "\n".join(
            f"- {source(c.study, c.tune)}" + (f": {len(c.tune)} tuning runs" if c.tune else "") for c in empty
        )
    return [Section("Overview", body)]


def summary_sections(results: Results) -> list[Section]:
    """Per workload: final metric with its CI, steps to target and wall time of each study."""
    problems = _problems_with(results, "final")
    out = [Section("Summary", "" if problems else "No final runs in the database.")]
    for problem in problems:
        scores = {c.study: _final_scores(c) for c in problem.finished}
        best = _best_study({s: ci.mean for s, (_, ci) in scores.items()}, problem.info)
        metric = problem.info.metric_name if problem.info else "metric"
        rows = []
        for c in problem.finished:
            split, ci = scores[c.study]
            n_diverged = sum(diverged(r) for r in c.final)
            shown = fmt_ci(ci) + (f" (n={ci.n})" if 1 < ci.n < len(c.final) else "")
            if ci.n == 0 and n_diverged == len(c.final):
                shown = "all diverged"
            steps = target_summary([r.steps_to_target for r in c.final])
            rows.append(
                [
                    c.optimizer,
                    c.protocol,
                    _hparams(c.final),
                    len({r.seed for r in c.final}),
                    split,
                    f"**{shown}**" if c.study == best else shown,
                    f"{fmt_steps(steps.median)} ({steps.reached}/{steps.n})",
                    f"{fmt(mean_ci(r.total_wall_time for r in c.final).mean, 3)} s",
                    f"{n_diverged}/{len(c.final)}",
                    source(c.study, c.final),
                ]
            )
        table = format_table(
            [
                "optimizer",
                "protocol",
                "hyper-parameters",
                "seeds",
                "split",
                f"{metric}{_direction(problem.info)} (mean ± 95% CI)",
                "steps to target (median, reached)",
                "wall time (mean)",
                "diverged",
                "source",
            ],
            rows,
            align="lllrlrrrrl",
        )
        note = _diverged_note(problem.finished)
        out.append(
            Section(problem.name, _problem_header(problem) + "\n\n" + table + (f"\n\n{note}" if note else ""), level=3)
        )
    return out


def headline_sections(results: Results) -> list[Section]:
    """The short summary a README can quote: per workload, every study's final metric (mean ± 95 % CI,
    best first), and which code made the runs."""
    lines = []
    for problem in _problems_with(results, "final"):
        scores = {c.label: _final_scores(c)[1] for c in problem.finished}
        sign = -1.0 if problem.info is None or problem.info.higher_is_better else 1.0
        ranked = sorted(scores, key=lambda label: (math.isnan(scores[label].mean), sign * scores[label].mean))
        metric = problem.info.metric_name if problem.info else "metric"
        lines.append(f"- **{problem.name}** ({metric}{_direction(problem.info)}): " + "; ".join(
            f"{label} {fmt_ci(scores[label])}" for label in ranked
        ))  # fmt: skip
    runs = [r for c in results.cells for r in c.runs]
    return [
        Section("Headline numbers", "\n".join(lines) if lines else "No final runs in the database."),
        Section("Provenance", provenance_summary(runs) if runs else "No runs."),
    ]


def _best_study(means: dict[str, float], info: StudyInfo | None) -> str | None:
    finite = {s: m for s, m in means.items() if math.isfinite(m)}
    if info is None or len(finite) < 2:
        return None
    pick = max if info.higher_is_better else min
    return pick(sorted(finite), key=finite.__getitem__)


def learning_curve_sections(results: Results, plot_dir: str | Path) -> list[Section]:
    """Per workload: validation metric and training loss against steps, final-phase seeds."""
    problems = _problems_with(results, "final")
    out = [
        Section(
            "Learning curves",
            "Mean ± 1 std over the seeds of the final phase; a seed "
            "that diverged leaves the band where it stopped (the legend counts such seeds)."
            if problems
            else "No final runs in the database.",
        )
    ]
    colors = results.colors()
    for problem in problems:
        metric_lines: list[plots.Line] = []
        loss_lines: list[plots.Line] = []
        for c in problem.finished:
            n_diverged = sum(diverged(r) for r in c.final)
            label = f"{c.label}, {n_diverged}/{len(c.final)} diverged" if n_diverged else c.label
            for curves, lines in (
                ([(r.steps, r.val_metric) for r in c.final], metric_lines),
                ([(r.steps, r.train_loss) for r in c.final], loss_lines),
            ):
                band = aggregate_curves(curves)
                lines.append(plots.Line(label, band.x, band.mean, band=(band.lo, band.hi), **_style(c, colors)))
        info = problem.info
        path = plots.plot_learning_curves(
            metric_lines,
            loss_lines,
            Path(plot_dir) / f"curves_{problem.slug}.png",
            title=problem.name,
            metric_name=info.metric_name if info else "metric",
            target=info.target if info else None,
        )
        out.append(Section(problem.name, images=[Image(path, f"Learning curves on {problem.name}")], level=3))
    return out


def lr_sensitivity_sections(results: Results, plot_dir: str | Path) -> list[Section]:
    """Per workload: final validation metric of each tuning run against its learning rate."""
    problems = _problems_with(results, "tune")
    out = [
        Section(
            "Learning-rate sensitivity",
            f"Tuning runs (phase `{TUNE}`), scored on validation; "
            "a cross on the axis marks a run that diverged (its final metric is not finite)."
            if problems
            else "No tuning runs in the database.",
        )
    ]
    colors = results.colors()
    for problem in problems:
        info = problem.info
        lines, rows = [], []
        for c in (c for c in problem.cells if c.tune):
            with_lr = [r for r in c.tune if LR_KEY in r.hparams]
            sens = lr_sensitivity((r.hparams[LR_KEY], r.final_val_metric) for r in with_lr)
            style = _style(c, colors)
            lines.append(plots.Line(c.label, sens.lr, sens.mean, marker="o", **style))
            if sens.failed_lr.size:
                lines.append(
                    plots.Line(
                        f"{c.label}: diverged", sens.failed_lr, (), marker="x", on_axis=True, color=style["color"]
                    )
                )
            ranked = [r for r in with_lr if math.isfinite(r.final_val_metric)]
            best = (
                (max if info is None or info.higher_is_better else min)(ranked, key=lambda r: r.final_val_metric)
                if ranked
                else None
            )
            lrs = [r.hparams[LR_KEY] for r in with_lr]
            rows.append(
                [
                    c.optimizer,
                    c.protocol,
                    len(c.tune),
                    f"{fmt(min(lrs))} – {fmt(max(lrs))}" if lrs else f"no `{LR_KEY}`",
                    fmt(best.hparams[LR_KEY]) if best else "n/a",
                    fmt(best.final_val_metric) if best else "n/a",
                    f"#{best.trial_number}" if best else "n/a",
                    len(c.tune) - len(ranked),
                    source(c.study, c.tune),
                ]
            )
        metric = info.metric_name if info else "metric"
        path = plots.plot_lr_sensitivity(
            lines, Path(plot_dir) / f"lr_{problem.slug}.png", title=problem.name, metric_name=metric
        )
        table = format_table(
            [
                "optimizer",
                "protocol",
                "tuning runs",
                f"{LR_KEY} range",
                f"best {LR_KEY}",
                f"best val {metric}",
                "best trial",
                "diverged or no lr",
                "source",
            ],
            rows,
            align="llrlrrlrl",
        )
        out.append(
            Section(problem.name, table, images=[Image(path, f"Learning-rate sensitivity on {problem.name}")], level=3)
        )
    return out


def _steps_costs(results: Results) -> dict[str, dict[str, float]]:
    """Median steps to target of each optimizer/protocol on each workload (inf = not reached)."""
    return {
        p.name: {c.label: target_summary([r.steps_to_target for r in c.final]).median for c in p.finished}
        for p in _problems_with(results, "final")
    }


def target_sections(results: Results) -> list[Section]:
    """Per workload: how many seeds reached the target, and the median steps and seconds it took."""
    problems = _problems_with(results, "final")
    out = [
        Section(
            "Steps and time to target",
            "Medians over all final-phase seeds; *vs fastest* divides "
            "the median steps by the smallest median steps on the workload (the performance-profile "
            "ratio)."
            if problems
            else "No final runs in the database.",
        )
    ]
    profile = performance_profile(_steps_costs(results))
    for problem in problems:
        rows = []
        for c in problem.finished:
            steps = target_summary([r.steps_to_target for r in c.final])
            seconds = target_summary([r.time_to_target for r in c.final])
            ratio = profile.values[profile.problems.index(problem.name), profile.solvers.index(c.label)]
            rows.append(
                [
                    c.optimizer,
                    c.protocol,
                    f"{steps.reached}/{steps.n}",
                    fmt_steps(steps.median),
                    f"{fmt(seconds.median, 3)} s" if math.isfinite(seconds.median) else "not reached",
                    f"{ratio:.3g}×" if math.isfinite(ratio) else "–",
                    source(c.study, c.final),
                ]
            )
        info = problem.info
        target = "Target unknown (no study description)."
        if info:
            relation = "≥" if info.higher_is_better else "≤"
            target = f"Target: validation `{info.metric_name}` {relation} {fmt(info.target)}."
        table = format_table(
            ["optimizer", "protocol", "reached", "median steps", "median time", "vs fastest", "source"],
            rows,
            align="llrrrrl",
        )
        out.append(Section(problem.name, target + "\n\n" + table, level=3))
    return out


def performance_profile_sections(results: Results, plot_dir: str | Path) -> list[Section]:
    """Performance profiles across workloads: steps to target, and final-metric regret."""
    problems = _problems_with(results, "final")
    if not problems:
        return [Section("Performance profile", "No final runs in the database.")]
    steps = performance_profile(_steps_costs(results))
    scored = [p for p in problems if p.info is not None]
    regret = regret_profile(
        {p.name: {c.label: _final_scores(c)[1].mean for c in p.finished} for p in scored},
        {p.name: p.info.higher_is_better for p in scored if p.info is not None},
    )
    cells = {c.label: c for c in results.cells}
    colors = results.colors()
    path = plots.plot_performance_profiles(
        [(steps, "τ (median steps to target / best)"), (regret, "final-metric regret (metric units)")],
        {s: colors[c.optimizer] for s, c in cells.items()},
        {s: plots.protocol_linestyle(c.protocol) for s, c in cells.items()},
        Path(plot_dir) / "performance_profile.png",
        title="Performance profiles",
    )
    n, m = len(steps.problems), len(regret.problems)
    rows = []
    for i, solver in enumerate(steps.solvers):
        counts = [round(steps.rho(tau)[i] * n) for tau in (1.0, 2.0, 4.0, math.inf)]
        best_score = round(regret.rho(0.0)[regret.solvers.index(solver)] * m) if solver in regret.solvers else 0
        rows.append([solver, *(f"{k}/{n}" for k in counts), f"{best_score}/{m}"])
    table = format_table(
        ["optimizer (protocol)", "fastest (τ=1)", "within 2×", "within 4×", "reached target", "best final metric"],
        rows,
        align="lrrrrr",
    )
    text = (
        f"{n} workloads. Left: ρ(τ) over median steps to target (the costs in *Steps and time to target*); "
        "an optimizer that did not reach the target, or did not run, on a workload never counts it. Right: "
        "the fraction of workloads on which the mean final metric is within τ of the best (regret in each "
        "workload's metric units; workloads without a study description are left out).\n\n" + table
    )
    return [Section("Performance profile", text, images=[Image(path, "Performance profiles across workloads")])]


def trajectory_sections(
    trajectories: Sequence[dict],
    plot_dir: str | Path,
    *,
    title: str = "Trajectories on analytic functions",
    note: str = "Paths of each optimizer at one shared setting: pictures, not evidence.",
    slug: str = "trajectory",
) -> list[Section]:
    """One figure per function and setting from stored trajectories (see :mod:`diffgrad.lab.trajectories`)."""
    from ..workloads.analytic import FUNCTIONS  # the function itself, for the contour lines

    groups: dict[tuple[str, int, str], dict[str, tuple[list, list]]] = defaultdict(dict)
    for t in trajectories:
        setting = json.dumps(t["hparams"], sort_keys=True)
        groups[(t["function"], t["steps"], setting)][t["optimizer"]] = (t["xs"], t["losses"])
    if not groups:
        return []
    images, gone = [], []
    for (function, steps, setting), curves in sorted(groups.items()):
        suffix = re.sub(r"[^a-z0-9]+", "-", f"{function}-{steps}-{setting}".lower()).strip("-")
        known = FUNCTIONS.get(function)
        path = plots.plot_trajectories(
            function,
            curves,
            Path(plot_dir) / f"{slug}_{suffix}.png",
            fn=known.f if known else None,
            domain=known.domain if known else None,
        )
        images.append(Image(path, f"{function}: {steps} steps, {setting}"))
        gone += [
            f"- `{optimizer}` on {function} ({steps} steps, {setting}): diverged at iteration {at}"
            for optimizer, (xs, losses) in sorted(curves.items())
            if (at := divergence_index(xs, losses)) is not None
        ]
    if gone:
        note += (
            "\n\nDiverged (a parameter or the loss stopped being finite; drawn up to the last finite "
            "iterate, ending in a cross):\n\n" + "\n".join(gone)
        )
    return [Section(title, note, images)]


UNKNOWN_PROVENANCE = "unknown (runs stored before provenance was recorded)"


def _code(record: RunRecord) -> str:
    return record.provenance.code() if record.provenance else UNKNOWN_PROVENANCE


def _mixed_studies(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """The studies whose runs were made by more than one package version, commit or torch version
    (runs of unknown provenance among known ones count too), with the versions in words."""
    versions: dict[str, dict[object, str]] = defaultdict(dict)
    for r in records:
        versions[r.study].setdefault(r.provenance.versions if r.provenance else None, _code(r))
    return {study: sorted(codes.values()) for study, codes in sorted(versions.items()) if len(codes) > 1}


def provenance_summary(records: Sequence[RunRecord]) -> str:
    """One paragraph for the top of a report: which code made the runs, and a warning where a study mixes versions."""
    text = "Made with " + "; ".join(sorted({_code(r) for r in records})) + " (details under *Provenance*)."
    mixed = _mixed_studies(records)
    if mixed:
        text += (
            f" **Warning:** {len(mixed)} {'study mixes' if len(mixed) == 1 else 'studies mix'} runs of "
            "different package, commit or torch versions."
        )
    return text


def provenance_sections(records: Sequence[RunRecord]) -> list[Section]:
    """Which code and machine made the runs: one line per group of studies with the same provenance,
    and a warning line for each study whose runs were made by different versions."""
    if not records:
        return []
    by_study: dict[str, set[str]] = defaultdict(set)
    for r in records:
        by_study[r.study].add(r.provenance.describe() if r.provenance else UNKNOWN_PROVENANCE)
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for study, described in sorted(by_study.items()):
        groups[tuple(sorted(described))].append(study)
    lines = [
        f"- {' + '.join(described)}: {', '.join(f'`{s}`' for s in studies)}"
        for described, studies in sorted(groups.items())
    ]
    warnings = [
        f"**Warning:** `{study}` mixes versions: {' and '.join(codes)}."
        for study, codes in _mixed_studies(records).items()
    ]
    text = (
        "Package version, git commit (*dirty*: with uncommitted changes), torch and Python versions, "
        "device and its model, and torch threads, as stored with each run; studies with the same "
        "provenance share a line.\n\n" + "\n".join(lines) + "".join(f"\n\n{w}" for w in warnings)
    )
    return [Section("Provenance", text)]


def build_sections(results: Results, plot_dir: str | Path, *, storage_url: str | None = None) -> list[Section]:
    """Every standard section in report order; figures are written into ``plot_dir``."""
    return [
        *overview_sections(results, storage_url),
        *summary_sections(results),
        *learning_curve_sections(results, plot_dir),
        *lr_sensitivity_sections(results, plot_dir),
        *target_sections(results),
        *performance_profile_sections(results, plot_dir),
        *(
            trajectory_sections(list(load_artifacts(storage_url, "trajectory/").values()), plot_dir)
            if storage_url
            else []
        ),
        *provenance_sections([r for c in results.cells for r in c.runs]),
    ]
