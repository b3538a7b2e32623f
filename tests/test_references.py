"""Every file that the repository's text refers to is in the repository.

Scans the tracked text files (``git ls-files``) for references that look like repository paths:

- relative Markdown links and images, ``[text](path)`` (in ``.md`` files);
- tokens, backticked or bare, ending in a source or document extension (``.md``, ``.py``, ``.sh``,
  ``.cpp``, ...) that contain a ``/`` (``docs/paper.md``, ``csrc/fused_step.cpp``) or are named
  like a top-level document (``README.md``, ``CHANGELOG.md``, ``CITATION.cff``, any all-capitals
  ``NAME.md``).

Each reference must resolve to a tracked file, relative to the file that makes it or to the
repository root. URLs (with or without scheme), absolute paths and template paths (``$OUT/...``, ``{out}/...``) are not
repository paths and are skipped; bare names such as ``step.py`` or dotted module names are too
ambiguous to check. References to sections of the paper notes (``docs/paper.md §N``) must name a
section that exists.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".py", ".md", ".toml", ".cff", ".sh", ".yaml", ".yml")

# Paths the tools write, not files of the repository: `diffgrad reproduce --out results/quick`
# writes results/quick/report.md, which the README describes.
OUTPUT_PREFIXES = ("results/",)

# Top-level files named without a folder; any all-capitals NAME.md / NAME.cff / NAME.txt counts too.
# This file, whose examples below refer to missing files on purpose.
SELF = "tests/test_references.py"

TOP_LEVEL_NAMES = {"README.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml"}
_TOP_LEVEL_LIKE = re.compile(r"[A-Z][A-Z0-9_-]*\.(?:md|cff|txt)")

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s)\]>\"'`]*")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A path-like token: not preceded by a character that would make it the tail of a longer path, a
# URL, a home or template path, or a dotted name; not followed by more path characters.
_TOKEN = re.compile(
    r"(?<![\w./{}$~\\-])"
    r"((?:\.\.?/)*[\w-][\w.-]*(?:/[\w.-]+)*\.(?:md|py|sh|cpp|h|toml|cff|yaml|yml|txt))"
    r"(?![\w/-])"
)
# A first segment with a dot (github.com/..., www.example.org/...) is a host of a URL without scheme.
_HOST = re.compile(r"[\w-]+(?:\.[\w-]+)+/")
_PAPER_SECTION = re.compile(r"docs/paper\.md,? §(\d+)")


def references(text: str, markdown: bool) -> list[str]:
    """The repository-path references in ``text`` (Markdown links only when ``markdown``)."""
    refs: list[str] = []
    if markdown:
        for m in _LINK.finditer(text):
            target = m.group(1)
            if _URL.match(target) or target.startswith(("#", "mailto:", "/")):
                continue
            target = target.split("#", 1)[0].split("?", 1)[0]
            if target:
                refs.append(target)
    for m in _TOKEN.finditer(_URL.sub(" ", text)):
        token = m.group(1)
        if _HOST.match(token):
            continue
        if "/" in token or token in TOP_LEVEL_NAMES or _TOP_LEVEL_LIKE.fullmatch(token):
            refs.append(token)
    return refs


def resolves(ref: str, source: str, tracked: set[str]) -> bool:
    """Whether ``ref``, made in the file ``source``, names a tracked file or folder."""
    if ref.startswith(OUTPUT_PREFIXES):
        return True
    bases = (str(PurePosixPath(source).parent), ".")
    for base in bases:
        path = os.path.normpath(os.path.join(base, ref)).replace(os.sep, "/")
        if path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked):
            return True
    return False


def missing_references(source: str, text: str, tracked: set[str]) -> list[str]:
    return [ref for ref in references(text, source.endswith(".md")) if not resolves(ref, source, tracked)]


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.split("\0") if p]


def test_every_referenced_file_exists() -> None:
    tracked = set(_tracked())
    problems = []
    for source in sorted(tracked - {SELF}):
        if not source.endswith(TEXT_SUFFIXES) or not (ROOT / source).is_file():
            continue
        text = (ROOT / source).read_text(encoding="utf-8")
        for ref in missing_references(source, text, tracked):
            line = text.count("\n", 0, text.find(ref)) + 1
            problems.append(f"{source}:{line}: {ref}")
    assert not problems, "references to files that are not in the repository:\n" + "\n".join(problems)


def test_paper_note_sections_exist() -> None:
    notes = (ROOT / "docs" / "paper.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## §(\d+) ", notes, re.MULTILINE))
    problems = []
    for source in _tracked():
        if source == SELF or not source.endswith(TEXT_SUFFIXES) or not (ROOT / source).is_file():
            continue
        text = (ROOT / source).read_text(encoding="utf-8")
        for m in _PAPER_SECTION.finditer(text):
            if m.group(1) not in sections:
                problems.append(f"{source}:{text.count(chr(10), 0, m.start()) + 1}: §{m.group(1)}")
    assert not problems, f"sections missing from docs/paper.md (it has {sorted(sections, key=int)}):\n" + "\n".join(
        problems
    )


TRACKED = {
    "README.md",
    "docs/paper.md",
    "docs/sweeps.md",
    "diffgrad/optim/fused.py",
    "diffgrad/optim/csrc/fused_step.cpp",
}


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("README.md", "See [the notes](docs/missing.md)."),
        ("README.md", "![plot](docs/images/none.png)"),
        ("docs/sweeps.md", "as in [scaling](scaling.md#ddp)"),
        ("diffgrad/lab/runner.py", "# see HISTORY.md §6"),
        ("diffgrad/lab/runner.py", '"""Protocols (``docs/notes.md`` §7)."""'),
        ("README.md", "the kernel (`csrc/fused_step.cpp`)"),
        ("tests/test_x.py", "# CHANGELOG.md lists it"),
        ("scripts/run.sh", "python benchmarks/none.py"),
    ],
)
def test_a_missing_file_is_reported(source: str, text: str) -> None:
    assert missing_references(source, text, TRACKED)


@pytest.mark.parametrize(
    ("source", "text"),
    [
        (
            "README.md",
            "[notes](docs/paper.md#5-the-1-d-functions) and [top](#use) and [site](https://example.org/a.md)",
        ),
        ("docs/sweeps.md", "see [the README](../README.md) and `../docs/paper.md`"),
        (
            "diffgrad/optim/fused.py",
            '_SOURCE = Path(__file__).with_name("csrc") / "fused_step.cpp"  # csrc/fused_step.cpp',
        ),
        ("README.md", "github.com/shivram1987/diffGrad/blob/master/diffGrad.py and https://x.org/y/z.py"),
        ("README.md", "import diffgrad.optim.fused; `diffgrad.py` and `step.py`; torch.optim.Adam"),
        ("README.md", "writes `results/quick/report.md`"),
        ("diffgrad/cli.py", 'f"{out}/report.md", "$OUT/plots/a.md", "/tmp/x/y.py", "~/.cache/z.py"'),
    ],
)
def test_no_false_positive(source: str, text: str) -> None:
    assert missing_references(source, text, TRACKED) == []
