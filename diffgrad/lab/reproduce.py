"""``diffgrad reproduce``: the paper's experiments rerun honestly, composed from the lab's pieces.

Sections of the report: (1) the 1-D functions of Sec. V (Eq. 24–26, Fig. 4); (2) average regret on
online convex problems (Sec. IV); (3) the Table I protocol; (4) the friction variants (Table II)
and activations (Table III) under the same protocol; (5) the friction ξ those runs applied; (6) a
fair, tuned comparison; (7) the diffGrad family of the follow-up papers (docs/paper.md §8) under
the same tuned protocol; (8) sensitivity to the loss scale at the tuned learning rates; (9) this
project's scale-free friction (docs/paper.md §10) under the tuned protocol; and a verdict on every
claim, generated from the numbers by the rules of :mod:`diffgrad.lab.claims`. The paper's settings
and published numbers are in :mod:`diffgrad.lab.paper`. Every training run lives in the results
database; re-running the command resumes and never recomputes a finished run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffgrad.lab import claims as cl
from diffgrad.lab import paper
from diffgrad.lab.claims import Claim, Ranking
from diffgrad.lab.diagnostics import friction_curves, run_average
from diffgrad.lab.online import PROBLEMS, average_regret
from diffgrad.lab.registry import create_optimizer, get_optimizer_spec
from diffgrad.lab.report import Document, Image, Problem, Results, Section, format_table, plots
from diffgrad.lab.report.sections import (
    learning_curve_sections,
    performance_profile_sections,
    provenance_sections,
    provenance_summary,
    summary_sections,
    trajectory_sections,
)
from diffgrad.lab.report.stats import MeanCI, divergence_index, fmt_ci, mean_ci
from diffgrad.lab.runner import StudyPlan, build_workload, open_storage, plan_compare, plan_study, run_studies
from diffgrad.lab.storage import (
    RunRecord,
    StudyInfo,
    artifact,
    default_storage_url,
    load_records,
    load_study_infos,
    redact_url,
)
from diffgrad.lab.trajectories import STANDARD, stored_trajectory
from diffgrad.lab.workloads.analytic import FUNCTIONS

TWO_D_FUNCTIONS = ("rosenbrock", "beale", "rastrigin")
FRICTION_OPTIMIZERS = tuple(f"diffgrad-dfc{k}" for k in range(1, 6))
REGRET_OPTIMIZERS = ("diffgrad", "adam", "amsgrad")
# Table I: the paper's optimizers plus the two controls for the published code's bug.
TABLE1_OPTIMIZERS = ("sgdm", "adagrad", "adadelta", "rmsprop", "amsgrad", "adam", "diffgrad")
CONTROLS = ("diffgrad-published", "adam-half-lr")
FAIR_OPTIMIZERS = (
    "sgdm",
    "adagrad",
    "adadelta",
    "rmsprop",
    "amsgrad",
    "adam",
    "diffgrad",
    "adamw",
    "adabelief",
    "adan",
    "adamp",
    "lion",
    "radam",
)
OFFLINE_WORKLOADS = ("digits-cnn", "mnist1d-mlp", "mnist1d-cnn")
FAIR_TAG = "fair"
# The diffGrad family (docs/paper.md §8), each member diffGrad with one modifier on; compared with plain
# diffGrad, and with Adam as the anchor the follow-up papers also report.
FAMILY_OPTIMIZERS = ("diffgrad-rect", "diffgrad-norm", "diffgrad-inject", "diffgrad-cautious", "diffgrad-gc")
FAMILY_TAG = "family"
# The loss-scale experiment: Adam, diffGrad and diffgrad-rms at the learning rate the fair comparison
# tuned, with the training loss multiplied by each scale; what section 8 claims of each one's test
# metric and mean ξ: "changes" or "invariant".
SCALE_EXPECTATIONS = {
    "adam": ("invariant", None),
    "diffgrad": ("changes", "changes"),
    "diffgrad-rms": ("invariant", "invariant"),
}
SCALE_OPTIMIZERS = tuple(SCALE_EXPECTATIONS)
LOSS_SCALES = (0.01, 1.0, 100.0)
SCALE_TAG = "loss-scale"
# The scale-free friction (docs/paper.md §10) against diffGrad and its controls, tuned.
SCALE_FREE_OPTIMIZERS = ("diffgrad", "diffgrad-rms", "diffgrad-rms-slope", "adam", "adam-half-lr", "adabelief")
SCALE_FREE_TAG = "scale-free"

# Tolerances the deterministic claims state (docs/paper.md §5 gives the minima to 4 decimals).
ONE_D_TOLERANCE = 0.01  # |θ − minimum| that counts as "at" the minimum; also the settling motion
REGRET_RATE_TOLERANCE = 0.1  # a fitted slope up to −0.5 + 0.1 shows the O(1/√T) rate
REGRET_MIN_HORIZON = 10_000  # below this the last decade of T still holds the transient
METRIC_TOLERANCE = 0.01  # a change of the test metric within ±0.01 counts as none
XI_TOLERANCE = 0.001  # likewise for the mean friction ξ


@dataclass(frozen=True)
class Scale:
    """How much of each experiment to run: the full run, or ``--quick`` (same sections, less)."""

    name: str
    regret_horizon: int
    paper_seeds: int
    paper_steps: int | None  # None: the workload's own budget (100 epochs for CIFAR)
    standins: tuple[tuple[str, str], ...]  # (paper dataset, offline workload) without --data-dir
    fair_workloads: tuple[str, ...]
    fair_optimizers: tuple[str, ...]
    fair_budget: int
    fair_seeds: int
    fair_steps: int | None
    family_workloads: tuple[str, ...]  # the family runs with the fair comparison's budget, seeds and steps
    scale_free_workloads: tuple[str, ...]  # the scale-free friction's tuned comparison (section 9)
    notes: tuple[str, ...] = field(default=())

    @property
    def scale_workloads(self) -> tuple[str, ...]:
        """The loss-scale runs' workloads: those of both tuned comparisons, whose learning rates they use."""
        return tuple(w for w in self.fair_workloads if w in self.scale_free_workloads)


