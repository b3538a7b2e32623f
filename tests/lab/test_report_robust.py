"""Reports render whatever the runs did: diverged runs (flagged or only non-finite), failed and pruned
trials, a study without finished runs, a one-trial study, single seeds, and runs of mixed provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

optuna = pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

import diffgrad  # noqa: E402
from diffgrad.lab import runner, trajectories  # noqa: E402
from diffgrad.lab.provenance import Provenance, current_provenance  # noqa: E402
from diffgrad.lab.report import plots, render_report  # noqa: E402
from diffgrad.lab.storage import INFO_KEY, PROVENANCE_KEY, RECORD_KEY, RunRecord, load_records  # noqa: E402
from diffgrad.lab.workloads.analytic import FUNCTIONS  # noqa: E402
from test_runner import TinyWorkload, _one_thread  # noqa: E402, F401  (the tiny workload and its fixture)

OPTIMIZERS = ["diffgrad", "adam", "sgdm"]  # the README example's set: SGD with momentum diverges on Beale
STEPS = TinyWorkload.default_budget.steps
# SGD with momentum at lr 0.05 leaves the finite range within a few iterations on both functions.
SHORT_TRAJECTORIES = {
    "F1": {"steps": 20, "lr": 0.1},
    "beale": {"steps": 20, "lr": 0.05},
    "rosenbrock": {"steps": 20, "lr": 0.05},
}


def _add(study: optuna.Study, record: RunRecord | None, state: optuna.trial.TrialState) -> None:
    """A trial written directly: COMPLETE with a record, or FAIL / PRUNED without one."""
    complete = state == optuna.trial.TrialState.COMPLETE
    study.add_trial(
        optuna.trial.create_trial(
            state=state, value=0.0 if complete else None, user_attrs={RECORD_KEY: record.to_attr()} if record else {}
        )
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("robust")
    url = f"sqlite:///{root / 'results.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trajectories, "STANDARD", SHORT_TRAJECTORIES)
            # 2 tune + 2 final runs per optimizer: sgdm's tune runs train, its final runs diverge (at
            # step 5 and at step 1, leaving no evaluation at all).
            runner.compare(
                TinyWorkload(nan_after=10 * STEPS + 5),
                OPTIMIZERS,
                protocol="tuned",
                budget=2,
                seeds=2,
                storage=url,
                progress=False,
            )
    finally:
        torch.set_num_threads(threads)

    storage = optuna.storages.RDBStorage(url)
    states = optuna.trial.TrialState
    template = next(r for r in load_records(url) if r.study == "tiny/adam/tuned" and r.phase == "final")
    adam = optuna.load_study(study_name="tiny/adam/tuned", storage=storage)
    # Written by another tool: non-finite values without the runner's flag, and no provenance (an old database).
    nan_curve = dataclasses.replace(
        template, trial_number=10, seed=3, val_metric=[0.5, float("nan"), float("nan")], diverged=False, provenance=None
    )
    _add(adam, nan_curve, states.COMPLETE)
    _add(adam, None, states.FAIL)
    _add(adam, None, states.PRUNED)
    # Another package and torch version re-ran one seed of diffgrad's study.
    diffgrad_study = optuna.load_study(study_name="tiny/diffgrad/tuned", storage=storage)
    older = dataclasses.replace(template.provenance, package_version="0.0.1", torch_version="1.13.0")
    _add(
        diffgrad_study,
        dataclasses.replace(
            template, study="tiny/diffgrad/tuned", optimizer="diffgrad", trial_number=10, seed=3, provenance=older
        ),
        states.COMPLETE,
    )
    # A study that never finished a trial, and a study of one trial with one seed.
    for name, optimizer, protocol, trials in (
        ("tiny/adagrad/tuned", "adagrad", "tuned", [states.FAIL, states.PRUNED]),
        ("tiny/rmsprop/paper", "rmsprop", "paper", [states.COMPLETE]),
    ):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr(INFO_KEY, {**adam.user_attrs[INFO_KEY], "optimizer": optimizer, "protocol": protocol})
        for state in trials:
            record = dataclasses.replace(
                template, study=name, optimizer=optimizer, protocol=protocol, trial_number=0, seed=1
            )
            _add(study, record if state == states.COMPLETE else None, state)

    md = render_report(url, root / "out")
    html = md.parent / "report.html"
    assert md.is_file() and html.is_file()
    for name in ("curves_tiny.png", "lr_tiny.png", "performance_profile.png"):
        assert (md.parent / "plots" / name).is_file(), name
    assert len(list((md.parent / "plots").glob("trajectory_*.png"))) == len(SHORT_TRAJECTORIES)
    return md.read_text()


def test_diverged_runs_are_labelled(report: str) -> None:
    summary = report.split("## Summary")[1].split("## Learning curves")[0]
    sgdm = next(line for line in summary.splitlines() if line.startswith("| sgdm |"))
    assert "| all diverged |" in sgdm and "| 2/2 |" in sgdm
    assert "- sgdm (tuned): 2 of 2 diverged (seeds 1, 2;" in summary
    assert "- adam (tuned): 1 of 3 diverged (seed 3; `tiny/adam/tuned` #10)" in summary  # not flagged, still caught
    assert "diverged (marked as such below)" in report.split("## Summary")[0]
    for function in ("beale", "rosenbrock"):
        assert f'- `sgdm` on {function} (20 steps, {{"lr": 0.05}}): diverged at iteration' in report
    assert "`sgdm` on F1" not in report


def test_unfinished_and_tiny_studies_are_shown(report: str) -> None:
    assert "`tiny/adagrad/tuned` (no runs)" in report  # only FAIL and PRUNED trials
    rmsprop = next(line for line in report.splitlines() if line.startswith("| rmsprop |"))
    assert "(n=1)" in rmsprop and "`tiny/rmsprop/paper` #0" in rmsprop


def test_provenance_is_reported(report: str) -> None:
    top = report.split("## Summary")[0]
    assert f"diffgrad {diffgrad.__version__}, " in top and f"torch {torch.__version__}" in top
    assert "**Warning:** 2 studies mix runs of different package, commit or torch versions." in top
    provenance = report.split("## Provenance")[1]
    assert current_provenance("cpu").describe().replace(", 1 thread", "") in provenance.replace(", 1 thread", "")
    assert "**Warning:** `tiny/diffgrad/tuned` mixes versions: diffgrad 0.0.1," in provenance
    assert "torch 1.13.0" in provenance
    # Old records (no provenance) render as unknown, next to the known ones of their study.
    assert "**Warning:** `tiny/adam/tuned` mixes versions:" in provenance
    assert "unknown (runs stored before provenance was recorded)" in provenance


def test_old_records_load_without_provenance() -> None:
    attr = {f.name: None for f in dataclasses.fields(RunRecord)} | {"study": "s", "diverged": False}
    del attr["provenance"], attr["tag"], attr["workload_options"]
    assert RunRecord.from_attr(attr).provenance is None
    record = dataclasses.replace(RunRecord.from_attr(attr), provenance=current_provenance("cpu"))
    assert RunRecord.from_attr(record.to_attr()) == record


def test_runner_records_provenance_and_warns_once_on_a_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=1, storage=url, progress=False)
    (record,) = load_records(url)
    here = current_provenance("cpu")
    assert dataclasses.replace(record.provenance, threads=here.threads) == here
    assert here.package_version == diffgrad.__version__ and here.torch_version == torch.__version__
    assert here.git_commit is None or len(here.git_commit) == 40

    newer = dataclasses.replace(here, torch_version="99.0")
    monkeypatch.setattr(runner, "current_provenance", lambda device: newer)
    with caplog.at_level("WARNING", logger="diffgrad"):
        runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=3, storage=url, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'tiny/adam/paper'" in warnings[0] and "torch 99.0" in warnings[0]
    study = optuna.load_study(study_name="tiny/adam/paper", storage=url)
    assert [Provenance.from_attr(p).torch_version for p in study.user_attrs[PROVENANCE_KEY]] == [
        record.provenance.torch_version,
        "99.0",
    ]


def test_trajectories_that_all_diverge_are_drawn_in_the_functions_box(tmp_path: Path) -> None:
    rosenbrock = FUNCTIONS["rosenbrock"]
    blown = np.array([[-2.0, 2.0], [1e200, -1e200], [np.inf, np.nan]])
    curves = {
        "sgdm": (blown, rosenbrock.f(torch.as_tensor(blown)).numpy()),
        "nothing": (np.full((2, 2), np.nan), np.full(2, np.nan)),
    }  # not even a finite start
    out = plots.plot_trajectories("rosenbrock", curves, tmp_path / "t.png", fn=rosenbrock.f, domain=rosenbrock.domain)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="domain"):
        plots.plot_trajectories("rosenbrock", curves, tmp_path / "bad.png", domain=[(0.0, 1.0)])
    one_d = {"adam": (np.array([-1.0, np.nan]), np.array([0.5, np.nan]))}
    plots.plot_trajectories("F1", one_d, tmp_path / "f1.png", fn=FUNCTIONS["F1"].f, domain=FUNCTIONS["F1"].domain)
