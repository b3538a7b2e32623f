"""The results database: Optuna studies in any SQLAlchemy URL, and the record each trial carries.

The runner writes one :class:`RunRecord` per finished training run into its trial's user
attributes (key ``"record"``), and one :class:`StudyInfo` into its study's user attributes (key
``"info"``), next to every distinct :class:`~diffgrad.lab.provenance.Provenance` that trained in it
(key ``"provenance"``). Reports read only these, through :func:`load_records`, so every number in a report
can be traced back to one trial of one study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffgrad.lab.provenance import Provenance

RECORD_KEY = "record"
INFO_KEY = "info"
PROVENANCE_KEY = "provenance"  # study user attribute: every distinct Provenance that trained in it


@dataclass
class StudyInfo:
    """What one study measures: one (workload, optimizer, protocol) cell."""

    workload: str
    optimizer: str
    protocol: str  # "paper" (fixed hyper-parameters) or "tuned" (equal-budget search)
    metric_name: str
    higher_is_better: bool
    target: float
    steps: int
    batch_size: int
    eval_every: int
    workload_options: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Any] = field(default_factory=dict)
    tag: str = ""  # free label that groups studies of one experiment (e.g. "table1/bs32")
    schedule: str = "constant"  # learning-rate schedule, the same for every optimizer
    tuning_budget: int = 0  # "tune" trials of the tuned protocol (0 for "paper")
    seeds: list[int] = field(default_factory=list)  # seeds of the "final" runs
    hparams: dict[str, Any] = field(default_factory=dict)  # fixed hyper-parameters (search space on top)
    loss_scale: float = 1.0  # the factor on the differentiated loss (train.train)

    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> StudyInfo:
        """From a study's stored attribute: a field added since it was written reads as its default,
        one this version does not know is left out."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attr.items() if k in names})


@dataclass
class RunRecord:
    """One training run: its settings, learning curve and final scores."""

    study: str
    workload: str
    optimizer: str
    protocol: str
    phase: str  # "tune": scored on val for selection; "final": the chosen setting, scored on test
    trial_number: int
    seed: int
    hparams: dict[str, float]
    steps: list[int]  # evaluation points (optimizer steps taken)
    val_metric: list[float]
    val_loss: list[float]
    train_loss: list[float]  # mean training loss since the previous evaluation
    wall_time: list[float]  # seconds since the run started, at each evaluation
    final_val_metric: float
    test_metric: float | None
    test_loss: float | None
    steps_to_target: int | None
    time_to_target: float | None
    total_wall_time: float
    diverged: bool
    tag: str = ""
    workload_options: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance | None = None  # None in databases written before it was recorded
    loss_scale: float = 1.0
    friction: list[dict[str, Any]] = field(default_factory=list)  # ξ per evaluation (lab.diagnostics)

    def to_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in attr.items() if k in names}
        return cls(**{**fields, "provenance": Provenance.from_attr(fields.get("provenance"))})


def default_storage_url(out_dir: str | Path) -> str:
    """The default database: an SQLite file ``results.db`` inside the output folder."""
    path = Path(out_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'results.db'}"


def load_records(storage_url: str) -> list[RunRecord]:
    """Every finished run in the database, in study then trial order."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    records: list[RunRecord] = []
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if RECORD_KEY in trial.user_attrs:
                records.append(RunRecord.from_attr(trial.user_attrs[RECORD_KEY]))
    return records


def load_study_infos(storage_url: str) -> dict[str, StudyInfo]:
    """Each study's :class:`StudyInfo`, by study name."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    infos = {}
    for summary in optuna.get_all_study_summaries(storage):
        if INFO_KEY in summary.user_attrs:
            infos[summary.study_name] = StudyInfo.from_attr(summary.user_attrs[INFO_KEY])
    return infos


ARTIFACTS_STUDY = "artifacts"


def artifact(storage: Any, key: str, compute: Callable[[], Any]) -> Any:
    """A JSON value computed once and kept in the database under ``key``; later calls read it.

    For results that are not training runs (trajectories on analytic functions, regret curves):
    they are stored as user attributes of the study ``artifacts``, so a report can read them
    like every other number. ``storage`` is a URL or an Optuna storage.
    """
    import optuna

    study = optuna.create_study(study_name=ARTIFACTS_STUDY, storage=storage, load_if_exists=True)
    if key not in study.user_attrs:
        study.set_user_attr(key, compute())
    return study.user_attrs[key]


def load_artifacts(storage_url: str, prefix: str = "") -> dict[str, Any]:
    """The stored artifacts whose key starts with ``prefix``, by key (empty if there are none)."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name == ARTIFACTS_STUDY:
            return {k: v for k, v in sorted(summary.user_attrs.items()) if k.startswith(prefix)}
    return {}


def redact_url(storage_url: str) -> str:
    """The URL without its password, for messages and reports: they must never leak credentials."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage_url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy can parse: mask what a password would be
        return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", storage_url)


def error_line(error: BaseException, storage_url: str) -> str:
    """The first line of ``error``'s message with the URL's password masked (drivers and SQLAlchemy
    may quote the URL they were given)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    line = (str(error).splitlines() or [type(error).__name__])[0]
    try:
        password = make_url(storage_url).password
    except (ArgumentError, ValueError):  # an unparsable URL: mask its password by pattern instead
        return line.replace(storage_url, redact_url(storage_url))
    return line.replace(str(password), "***") if password else line


def check_results_database(storage_url: str, *, create: bool = False) -> None:
    """Raise ValueError unless ``storage_url`` is an Optuna results database, looking without writing.

    Optuna's storage creates its tables in whatever database it opens, so a mistyped path would
    alter an unrelated SQLite file: this check comes first. An SQLite file is opened read-only;
    another database is only inspected. With ``create``, a database that does not exist yet or has
    no tables (or only some of Optuna's, while another worker is creating them) is accepted too.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        url = make_url(storage_url)
    except (ArgumentError, ValueError) as error:
        raise ValueError(
            f"cannot read storage URL {redact_url(storage_url)!r}: {error_line(error, storage_url)}"
        ) from error
    sqlite = url.get_backend_name() == "sqlite"
    where = str(url.database or storage_url) if sqlite else redact_url(storage_url)
    try:
        tables = _sqlite_tables(url.database) if sqlite else _tables(url)
    except (SQLAlchemyError, ImportError) as error:  # no server there, wrong credentials, no driver
        raise ValueError(f"cannot open storage {where!r}: {error_line(error, storage_url)}") from error
    if tables is None:
        if not create:
            raise ValueError(f"no results database at {where}")
        return
    optuna_tables = _optuna_tables()
    foreign = sorted(tables - optuna_tables)
    if foreign:
        raise ValueError(
            f"{where} is not a results database: it holds other tables ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''})"
        )
    if not create and tables != optuna_tables:
        raise ValueError(
            f"{where} is not a results database: Optuna's tables are {'missing' if not tables else 'incomplete'}"
        )


def _optuna_tables() -> set[str]:
    # What optuna.storages.RDBStorage creates: its models' tables and alembic's version table.
    from optuna.storages._rdb.models import BaseModel

    return {*BaseModel.metadata.tables, "alembic_version"}


def _sqlite_tables(database: str | None) -> set[str] | None:
    """The tables of an SQLite file, read through a read-only connection; None if there is no file."""
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if not path.exists():
        return None
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:  # "file is not a database", unreadable, ...
        raise ValueError(f"{path} is not a results database: {error}") from error


def _tables(url: Any) -> set[str] | None:
    """The tables of a server database (inspection only, no DDL); None if it has none."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names()) or None
    finally:
        engine.dispose()
