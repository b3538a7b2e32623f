"""Many-worker sweeps: several `diffgrad compare` processes on one study share its trials.

Each test starts real worker processes running the `diffgrad compare` command line (the CLI's
``main`` with its argv, through ``test_runner._SCRIPT``, which registers the tiny synthetic
workload so a trial takes under a second), first on the SQLite default and then on a PostgreSQL
server that the session starts on loopback (installed from Debian packages when missing).

"No trial run twice" is checked from both sides: from the database (every slot of the plan is
COMPLETE exactly once, tune trials never repeat a learning rate, surplus trials are PRUNED before
any training) and from the workers (each logs every training run it starts: the runs of all
workers together are exactly the plan).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import optuna
import pytest

from diffgrad.cli import build_parser
from diffgrad.lab import runner
from diffgrad.lab.registry import OPTIMIZERS
from diffgrad.lab.runner import WORKER_KEY, open_storage
from diffgrad.lab.storage import RECORD_KEY, load_records
from diffgrad.lab.workloads import WORKLOADS
from test_runner import _SCRIPT, REPO, TinyWorkload

BUDGET, SEEDS = 6, 3
DELAY = 0.02  # seconds per training step of the tiny workload: 24 steps, under a second a trial
STUDY = f"tiny[delay={DELAY}]/adam/tuned"
START_TIMEOUT = 240  # seconds for the workers to import torch and Optuna on a busy machine
RUN_TIMEOUT = 300  # seconds for the sweep itself

# Put in front of test_runner._SCRIPT: load the heavy modules, log every training run this process
# starts, then wait for the start signal, so that the workers begin at the same moment.
_START_LINE = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_runner
import alembic.migration, optuna, sqlalchemy.orm, torch  # what opening the storage would import
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo
from diffgrad import cli
from diffgrad.lab import runner

_train = runner.train

def _logged_train(*args, **kwargs):
    with open({log!r}, "a") as file:
        file.write(json.dumps({{"pid": os.getpid(), "seed": kwargs.get("seed"), "hparams": args[2]}}) + "\\n")
    return _train(*args, **kwargs)

runner.train = _logged_train
Path({ready!r}).touch()
deadline = time.monotonic() + {timeout}
while not Path({go!r}).exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.02)
"""


def _worker_command(url: str, folder: Path, index: int) -> list[str]:
    tests = str(Path(__file__).parent)
    script = _START_LINE.format(
        tests=tests,
        log=str(folder / f"trained-{index}.jsonl"),
        ready=str(folder / f"ready-{index}"),
        go=str(folder / "go"),
        timeout=START_TIMEOUT,
    ) + _SCRIPT.format(tests=tests)
    return [
        sys.executable,
        "-c",
        script,
        "compare",
        "--workload",
        "tiny",
        "--option",
        f"delay={DELAY}",
        "--optimizers",
        "adam",
        "--protocol",
        "tuned",
        "--budget",
        str(BUDGET),
        "--seeds",
        str(SEEDS),
        "--storage",
        url,
        "--out",
        str(folder / "results"),
        "--steps",
        "24",
        "--threads",
        "1",
        "--no-report",
        "--quiet",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "60",
    ]


