"""The training loop and the protocols, on a tiny synthetic workload (milliseconds per run)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffgrad.lab import runner
from diffgrad.lab.storage import ARTIFACTS_STUDY, INFO_KEY, load_records, load_study_infos
from diffgrad.lab.train import make_schedule, train
from diffgrad.lab.workloads.base import Budget, Evaluation, Workload

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[2]
TIMING_FIELDS = {"wall_time", "time_to_target", "total_wall_time"}


class TinyWorkload(Workload):
    """Two-class points in 4-D, linearly separable; a 4-8-2 tanh MLP.

    ``delay`` slows each training step (for the kill test), ``nan_after`` makes the loss NaN from
    that training step on (divergence). ``evaluated`` records every split evaluated.
    """

    name = "tiny"
    description = "synthetic 4-D two-class points, 4-8-2 MLP (tests only)"
    metric_name = "accuracy"
    higher_is_better = True
    target = 0.9
    default_budget = Budget(steps=24, batch_size=16, eval_every=8)

    def __init__(self, *, delay: float = 0.0, nan_after: int = 0) -> None:
        self.delay, self.nan_after = delay, nan_after
        self.evaluated: list[str] = []
        self.losses = 0
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(384, 4, generator=g)
        y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).long()
        self.splits = {"train": (x[:256], y[:256]), "val": (x[256:320], y[256:320]), "test": (x[320:], y[320:])}

    def init_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def train_batches(self, seed: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.splits["train"]
        g = torch.Generator().manual_seed(seed)
        while True:
            for idx in torch.randperm(len(y), generator=g).split(batch_size):
                yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        self.losses += 1
        if self.delay:
            time.sleep(self.delay)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        return loss * math.nan if self.nan_after and self.losses >= self.nan_after else loss

    def evaluate(self, model: nn.Module, split: str) -> Evaluation:
        self.evaluated.append(split)
        x, y = self.splits[split]
        with torch.no_grad():
            logits = model(x)
        return Evaluation(F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item())


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spinning
    # makes each step ~50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _without_timings(record: object) -> dict:
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in TIMING_FIELDS}


def _url(tmp_path: Path, name: str = "results.db") -> str:
    return f"sqlite:///{tmp_path / name}"


# ------------------------------------------------------------------------------------ training


def test_train_is_deterministic_and_records_the_curve():
    workload = TinyWorkload()
    budget = Budget(steps=20, batch_size=16, eval_every=8)
    first = train(workload, "diffgrad", {"lr": 1e-2}, seed=3, budget=budget, test=True)
    second = train(workload, "diffgrad", {"lr": 1e-2}, seed=3, budget=budget, test=True)
    other = train(workload, "diffgrad", {"lr": 1e-2}, seed=4, budget=budget, test=True)
    assert _without_timings(first) == _without_timings(second)
    assert _without_timings(first) != _without_timings(other)
    assert first.steps == [8, 16, 20]  # every eval_every steps and at the end
    assert len(first.val_metric) == len(first.val_loss) == len(first.train_loss) == len(first.wall_time) == 3
    assert first.final_val_metric == first.val_metric[-1]
    assert first.test_metric is not None and first.test_loss is not None and not first.diverged
    assert first.wall_time == sorted(first.wall_time) and first.total_wall_time >= first.wall_time[-1]


def test_steps_and_time_to_target_come_from_the_first_validation_that_reaches_it():
    workload = TinyWorkload()
    result = train(workload, "adam", {"lr": 5e-2}, seed=1, budget=Budget(steps=48, batch_size=16, eval_every=4))
    reached = [s for s, m in zip(result.steps, result.val_metric) if m >= workload.target]
    assert reached, "the tiny problem should be solved within the budget"
    assert result.steps_to_target == reached[0]
    assert result.time_to_target == result.wall_time[result.steps.index(reached[0])]


def test_recording_the_friction_is_not_training_time(monkeypatch):
    """ξ is recorded at evaluation steps, for diffGrad only: that work counts in total_wall_time,
    not in the training time that wall_time and time_to_target compare across optimizers."""
    from diffgrad.lab import train as train_module

    record = train_module.record_friction

    @contextlib.contextmanager
    def slow_record(optimizer):
        time.sleep(0.25)
        with record(optimizer) as xi:
            yield xi
        time.sleep(0.25)

    monkeypatch.setattr(train_module, "record_friction", slow_record)
    result = train(
        TinyWorkload(), "diffgrad", {"lr": 1e-2}, seed=3, budget=Budget(steps=20, batch_size=16, eval_every=8)
    )
    assert len(result.friction) == 3  # three evaluations, each with its ξ
    assert result.total_wall_time >= 6 * 0.25
    assert result.wall_time[-1] < 0.25, result.wall_time


def test_test_split_is_evaluated_only_when_asked():
    workload = TinyWorkload()
    result = train(workload, "adam", {"lr": 1e-2}, seed=0, budget=Budget(steps=8, batch_size=16, eval_every=4))
    assert result.test_metric is None and result.test_loss is None
    assert workload.evaluated == ["val", "val"]


def test_divergence_stops_the_run_and_scores_the_worst():
    workload = TinyWorkload(nan_after=6)
    budget = Budget(steps=40, batch_size=16, eval_every=4)
    result = train(workload, "adam", {"lr": 1e-2}, seed=0, budget=budget, test=True)
    assert result.diverged
    assert result.steps == [4]  # the loss turned NaN at step 6: no further evaluation or step
    assert workload.losses == 6
    assert result.final_val_metric == -math.inf and result.test_metric == -math.inf


@pytest.mark.parametrize("schedule", ["constant", "step"])
def test_schedules_are_torch_schedulers_and_step_decays_at_80_percent(schedule):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_schedule(schedule, optimizer, 10)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == ([1.0] * 10 if schedule == "constant" else [1.0] * 8 + [pytest.approx(0.1)] * 2)
    with pytest.raises(ValueError, match="valid: constant, step"):
        make_schedule("cosine", optimizer, 10)


# ----------------------------------------------------------------------------------- protocols


def test_tuned_protocol_selects_on_validation_and_scores_finals_on_test(tmp_path):
    workload = TinyWorkload()
    url = _url(tmp_path)
    names = runner.compare(workload, ["adam"], protocol="tuned", budget=4, seeds=2, storage=url, progress=False)
    assert names == ["tiny/adam/tuned"]
    records = load_records(url)
    tune = [r for r in records if r.phase == "tune"]
    final = [r for r in records if r.phase == "final"]
    assert len(tune) == 4 and len(final) == 2
    assert {r.seed for r in tune} == {runner.TUNING_SEED} and sorted(r.seed for r in final) == [1, 2]
    assert all(r.test_metric is None for r in tune) and all(r.test_metric is not None for r in final)
    assert len({r.hparams["lr"] for r in tune}) == 4  # four different learning rates were tried
    best = max(tune, key=lambda r: (r.final_val_metric, -r.trial_number))
    assert all(r.hparams == best.hparams for r in final)
    assert workload.evaluated.count("test") == 2  # the final runs only: selection never saw test

    study = optuna.load_study(study_name=names[0], storage=url)
    finals = [t for t in study.trials if t.user_attrs.get("phase") == "final"]
    assert {t.user_attrs["selected_trial"] for t in finals} == {best.trial_number}
    assert all(t.intermediate_values for t in study.trials)  # trial.report at each evaluation
    info = load_study_infos(url)[names[0]]
    assert (info.protocol, info.tuning_budget, info.seeds, info.search_space["lr"]["log"]) == ("tuned", 4, [1, 2], True)


def test_paper_protocol_uses_lr_1e3_for_every_optimizer_and_only_final_runs(tmp_path):
    url = _url(tmp_path)
    names = runner.compare(
        TinyWorkload(),
        ["adadelta", "sgdm"],
        protocol="paper",
        seeds=2,
        storage=url,
        progress=False,
        hparams={"weight_decay": 1e-4},
    )
    records = load_records(url)
    assert sorted(names) == ["tiny/adadelta/paper", "tiny/sgdm/paper"]
    assert len(records) == 4 and {r.phase for r in records} == {"final"}
    assert all(r.hparams["lr"] == 1e-3 and r.hparams["weight_decay"] == 1e-4 for r in records)
    assert all(r.hparams["momentum"] == 0.9 for r in records if r.optimizer == "sgdm")
    assert all(r.test_metric is not None for r in records)


def test_rerunning_the_same_compare_trains_nothing(tmp_path, monkeypatch):
    url = _url(tmp_path)
    options = dict(protocol="tuned", budget=3, seeds=2, storage=url, progress=False)
    runner.compare(TinyWorkload(), ["adam", "sgdm"], **options)
    before = load_records(url)

    def no_training(*args, **kwargs):
        raise AssertionError("a complete study must not train again")

    monkeypatch.setattr(runner, "train", no_training)
    runner.compare(TinyWorkload(), ["adam", "sgdm"], **options)
    assert load_records(url) == before
    assert len(before) == 2 * (3 + 2)


def test_more_seeds_extend_a_study_and_a_changed_plan_is_refused(tmp_path):
    url = _url(tmp_path)
    runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=2, storage=url, progress=False)
    runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=3, storage=url, progress=False)
    assert sorted(r.seed for r in load_records(url)) == [1, 2, 3]
    assert load_study_infos(url)["tiny/adam/paper"].seeds == [1, 2, 3]
    with pytest.raises(runner.ConfigError, match="steps: stored 24, asked 12"):
        runner.compare(TinyWorkload(), ["adam"], protocol="paper", seeds=2, steps=12, storage=url, progress=False)
    runner.compare(
        TinyWorkload(), ["adam"], protocol="paper", seeds=1, steps=12, tag="short", storage=url, progress=False
    )
    assert "tiny/adam/paper/short" in load_study_infos(url)


def test_same_command_gives_the_same_numbers(tmp_path):
    results = []
    for name in ("a.db", "b.db"):
        url = _url(tmp_path, name)
        runner.compare(TinyWorkload(), ["diffgrad"], protocol="tuned", budget=3, seeds=1, storage=url, progress=False)
        results.append([_without_timings(r) for r in load_records(url)])
    assert results[0] == results[1]


def test_trials_beyond_the_plan_are_pruned_without_training(tmp_path):
    # What two workers racing for the same slot could leave behind: two final trials for seed 1 and
    # a fresh (tune) trial in a study without tuning. Only the earliest trial of a slot trains.
    url = _url(tmp_path)
    plan = runner.plan_study(TinyWorkload(), "adam", protocol="paper", seeds=2)
    storage = runner.open_storage(url)
    study = optuna.create_study(study_name=plan.name, storage=storage, direction="maximize")
    for attrs in ({"phase": "final", "seed": 1}, {"phase": "final", "seed": 1}, None):
        study.enqueue_trial({}, user_attrs=attrs)
    runner.run_study(plan, storage)
    trials = optuna.load_study(study_name=plan.name, storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED", "COMPLETE"]
    assert sorted(r.seed for r in load_records(url)) == [1, 2]


def test_study_names_are_readable_and_canonical():
    assert runner.study_name("digits-cnn", "adam", "tuned") == "digits-cnn/adam/tuned"
    options = {"depth": 18, "activation": "elu"}
    assert runner.study_name("cifar10-resnet", "diffgrad", "paper", options, "table1/bs32") == (
        "cifar10-resnet[activation=elu,depth=18]/diffgrad/paper/table1/bs32"
    )
    # an option at its default and a data location do not change the cell
    plan = runner.plan_study(TinyWorkload(), "adam", workload_options={"delay": 0.0, "data_dir": "/x"})
    assert plan.name == "tiny/adam/tuned" and plan.workload_options == {}
    plan = runner.plan_study(TinyWorkload(delay=0.5), "adam", workload_options={"delay": 0.5})
    assert plan.name == "tiny[delay=0.5]/adam/tuned"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "nope"}, "unknown optimizer 'nope'; valid names: diffgrad,"),
        ({"protocol": "best"}, "unknown protocol"),
        ({"schedule": "cosine"}, "unknown schedule"),
        ({"budget": 0}, "budget must be a positive integer"),
        ({"hparams": {"momentum": 0.9}}, "has no hyper-parameter 'momentum'"),
        ({"hparams": {"lr": -1.0}, "protocol": "paper"}, "bad hyper-parameters for 'adam': Invalid learning rate"),
        ({"hparams": {"lr": 1e-3}}, "nothing left to tune"),
    ],
)
def test_bad_plans_raise_config_errors(kwargs, message):
    kwargs = {"optimizer": "adam", **kwargs}
    with pytest.raises(runner.ConfigError, match=message):
        runner.plan_study(TinyWorkload(), kwargs.pop("optimizer"), **kwargs)


def test_bad_storage_url_is_a_config_error():
    with pytest.raises(runner.ConfigError, match="cannot open storage"):
        runner.open_storage("nosuchdialect://x")


# ------------------------------------------------------------------------------- kill & resume

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_runner import TinyWorkload
from diffgrad.lab.workloads import WORKLOADS
WORKLOADS["tiny"] = TinyWorkload
from diffgrad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _trials(storage: optuna.storages.RDBStorage) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """The training studies' trials (the ``artifacts`` study holds no trials)."""
    return {
        s.study_name: storage.get_all_trials(s._study_id)
        for s in storage.get_all_studies()
        if s.study_name != ARTIFACTS_STUDY
    }


