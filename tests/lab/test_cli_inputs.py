"""What the ``diffgrad`` command does with bad input: one ``diffgrad: error:`` line, exit code 2,
no traceback, no password printed, and the files it was pointed at left byte-for-byte as they were."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from diffgrad import cli
from diffgrad.lab import runner
from diffgrad.lab.storage import INFO_KEY, StudyInfo

REPO = Path(__file__).resolve().parents[2]
SECRET_URL = "postgresql://user:secret@127.0.0.1:1/db"  # nothing listens on port 1
DIGITS = ["compare", "--workload", "digits-cnn", "--optimizers", "adam", "--quiet"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert err.startswith("diffgrad: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "secret" not in err, err
    for text in expected:
        assert text in err, err


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _random_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 16)
    return path


def _other_sqlite(path: Path) -> Path:
    """An SQLite database of some other program, with a table of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('keep me')")
    return path


def _results_db(path: Path, tag: str) -> str:
    """A results database with one study tagged ``tag`` (no runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=runner.open_storage(url), study_name=f"tiny/adam/tuned/{tag}")
    info = StudyInfo(
        workload="tiny",
        optimizer="adam",
        protocol="tuned",
        metric_name="accuracy",
        higher_is_better=True,
        target=0.9,
        steps=8,
        batch_size=4,
        eval_every=4,
        tag=tag,
    )
    study.set_user_attr(INFO_KEY, dataclasses.asdict(info))
    return url


@pytest.mark.parametrize("make", [_random_bytes, _other_sqlite], ids=["random-bytes", "other-sqlite"])
@pytest.mark.parametrize("how", ["report --out", "report --storage", "compare --out", "compare --storage"])
def test_a_file_that_is_not_a_results_database_is_refused_and_left_as_it_was(make, how, tmp_path, capsys):
    command, option = how.split()
    database = make(tmp_path / "out" / "results.db")
    before = _digests(tmp_path)
    where = str(tmp_path / "out") if option == "--out" else f"sqlite:///{database}"
    argv = ["report", option, where] if command == "report" else [*DIGITS, option, where, "--no-report"]
    code, _out, err = _run(argv, capsys)
    _assert_one_line_error(code, err, str(database), "is not a results database")
    assert _digests(tmp_path) == before


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (SECRET_URL, "cannot open storage 'postgresql://user:***@127.0.0.1:1/db'"),
        ("postgresql://user:secret@127.0.0.1:notaport/db", "cannot read storage URL"),
        ("notadb://x", "cannot open storage 'notadb://x'"),
        ("sqlite:////nonexistent/dir/x.db", "'sqlite:////nonexistent/dir/x.db'"),
    ],
)
@pytest.mark.parametrize("command", ["compare", "report"])
def test_an_unusable_storage_url_is_named_without_its_password(command, url, message, tmp_path, capsys):
    if command == "report" and url.startswith("sqlite"):
        message = "no results database at /nonexistent/dir/x.db"
    argv = [*DIGITS, "--no-report"] if command == "compare" else ["report"]
    code, out, err = _run([*argv, "--storage", url, "--out", str(tmp_path / "out")], capsys)
    _assert_one_line_error(code, err, message)
    assert not out


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize("out", ["a-file", "a-file/sub"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(command, out, tmp_path, capsys, monkeypatch):
    # Tests run as root, which writes through any mode bits: a path through a regular file is what
    # cannot be made for everyone.
    (tmp_path / "a-file").write_text("not a folder")
    url = _results_db(tmp_path / "results.db", tag="")
    before = _digests(tmp_path)
    monkeypatch.setattr(runner, "compare", lambda *a, **k: pytest.fail("trained before checking --out"))
    argv = [*DIGITS] if command == "compare" else ["report"]
    code, _, err = _run([*argv, "--storage", url, "--out", str(tmp_path / out)], capsys)
    _assert_one_line_error(code, err, f"cannot create the output folder {str(tmp_path / out)!r}")
    assert _digests(tmp_path) == before


def test_report_of_a_tag_without_studies_names_the_tags_there(tmp_path, capsys):
    url = _results_db(tmp_path / "results.db", tag="smoke")
    before = _digests(tmp_path)
    code, _out, err = _run(["report", "--storage", url, "--tag", "nope", "--out", str(tmp_path / "out")], capsys)
    _assert_one_line_error(code, err, "no studies with tag 'nope'", "tags there: 'smoke'")
    assert _digests(tmp_path) == before and not (tmp_path / "out").exists()


def test_report_reads_a_results_database_without_writing_to_it(tmp_path, capsys, monkeypatch):
    url = _results_db(tmp_path / "db" / "results.db", tag="smoke")
    before = _digests(tmp_path / "db")
    monkeypatch.setattr("diffgrad.lab.report.render_report", lambda url, out, **kw: Path(out) / "report.md")
    code, _out, err = _run(["report", "--storage", url, "--tag", "smoke", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert _digests(tmp_path / "db") == before


def test_compare_prints_the_database_without_its_password(capsys, monkeypatch):
    monkeypatch.setattr(runner, "compare", lambda *a, **k: ["digits-cnn/adam/tuned"])
    code, out, err = _run([*DIGITS, "--storage", SECRET_URL, "--no-report"], capsys)
    assert code == 0, err
    assert "database: postgresql://user:***@127.0.0.1:1/db" in out and "secret" not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        [*DIGITS, "--storage", SECRET_URL, "--no-report"],
        ["report", "--storage", "sqlite:///{tmp}/random.db"],
    ],
)
def test_the_console_command_exits_2_with_one_line_and_no_traceback(argv, tmp_path):
    _random_bytes(tmp_path / "random.db")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    done = subprocess.run(
        [sys.executable, "-m", "diffgrad.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    _assert_one_line_error(done.returncode, done.stderr)
    assert "secret" not in done.stdout