@contextmanager
def _processes(commands: list[list[str]], folder: Path) -> Iterator[list[subprocess.Popen]]:
    """Start ``commands``; whatever happens, none is left running afterwards."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes: list[subprocess.Popen] = []
    with ExitStack() as stack:
        try:
            for index, command in enumerate(commands):
                output = stack.enter_context((folder / f"worker-{index}.out").open("w"))
                processes.append(
                    subprocess.Popen(command, env=env, cwd=folder, stdout=output, stderr=subprocess.STDOUT)
                )
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()


def _outputs(folder: Path, workers: int) -> str:
    return "\n".join(f"--- worker {i}:\n{(folder / f'worker-{i}.out').read_text()[-3000:]}" for i in range(workers))


def _run_sweep(url: str, folder: Path, workers: int) -> dict[int, list[dict]]:
    """Run ``workers`` sweep workers on one study from the same moment; return each one's training
    runs, by pid."""
    folder.mkdir(parents=True, exist_ok=True)
    with _processes([_worker_command(url, folder, i) for i in range(workers)], folder) as processes:
        deadline = time.monotonic() + START_TIMEOUT
        while not all((folder / f"ready-{i}").exists() for i in range(workers)):
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                pytest.fail(f"a worker did not get ready to start:\n{_outputs(folder, workers)}")
            time.sleep(0.05)
        (folder / "go").touch()
        deadline = time.monotonic() + RUN_TIMEOUT
        while any(p.poll() is None for p in processes):
            if time.monotonic() > deadline:
                pytest.fail(f"the sweep did not finish in {RUN_TIMEOUT} s:\n{_outputs(folder, workers)}")
            time.sleep(0.1)
        codes = [p.returncode for p in processes]
        assert codes == [0] * workers, f"worker exit codes {codes}:\n{_outputs(folder, workers)}"
        pids = [p.pid for p in processes]
    runs: dict[int, list[dict]] = {pid: [] for pid in pids}
    for index in range(workers):
        log = folder / f"trained-{index}.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            run = json.loads(line)
            runs[run["pid"]].append(run)
    return runs


def _describe(trials: list[optuna.trial.FrozenTrial]) -> str:
    return "\n".join(
        f"#{t.number} {t.state.name} {t.user_attrs.get('phase')} seed {t.user_attrs.get('seed')} {t.params} "
        f"by {t.user_attrs.get(WORKER_KEY)}"
        for t in trials
    )


def _check_shared_without_repeats(url: str, runs: dict[int, list[dict]]) -> None:
    states = optuna.trial.TrialState
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    table = _describe(trials)
    assert {t.state for t in trials} <= {states.COMPLETE, states.PRUNED}, f"failed or unfinished trials:\n{table}"

    complete = [t for t in trials if t.state == states.COMPLETE]
    tune = [t for t in complete if t.user_attrs["phase"] == "tune"]
    finals = [t for t in complete if t.user_attrs["phase"] == "final"]
    # every slot of the plan is COMPLETE exactly once ...
    assert len(tune) == BUDGET and len(complete) == BUDGET + SEEDS, table
    assert sorted(t.user_attrs["seed"] for t in finals) == list(range(1, SEEDS + 1)), table
    # ... no tune trial repeats another's setting (the same lr and seed would be the same run) ...
    assert len({t.params["lr"] for t in tune}) == BUDGET, table
    # ... the finals rerun the best setting by validation ...
    best = max(tune, key=lambda t: (t.value, -t.number))
    assert all(t.params == best.params for t in finals), table
    # ... and what the plan did not need was pruned before it trained.
    for trial in trials:
        trained = RECORD_KEY in trial.user_attrs or bool(trial.intermediate_values)
        assert trained == (trial.state == states.COMPLETE), table

    # The workers' own logs: every training run started is one COMPLETE trial; none ran twice.
    started = [(run["seed"], run["hparams"]["lr"]) for pid_runs in runs.values() for run in pid_runs]
    expected = [(t.user_attrs["seed"], t.params["lr"]) for t in complete]
    assert Counter(started) == Counter(expected), f"runs started {started}\n{table}"

    # Both (all) workers did part of the work, and the trials say which.
    assert all(runs.values()), f"a worker trained nothing: { {pid: len(r) for pid, r in runs.items()} }\n{table}"
    host = socket.gethostname()
    assert {t.user_attrs[WORKER_KEY] for t in complete} == {f"{host}:{pid}" for pid in runs}, table
    for trial in complete:
        pid = int(trial.user_attrs[WORKER_KEY].rsplit(":", 1)[1])
        assert (trial.user_attrs["seed"], trial.params["lr"]) in [(r["seed"], r["hparams"]["lr"]) for r in runs[pid]]


@pytest.mark.slow
def test_workers_on_one_sqlite_file_share_the_study_without_running_a_trial_twice(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    runs = _run_sweep(url, tmp_path / "sweep", workers=2)
    _check_shared_without_repeats(url, runs)


# ------------------------------------------------------------------------------------ PostgreSQL


def _postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: _version(p.parent.parent.name))
    return found[-1].parent if found else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _tail(result: subprocess.CompletedProcess | str) -> str:
    text = result if isinstance(result, str) else f"{result.stdout or ''}{result.stderr or ''}"
    return " | ".join(text.strip().splitlines()[-5:])


def _install_postgres() -> Path:
    """The bin folder of a PostgreSQL server, installed with apt-get if there is none."""
    found = _postgres_binaries()
    if found:
        return found
    what = "PostgreSQL server not found (no initdb under /usr/lib/postgresql/*/bin)"
    if shutil.which("apt-get") is None:
        pytest.skip(f"{what}, and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.skip(f"{what}, and not running as root to `apt-get install postgresql`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:  # a fresh image has no package lists yet
            update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.skip(
                    f"{what}, and it cannot be installed: `apt-get update` said: {_tail(update)}; "
                    f"`{' '.join(install)}` said: {_tail(result)}"
                )
    except subprocess.TimeoutExpired as error:
        pytest.skip(f"{what}, and `{' '.join(error.cmd)}` did not finish in {error.timeout} s")
    found = _postgres_binaries()
    if not found:
        pytest.skip(f"{what}, not even after `{' '.join(install)}` succeeded")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[tuple[Path, int]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, user ``postgres``), for
    the session; yields (bin folder, port). Skips, saying what failed, only if no server can be
    installed or started."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is missing (pip install -e '.[lab]')")
    binaries = _install_postgres()
    # The server refuses to run as root: run it as the `postgres` user the package creates.
    as_user: dict = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    base = Path(tempfile.mkdtemp(prefix="diffgrad-pg-"))  # short: the socket path must fit 107 bytes
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    data, log = base / "data", base / "server.log"

    def run(*command: str, **options) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(binaries / command[0]), *command[1:]],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=120,
            **as_user,
            **options,
        )

    started = False
    try:
        result = run(
            "initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        if result.returncode != 0:
            pytest.skip(f"cannot create a PostgreSQL cluster with {binaries / 'initdb'}: {_tail(result)}")
        for _ in range(3):  # another process may take the free port before the server does
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off "
                f"-c synchronous_commit=off"
            )
            # The server keeps no pipe of ours open: its output goes to the log (-l).
            result = run(
                "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
                stdin=subprocess.DEVNULL,
            )
            started = result.returncode == 0
            if started:
                break
        if not started:
            server_log = log.read_text() if log.exists() else ""
            pytest.skip(f"cannot start PostgreSQL ({binaries / 'pg_ctl'}): {_tail(result)}; log: {_tail(server_log)}")
        yield binaries, port
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", stdin=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A new, empty database on the session's server, as an SQLAlchemy URL."""
    binaries, port = postgres_server
    name = re.sub(r"\W", "_", f"diffgrad_{request.node.name[:40].lower()}_{os.getpid()}")
    result = subprocess.run(
        [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


@pytest.mark.slow
def test_workers_on_one_postgresql_database_share_the_study_without_running_a_trial_twice(postgres_url, tmp_path):
    # The same command as on one host, on a fresh database: the workers also race to create its tables.
    runs = _run_sweep(postgres_url, tmp_path / "sweep", workers=2)
    _check_shared_without_repeats(postgres_url, runs)
    # What `diffgrad report --storage URL` reads, from any host: every run, once.
    records = load_records(postgres_url)
    assert (
        sorted((r.phase, r.seed) for r in records)
        == [("final", s) for s in range(1, SEEDS + 1)] + [("tune", 0)] * BUDGET
    )


def _in_threads(fn: Callable[[], object], count: int) -> None:
    """Run ``fn`` in ``count`` threads at once; fail with their errors, or if one hangs."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RUN_TIMEOUT)
    assert not errors and not any(thread.is_alive() for thread in threads), errors


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_waiting_trial_is_claimed_by_one_worker_only(backend, tmp_path, request):
    # What the final runs rely on: Optuna claims a WAITING trial by reading its state and setting it
    # RUNNING. On SQLite that was not atomic (two connections could claim the same trial) until
    # open_storage began each transaction with BEGIN IMMEDIATE; PostgreSQL locks the row.
    url = f"sqlite:///{tmp_path / 'claims.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    queued = 60
    study = optuna.create_study(study_name="claims", storage=open_storage(url))
    for _ in range(queued):
        study.enqueue_trial({"x": 0.0})
    claimed: list[int] = []

    def claim() -> None:
        worker = optuna.load_study(study_name="claims", storage=open_storage(url))  # its own connections
        while (number := worker.ask().number) < queued:  # past the queue, ask creates new trials
            claimed.append(number)

    _in_threads(claim, 3)
    repeated = sorted(number for number, count in Counter(claimed).items() if count > 1)
    assert not repeated, f"trials claimed more than once: {repeated}"
    assert sorted(claimed) == list(range(queued))


def test_workers_that_look_at_the_study_together_try_different_settings(tmp_path, monkeypatch):
    # Two workers (threads here) whose first look at the study comes at the same moment see the
    # same trial count; the sampler used to be seeded by it, so both tried the same learning rate.
    url = f"sqlite:///{tmp_path / 'results.db'}"
    together = threading.Barrier(2, timeout=RUN_TIMEOUT)
    first_look = threading.local()
    fail_stale = runner._fail_stale  # called just before each look at the study's trials

    def look_together(study: optuna.Study) -> None:
        if not getattr(first_look, "done", False):
            first_look.done = True
            together.wait()
        fail_stale(study)

    monkeypatch.setattr(runner, "_fail_stale", look_together)

    def work() -> None:
        plan = runner.plan_study(TinyWorkload(), "adam", budget=4, seeds=1)
        runner.run_study(plan, open_storage(url, heartbeat_interval=1))

    _in_threads(work, 2)
    trials = optuna.load_study(study_name="tiny/adam/tuned", storage=url).get_trials(deepcopy=False)
    tune = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["phase"] == "tune"]
    assert len(tune) == 4 and len({t.params["lr"] for t in tune}) == 4, _describe(trials)


# ------------------------------------------------------------------------------------------- docs


def test_the_commands_in_the_sweeps_page_are_real():
    page = (REPO / "docs" / "sweeps.md").read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", page, re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():  # continuation lines joined
            line = line.strip().removesuffix("&").strip()
            if line.startswith("diffgrad "):
                commands.append(shlex.split(line))
    assert {command[1] for command in commands} == {"compare", "report"}
    parser = build_parser()
    for command in commands:
        try:
            args = parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"the CLI rejects {shlex.join(command)!r}")
        if command[1] == "compare":
            assert args.workload in WORKLOADS and set(args.optimizers) <= set(OPTIMIZERS), command
        if args.storage:  # the URL names an installed driver
            assert args.storage.startswith("postgresql://"), args.storage
    # every flag its text mentions is one of `diffgrad compare` or `diffgrad report`
    known = {option for name in ("compare", "report") for option in _options(parser, name)}
    text = re.sub(r"```.*?```", "", page, flags=re.DOTALL)
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text)) <= known


def _options(parser, name: str) -> list[str]:  # noqa: ANN001
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return [option for action in subparsers.choices[name]._actions for option in action.option_strings]