def tiny_compare_command(url: str, *, budget: int, grace_period: int, extra: tuple[str, ...] = ()) -> list[str]:
    """A ``diffgrad compare`` of Adam on the tiny workload (tuned, 2 seeds) in a new process, with
    heartbeats every second and the given grace period, storing in ``url``."""
    return [
        sys.executable, "-c", _SCRIPT.format(tests=str(Path(__file__).parent)),
        "compare", "--workload", "tiny", "--option", "delay=0.02", "--optimizers", "adam",
        "--protocol", "tuned", "--budget", str(budget), "--seeds", "2", "--storage", url,
        "--no-report", "--quiet", *extra, "--heartbeat-interval", "1", "--grace-period", str(grace_period),
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_compare_resumes_retries_the_dead_trial_and_keeps_finished_ones(tmp_path):
    url = _url(tmp_path)
    command = tiny_compare_command(url, budget=3, grace_period=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = runner.open_storage(url)
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no COMPLETE and RUNNING trial seen in time"
        trials = [t for ts in _trials(storage).values() for t in ts]
        # kill mid-training: a trial has finished and another has reported a validation score
        running = [t for t in trials if t.state == states.RUNNING and t.intermediate_values]
        if running and any(t.state == states.COMPLETE for t in trials):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _trials(storage)
    killed = {(name, t.number) for name, ts in before.items() for t in ts if t.state == states.RUNNING}
    finished = {
        (name, t.number): (t.value, t.user_attrs)
        for name, ts in before.items()
        for t in ts
        if t.state == states.COMPLETE
    }
    assert killed and finished

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    after = _trials(storage)
    assert sorted(after) == ["tiny[delay=0.02]/adam/tuned"]
    for name, trials in after.items():
        complete = [t for t in trials if t.state == states.COMPLETE]
        phases = [(t.user_attrs["phase"], t.user_attrs["seed"]) for t in complete]
        assert sorted(phases) == [("final", 1), ("final", 2), ("tune", 0), ("tune", 0), ("tune", 0)]
        by_number = {t.number: t for t in trials}
        for study, number in killed:
            if study == name:
                assert by_number[number].state == states.FAIL
                retries = [t for t in complete if t.system_attrs.get("failed_trial") == number]
                assert len(retries) == 1 and retries[0].params == by_number[number].params
        for (study, number), (value, attrs) in finished.items():
            if study == name:
                assert (by_number[number].value, by_number[number].user_attrs) == (value, attrs)
    assert len(load_records(url)) == 3 + 2
    assert INFO_KEY in optuna.load_study(study_name="tiny[delay=0.02]/adam/tuned", storage=url).user_attrs