FULL = Scale(
    name="full",
    regret_horizon=100_000,
    paper_seeds=3,
    paper_steps=None,
    standins=(("cifar10", "digits-cnn"), ("cifar100", "mnist1d-cnn")),
    fair_workloads=OFFLINE_WORKLOADS,
    fair_optimizers=FAIR_OPTIMIZERS,
    fair_budget=16,
    fair_seeds=5,
    fair_steps=None,
    family_workloads=OFFLINE_WORKLOADS,
    scale_free_workloads=(*OFFLINE_WORKLOADS, "charlm"),
    notes=(
        "Only section 9 runs the `charlm` workload: at about 30 s a run on one CPU core, 13 optimizers × 21 runs "
        "would take over two hours; `diffgrad compare --workload charlm` runs any optimizer on it.",
    ),
)
QUICK = Scale(
    name="quick",
    regret_horizon=3_000,
    paper_seeds=1,
    paper_steps=120,
    standins=(("cifar10", "digits-cnn"),),
    fair_workloads=("digits-cnn", "mnist1d-mlp"),
    fair_optimizers=("sgdm", "adam", "adamw", "diffgrad", "adabelief", "lion"),
    fair_budget=3,
    fair_seeds=2,
    fair_steps=120,
    family_workloads=("mnist1d-mlp",),
    scale_free_workloads=("mnist1d-mlp",),
    notes=(
        "This is the `--quick` run: 120 training steps per run, one seed for the paper protocol, "
        "3 tuning trials and 2 seeds for the tuned protocol, a regret horizon of 3,000, one stand-in "
        "workload, six optimizers in the fair comparison and one workload (`mnist1d-mlp`) for the diffGrad "
        "family, the scale-free friction and the loss scale. Its numbers show that every part works; they are too small to settle "
        "a claim, so most verdicts below are *inconclusive* by the rules they state. Run "
        "`diffgrad reproduce` for the full budgets.",
    ),
)


@dataclass(frozen=True)
class Built:
    """What one section builder returns: report sections, the claims they judge, and headline
    numbers for the summary."""

    sections: list[Section]
    claims: list[Claim] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)


