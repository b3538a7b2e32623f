"""Which code and which machine produced a run: stored with every run, printed by every report.

A number in a report is only as good as what it can be traced back to. Besides its study and trial
(see :mod:`diffgrad.lab.storage`), each run records the package version, the git commit of the
checkout it ran from (and whether that tree had uncommitted changes), the torch and Python
versions, the device with its CPU or GPU model, and torch's thread count. Runs of one study made
under different package, commit or torch versions are not strictly comparable; the runner warns
when that happens and reports say so.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

GIT_TIMEOUT = 5.0  # seconds per git call; a slow or hung git must not hold up training


@dataclass(frozen=True)
class Provenance:
    """The software and hardware one run was made with."""

    package_version: str
    git_commit: str | None  # None when the package was not run from a git checkout
    git_dirty: bool | None  # uncommitted changes to tracked files in that checkout
    torch_version: str
    python_version: str
    device: str  # as given to the runner: "cpu", "cuda:0", ...
    device_model: str  # the CPU or GPU model name ("unknown" when it cannot be read)
    threads: int  # torch.get_num_threads() during the run

    @property
    def versions(self) -> tuple[str, str | None, str]:
        """What must agree for runs to be compared as made by the same code: package, commit, torch."""
        return self.package_version, self.git_commit, self.torch_version

    def code(self) -> str:
        """``diffgrad 0.1.0, commit 1a2b3c4d5e6f (dirty), torch 2.13.0``: the :attr:`versions` in words."""
        commit = "no git checkout" if self.git_commit is None else f"commit {self.git_commit[:12]}"
        if self.git_dirty:
            commit += " (dirty)"
        return f"diffgrad {self.package_version}, {commit}, torch {self.torch_version}"

    def describe(self) -> str:
        """One line: :meth:`code`, then Python, device and model, and threads."""
        return (
            f"{self.code()}, Python {self.python_version}, {self.device} ({self.device_model}), "
            f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        )

    @overload
    @classmethod
    def from_attr(cls, attr: dict[str, Any]) -> Provenance: ...

    @overload
    @classmethod
    def from_attr(cls, attr: None) -> None: ...

    @classmethod
    def from_attr(cls, attr: dict[str, Any] | None) -> Provenance | None:
        """The provenance stored as a dict (``None`` stays ``None``: runs stored before it was recorded)."""
        return None if attr is None else cls(**attr)


def current_provenance(device: str) -> Provenance:
    """This process's provenance for a run on ``device`` (git and model names are read once per process)."""
    import torch

    import diffgrad

    commit, dirty = _git_state()
    return Provenance(
        package_version=diffgrad.__version__,
        git_commit=commit,
        git_dirty=dirty,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        device=device,
        device_model=_device_model(device),
        threads=torch.get_num_threads(),
    )


@functools.cache
def _git_state() -> tuple[str | None, bool | None]:
    """HEAD and dirtiness of the checkout the package is imported from; ``(None, None)`` otherwise."""
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT
        ).stdout.strip()

    try:
        # An installed copy can sit inside some other repository (a virtualenv in a project folder):
        # only a checkout whose top level holds the package is this package's checkout.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent:
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, timeout
        return None, None


@functools.cache
def _device_model(device: str) -> str:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return _cpu_model()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or "unknown"
