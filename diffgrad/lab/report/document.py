"""A report as a list of sections, written as Markdown and as a self-contained HTML page.

The HTML comes from a small converter for exactly the Markdown this package emits (headings,
paragraphs, pipe tables, images, bullet lists, code spans, bold, italic), so reports need no Markdown
library and the two files always show the same content.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"
SUMMARY_NAME = "summary.md"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3, h4 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; font-size: 0.9em; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
"""


@dataclass(frozen=True)
class Image:
    """A PNG shown under a section; ``path`` is where the file was written (absolute, or relative
    to the current directory, as the plotting functions return it)."""

    path: Path
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """A heading, a Markdown body in the supported subset, and figures shown after the body.

    ``level`` is the heading level (2 for a top-level section under the report title).
    """

    title: str
    markdown: str = ""
    images: Sequence[Image] = ()
    level: int = 2


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown pipe table; ``align`` holds one of ``l``/``r``/``c`` per column (default left).

    Cells are converted with ``str``; pipes in cells are escaped so they cannot split a column.
    """
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    align = align.ljust(len(headers), "l")

    def row(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [row(headers), "|" + "|".join(marks[a] for a in align) + "|"]
    lines += [row(r) for r in rows]
    return "\n".join(lines)


def image_markdown(path: str, caption: str = "") -> str:
    """The Markdown line for an image at ``path`` (relative to the report folder)."""
    return f"![{caption}]({path})"


_CODE = re.compile(r"`([^`]*)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"\*([^*\s][^*]*)\*")
_IMAGE = re.compile(r"^!\[(.*)\]\(([^)\s]+)\)$")  # greedy alt: captions may hold brackets
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _inline(text: str) -> str:
    """Code spans (verbatim), bold and italic; everything else HTML-escaped."""
    out = []
    for i, part in enumerate(_CODE.split(text)):
        if i % 2:
            out.append(f"<code>{html.escape(part, quote=False)}</code>")
        else:
            bold = _BOLD.sub(r"<strong>\1</strong>", html.escape(part, quote=False))
            out.append(_ITALIC.sub(r"<em>\1</em>", bold))
    return "".join(out)


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(inner)]


def _table_html(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    styles = []
    for spec in _cells(lines[1]):
        if spec.startswith(":") and spec.endswith(":"):
            styles.append(' style="text-align:center"')
        elif spec.endswith(":"):
            styles.append(' style="text-align:right"')
        else:
            styles.append("")
    head = "".join(f"<th{s}>{_inline(c)}</th>" for c, s in zip(header, styles))
    body = "\n".join("<tr>" + "".join(f"<td{s}>{_inline(c)}</td>" for c, s in zip(r, styles)) + "</tr>" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def markdown_to_html(text: str) -> str:
    """HTML for the Markdown subset this package writes.

    Blocks: ``#`` headings, paragraphs, pipe tables (header + separator row), ``- `` bullet lists
    and images alone on a line; inline: code spans, ``**bold**`` and ``*italic*``.
    """
    blocks: list[str] = []
    paragraph: list[str] = []
    lines = text.splitlines()
    i = 0

    def flush() -> None:
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
        elif heading := _HEADING.match(stripped):
            flush()
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif image := _IMAGE.match(stripped):
            flush()
            alt, src = html.escape(image.group(1)), html.escape(image.group(2))
            caption = f"<figcaption>{alt}</figcaption>" if alt else ""
            blocks.append(f'<figure><img src="{src}" alt="{alt}">{caption}</figure>')
            i += 1
        elif stripped.startswith("|"):
            flush()
            start = i
            while i < len(lines) and lines[i].strip().startswith("|"):
                i += 1
            blocks.append(_table_html([line.strip() for line in lines[start:i]]))
        elif stripped.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            blocks.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            paragraph.append(stripped)
            i += 1
    flush()
    return "\n".join(blocks)


@dataclass
class Document:
    """Sections in order under a title; :meth:`write` produces ``report.md`` and ``report.html``, and
    ``summary.md`` from the ``summary`` sections (short, without figures: what a README quotes)."""

    title: str
    sections: list[Section] = field(default_factory=list)
    summary: Sequence[Section] = ()

    def extend(self, sections: Sequence[Section]) -> Document:
        """Append ``sections`` in order; returns ``self`` for chaining."""
        self.sections.extend(sections)
        return self

    def markdown(self, out_dir: str | Path, sections: Sequence[Section] | None = None) -> str:
        """The whole report (or ``sections`` under its title) as Markdown, with image paths relative
        to ``out_dir``."""
        root = Path(out_dir).resolve()
        parts = [f"# {self.title}"]
        for section in self.sections if sections is None else sections:
            parts.append(f"{'#' * section.level} {section.title}")
            if section.markdown.strip():
                parts.append(section.markdown.strip())
            for image in section.images:
                target = Path(image.path).resolve()
                parts.append(image_markdown(Path(os.path.relpath(target, root)).as_posix(), image.caption))
        return "\n\n".join(parts) + "\n"

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.md``, ``report.html`` (and ``summary.md``) into ``out_dir``; returns the
        report's Markdown path."""
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        text = self.markdown(root)
        page = (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{markdown_to_html(text)}\n</body>\n</html>\n"
        )
        (root / HTML_NAME).write_text(page, encoding="utf-8")
        md_path = root / MARKDOWN_NAME
        md_path.write_text(text, encoding="utf-8")
        if self.summary:
            (root / SUMMARY_NAME).write_text(self.markdown(root, self.summary), encoding="utf-8")
        return md_path
