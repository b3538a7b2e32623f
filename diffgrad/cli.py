"""The ``diffgrad`` command: list what the lab has, run comparisons, render reports.

Each subcommand is registered by one ``_add_<name>`` function that builds its parser and sets its
handler; handlers import torch, Optuna and the lab lazily so that ``diffgrad --help`` stays fast.
Problems with the input (unknown names, bad options, missing data, an unusable storage URL or output
folder, a file that is not a results database) end with exit code 2 and one ``diffgrad: error: ...``
line, before any training. No output shows a database password, and ``report`` never writes to the
database it reads.
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "diffgrad"
USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the command line; reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) so scripts can show them as they are."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{PROG}: error: {message}\n")


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as a Python literal (1e-3, 50, True, (0.9, 0.99)) or else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key.strip(), value


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, e.g. diffgrad,adam")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text!r}")
    return value


def _storage_url(args: argparse.Namespace) -> str:
    from diffgrad.lab.storage import default_storage_url

    return args.storage or default_storage_url(args.out)


def _shown(url: str) -> str:
    """``url`` as printed: without its password."""
    from diffgrad.lab.storage import redact_url

    return redact_url(url)


def _output_folder(out: str) -> None:
    """Create the output folder now, so that an unusable one fails before any work, in one line."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a path through a file, a read-only place
        raise UsageError(f"cannot create the output folder {out!r}: {error.strerror or error}") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to the output folder {out!r}")


# ----------------------------------------------------------------------------------------- list


