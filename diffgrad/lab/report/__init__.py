"""Reports from a results database: Markdown + self-contained HTML + PNG figures.

:func:`render_report` writes the standard report. Other commands compose their own from the
pieces: load :class:`Results`, call the section builders (or build :class:`Section` objects by
hand, e.g. with :func:`format_table` and figures from :mod:`diffgrad.lab.report.plots`), and write
them with :class:`Document`. Reports only read what the runner stored; they never re-run training.
"""

from __future__ import annotations

from pathlib import Path

from .document import Document, Image, Section, format_table, markdown_to_html
from .sections import (
    Cell,
    Problem,
    Results,
    build_sections,
    headline_sections,
    learning_curve_sections,
    lr_sensitivity_sections,
    overview_sections,
    performance_profile_sections,
    provenance_sections,
    provenance_summary,
    summary_sections,
    target_sections,
    trajectory_sections,
)

DEFAULT_TITLE = "diffGrad evidence lab report"
PLOTS_DIR = "plots"


def render_report(storage_url: str, out_dir: str | Path, *, title: str = DEFAULT_TITLE, tag: str | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``summary.md`` and ``plots/*.png`` into ``out_dir``.

    ``tag`` restricts the report to the studies of one experiment. Returns the Markdown path.
    """
    out = Path(out_dir)
    results = Results.load(storage_url, tag=tag)
    sections = build_sections(results, out / PLOTS_DIR, storage_url=storage_url)
    return Document(title, sections, summary=headline_sections(results)).write(out)


__all__ = [
    "DEFAULT_TITLE",
    "PLOTS_DIR",
    "Cell",
    "Document",
    "Image",
    "Problem",
    "Results",
    "Section",
    "build_sections",
    "format_table",
    "headline_sections",
    "learning_curve_sections",
    "lr_sensitivity_sections",
    "markdown_to_html",
    "overview_sections",
    "performance_profile_sections",
    "provenance_sections",
    "provenance_summary",
    "render_report",
    "summary_sections",
    "target_sections",
    "trajectory_sections",
]
