"""The ``diffgrad`` command line: help, list, compare/report end to end, and one-line usage errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from diffgrad import cli
from diffgrad.lab import report, runner
from diffgrad.lab.registry import OPTIMIZERS
from diffgrad.lab.storage import load_records
from diffgrad.lab.workloads import WORKLOADS
from test_runner import TinyWorkload, _one_thread  # noqa: F401  (the tiny workload and its fixture)

REPO = Path(__file__).resolve().parents[2]
DIGITS = ["compare", "--workload", "digits-cnn", "--optimizers", "adam"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse exits by itself (--help, parse errors)
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def test_top_level_help_is_fast_and_lists_the_commands():
    code = (
        "import sys\n"
        "from diffgrad.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('optuna', 'sqlalchemy', 'matplotlib', 'diffgrad.lab.runner') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout
    for command in ("list", "compare", "report"):
        assert command in done.stdout


@pytest.mark.parametrize("command", ["compare", "report", "list"])
def test_help_explains_every_option(command):
    parser = _subcommand(command)
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
    if command == "compare":  # defaults stated in help but applied by the runner
        assert f"(default: {runner.DEFAULT_HEARTBEAT_INTERVAL})" in text
        assert f"(default: {runner.DEFAULT_GRACE_PERIOD})" in " ".join(text.split())


def test_list_shows_workloads_and_optimizers(capsys):
    code, out, err = _run(["list"], capsys)
    assert code == 0 and not err
    for name, cls in WORKLOADS.items():
        assert name in out and cls.description in out
    for name, spec in OPTIMIZERS.items():
        assert f"  {name} " in out and spec.description in out
    digits = WORKLOADS["digits-cnn"]
    budget = digits.default_budget
    assert (
        f"metric accuracy (higher is better), target {digits.target}; budget {budget.steps} steps x batch "
        f"{budget.batch_size}, eval every {budget.eval_every}; options: activation=relu"
    ) in out
    assert "unavailable" not in out  # pytorch_optimizer is installed here


@pytest.mark.slow  # 9–24 s measured on a busy 2-core machine (report rendering dominates)
def test_compare_then_report_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(WORKLOADS, "tiny", TinyWorkload)
    rendered = []

    def fake_render(url, out, *, title, tag=None):  # the real renderer runs once, for `report` below
        rendered.append((url, out, title, tag))
        return Path(out) / "report.md"

    monkeypatch.setattr(report, "render_report", fake_render)
    out_dir = tmp_path / "out"
    url = f"sqlite:///{out_dir.resolve() / 'results.db'}"
    argv = [
        "compare",
        "--workload",
        "tiny",
        "--optimizers",
        "adam,diffgrad",
        "--protocol",
        "tuned",
        "--budget",
        "2",
        "--seeds",
        "2",
        "--steps",
        "16",
        "--schedule",
        "step",
        "--out",
        str(out_dir),
        "--quiet",
        "--threads",
        "1",
        "--tag",
        "smoke",
        "--loss-scale",
        "100",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "studies: tiny[loss_scale=100]/adam/tuned/smoke, tiny[loss_scale=100]/diffgrad/tuned/smoke" in out
    assert f"database: {url}" in out and f"report: {out_dir / 'report.md'}" in out
    assert rendered == [(url, str(out_dir), "tiny: adam, diffgrad (tuned)", "smoke")]
    records = load_records(url)
    assert len(records) == 2 * (2 + 2) and {r.steps[-1] for r in records} == {16}

    code, out, err = _run([*argv, "--no-report"], capsys)  # nothing left to train
    assert code == 0 and "report:" not in out and len(rendered) == 1
    assert load_records(url) == records

    monkeypatch.undo()
    code, out, err = _run(["report", "--out", str(out_dir), "--title", "again", "--tag", "smoke"], capsys)
    assert code == 0, err
    assert (out_dir / "report.md").read_text().startswith("# again")
    summary = (out_dir / "summary.md").read_text()
    assert "## Headline numbers" in summary and "adam (tuned, loss ×100)" in summary and "commit" in summary
    assert f"report: {out_dir / 'report.md'}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--workload", "nope", "--optimizers", "adam"], "unknown workload 'nope'"),
        (["compare", "--workload", "digits-cnn", "--optimizers", "adamm"], "unknown optimizer 'adamm'; valid names:"),
        ([*DIGITS, "--option", "activation"], "expected KEY=VALUE"),
        ([*DIGITS, "--option", "colour=red"], "has no option 'colour'"),
        ([*DIGITS, "--hparam", "momentum=0.9"], "no hyper-parameter"),
        (
            ["compare", "--workload", "cifar10-resnet", "--optimizers", "adam", "--option", "data_dir=/no/such/dir"],
            "no cifar10 data",
        ),
        ([*DIGITS, "--storage", "nosuchdialect://x"], "cannot open storage"),
        ([*DIGITS, "--device", "nosuchdevice"], "not usable"),
        ([*DIGITS, "--budget", "0"], "positive integer"),
        ([*DIGITS, "--loss-scale", "0"], "expected a positive, finite number, got '0'"),
        ([*DIGITS, "--loss-scale", "inf"], "expected a positive, finite number, got 'inf'"),
        (["compare", "--optimizers", "adam"], "required: --workload"),
        (["frobnicate"], "invalid choice"),
        (["report", "--out", "/no/such/dir"], "no results database"),
        ([*DIGITS, "--out", "/proc/no-such-folder"], "cannot create the output folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out must not litter the repository
    code, _out, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("diffgrad: error: ") and message in err, err
    assert "Traceback" not in err