def _add_list(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list", help="list workloads and optimizers", description="List the workloads and optimizers of the lab."
    )
    parser.set_defaults(handler=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    import inspect

    from diffgrad.lab.registry import list_optimizers, unavailable_note
    from diffgrad.lab.workloads import WORKLOADS, workload_options

    print("Workloads (diffgrad compare --workload NAME [--option KEY=VALUE ...]):")
    for name, cls in WORKLOADS.items():
        budget = cls.default_budget
        direction = "higher" if cls.higher_is_better else "lower"
        options = ", ".join(
            key if default is inspect.Parameter.empty else f"{key}={default}"
            for key, default in workload_options(name).items()
        )
        print(f"  {name:<16} {cls.description}")
        print(
            f"  {'':<16} metric {cls.metric_name} ({direction} is better), target {cls.target}; "
            f"budget {budget.steps} steps x batch {budget.batch_size}, eval every {budget.eval_every}"
            + (f"; options: {options}" if options else "")
        )
    print()
    print("Optimizers (diffgrad compare --optimizers A,B,...):")
    for spec in list_optimizers(include_unavailable=True):
        mark = "" if spec.available else f"  [unavailable: needs {spec.requires}]"
        lr = spec.search_space.get("lr")
        space = f" (tuned lr in [{lr.low:g}, {lr.high:g}])" if lr else ""
        print(f"  {spec.name:<20} {spec.description}{space}{mark}")
    note = unavailable_note()
    if note:
        print(f"\nnote: {note}")
    return 0


# -------------------------------------------------------------------------------------- compare


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare optimizers on one workload under a protocol",
        description=(
            "Train every optimizer on one workload under a protocol and store each run in an Optuna "
            "database, then write a report. Re-running the same command trains only what is missing "
            "(also after a crash or kill); several processes may share one database."
        ),
    )
    parser.add_argument("--workload", required=True, help="workload name (see `diffgrad list`)")
    parser.add_argument(
        "--optimizers",
        required=True,
        type=_names,
        metavar="A,B,...",
        help="comma-separated optimizer names (see `diffgrad list`)",
    )
    parser.add_argument(
        "--protocol",
        choices=("paper", "tuned"),
        default="tuned",
        help="paper: lr 1e-3 and defaults for all, no tuning (the paper's protocol); tuned: BUDGET "
        "trials per optimizer search its learning rate on the validation split, then the best setting "
        "is rerun with SEEDS seeds and scored on test (default: %(default)s)",
    )
    parser.add_argument(
        "--budget",
        type=_positive,
        default=20,
        help="tuning trials per optimizer, protocol tuned only (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=_positive, default=5, help="final runs per optimizer, seeds 1..SEEDS (default: %(default)s)"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy database URL, e.g. sqlite:///results.db or postgresql://user@host/db "
        "(default: OUT/results.db)",
    )
    parser.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="output folder for the report and default database (default: %(default)s)",
    )
    parser.add_argument("--steps", type=_positive, help="training steps per run (default: the workload's budget)")
    parser.add_argument("--batch-size", type=_positive, help="batch size (default: the workload's budget)")
    parser.add_argument(
        "--eval-every",
        type=_positive,
        metavar="N",
        help="evaluate on the validation split every N steps and at the end (default: the workload's budget)",
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "step"),
        default="constant",
        help="learning-rate schedule, the same for every optimizer: constant, or step (x0.1 at 80%% of "
        "the steps, as in the paper) (default: %(default)s)",
    )
    parser.add_argument(
        "--option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="workload option, repeatable (e.g. activation=elu, data_dir=~/data/cifar; see `diffgrad list`)",
    )
    parser.add_argument(
        "--hparam",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="hyper-parameter for every optimizer, repeatable (e.g. weight_decay=5e-4); fixed, so "
        "taken out of the tuned search space",
    )
    parser.add_argument(
        "--tag", default="", help="label grouping the studies of one experiment; a new tag starts new studies"
    )
    parser.add_argument(
        "--loss-scale",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="multiply the training loss (so every gradient) by S; Adam's steps do not depend on it, "
        "diffGrad's friction does (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="torch CPU threads (default: torch's choice); fix it to get identical numbers on other machines",
    )
    parser.add_argument("--no-report", action="store_true", help="only train; do not write the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive,
        metavar="S",
        help="seconds between heartbeats of a running trial (default: 10)",
    )
    parser.add_argument(
        "--grace-period",
        type=_positive,
        metavar="S",
        help="a RUNNING trial without heartbeat for S seconds is considered dead (its process was killed) "
        "and is retried by the next run of this command (default: 60)",
    )
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from diffgrad.lab import runner

    _configure_logging(quiet=args.quiet)
    _set_threads(args.threads)
    if not args.no_report:
        _output_folder(args.out)  # before training, not after it
    given = {"heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period}
    try:
        studies = runner.compare(
            args.workload,
            args.optimizers,
            protocol=args.protocol,
            budget=args.budget,
            seeds=args.seeds,
            storage=args.storage,
            out_dir=args.out,
            workload_options=dict(args.option),
            hparams=dict(args.hparam),
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            schedule=args.schedule,
            tag=args.tag,
            loss_scale=args.loss_scale,
            device=args.device,
            progress=not args.quiet,
            **{key: value for key, value in given.items() if value is not None},
        )
    except runner.ConfigError as error:
        raise UsageError(str(error)) from error
    url = _storage_url(args)
    print(f"studies: {', '.join(studies)}")
    print(f"database: {_shown(url)}")
    if not args.no_report:
        title = f"{args.workload}: {', '.join(args.optimizers)} ({args.protocol})"
        _render(url, args.out, title=title, tag=args.tag or None)
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _render(url: str, out: str, *, title: str | None, tag: str | None) -> None:
    from diffgrad.lab.report import render_report

    options = {"title": title} if title else {}
    print(f"report: {render_report(url, out, tag=tag, **options)}")


# --------------------------------------------------------------------------------------- report


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the report of a results database",
        description="Write report.md, report.html and plots from a results database (reads it only).",
    )
    parser.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="folder to write the report to; its results.db is the default database (default: %(default)s)",
    )
    parser.add_argument("--storage", metavar="URL", help="SQLAlchemy database URL (default: OUT/results.db)")
    parser.add_argument("--tag", help="only the studies with this tag")
    parser.add_argument("--title", help="report title")
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    url = args.storage
    if url is None:
        database = Path(args.out) / "results.db"
        if not database.is_file():
            raise UsageError(f"no results database at {database}; run `diffgrad compare` or pass --storage")
        url = _storage_url(args)
    from diffgrad.lab.storage import check_results_database, load_study_infos

    try:
        check_results_database(url)  # read-only: opening a foreign file with Optuna would add its tables
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.tag is not None:
        tags = sorted({info.tag for info in load_study_infos(url).values()})
        if args.tag not in tags:
            raise UsageError(
                f"no studies with tag {args.tag!r} in {_shown(url)}; tags there: {', '.join(map(repr, tags)) or 'none'}"
            )
    _output_folder(args.out)
    _render(url, args.out, title=args.title, tag=args.tag)
    return 0


# ------------------------------------------------------------------------------------ reproduce


