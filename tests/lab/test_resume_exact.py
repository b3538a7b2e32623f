"""A tuned comparison killed mid-run and resumed trains exactly what an uninterrupted one trains."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest

from diffgrad.lab import runner
from test_runner import REPO, _trials, tiny_compare_command

GRACE_PERIOD = 2  # seconds; the heartbeat comes every second
STATES = optuna.trial.TrialState


def _command(url: str) -> list[str]:
    # Budget 4 samples two trials at random and two with TPE, so both kinds of draw are resumed.
    return tiny_compare_command(url, budget=4, grace_period=GRACE_PERIOD, extra=("--threads", "1"))


def _outcome(url: str) -> tuple[list, list]:
    """(params, value) of the COMPLETE tune trials in order, and (seed, params, value) of the finals."""
    (trials,) = _trials(runner.open_storage(url)).values()
    complete = [t for t in sorted(trials, key=lambda t: t.number) if t.state == STATES.COMPLETE]
    tune = [(t.params, t.value) for t in complete if t.user_attrs["phase"] == "tune"]
    finals = sorted((t.user_attrs["seed"], t.params, t.value) for t in complete if t.user_attrs["phase"] == "final")
    return tune, finals


@pytest.mark.slow  # ~20 s: three processes that each import torch and Optuna
def test_a_killed_and_resumed_study_trains_what_an_uninterrupted_one_trains(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    whole_url, killed_url = f"sqlite:///{tmp_path / 'whole.db'}", f"sqlite:///{tmp_path / 'killed.db'}"
    whole = subprocess.Popen(_command(whole_url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = subprocess.Popen(_command(killed_url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = runner.open_storage(killed_url)
    deadline = time.monotonic() + 120
    while True:  # kill while the second tune trial trains, after it has reported a validation score
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the second tune trial was not seen running in time"
        trials = [t for ts in _trials(storage).values() for t in ts]
        if any(t.number == 1 and t.state == STATES.RUNNING and t.intermediate_values for t in trials):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(GRACE_PERIOD + 0.5)  # the killed trial's last heartbeat is now past the grace period

    resumed = subprocess.run(_command(killed_url), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=300) == 0, whole.communicate()

    (trials,) = _trials(storage).values()
    failed = [t for t in trials if t.state == STATES.FAIL]
    assert [t.number for t in failed] == [1]
    assert [t.system_attrs.get("failed_trial") for t in trials if t.state == STATES.COMPLETE].count(1) == 1
    tune, finals = _outcome(killed_url)
    assert len(tune) == 4 and len(finals) == 2
    assert (tune, finals) == _outcome(whole_url)