def reproduce(
    *,
    quick: bool = False,
    data_dir: str | None = None,
    out_dir: str | Path = "results",
    storage: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Run (or resume) every experiment and write ``report.md``/``report.html`` and ``summary.md``;
    returns the report's Markdown path."""
    scale = QUICK if quick else FULL
    out = Path(out_dir)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage_url(out)
    rdb = open_storage(url)

    datasets = _paper_workloads(scale, data_dir)
    plans = [
        *_paper_plans(scale, datasets),
        *_tuned_plans(scale, scale.fair_workloads, scale.fair_optimizers, FAIR_TAG),
        *_tuned_plans(scale, scale.family_workloads, ("adam", "diffgrad", *FAMILY_OPTIMIZERS), FAMILY_TAG),
        *_tuned_plans(scale, scale.scale_free_workloads, SCALE_FREE_OPTIMIZERS, SCALE_FREE_TAG),
    ]
    run_studies(plans, rdb, device=device, progress=progress)  # every training run; resumes what is missing
    # The loss-scale runs take the learning rates the fair comparison selected.
    run_studies(_scale_plans(scale, load_records(url)), rdb, device=device, progress=progress)
    records = load_records(url)
    infos = load_study_infos(url)

    built = [
        one_d_section(plot_dir, rdb),
        regret_section(plot_dir, scale.regret_horizon, rdb),
        table1_section(records, datasets, plot_dir, infos),
        variants_section(records, datasets),
        friction_section(records, datasets, plot_dir),
        fair_section(records, infos, plot_dir),
        family_section(records, infos, plot_dir),
        scale_section(records, plot_dir),
        scale_free_section(records, infos, plot_dir),
    ]
    claims = [c for b in built for c in b.claims]
    intro = _intro(scale, datasets, url, records)
    verdict = verdict_section(claims)
    document = Document(
        "diffGrad, reproduced",
        [intro, verdict, *(s for b in built for s in b.sections), *provenance_sections(records)],
        summary=[
            verdict,
            Section("Headline numbers", "\n".join(f"- {h}" for b in built for h in b.headlines)),
            Section("Provenance", _scale_line(scale, datasets) + "\n\n" + provenance_summary(records)),
        ],
    )
    return document.write(out)


def _scale_line(scale: Scale, datasets: Sequence[PaperDataset]) -> str:
    where = ", ".join(
        f"`{d.workload}`" + (f" (stand-in for {paper.DATASET_NAMES[d.paper]})" if d.standin else "") for d in datasets
    )
    return f"Scale **{scale.name}**; paper protocol on {where}; seeds, budgets and settings in `report.md`."


# ---------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class PaperDataset:
    """One of the paper's datasets and the workload that runs its protocol here."""

    paper: str  # "cifar10" or "cifar100": the column of the paper's tables it sits next to
    workload: str
    options: dict[str, Any]
    standin: bool


def _paper_workloads(scale: Scale, data_dir: str | None) -> list[PaperDataset]:
    if data_dir is not None:
        # The real protocol: CIFAR ResNet-50 (docs/paper.md §6), read from the given folder.
        return [PaperDataset(p, f"{p}-resnet", {"data_dir": data_dir, "depth": 50}, False) for p in paper.TABLE1]
    return [PaperDataset(p, workload, {}, True) for p, workload in scale.standins]


def _paper_plans(scale: Scale, datasets: Sequence[PaperDataset]) -> list[StudyPlan]:
    """Tables I–III: one learning rate (1e-3, ×0.1 at 80 %) for all, three batch sizes.

    Table III (CIFAR-10 only) reuses Table I's ReLU runs and adds diffGrad with each other activation.
    """
    plans = []
    for ds in datasets:
        for activation in paper.ACTIVATIONS if ds.paper == "cifar10" else paper.ACTIVATIONS[:1]:
            optimizers = TABLE1_OPTIMIZERS + CONTROLS + FRICTION_OPTIMIZERS if activation == "relu" else ("diffgrad",)
            options = dict(ds.options, **({} if activation == "relu" else {"activation": activation}))
            workload = build_workload(ds.workload, options)  # built once: its data loads once
            for bs in paper.BATCH_SIZES:
                plans += [
                    plan_study(
                        workload,
                        opt,
                        protocol="paper",
                        seeds=scale.paper_seeds,
                        workload_options=options,
                        steps=scale.paper_steps,
                        batch_size=bs,
                        schedule="step",
                        tag=_paper_tag(bs, activation),
                    )
                    for opt in optimizers
                ]
    return plans


def _paper_tag(batch_size: int, activation: str = "relu") -> str:
    return f"paper-bs{batch_size}" + ("" if activation == "relu" else f"-{activation}")


def _tuned_plans(scale: Scale, workloads: Sequence[str], optimizers: Sequence[str], tag: str) -> list[StudyPlan]:
    """The tuned protocol at the scale's budget: equal tuning trials, validation selection, test
    scores over fresh seeds (sections 6, 7 and 9)."""
    available = [o for o in optimizers if get_optimizer_spec(o).available]
    return [
        plan
        for w in workloads
        for plan in plan_compare(
            w,
            available,
            protocol="tuned",
            budget=scale.fair_budget,
            seeds=scale.fair_seeds,
            steps=scale.fair_steps,
            schedule="step",
            tag=tag,
        )
    ]


def _tuned_lr(records: Sequence[RunRecord], workload: str, optimizer: str) -> float | None:
    """The learning rate a tuned comparison selected for ``optimizer`` on ``workload`` (its final runs'):
    the fair comparison's, else the scale-free one's; None before those runs exist."""
    for tag in (FAIR_TAG, SCALE_FREE_TAG):
        finals = _final_runs(records, workload, optimizer, tag)
        if finals:
            return float(finals[0].hparams["lr"])
    return None


def _scale_plans(scale: Scale, records: Sequence[RunRecord]) -> list[StudyPlan]:
    """Section 8: Adam and diffGrad at their tuned learning rates, the loss multiplied by each scale."""
    plans = []
    for w in scale.scale_workloads:
        workload = build_workload(w, {})
        for opt in SCALE_OPTIMIZERS:
            lr = _tuned_lr(records, w, opt)
            if lr is None:
                continue
            plans += [
                plan_study(
                    workload,
                    opt,
                    protocol="paper",
                    seeds=scale.fair_seeds,
                    hparams={"lr": lr},
                    steps=scale.fair_steps,
                    schedule="step",
                    tag=SCALE_TAG,
                    loss_scale=s,
                )
                for s in LOSS_SCALES
            ]
    return plans


# ------------------------------------------------------------------------------- 1-D functions


def _one_d_trajectories(storage: Any) -> dict[str, dict[str, dict]]:
    return {
        fn: {
            opt: stored_trajectory(storage, fn, opt, steps=paper.ONE_D_STEPS, **paper.ONE_D_HPARAMS)
            for opt in ("adam", "diffgrad", *FRICTION_OPTIMIZERS)
        }
        for fn in paper.ONE_D_FUNCTIONS
    }


def _total_variation(xs: Sequence[Sequence[float]]) -> float:
    return sum(abs(b[0] - a[0]) for a, b in itertools.pairwise(xs))


def _one_d_run(xs: Sequence[Sequence[float]]) -> cl.OneD:
    """Where θ ended, its total variation over the last two thirds (how much it still oscillates) and
    over the last tenth (whether the horizon cut it short)."""
    return cl.OneD(
        final=xs[-1][0],
        oscillation=_total_variation(xs[len(xs) // 3 :]),
        last_motion=_total_variation(xs[-max(2, len(xs) // 10) :]),
    )


def _ended_at(fn: str, xs: Sequence[Sequence[float]], losses: Sequence[float]) -> str:
    """What happened to a run: diverged, did not move, or the minimum it ended at (if any)."""
    at = divergence_index(xs, losses)  # a NaN θ is near no minimum
    if at is not None:
        return f"diverged at iteration {at}"
    if _total_variation(xs) <= ONE_D_TOLERANCE:
        return f"did not move from θ₀ = {xs[0][0]:g}"
    minima = FUNCTIONS[fn].minima
    x = xs[-1][0]
    index = min(range(len(minima)), key=lambda i: abs(minima[i][0] - x))
    if abs(minima[index][0] - x) > ONE_D_TOLERANCE:
        return "no minimum"
    return f"{'global' if index == 0 else 'local'} minimum ({minima[index][0]:g})"


def one_d_section(plot_dir: Path, storage: Any) -> Built:
    """Sec. V, Fig. 4: Adam and diffGrad (and every friction variant) on F1, F2, F3."""
    runs = _one_d_trajectories(storage)
    images, rows = [], []
    for fn, by_opt in runs.items():
        curves = {opt: (t["xs"], t["losses"]) for opt, t in by_opt.items()}
        domain = FUNCTIONS[fn].domain
        path = plots.plot_trajectories(
            fn,
            {k: curves[k] for k in ("adam", "diffgrad")},
            plot_dir / f"1d-{fn}.png",
            fn=FUNCTIONS[fn].f,
            domain=domain,
        )
        images.append(Image(path, f"{fn}: θ and F(θ) per iteration, Adam and diffGrad (the paper's Fig. 4)"))
        path = plots.plot_trajectories(
            fn, curves, plot_dir / f"1d-{fn}-variants.png", fn=FUNCTIONS[fn].f, domain=domain
        )
        images.append(Image(path, f"{fn}: every friction variant"))
        for opt, t in by_opt.items():
            run = _one_d_run(t["xs"])
            rows.append(
                [
                    fn,
                    opt,
                    f"{run.final:.4f}",
                    f"{t['losses'][-1]:.3g}",
                    _ended_at(fn, t["xs"], t["losses"]),
                    f"{run.oscillation:.3g}",
                ]
            )
    two_d = trajectory_sections(
        [
            stored_trajectory(storage, name, opt, **STANDARD[name])
            for name in TWO_D_FUNCTIONS
            for opt in ("adam", "diffgrad")
        ],
        plot_dir,
        title="2-D functions",
        note="Adam and diffGrad at one shared setting: an illustration, not evidence.",
    )
    hp = paper.ONE_D_HPARAMS
    text = (
        f"Settings as in the paper for both optimizers: lr {hp['lr']}, β = {hp['betas']}, ε = {hp['eps']}, θ₀ = −1, "
        f"{paper.ONE_D_STEPS} iterations, g₀ = 0, F2 with its correct derivative (autograd). *Oscillation* is the "
        f"total variation of θ over the last 200 iterations; *ended at* names a minimum only within "
        f"{ONE_D_TOLERANCE:g} of it.\n\n"
        + format_table(["function", "optimizer", "final θ", "F(θ)", "ended at", "oscillation"], rows)
        + "\n\nOn a one-element parameter ν = 0, so DFC3, DFC4 and DFC5 coincide there: ξ = sigmoid(−μ) = "
        "sigmoid(−|g_t|) < 0.5 (see the reading of μ, ν in `diffgrad.optim.friction`). "
        "The 2-D functions below are for looking at, not for judging optimizers."
    )
    found, headlines = [], []
    for fn in ("F1", "F2"):
        glob, local = FUNCTIONS[fn].minima[0][0], FUNCTIONS[fn].minima[1][0]
        d, a = _one_d_run(runs[fn]["diffgrad"]["xs"]), _one_d_run(runs[fn]["adam"]["xs"])
        found.append(
            cl.overshoot_claim(
                f"{fn}: diffGrad reaches the global minimum ({glob:g}) where Adam overshoots into a local one ({local:g})",
                d,
                a,
                global_min=glob,
                tolerance=ONE_D_TOLERANCE,
            )
        )
        headlines.append(f"{fn}: final θ diffGrad {d.final:.4f}, Adam {a.final:.4f} (global minimum {glob:g}).")
    d, a = _one_d_run(runs["F3"]["diffgrad"]["xs"]), _one_d_run(runs["F3"]["adam"]["xs"])
    found.append(
        cl.calmer_claim(
            "F3: both reach the global minimum 0 and diffGrad oscillates less",
            d,
            a,
            global_min=0.0,
            tolerance=ONE_D_TOLERANCE,
        )
    )
    headlines.append(f"F3: oscillation diffGrad {d.oscillation:.3g}, Adam {a.oscillation:.3g}.")
    return Built([Section("1. The 1-D functions (Sec. V, Eq. 24–26)", text, images), *_nested(two_d)], found, headlines)


# -------------------------------------------------------------------------------------- regret


def _regret_curve(storage: Any, problem: str, optimizer: str, horizon: int) -> list[float]:
    """R(t)/t at log-spaced t, computed once and kept in the results database."""

    def compute() -> list[float]:
        curve = average_regret(
            PROBLEMS[problem], lambda ps: create_optimizer(optimizer, ps, **paper.REGRET_HPARAMS), horizon
        )
        return [float(curve[t - 1]) for t in _log_points(horizon)]

    return artifact(storage, f"regret/{problem}/{optimizer}/T={horizon}", compute)


def _log_points(horizon: int) -> list[int]:
    return sorted({max(1, round(horizon ** (k / 60))) for k in range(61)})


def _slope(ts: Sequence[int], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(R(t)/t) against log t over the last decade of positive values."""
    pts = [(math.log(t), math.log(v)) for t, v in zip(ts, values) if t >= ts[-1] / 10 and v > 0]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def regret_section(plot_dir: Path, horizon: int, storage: Any) -> Built:
    """Sec. IV: average regret R(T)/T against T, on log axes, for diffGrad, Adam and AMSGrad."""
    ts = _log_points(horizon)
    images, rows, found, headlines = [], [], [], []
    for problem in PROBLEMS.values():
        curves = {opt: _regret_curve(storage, problem.name, opt, horizon) for opt in REGRET_OPTIMIZERS}
        positive = {o: ([t for t, v in zip(ts, c) if v > 0], [v for v in c if v > 0]) for o, c in curves.items()}
        images.append(
            Image(
                plots.plot_lines(
                    positive,
                    plot_dir / f"regret-{problem.name}.png",
                    title=problem.description,
                    xlabel="T",
                    ylabel="R(T)/T",
                    logx=True,
                    logy=True,
                    reference_slope=-0.5,
                ),
                f"{problem.name}: average regret (positive values; log axes), with a dashed line of slope −½ (O(1/√T))",
            )
        )
        for opt, curve in curves.items():
            slope = _slope(ts, curve)
            rows.append([problem.name, opt, f"{curve[-1]:.4g}", "n/a" if slope is None else f"{slope:.2f}"])
        slope = _slope(ts, curves["diffgrad"])
        found.append(
            cl.rate_claim(
                f"Regret, {problem.name}: diffGrad's average regret R(T)/T falls as O(1/√T) (Sec. IV)",
                slope,
                horizon,
                tolerance=REGRET_RATE_TOLERANCE,
                min_horizon=REGRET_MIN_HORIZON,
            )
        )
        shown = "n/a" if slope is None else f"{slope:.2f}"
        headlines.append(
            f"Regret on {problem.name}: diffGrad's fitted slope {shown} at T = {horizon:,} (O(1/√T) is −0.5)."
        )
    text = (
        f"Online convex problems (docs/paper.md §4), step size lr/√t with lr = {paper.REGRET_HPARAMS['lr']}, "
        f"β = {paper.REGRET_HPARAMS['betas']}, horizon T = {horizon:,}. The *slope* is fitted to log R(T)/T "
        "against log T over the last decade of T; a slope of −0.5 is the rate O(1/√T) of the paper's bound.\n\n"
        + format_table(["problem", "optimizer", "R(T)/T at the horizon", "slope (last decade)"], rows)
    )
    return Built([Section("2. Regret (Sec. IV)", text, images)], found, headlines)


# ------------------------------------------------------------------------------------- tables


def _final_runs(records: Sequence[RunRecord], workload: str, optimizer: str, tag: str) -> list[RunRecord]:
    return [
        r
        for r in records
        if r.workload == workload and r.optimizer == optimizer and r.tag == tag and r.phase == "final"
    ]


def _accuracy(records: Sequence[RunRecord], dataset: PaperDataset, optimizer: str, tag: str) -> MeanCI:
    """Test accuracy (%) of the final runs of one paper-protocol study, over seeds."""
    runs = _final_runs(records, dataset.workload, optimizer, tag)
    return mean_ci([100 * r.test_metric if r.test_metric is not None else math.nan for r in runs])


def _by_seed(runs: Sequence[RunRecord], value: Callable[[RunRecord], float | None]) -> dict[int, float]:
    values = {r.seed: value(r) for r in runs}
    return {seed: v for seed, v in values.items() if v is not None and math.isfinite(v)}


def _dataset_caption(dataset: PaperDataset) -> str:
    name = paper.DATASET_NAMES[dataset.paper]
    if dataset.standin:
        return f"`{dataset.workload}`, the offline stand-in for {name} (not CIFAR: numbers are not comparable)"
    return f"`{dataset.workload}` (ResNet-50) on the real {name}"


def _where(ds: PaperDataset) -> str:
    return ds.workload + (f" (stand-in for {paper.DATASET_NAMES[ds.paper]})" if ds.standin else "")


def _batch_rankings(cells: dict[tuple[str, int], MeanCI], names: Sequence[str]) -> list[Ranking]:
    """The test accuracies of ``names`` at each batch size of a paper-protocol table."""
    return [Ranking(f"batch {bs}", {n: cells[(n, bs)] for n in names}, True) for bs in paper.BATCH_SIZES]


def table1_section(
    records: Sequence[RunRecord], datasets: Sequence[PaperDataset], plot_dir: Path, infos: dict[str, StudyInfo]
) -> Built:
    """Table I: every optimizer at batch sizes 32/64/128, next to the paper's values."""
    parts, found, headlines = [], [], []
    for ds in datasets:
        rows = []
        cells: dict[tuple[str, int], MeanCI] = {}
        for opt in TABLE1_OPTIMIZERS + CONTROLS:
            row = [opt]
            for i, bs in enumerate(paper.BATCH_SIZES):
                cells[(opt, bs)] = ci = _accuracy(records, ds, opt, _paper_tag(bs))
                published = paper.TABLE1[ds.paper].get(opt)
                row.append(fmt_ci(ci) + (f" ({published[i]:.2f})" if published else ""))
            rows.append(row)
        parts.append(
            f"**{_dataset_caption(ds)}** — test accuracy (%), mean ± 95 % CI over the seeds; "
            f"the paper's {paper.DATASET_NAMES[ds.paper]} value in brackets.\n\n"
            + format_table(["optimizer", *(f"batch {b}" for b in paper.BATCH_SIZES)], rows)
        )
        found += _table1_claims(ds, cells, records)
        bs = paper.BATCH_SIZES[-1]
        headlines.append(
            f"Table I protocol on {_where(ds)}, batch {bs}, test accuracy (%): "
            + ", ".join(
                f"{o} {fmt_ci(cells[(o, bs)])}" for o in ("diffgrad", "adam", "adam-half-lr", "diffgrad-published")
            )
            + "."
        )
    curves = learning_curve_sections(
        Results.from_records(records, infos, tag=_paper_tag(paper.BATCH_SIZES[-1])), plot_dir
    )
    text = (
        "The paper's protocol (docs/paper.md §6): lr 1e-3 for every optimizer, ×0.1 at 80 % of training, PyTorch "
        "defaults otherwise (SGDM momentum 0.9), batch sizes 32/64/128, top-1 accuracy on the test split. "
        "`diffgrad-published` reproduces the published code's aliasing bug (ξ = 0.5 after step 1) and "
        "`adam-half-lr` is Adam at lr/2, the control for it.\n\n" + "\n\n".join(parts)
    )
    return Built([Section("3. Table I protocol (Sec. VI)", text), *_nested(curves)], found, headlines)


def _table1_claims(ds: PaperDataset, cells: dict[tuple[str, int], MeanCI], records: Sequence[RunRecord]) -> list[Claim]:
    where = _where(ds)
    rankings = _batch_rankings(cells, TABLE1_OPTIMIZERS)
    controls = _batch_rankings(cells, ("diffgrad", *CONTROLS))
    bs = paper.BATCH_SIZES[-1]
    accuracy = lambda opt: _by_seed(_final_runs(records, ds.workload, opt, _paper_tag(bs)), lambda r: r.test_metric)  # noqa: E731
    return [
        cl.best_claim(f"Table I on {where}: diffGrad has the best accuracy at every batch size", rankings, "diffgrad"),
        cl.better_claim(
            f"Published code on {where}: diffGrad as specified beats the published code's behaviour at every batch size",
            controls,
            "diffgrad",
            "diffgrad-published",
        ),
        cl.equivalent_claim(
            f"Published code on {where}: its behaviour is Adam at lr/2 (batch {bs}, test accuracy within "
            f"±{METRIC_TOLERANCE:g})",
            accuracy("diffgrad-published"),
            accuracy("adam-half-lr"),
            tolerance=METRIC_TOLERANCE,
        ),
    ]


def variants_section(records: Sequence[RunRecord], datasets: Sequence[PaperDataset]) -> Built:
    """Table II (friction variants) and Table III (activations) under the Table I protocol."""
    parts, found = [], []
    for ds in datasets:
        rows, cells = [], {}
        for opt in ("diffgrad", *FRICTION_OPTIMIZERS):
            row = [opt]
            for bs in paper.BATCH_SIZES:
                cells[(opt, bs)] = ci = _accuracy(records, ds, opt, _paper_tag(bs))
                best = paper.TABLE2_BEST.get((ds.paper, bs))
                row.append(fmt_ci(ci) + (f" (paper's best: {best[1]:.2f})" if best and best[0] == opt else ""))
            rows.append(row)
        parts.append(
            f"**Table II, {_dataset_caption(ds)}** — test accuracy (%); the paper reports only each "
            "column's best variant, shown in brackets where it is.\n\n"
            + format_table(["friction", *(f"batch {b}" for b in paper.BATCH_SIZES)], rows)
        )
        found.append(_table2_claim(ds, cells))
        if ds.paper != "cifar10":
            continue
        rows, cells = [], {}
        for act in paper.ACTIVATIONS:
            row = [act]
            for i, bs in enumerate(paper.BATCH_SIZES):
                cells[(act, bs)] = ci = _accuracy(records, ds, "diffgrad", _paper_tag(bs, act))
                row.append(f"{fmt_ci(ci)} ({paper.TABLE3[act][i]:.2f})")
            rows.append(row)
        parts.append(
            f"**Table III, {_dataset_caption(ds)}** — diffGrad's test accuracy (%) per activation; "
            "the paper's CIFAR-10 value in brackets.\n\n"
            + format_table(["activation", *(f"batch {b}" for b in paper.BATCH_SIZES)], rows)
        )
        found.append(_table3_claim(ds, cells))
    return Built([Section("4. Friction variants (Table II) and activations (Table III)", "\n\n".join(parts))], found)


def _table2_claim(ds: PaperDataset, cells: dict[tuple[str, int], MeanCI]) -> Claim:
    """At each batch size, some friction variant better than the default DFC (Eq. 19)."""
    return cl.some_better_claim(
        f"Table II on {ds.workload}: some friction variant beats the default DFC at each batch size",
        _batch_rankings(cells, ("diffgrad", *FRICTION_OPTIMIZERS)),
        FRICTION_OPTIMIZERS,
        "diffgrad",
    )


def _table3_claim(ds: PaperDataset, cells: dict[tuple[str, int], MeanCI]) -> Claim:
    """At each batch size, diffGrad with LeakyReLU(0.1) better than with ReLU."""
    return cl.better_claim(
        f"Table III on {ds.workload}: LeakyReLU(0.1) beats ReLU with diffGrad",
        _batch_rankings(cells, paper.ACTIVATIONS),
        "leaky_relu",
        "relu",
    )


# ------------------------------------------------------------------------------------ friction


def _friction_rows(label: str, curves: dict[str, dict[str, list[float]]]) -> list[list[str]]:
    """One table row per group: ξ's mean, 5–95 % range and share within 0.01 of ½, from a study's
    :func:`~diffgrad.lab.diagnostics.friction_curves` (averaged over seeds, then over evaluations)."""

    def average(values: list[float]) -> float:
        return mean_ci(values).mean

    return [
        [
            label,
            group,
            f"{average(c['mean']):.4f}",
            f"{average(c['q05']):.4f} – {average(c['q95']):.4f}",
            f"{average(c['near_half']):.1%}",
        ]
        for group, c in curves.items()
    ]


def friction_section(records: Sequence[RunRecord], datasets: Sequence[PaperDataset], plot_dir: Path) -> Built:
    """ξ over training for diffGrad and its friction variants under the Table I protocol."""
    images, rows, shares, headlines = [], [], {}, []
    for ds in datasets:
        for bs in paper.BATCH_SIZES:
            tag = _paper_tag(bs)
            by_opt = {opt: _final_runs(records, ds.workload, opt, tag) for opt in ("diffgrad", *FRICTION_OPTIMIZERS)}
            curves = {opt: friction_curves([r.friction for r in runs if r.friction]) for opt, runs in by_opt.items()}
            curves = {opt: c for opt, c in curves.items() if c}
            for opt, c in curves.items():
                rows += _friction_rows(f"{opt}, batch {bs}", c)
            for r in by_opt["diffgrad"]:
                share = run_average(r.friction, "near_half")
                if share is not None:
                    shares[f"{ds.workload} batch {bs} seed {r.seed}"] = share
            if bs == paper.BATCH_SIZES[-1] and curves:
                path = plots.plot_friction(
                    curves, plot_dir / f"friction-{ds.workload}-bs{bs}.png", title=f"{ds.workload}, batch {bs}"
                )
                images.append(
                    Image(
                        path,
                        f"{_where(ds)}, batch {bs}: ξ over training for diffGrad and each friction variant "
                        "(line: mean over elements, dashed: median, band: 5–95 %; averaged over seeds), "
                        "over all parameters and per layer kind",
                    )
                )
    claim = cl.near_half_claim(
        "Lab finding: under the paper's protocol diffGrad's friction stays at ξ ≈ ½, so it steps like Adam at lr/2",
        shares,
    )
    if shares:
        headlines.append(
            f"Friction under the paper's protocol: {min(shares.values()):.1%}–{max(shares.values()):.1%} of "
            "diffGrad's elements have |ξ − ½| ≤ 0.01, averaged over each run's evaluations."
        )
    text = (
        "The friction ξ_t that each step applied (Eq. 18–19), read from the optimizer at every evaluation of the "
        "Table I runs (`diffgrad.optim.record_friction`): its mean, 5–95 % range and the share of elements within "
        "0.01 of ½, over all parameters (*all*) and per layer kind, averaged over each run's evaluations and over "
        "seeds. With ξ = ½ diffGrad's step is exactly Adam's at half the learning rate (Eq. 20): the friction "
        "only acts where |g_{t−1} − g_t| is not small next to 1, and a network's per-element gradients change by "
        "far less than that. How far ξ moves therefore depends on the scale of the loss (section 8).\n\n"
        + (
            format_table(["run", "parameters", "mean ξ", "ξ 5–95 %", "|ξ − ½| ≤ 0.01"], rows, align="llrrr")
            if rows
            else "No run recorded ξ (databases written before the friction was recorded)."
        )
    )
    return Built([Section("5. The friction ξ in training", text, images)], [claim], headlines)


# ---------------------------------------------------------------------------- tuned comparisons


def _ranking(problem: Problem) -> Ranking:
    scores = {c.optimizer: mean_ci([r.test_metric for r in c.final]) for c in problem.finished}
    return Ranking(problem.workload, scores, problem.info is None or problem.info.higher_is_better)


def _tuned_comparison(
    records: Sequence[RunRecord], infos: dict[str, StudyInfo], tag: str, plot_dir: Path
) -> tuple[list[Ranking], list[Section]]:
    """The rankings of the tuned studies tagged ``tag``, and their summary and performance-profile sections."""
    results = Results.from_records(records, infos, tag=tag)
    rankings = [_ranking(p) for p in results.problems if p.finished]
    return rankings, summary_sections(results) + performance_profile_sections(results, plot_dir)


TUNED_PROTOCOL = (
    "Every optimizer gets the same number of tuning trials over its declared search space (log-uniform lr), "
    "selection on the validation split, then the chosen setting is rerun with fresh seeds and scored on "
    "the test split, which selection never sees (docs/paper.md §7). Schedule: ×0.1 at 80 % for all."
)


def fair_section(records: Sequence[RunRecord], infos: dict[str, StudyInfo], plot_dir: Path) -> Built:
    """The tuned protocol across the offline workloads, with the performance profile."""
    rankings, subsections = _tuned_comparison(records, infos, FAIR_TAG, plot_dir)
    rankings = [r for r in rankings if "diffgrad" in r.scores]
    found = [_fair_claim(r) for r in rankings]
    headlines = [f"Tuned, {r.workload}: {r.standing('diffgrad')}." for r in rankings]
    return Built(
        [Section("6. Fair comparison: the tuned protocol", TUNED_PROTOCOL), *_nested(subsections)], found, headlines
    )


def _fair_claim(ranking: Ranking) -> Claim:
    return cl.best_claim(f"Tuned, {ranking.workload}: diffGrad is the best tuned optimizer", [ranking], "diffgrad")


def _family_claims(ranking: Ranking) -> list[Claim]:
    return [
        cl.better_claim(f"Tuned, {ranking.workload}: {member} beats plain diffGrad", [ranking], member, "diffgrad")
        for member in FAMILY_OPTIMIZERS
        if member in ranking.scores
    ]


def family_section(records: Sequence[RunRecord], infos: dict[str, StudyInfo], plot_dir: Path) -> Built:
    """The diffGrad family (docs/paper.md §8) against plain diffGrad and Adam under the tuned protocol."""
    # performance_profile_sections gives its figure one fixed name: a folder of its own keeps section 6's.
    rankings, subsections = _tuned_comparison(records, infos, FAMILY_TAG, plot_dir / FAMILY_TAG)
    rankings = [r for r in rankings if "diffgrad" in r.scores]
    rows, found, best = [], [], []
    for r in rankings:
        found += _family_claims(r)
        best.append(f"`{r.workload}`: {r.ranked[0]} {fmt_ci(r.scores[r.ranked[0]])}")
        for opt in r.ranked:
            ci, lead = r.scores[opt], r.lead(opt, "diffgrad")
            shown = f"{lead:+.3g}" if math.isfinite(lead) else "n/a"
            rows.append(
                [
                    r.workload,
                    opt,
                    r.rank(opt),
                    ci.n,
                    fmt_ci(ci),
                    "" if opt == "diffgrad" else f"{shown} ({r.versus(opt, 'diffgrad')})",
                ]
            )
    members = "\n".join(
        f"- `{m}` (`{', '.join(f'{k}={v}' for k, v in get_optimizer_spec(m).defaults.items())}`): "
        f"{get_optimizer_spec(m).description}"
        for m in FAMILY_OPTIMIZERS
    )
    counts = {v: sum(c.verdict == v for c in found) for v in cl.VERDICTS}
    text = (
        "Each member is diffGrad with one modifier of the follow-up papers switched on and every other option "
        "at its default (docs/paper.md §8); plain diffGrad and Adam run alongside under the same protocol as "
        f"section 6. {TUNED_PROTOCOL} Trials, seeds and budget per workload are in the summary below.\n\n"
        f"{members}\n\n"
        + format_table(
            ["workload", "optimizer", "rank", "seeds", "test metric (mean ± 95 % CI)", "lead over diffgrad"],
            rows,
            align="llrrrl",
        )
        + "\n\n*Lead over diffgrad* is the difference of the means in the metric's better direction; *better* "
        "or *worse* only when the two 95 % CIs are apart. "
        f"Of {len(found)} member–workload comparisons, {counts[cl.HELD]} were better than plain diffGrad, "
        f"{counts[cl.NOT_HELD]} worse and {counts[cl.INCONCLUSIVE]} not separated by the CIs. "
        + ("Best mean per workload: " + "; ".join(best) + "." if best else "No finished runs with diffgrad yet.")
    )
    headlines = ["diffGrad family, best mean test metric per workload: " + "; ".join(best) + "."] if best else []
    return Built([Section("7. The diffGrad family: tuned protocol", text), *_nested(subsections)], found, headlines)


# ---------------------------------------------------------------------------------- loss scale


def _scale_runs(runs: Sequence[RunRecord], workload: str, optimizer: str, scale: float) -> list[RunRecord]:
    return [r for r in runs if r.workload == workload and r.optimizer == optimizer and r.loss_scale == scale]


def _scale_claim(expectation: str, statement: str, by_scale: dict[float, dict[int, float]], tolerance: float) -> Claim:
    if expectation == "changes":
        return cl.changes_claim(f"{statement} changes when the loss is scaled", by_scale, tolerance=tolerance)
    return cl.invariance_claim(f"{statement} does not change when the loss is scaled", by_scale, tolerance=tolerance)


def scale_section(records: Sequence[RunRecord], plot_dir: Path) -> Built:
    """Adam, diffGrad and the scale-free diffgrad-rms at their tuned learning rates, with the loss
    multiplied by 0.01, 1 and 100."""
    runs = [r for r in records if r.tag == SCALE_TAG and r.phase == "final"]
    images, rows, found, headlines = [], [], [], []
    for workload in sorted({r.workload for r in runs}):
        metric: dict[str, dict[float, dict[int, float]]] = {}
        xis: dict[str, dict[float, dict[int, float]]] = {}
        for opt in SCALE_OPTIMIZERS:
            metric[opt] = {
                s: _by_seed(_scale_runs(runs, workload, opt, s), lambda r: r.test_metric) for s in LOSS_SCALES
            }
            xis[opt] = {
                s: _by_seed(_scale_runs(runs, workload, opt, s), lambda r: run_average(r.friction, "mean"))
                for s in LOSS_SCALES
            }
            lr = next((r.hparams["lr"] for r in runs if r.workload == workload and r.optimizer == opt), math.nan)
            for s in LOSS_SCALES:
                xi = mean_ci(xis[opt][s].values())
                rows.append(
                    [
                        workload,
                        opt,
                        f"{lr:.3g}",
                        f"{s:g}",
                        fmt_ci(mean_ci(metric[opt][s].values())),
                        fmt_ci(xi) if xi.n else "",
                    ]
                )
        measured = [o for o in SCALE_OPTIMIZERS if metric[o][1.0]]
        for opt in measured:
            on_metric, on_xi = SCALE_EXPECTATIONS[opt]
            found.append(
                _scale_claim(on_metric, f"Loss scale, {workload}: {opt}'s test metric", metric[opt], METRIC_TOLERANCE)
            )
            if on_xi is not None:
                found.append(_scale_claim(on_xi, f"Loss scale, {workload}: {opt}'s mean ξ", xis[opt], XI_TOLERANCE))
        if not measured:
            continue
        bands = {
            o: {"scale": list(LOSS_SCALES), **_bands([mean_ci(metric[o][s].values()) for s in LOSS_SCALES])}
            for o in measured
        }
        xi_bands = {
            o: {"scale": list(LOSS_SCALES), **_bands([mean_ci(xis[o][s].values()) for s in LOSS_SCALES])}
            for o in measured
            if xis[o][1.0]
        }
        path = plots.plot_scale_sensitivity(
            bands, plot_dir / f"loss-scale-{workload}.png", title=workload, metric_name="test metric", xi=xi_bands
        )
        images.append(Image(path, f"{workload}: test metric (mean, 95 % CI) and mean ξ against the loss scale s"))
        at = " / ".join(f"{s:g}" for s in LOSS_SCALES)
        headlines.append(
            f"Loss scale on {workload} (s = {at}): "
            + "; ".join(
                f"{o} test metric {' / '.join(fmt_ci(mean_ci(metric[o][s].values())) for s in LOSS_SCALES)}"
                + (
                    f", mean ξ {' / '.join(f'{mean_ci(xis[o][s].values()).mean:.3f}' for s in LOSS_SCALES)}"
                    if o in xi_bands
                    else ""
                )
                for o in measured
            )
            + "."
        )
    text = (
        "Adam's update m̂/(√v̂ + ε) does not change when the loss (so every gradient) is multiplied by a constant s, "
        "up to ε; diffGrad's friction ξ = sigmoid(|g_{t−1} − g_t|) does, because |Δg| scales with s, and the "
        "scale-free friction of `diffgrad-rms` (docs/paper.md §10) does not, because it measures |Δg| against "
        "sqrt(v̂). Each trains at the learning rate its tuned comparison selected (section 6 for Adam and diffGrad, "
        f"section 9 for `diffgrad-rms`), with the loss multiplied by s ∈ {{{', '.join(f'{s:g}' for s in LOSS_SCALES)}}} "
        "and the same seeds (`diffgrad compare --loss-scale S` runs one scale). Changes are per seed against s = 1; "
        f"a change of the test metric within ±{METRIC_TOLERANCE:g} (of the mean ξ: ±{XI_TOLERANCE:g}) counts as "
        "none.\n\n"
        + (
            format_table(["workload", "optimizer", "lr (tuned)", "s", "test metric", "mean ξ"], rows, align="llrrrr")
            if rows
            else "No loss-scale runs yet: they start once the tuned comparisons have selected their learning rates."
        )
    )
    return Built([Section("8. Sensitivity to the loss scale", text, images)], found, headlines)


def scale_free_section(records: Sequence[RunRecord], infos: dict[str, StudyInfo], plot_dir: Path) -> Built:
    """The scale-free friction (docs/paper.md §10) at its default and its tuned slope κ, against diffGrad,
    Adam, Adam at lr/2 and AdaBelief under the tuned protocol, with ξ over training."""
    rankings, subsections = _tuned_comparison(records, infos, SCALE_FREE_TAG, plot_dir / SCALE_FREE_TAG)
    rankings = [r for r in rankings if "diffgrad-rms" in r.scores]
    rows, found, images, headlines = [], [], [], []
    for r in rankings:
        for a, b in (("diffgrad-rms", "diffgrad"), ("diffgrad-rms", "adam"), ("diffgrad-rms-slope", "diffgrad-rms")):
            if a in r.scores and b in r.scores:
                found.append(cl.better_claim(f"Scale-free, {r.workload}: {a} beats {b}", [r], a, b))
        finals = {o: _final_runs(records, r.workload, o, SCALE_FREE_TAG) for o in r.scores}
        for opt in r.ranked:
            xi = mean_ci(_by_seed(finals[opt], lambda r: run_average(r.friction, "mean")).values())
            slopes = sorted(
                {f"{run.hparams['friction_slope']:.3g}" for run in finals[opt] if "friction_slope" in run.hparams}
            )
            rows.append(
                [r.workload, opt, r.rank(opt), fmt_ci(r.scores[opt]), fmt_ci(xi) if xi.n else "", ", ".join(slopes)]
            )
        # The optimizers that recorded ξ (the DiffGrad ones).
        curves = {o: friction_curves([run.friction for run in runs if run.friction]) for o, runs in finals.items()}
        curves = {o: c for o, c in curves.items() if c}
        if curves:
            path = plots.plot_friction(
                curves, plot_dir / f"friction-{SCALE_FREE_TAG}-{r.workload}.png", title=r.workload
            )
            images.append(
                Image(
                    path,
                    f"{r.workload}: ξ over training of diffGrad and the scale-free friction at the tuned settings "
                    "(mean, median, 5–95 % band; averaged over seeds), over all parameters and per layer kind",
                )
            )
        headlines.append(
            f"Scale-free friction, {r.workload}: "
            + "; ".join(f"{o} {fmt_ci(r.scores[o])} (rank {r.rank(o)})" for o in r.ranked)
            + "."
        )
    text = (
        "diffGrad's friction sigmoid(|Δg|) stays at ½ wherever gradients change by much less than 1 (section 5). "
        "The scale-free friction ξ = sigmoid(κ·|Δg|/(sqrt(v̂) + ε)) of this project (docs/paper.md §10, not the "
        "paper's) measures the change against the gradient's own running magnitude. `diffgrad-rms` uses the default "
        "slope κ, `diffgrad-rms-slope` searches κ over [0.1, 10] along with the learning rate; Adam at lr/2 is the "
        f"control for a friction stuck at ½. {TUNED_PROTOCOL}\n\n"
        + format_table(
            ["workload", "optimizer", "rank", "test metric (mean ± 95 % CI)", "mean ξ", "tuned κ"], rows, align="llrrrr"
        )
    )
    return Built(
        [Section("9. A scale-free friction: tuned protocol", text, images), *_nested(subsections)], found, headlines
    )


def _bands(cis: Sequence[MeanCI]) -> dict[str, list[float]]:
    return {
        "mean": [c.mean for c in cis],
        "lo": [c.mean - c.half_width if c.n > 1 else c.mean for c in cis],
        "hi": [c.mean + c.half_width if c.n > 1 else c.mean for c in cis],
    }


# --------------------------------------------------------------------------------------- verdict


def verdict_section(claims: Sequence[Claim]) -> Section:
    counts = {v: sum(c.verdict == v for c in claims) for v in cl.VERDICTS}
    text = (
        f"Generated from the numbers in the sections below by the rules of `diffgrad.lab.claims`: "
        f"{counts[cl.HELD]} claims held, {counts[cl.NOT_HELD]} did not, {counts[cl.INCONCLUSIVE]} inconclusive. "
        "Each claim states its test; a comparison of trained runs holds or fails only when the 95 % confidence "
        "intervals over seeds are apart, and is inconclusive with fewer than two seeds.\n\n"
        + format_table(
            ["claim", "verdict", "test", "evidence"],
            [[c.statement, f"**{c.verdict}**", c.test, c.evidence] for c in claims],
        )
    )
    return Section("Verdict", text)


def _intro(scale: Scale, datasets: Sequence[PaperDataset], url: str, records: Sequence[RunRecord]) -> Section:
    lines = [
        "The experiments of Dubey et al., *diffGrad: An Optimization Method for Convolutional Neural Networks* "
        "(IEEE TNNLS 2020), rerun with this package's DiffGrad, which keeps its own copy of the previous gradient.",
        f"Scale: **{scale.name}**. Results database: `{redact_url(url)}` (every training run is one trial there).",
    ]
    if any(ds.standin for ds in datasets):
        lines.append(
            "No `--data-dir` was given, so Tables I–III run the paper's protocol on offline stand-in "
            "workloads ("
            + ", ".join(f"`{d.workload}` for {paper.DATASET_NAMES[d.paper]}" for d in datasets)
            + "), not on CIFAR; the paper's values are printed next to them for reference only."
        )
    lines += list(scale.notes)
    if records:
        lines.append(provenance_summary(records))
    return Section("About this report", "\n\n".join(lines))


def _nested(sections: Sequence[Section]) -> list[Section]:
    """Ready-made report sections (learning curves, summaries), one heading level down."""
    return [replace(s, level=s.level + 1) for s in sections]
