"""Numbers, markdown tables and pages as text: the one formatter of tables and lines.

Used by the command line (:mod:`curvlab.cli`) and by the study tables and the
demo's report of :mod:`curvlab.experiments`, which must not import the command
line.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

__all__ = ["fmt", "markdown_table", "markdown_to_html"]


def fmt(
    value: float | None,
    digits: int = 4,
    *,
    decimals: bool = False,
    missing: str = "-",
    readable: bool = False,
) -> str:
    """A number in a table or a line: ``digits`` significant digits, ``-`` if absent.

    Args:
        value: The number, or ``None``.
        digits: Significant digits (decimal places with ``decimals``).
        decimals: Write ``digits`` decimal places instead of significant digits.
        missing: The text for ``None`` (and for NaN with ``readable``).
        readable: For ratios and errors read by people: NaN as ``missing``, an
            infinity as ``∞``, zero as ``0``, and magnitudes of at least 100 as
            whole numbers with thousands separators.

    Returns:
        The text.

    Example:
        >>> fmt(3.14159), fmt(None), fmt(2.5e-7, 3)
        ('3.142', '-', '2.5e-07')
        >>> fmt(0.5, decimals=True), fmt(None, missing="—")
        ('0.5000', '—')
        >>> [fmt(v, 3, missing="—", readable=True) for v in (1234.5, 0.0, 0.12345)]
        ['1,234', '0', '0.123']
    """
    if value is None:
        return missing
    if readable:
        if math.isnan(value):
            return missing
        if math.isinf(value):
            return "∞"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
    return f"{value:.{digits}{'f' if decimals else 'g'}}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, aligned: bool = True
) -> str:
    """Format a markdown table, the first column left-aligned, the rest right.

    Args:
        header: Column titles.
        rows: Cells, as strings.
        aligned: Mark the alignment (``|---|---:|``); ``False`` for plain
            ``|---|---|`` (the renderer's default alignment).

    Returns:
        The table, one line per row.

    Example:
        >>> print(markdown_table(["name", "value"], [["a", "1"]]))
        | name | value |
        |---|---:|
        | a | 1 |
        >>> print(markdown_table(["name", "value"], [], aligned=False))
        | name | value |
        |---|---|
    """
    align = ["---"] + ["---:" if aligned else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
    "line-height:1.45}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
    "img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"
)


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        f"<code>{html.escape(part[1:-1])}</code>"
        if len(part) >= 2 and part[0] == part[-1] == "`"
        else re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part))
        for part in parts
    )


def _cells(line: str, tag: str) -> str:
    cells = line.strip().strip("|").split("|")
    return "".join(f"<{tag}>{_inline(c.strip())}</{tag}>" for c in cells)


def _block(lines: list[str]) -> str:
    heading = re.match(r"^(#{1,6})\s+(.*)$", lines[0])
    image = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", lines[0])
    if heading and len(lines) == 1:
        level = len(heading.group(1))
        return f"<h{level}>{_inline(heading.group(2))}</h{level}>"
    if image and len(lines) == 1:
        alt, src = map(html.escape, image.groups())
        return f'<p><img src="{src}" alt="{alt}"></p>'
    separator = len(lines) > 1 and re.match(r"^\|(\s*:?-+:?\s*\|)+$", lines[1].strip())
    if lines[0].startswith("|") and separator:
        rows = "\n".join(f"<tr>{_cells(line, 'td')}</tr>" for line in lines[2:])
        return (
            f"<table>\n<thead><tr>{_cells(lines[0], 'th')}</tr></thead>\n<tbody>\n"
            f"{rows}\n</tbody>\n</table>"
        )
    if all(line.startswith("- ") for line in lines):
        return (
            "<ul>\n" + "".join(f"<li>{_inline(i[2:])}</li>\n" for i in lines) + "</ul>"
        )
    return f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>"


def markdown_to_html(text: str, *, title: str = "report") -> str:
    r"""Convert a subset of Markdown into a standalone HTML page.

    Supports ``#``-headings, paragraphs, ``- `` bullet lists, pipe tables (a
    header row, a ``|---|`` row, body rows), images alone on a line
    (``![alt](src)``), ``code`` and ``**bold**``. Everything else is escaped
    text.

    Args:
        text: The Markdown.
        title: The page title.

    Returns:
        The HTML page.

    Example:
        >>> page = markdown_to_html("# T\n\n| a |\n|---|\n| 1 |\n")
        >>> "<h1>T</h1>" in page, "<td>1</td>" in page
        (True, True)
    """
    blocks = [b.strip().splitlines() for b in re.split(r"\n\s*\n", text.strip())]
    body = "\n".join(_block(lines) for lines in blocks if lines)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
