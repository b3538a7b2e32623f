"""Progress when stderr is not a terminal: one log line per finished run, not a silent bar."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The real command in a fresh process, with the tests' tiny workload registered as "tiny"; its
# stderr is a pipe, as when a long command's output is redirected to a log file.
SCRIPT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from test_runner import TinyWorkload
from diffgrad import cli
from diffgrad.lab.workloads import WORKLOADS
WORKLOADS["tiny"] = TinyWorkload
sys.exit(cli.main(sys.argv[1:]))
"""

LINE = re.compile(
    r"^diffgrad: run (\d+)/(\d+): (tiny/\S+ #\d+ (?:tune|final) seed \d+): val \S+ \(\d+\.\d s\)$", re.MULTILINE
)


def _compare(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
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
        "1",
        "--steps",
        "8",
        "--threads",
        "1",
        "--no-report",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow  # two short subprocesses, mostly imports
def test_a_redirected_run_logs_one_line_per_finished_run(tmp_path):
    err = _compare(tmp_path).stderr
    lines = LINE.findall(err)
    assert [(int(n), int(total)) for n, total, _ in lines] == [(n, 6) for n in range(1, 7)], err
    labels = [label for _, _, label in lines]
    assert sum(label.startswith("tiny/adam/tuned #") for label in labels) == 3
    assert sum(" final seed 1" in label for label in labels) == 2
    assert "\r" not in err  # no bar redraws in a log

    # --quiet: no run lines (here for the one final run per study that --seeds 2 adds).
    assert not LINE.search(_compare(tmp_path, "--quiet", "--seeds", "2").stderr)
