"""Numbers and markdown tables as text: the one formatter of tables and lines.

Used by the command line (:mod:`curvlab.cli`) and by the study tables of
:mod:`curvlab.experiments` (``*_plots`` modules), which must not import the
command line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fmt", "markdown_table"]


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format a markdown table, the first column left-aligned, the rest right.

    Args:
        header: Column titles.
        rows: Cells, as strings.

    Returns:
        The table, one line per row.

    Example:
        >>> print(markdown_table(["name", "value"], [["a", "1"]]))
        | name | value |
        |---|---:|
        | a | 1 |
    """
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
