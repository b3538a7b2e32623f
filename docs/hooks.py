"""MkDocs hook: the package's docstrings use reStructuredText roles (:func:`name`, :class:`~a.b.C`)
and ``::`` before literal blocks; on the rendered pages, show the name as code without the role."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub(_name, html).replace("::</p>", ":</p>")