def _add_reproduce(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="rerun the paper's experiments and write one report",
        description=(
            "Rerun the diffGrad paper's experiments (1-D functions, regret, Tables I-III) with the friction ξ they "
            "applied, a fair tuned comparison, a tuned comparison of the diffGrad family (rectified, AdaNorm, "
            "AdaInject, cautious, centralised), the sensitivity to the loss scale and the scale-free friction, and "
            "write report.md/report.html with plots, summary.md, and a verdict generated from the numbers. "
            "Every training run is stored in the database; re-running resumes and never recomputes a finished run."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small budgets, one stand-in workload, fewer seeds: every section in about 1.5 minutes "
        "on 2 CPU cores (noted in the report)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with CIFAR-10/100 in the python-pickle layout (cifar-10-batches-py, "
        "cifar-100-python): Tables I-III then run the real ResNet-50 protocol instead of offline "
        "stand-ins (needs a GPU in practice)",
    )
    parser.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="output folder for the report, plots and default database (default: %(default)s)",
    )
    parser.add_argument("--storage", metavar="URL", help="SQLAlchemy database URL (default: OUT/results.db)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="torch CPU threads (default: 1, fastest for the small offline workloads and the "
        "same numbers on every machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    parser.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from diffgrad.lab.reproduce import reproduce
    from diffgrad.lab.runner import ConfigError

    _configure_logging(quiet=args.quiet)
    _set_threads(args.threads or 1)
    try:
        report = reproduce(
            quick=args.quick,
            data_dir=args.data_dir,
            out_dir=args.out,
            storage=args.storage,
            device=args.device,
            progress=not args.quiet,
        )
    except ConfigError as error:
        raise UsageError(str(error)) from error
    print(f"database: {_shown(args.storage or _storage_url(args))}")
    print(f"report: {report} (and {report.with_suffix('.html')})")
    return 0


# ---------------------------------------------------------------------------------------------- wire


def _add_wire(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "wire",
        help="measure data-parallel diffGrad's communication: 1-bit compression and robust aggregation",
        description=(
            "With gloo ranks on this machine: bytes each rank sends per step (fp32 all-reduce, 1-bit momentum, "
            "robust all_gather), convergence of exact vs 1-bit diffGrad (both readings of the friction after the "
            "freeze) vs 1-bit and exact Adam over seeds, and accuracy with faulty ranks under the mean vs a robust "
            "aggregator; writes wire.md (verdicts generated from the numbers) and wire.json. See docs/communication.md."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="150 steps and 3 seeds (1.5 minutes on 2 shared CPU cores; default: 400 steps, 4 seeds, 5 minutes)",
    )
    parser.add_argument("--ranks", type=_positive, default=4, metavar="N", help="gloo ranks (default: %(default)s)")
    parser.add_argument("--seeds", type=_positive, metavar="N", help="number of seeds (default: 4, quick: 3)")
    parser.add_argument("--workload", default="mnist1d-mlp", help="lab workload (default: %(default)s)")
    parser.add_argument(
        "--out", default="results", metavar="DIR", help="output folder for wire.md (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.set_defaults(handler=_run_wire)


def _run_wire(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from diffgrad.lab.wire import QUICK, WireSettings, run_wire
    from diffgrad.lab.workloads import WORKLOADS

    if args.workload not in WORKLOADS:
        raise UsageError(f"unknown workload {args.workload!r}; valid names: {', '.join(WORKLOADS)}")
    settings = replace(QUICK if args.quick else WireSettings(), workload=args.workload, world_size=args.ranks)
    if args.seeds is not None:
        settings = replace(settings, seeds=tuple(range(args.seeds)))
    try:
        settings.check()
    except ValueError as error:
        raise UsageError(str(error)) from error
    _output_folder(args.out)
    print(f"report: {run_wire(settings, args.out, progress=not args.quiet)}")
    return 0


# ----------------------------------------------------------------------------------------- main

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_list,
    _add_compare,
    _add_report,
    _add_reproduce,
    _add_wire,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``diffgrad`` parser; each entry of :data:`SUBCOMMANDS` adds one subcommand."""
    parser = _Parser(
        prog=PROG,
        description="diffGrad evidence lab: compare optimizers on small workloads under fair protocols.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffgrad`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _configure_logging(*, quiet: bool) -> None:
    import optuna

    # Optuna logs every trial at INFO; the progress bar says the same more briefly.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logger = logging.getLogger(PROG)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
