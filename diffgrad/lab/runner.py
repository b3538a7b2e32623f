"""Protocols on Optuna: which runs to train for one (workload, optimizer, protocol[, tag]) cell.

One Optuna study per cell, named ``workload[options]/optimizer/protocol[/tag]``, holding a
:class:`~diffgrad.lab.storage.StudyInfo` (user attribute ``"info"``) and one
:class:`~diffgrad.lab.storage.RunRecord` per finished trial (user attribute ``"record"``).

Protocols:

``paper``
    docs/paper.md §6: fixed hyper-parameters — the registry's defaults, lr = 1e-3 for every optimizer,
    then the user's overrides — trained with K seeds ("final" trials), scored on val and test.
``tuned``
    docs/paper.md §7: ``tuning_budget`` "tune" trials sample the optimizer's search space (a seeded
    TPE sampler, random for its first trials), each trained with the one tuning seed and scored on
    VALIDATION, which is the Optuna objective. The best setting by validation is then rerun with K
    fresh seeds as "final" trials, which alone are evaluated on TEST; selection never sees test.

Tuning uses seed 0; final runs use seeds 1..K in both protocols, so final runs of different
optimizers start from the same weights and see the same batches. The sampler is seeded by the
place in the plan of the tune trial it samples for, its slot: the number of earlier tune trials
that are COMPLETE, RUNNING or WAITING. So optimizers with the same search space try the same first
learning rates (common random numbers); a resumed study does not replay earlier draws; a study
killed and resumed trains what an uninterrupted one would (the killed trial, FAIL, holds no slot
and is ignored by TPE, its retry holds that slot with the same parameters, the next trial takes
the next slot), provided the resumed run finds the killed trial dead before it samples (as it
does once that trial's heartbeat is older than the grace period; a trial still RUNNING cannot be
told from another worker's, and sampling goes on without its result); and workers sharing a study
never sample with the same seed (a trial is RUNNING from the moment the storage numbers it, so a
later trial counts it).

Resuming and sharing work. The plan of a study is fixed (its StudyInfo); running it again only
trains what is missing: COMPLETE trials are never recomputed, tune trials are counted against the
budget, final trials are enqueued (``study.enqueue_trial``) only for seeds that have no COMPLETE,
RUNNING or WAITING final trial. Optuna pops WAITING trials atomically, so several processes can
work on one study. Each trial sends heartbeats; a trial left RUNNING by a killed process is marked
FAIL once its heartbeat is older than the grace period, and Optuna's retry callback enqueues it
again with the same parameters. A trial that finds the plan already covered by earlier trials
(two workers racing for the last tune trial, or for one seed) is PRUNED without training.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from diffgrad.lab.provenance import Provenance, current_provenance
from diffgrad.lab.registry import LogUniform, get_optimizer_spec
from diffgrad.lab.storage import (
    INFO_KEY,
    PROVENANCE_KEY,
    RECORD_KEY,
    RunRecord,
    StudyInfo,
    check_results_database,
    default_storage_url,
    error_line,
    redact_url,
)
from diffgrad.lab.train import SCHEDULES, train
from diffgrad.lab.trajectories import record_trajectories
from diffgrad.lab.workloads.base import Budget, Workload

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PAPER_LR",
    "PROTOCOLS",
    "TUNING_SEED",
    "ConfigError",
    "StudyPlan",
    "compare",
    "open_storage",
    "plan_compare",
    "plan_study",
    "run_studies",
    "run_study",
    "study_name",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("paper", "tuned")
PAPER_LR = 1e-3  # docs/paper.md §6: one learning rate for every optimizer
TUNING_SEED = 0
TUNE, FINAL = "tune", "final"
WORKER_KEY = "worker"  # trial user attribute: "host:pid" of the process that claimed the trial
# Options that say where data lives, not what is measured: kept out of study names and infos, so
# moving the data does not orphan a study.
LOCATION_OPTIONS = frozenset({"data_dir"})

DEFAULT_HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
DEFAULT_GRACE_PERIOD = 60  # seconds without heartbeat after which a RUNNING trial counts as dead
DEFAULT_MAX_RETRY = 3  # retries of a trial whose process died
STORAGE_ATTEMPTS = 5  # tries to open a storage whose tables another process is creating


class ConfigError(ValueError):
    """A problem with what was asked for (names, options, budgets, storage), found before training."""


@dataclass(frozen=True)
class StudyPlan:
    """One validated cell: everything that decides which runs a study holds and how they train."""

    workload: Workload = field(compare=False, repr=False)
    workload_options: dict[str, Any]  # canonical: non-default, without location options
    optimizer: str
    protocol: str
    budget: Budget
    tuning_budget: int  # tune trials (0 for "paper")
    seeds: tuple[int, ...]  # final-run seeds
    hparams: dict[str, Any]  # fixed hyper-parameters; the search space is sampled on top
    search_space: dict[str, LogUniform]
    schedule: str
    tag: str
    loss_scale: float = 1.0  # the factor on the differentiated loss (train.train)

    @property
    def name(self) -> str:
        return study_name(
            self.workload.name, self.optimizer, self.protocol, self.workload_options, self.tag, self.loss_scale
        )

    @property
    def runs(self) -> int:
        return self.tuning_budget + len(self.seeds)

    def info(self) -> StudyInfo:
        return StudyInfo(
            workload=self.workload.name,
            optimizer=self.optimizer,
            protocol=self.protocol,
            metric_name=self.workload.metric_name,
            higher_is_better=self.workload.higher_is_better,
            target=self.workload.target,
            steps=self.budget.steps,
            batch_size=self.budget.batch_size,
            eval_every=self.budget.eval_every,
            workload_options=dict(self.workload_options),
            search_space={name: dist.to_attr() for name, dist in self.search_space.items()},
            tag=self.tag,
            schedule=self.schedule,
            tuning_budget=self.tuning_budget,
            seeds=list(self.seeds),
            hparams=dict(self.hparams),
            loss_scale=self.loss_scale,
        )


def study_name(
    workload: str,
    optimizer: str,
    protocol: str,
    workload_options: Mapping[str, Any] | None = None,
    tag: str = "",
    loss_scale: float = 1.0,
) -> str:
    """``workload[key=value,...]/optimizer/protocol[/tag]``: readable, and the same for the same cell.
    A loss scale other than 1 is listed with the options (``loss_scale=100``)."""
    listed = {**(workload_options or {}), **({"loss_scale": f"{loss_scale:g}"} if loss_scale != 1.0 else {})}
    options = ",".join(f"{key}={value}" for key, value in sorted(listed.items()))
    parts = [f"{workload}[{options}]" if options else workload, optimizer, protocol]
    return "/".join([*parts, tag] if tag else parts)


def plan_study(
    workload: str | Workload,
    optimizer: str,
    *,
    protocol: str = "tuned",
    budget: int = 20,
    seeds: int = 5,
    workload_options: Mapping[str, Any] | None = None,
    hparams: Mapping[str, Any] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    eval_every: int | None = None,
    schedule: str = "constant",
    tag: str = "",
    loss_scale: float = 1.0,
) -> StudyPlan:
    """Validate one cell and return its plan; every problem raises :class:`ConfigError`.

    ``workload`` is a registered name (built with ``workload_options``) or a ready
    :class:`Workload` (then ``workload_options`` are the options it was built with, for its
    label). ``budget`` is the number of tune trials (ignored by ``paper``), ``seeds`` the number of
    final runs. ``hparams`` override the optimizer's defaults (and the paper's lr); under ``tuned``
    they are also taken out of the search space. ``steps``, ``batch_size`` and ``eval_every``
    override the workload's default budget. ``loss_scale`` multiplies the loss that is
    differentiated (a positive, finite number).
    """
    options = dict(workload_options or {})
    workload = build_workload(workload, options)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    for name, value in (
        ("budget", budget),
        ("seeds", seeds),
        ("steps", steps),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or not 0 < loss_scale < math.inf:
        raise ConfigError(f"loss_scale must be a positive, finite number, got {loss_scale!r}")
    default = workload.default_budget
    run_budget = Budget(
        steps=steps or default.steps,
        batch_size=batch_size or default.batch_size,
        eval_every=min(eval_every or default.eval_every, steps or default.steps),
    )
    try:
        spec = get_optimizer_spec(optimizer)
        spec.optimizer_class()  # a peer whose package is missing
    except ValueError as error:
        raise ConfigError(str(error)) from error
    overrides = dict(hparams or {})
    fixed = {**spec.defaults, **({"lr": PAPER_LR} if protocol == "paper" else {}), **overrides}
    space = {k: d for k, d in spec.search_space.items() if k not in overrides} if protocol == "tuned" else {}
    if protocol == "tuned" and not space:
        raise ConfigError(
            f"nothing left to tune for {optimizer!r}: every searched hyper-parameter is fixed "
            f"({', '.join(spec.search_space)}); use protocol paper"
        )
    _check_buildable(optimizer, fixed)
    return StudyPlan(
        workload=workload,
        workload_options=_canonical_options(workload, options),
        optimizer=optimizer,
        protocol=protocol,
        budget=run_budget,
        tuning_budget=budget if protocol == "tuned" else 0,
        seeds=tuple(range(1, seeds + 1)),
        hparams=fixed,
        search_space=space,
        schedule=schedule,
        tag=tag,
        loss_scale=float(loss_scale),
    )


def plan_compare(
    workload: str | Workload,
    optimizers: Sequence[str],
    *,
    workload_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> list[StudyPlan]:
    """:func:`plan_study` for each optimizer (same keyword arguments), sharing one workload
    instance so that its data loads once."""
    if not optimizers:
        raise ConfigError("no optimizers given")
    duplicates = sorted({name for name in optimizers if list(optimizers).count(name) > 1})
    if duplicates:
        raise ConfigError(f"optimizer(s) given twice: {', '.join(duplicates)}")
    built = build_workload(workload, dict(workload_options or {}))
    return [plan_study(built, name, workload_options=workload_options, **options) for name in optimizers]


def build_workload(workload: str | Workload, options: dict[str, Any]) -> Workload:
    """``workload`` itself, or the registered workload of that name built with ``options``;
    unknown names, bad options and missing data raise :class:`ConfigError`."""
    if isinstance(workload, Workload):
        return workload
    from diffgrad.lab.workloads import get_workload

    try:
        return get_workload(workload, **options)
    except (ValueError, TypeError, OSError) as error:  # unknown name/option, bad value, missing data
        raise ConfigError(str(error)) from error


def _canonical_options(workload: Workload, options: Mapping[str, Any]) -> dict[str, Any]:
    # An option spelled out at its default is the same cell as the option left out.
    defaults = {p.name: p.default for p in inspect.signature(type(workload)).parameters.values()}
    return {
        key: value
        for key, value in sorted(options.items())
        if key not in LOCATION_OPTIONS and not (key in defaults and defaults[key] == value)
    }


def _check_buildable(optimizer: str, hparams: Mapping[str, Any]) -> None:
    # Unknown names and bad values (a negative lr, a misspelt friction) fail here, not after an
    # hour of training.
    import torch

    from diffgrad.lab.registry import create_optimizer

    try:
        create_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], **hparams)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"bad hyper-parameters for {optimizer!r}: {error}") from error


def _check_device(device: str) -> None:
    import torch

    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, ValueError, AssertionError) as error:  # torch raises all three for bad devices
        raise ConfigError(f"device {device!r} is not usable here: {str(error).splitlines()[0]}") from error


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    max_retry: int = DEFAULT_MAX_RETRY,
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage on any SQLAlchemy ``url``, with heartbeats and retry of dead trials.

    A trial whose heartbeat is older than ``grace_period`` seconds is marked FAIL and enqueued
    again (at most ``max_retry`` times) by the next process that works on its study.
    """
    import optuna
    import sqlalchemy.event
    import sqlalchemy.exc

    try:
        check_results_database(url, create=True)  # before Optuna creates its tables in someone else's database
    except ValueError as error:
        raise ConfigError(str(error)) from error
    sqlite = url.startswith("sqlite")
    # Several processes may share one SQLite file: wait for its lock instead of failing at once,
    # and let _begin_immediate open every transaction (isolation_level None: sqlite3 emits no BEGIN).
    engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                # Heartbeats and retries are marked experimental, but are what resuming relies on.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry: dict[str, Any]
                if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
                    retry = {
                        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)
                    }
                else:
                    retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry)}
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period, **retry
                )
            if sqlite:
                sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
            # Workers that open a new database at the same moment race to create its tables and
            # schema version (a UNIQUE or "already exists" error); the losers find them on a retry.
            race = isinstance(error, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or (
                isinstance(error, sqlalchemy.exc.OperationalError) and "already exists" in str(error)
            )
            if not race or attempt == STORAGE_ATTEMPTS:
                raise ConfigError(f"cannot open storage {redact_url(url)!r}: {error_line(error, url)}") from error
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _begin_immediate(connection: Any) -> None:
    # Optuna claims a WAITING trial by reading its state and setting it to RUNNING in one
    # transaction (SELECT ... FOR UPDATE, a row lock on PostgreSQL and MySQL). SQLite has no row
    # locks, and sqlite3 runs a transaction's SELECTs before its BEGIN, so two processes could both
    # read WAITING and both train the trial. BEGIN IMMEDIATE takes the write lock first: one
    # transaction at a time (others wait, up to the connection timeout), so a claim is atomic.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _phase(trial: optuna.trial.FrozenTrial) -> str:
    # Final trials are always enqueued with their phase; a trial without one was asked fresh.
    return trial.user_attrs.get("phase", TUNE)


def _open_study(plan: StudyPlan, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create or load the plan's study and check that an existing one holds the same plan."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=plan.name,
        direction="maximize" if plan.workload.higher_is_better else "minimize",
        pruner=optuna.pruners.NopPruner(),  # equal budgets: no run is cut short
        load_if_exists=True,
    )
    wanted = _json(dataclasses.asdict(plan.info()))
    stored = study.user_attrs.get(INFO_KEY)
    if stored is not None:
        # A field added since the study was created reads as its default (the plan it then ran).
        stored = _json(dataclasses.asdict(StudyInfo.from_attr(stored)))
        differs = sorted(k for k in wanted if k != "seeds" and stored.get(k) != wanted[k])
        if differs:
            changes = "; ".join(f"{k}: stored {stored.get(k)!r}, asked {wanted[k]!r}" for k in differs)
            raise ConfigError(
                f"study {plan.name!r} already holds runs of another plan ({changes}); use another tag or output folder"
            )
        # More seeds extend a study; fewer leave the extra runs in place.
        wanted["seeds"] = sorted(set(stored.get("seeds", [])) | set(wanted["seeds"]))
    if stored != wanted:
        study.set_user_attr(INFO_KEY, wanted)
    return study


def _json(value: Any) -> Any:
    # What the database gives back (tuples become lists), so stored and asked plans compare equal.
    return json.loads(json.dumps(value))


def _note_provenance(study: optuna.Study, provenance: Provenance) -> None:
    """Add ``provenance`` to the study's list of those that trained in it, and warn when earlier runs
    were made by another package version, commit or torch version: training goes on, but the
    study's runs are then not all made by the same code."""
    seen = [Provenance.from_attr(attr) for attr in study.user_attrs.get(PROVENANCE_KEY, [])]
    others = sorted({p.code() for p in seen if p.versions != provenance.versions})
    if others:
        logger.warning(
            "study %r holds runs made with %s; this process trains with %s, so the study mixes versions",
            study.study_name,
            " and ".join(others),
            provenance.code(),
        )
    if provenance not in seen:
        study.set_user_attr(PROVENANCE_KEY, [dataclasses.asdict(p) for p in [*seen, provenance]])


class _Objective:
    """Trains one trial of a study: a tune trial (sampled, tuning seed, val) or a final one."""

    def __init__(self, plan: StudyPlan, study: optuna.Study, device: str, progress: _Progress) -> None:
        self.plan, self.study, self.device, self.progress = plan, study, device, progress
        self.provenance_noted = False  # the study's provenance is checked once, at the first run trained

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        attrs = trial.user_attrs
        phase, seed = attrs.get("phase", TUNE), attrs.get("seed", TUNING_SEED)
        trial.set_user_attr(WORKER_KEY, f"{socket.gethostname()}:{os.getpid()}")  # who claimed it
        if "phase" not in attrs:
            trial.set_user_attr("phase", phase)
            trial.set_user_attr("seed", seed)
        if self._surplus(trial.number, phase, seed):
            raise optuna.TrialPruned(f"the plan of {self.plan.name!r} is already covered by earlier trials")
        space = self.plan.search_space
        sampled = {name: trial.suggest_float(name, d.low, d.high, log=True) for name, d in space.items()}
        hparams = {**self.plan.hparams, **sampled}
        label = f"{self.plan.name} #{trial.number} {phase} seed {seed}"
        provenance = current_provenance(self.device)
        if not self.provenance_noted:
            _note_provenance(self.study, provenance)
            self.provenance_noted = True

        def on_eval(step: int, val_metric: float) -> None:
            trial.report(val_metric, step)
            self.progress.at(label, step, self.plan.budget.steps, val_metric)

        started = time.perf_counter()
        result = train(
            self.plan.workload,
            self.plan.optimizer,
            hparams,
            seed=seed,
            budget=self.plan.budget,
            schedule=self.plan.schedule,
            test=phase == FINAL,
            device=self.device,
            on_eval=on_eval,
            loss_scale=self.plan.loss_scale,
        )
        record = RunRecord(
            study=self.plan.name,
            workload=self.plan.workload.name,
            optimizer=self.plan.optimizer,
            protocol=self.plan.protocol,
            phase=phase,
            trial_number=trial.number,
            tag=self.plan.tag,
            workload_options=dict(self.plan.workload_options),
            provenance=provenance,
            loss_scale=self.plan.loss_scale,
            **dataclasses.asdict(result),
        )
        trial.set_user_attr(RECORD_KEY, record.to_attr())
        self.progress.done(label, result.final_val_metric, time.perf_counter() - started)
        return result.final_val_metric

    def _surplus(self, number: int, phase: str, seed: int) -> bool:
        # Only the earliest live trial for a slot of the plan trains; see the module docstring.
        import optuna

        live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        trials = self.study.get_trials(deepcopy=False, states=live)
        earlier = [t for t in trials if t.number < number and _phase(t) == phase]
        if phase == TUNE:
            return len(earlier) >= self.plan.tuning_budget
        return any(t.user_attrs.get("seed") == seed for t in earlier)


class _Progress:
    """Progress over the runs of all studies.

    On a terminal, one bar whose text follows the current run's evaluations. Elsewhere (stderr
    redirected to a log file or a pipe), one line per finished run through the ``diffgrad`` logger
    at INFO, e.g. ``run 7/33: digits-cnn/adam/tuned #6 tune seed 0: val 0.9723 (12.3 s)``.
    Disabled, neither.
    """

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        try:
            terminal = sys.stderr.isatty()
        except (AttributeError, ValueError):  # replaced or closed stderr
            terminal = False
        self.total, self.finished = total, initial
        self.log = enabled and not terminal
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="run",
            file=sys.stderr,
            disable=not (enabled and terminal),
            dynamic_ncols=True,
        )

    def at(self, label: str, step: int, steps: int, val_metric: float) -> None:
        self.bar.set_postfix_str(f"{label} step {step}/{steps} val {val_metric:.4g}")

    def done(self, label: str, val_metric: float, seconds: float) -> None:
        self.finished += 1
        self.bar.update()
        if self.log:
            logger.info("run %d/%d: %s: val %.4g (%.1f s)", self.finished, self.total, label, val_metric, seconds)

    def close(self) -> None:
        self.bar.close()


def _completed_runs(plan: StudyPlan, study: optuna.Study) -> int:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    tuned = sum(_phase(t) == TUNE for t in complete)
    seeds = {t.user_attrs.get("seed") for t in complete if _phase(t) == FINAL}
    return min(tuned, plan.tuning_budget) + len(seeds & set(plan.seeds))


def run_study(
    plan: StudyPlan,
    storage: optuna.storages.RDBStorage,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> str:
    """Train whatever ``plan``'s study still lacks and return the study's name."""
    return run_studies([plan], storage, device=device, progress=progress)[0]


def run_studies(
    plans: Sequence[StudyPlan],
    storage: optuna.storages.RDBStorage,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> list[str]:
    """Complete every plan's study; returns their names.

    All studies are opened first, so that a plan clash fails before any training. Studies are
    worked on in order; one whose remaining trials are all RUNNING elsewhere (another worker, or a
    dead process not yet past its grace period) is set aside and revisited after the others.
    """
    studies = [_open_study(plan, storage) for plan in plans]
    bar = _Progress(progress, sum(p.runs for p in plans), sum(_completed_runs(p, s) for p, s in zip(plans, studies)))
    pending = [(plan, study, _Objective(plan, study, device, bar)) for plan, study in zip(plans, studies)]
    try:
        while True:
            pending = [item for item in pending if not _advance(*item)]
            if not pending:
                return [plan.name for plan in plans]
            logger.info(
                "waiting for trials RUNNING elsewhere in %s (a dead process's trials are retried once "
                "their last heartbeat is %ss old)",
                ", ".join(p.name for p, _, _ in pending),
                storage.grace_period,
            )
            time.sleep(cast(int, storage.heartbeat_interval))  # open_storage always sets one
    finally:
        bar.close()


def _advance(plan: StudyPlan, study: optuna.Study, objective: _Objective) -> bool:
    """Run the study's missing trials one by one; True once complete, False if the rest is RUNNING
    elsewhere."""
    import optuna

    states = optuna.trial.TrialState
    while True:
        _fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        tune = [t for t in trials if _phase(t) == TUNE]
        if sum(t.state == states.COMPLETE for t in tune) < plan.tuning_budget:
            live = sum(t.state in (states.COMPLETE, states.RUNNING, states.WAITING) for t in tune)
            runnable = live < plan.tuning_budget or any(t.state == states.WAITING for t in tune)
        else:
            finals = _enqueue_finals(plan, study, trials)
            if {t.user_attrs.get("seed") for t in finals if t.state == states.COMPLETE} >= set(plan.seeds):
                return True
            runnable = any(t.state == states.WAITING for t in study.get_trials(deepcopy=False))
        if not runnable:
            return False
        study.sampler = _trial_seeded_tpe(n_startup_trials=max(1, min(10, plan.tuning_budget // 2)))
        study.optimize(objective, n_trials=1)


def _trial_seeded_tpe(n_startup_trials: int) -> optuna.samplers.BaseSampler:
    """A TPE sampler seeded, for each trial, by that trial's :func:`_plan_slot`.

    Seeding by the slot rather than the trial number keeps a resumed study on the uninterrupted
    sequence: a killed trial and its retry take two trial numbers but one slot. Seeding by the
    trial count each worker had read made two workers that read it at the same moment train the
    same learning rate twice; slots are distinct because each is counted after its trial exists.
    """
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=n_startup_trials)

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self.tpe = optuna.samplers.TPESampler(seed=_plan_slot(study, trial), n_startup_trials=n_startup_trials)
            self.tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
            return self.tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict) -> dict:
            return self.tpe.sample_relative(study, trial, space)

        def sample_independent(
            self,
            study: optuna.Study,
            trial: optuna.trial.FrozenTrial,
            name: str,
            distribution: optuna.distributions.BaseDistribution,
        ) -> Any:
            return self.tpe.sample_independent(study, trial, name, distribution)

        def after_trial(
            self,
            study: optuna.Study,
            trial: optuna.trial.FrozenTrial,
            state: optuna.trial.TrialState,
            values: Sequence[float] | None,
        ) -> None:
            self.tpe.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.tpe.reseed_rng()

    return TrialSeededTPE()


def _plan_slot(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
    """How many tune trials before ``trial`` hold a place in the plan (COMPLETE, RUNNING or WAITING).

    A trial that died (FAIL) gives its place to its retry, which Optuna enqueues with the same
    parameters; a PRUNED trial was beyond the plan. ``_Objective._surplus`` counts the same way.
    """
    import optuna

    states = optuna.trial.TrialState
    live = (states.COMPLETE, states.RUNNING, states.WAITING)
    return sum(t.number < trial.number and _phase(t) == TUNE for t in study.get_trials(deepcopy=False, states=live))


def _fail_stale(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _enqueue_finals(
    plan: StudyPlan, study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]
) -> list[optuna.trial.FrozenTrial]:
    """Enqueue a final trial for each seed without a live one; return the final trials."""
    import optuna

    states = optuna.trial.TrialState
    finals = [t for t in trials if _phase(t) == FINAL]
    covered = {t.user_attrs.get("seed") for t in finals if t.state in (states.COMPLETE, states.RUNNING, states.WAITING)}
    missing = [seed for seed in plan.seeds if seed not in covered]
    if not missing:
        return finals
    params, selected = _selection(plan, trials)
    for seed in missing:
        study.enqueue_trial(params, user_attrs={"phase": FINAL, "seed": seed, "selected_trial": selected})
    return [t for t in study.get_trials(deepcopy=False) if _phase(t) == FINAL]


def _selection(plan: StudyPlan, trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[dict[str, Any], int | None]:
    """The best tune trial's parameters by VALIDATION (ties: the earlier trial), and its number."""
    import optuna

    if not plan.search_space:
        return {}, None
    tuned = [t for t in trials if _phase(t) == TUNE and t.state == optuna.trial.TrialState.COMPLETE]
    sign = 1.0 if plan.workload.higher_is_better else -1.0
    best = max(tuned, key=lambda t: (sign * cast(float, t.value), -t.number))  # diverged runs hold ±inf, never NaN
    return dict(best.params), best.number


def compare(
    workload: str | Workload,
    optimizers: Sequence[str],
    *,
    protocol: str = "tuned",
    budget: int = 20,
    seeds: int = 5,
    storage: str | None = None,
    out_dir: str | Path = "results",
    workload_options: Mapping[str, Any] | None = None,
    hparams: Mapping[str, Any] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    eval_every: int | None = None,
    schedule: str = "constant",
    tag: str = "",
    loss_scale: float = 1.0,
    device: str = "cpu",
    progress: bool = True,
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    max_retry: int = DEFAULT_MAX_RETRY,
) -> list[str]:
    """Run ``protocol`` for each optimizer on ``workload``; returns the study names.

    Results go to ``storage`` (an SQLAlchemy URL; default: ``results.db`` in ``out_dir``).
    Everything is validated before any training (:class:`ConfigError`); re-running the same call
    trains only what is missing. See :func:`plan_study` for the arguments.
    """
    _check_device(device)
    plans = plan_compare(
        workload,
        optimizers,
        protocol=protocol,
        budget=budget,
        seeds=seeds,
        workload_options=workload_options,
        hparams=hparams,
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        schedule=schedule,
        tag=tag,
        loss_scale=loss_scale,
    )
    if storage is None:
        try:
            storage = default_storage_url(out_dir)
        except OSError as error:
            raise ConfigError(f"cannot create the output folder {str(out_dir)!r}: {error}") from error
    rdb = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
    names = run_studies(plans, rdb, device=device, progress=progress)
    record_trajectories(rdb, list(optimizers))  # the report's pictures: seconds, computed once
    return names
