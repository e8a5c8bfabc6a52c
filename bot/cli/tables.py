"""Readable tables for a terminal: columns padded to their widest cell, numbers right."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["table"]


def _numeric(cell: str) -> bool:
    return bool(cell) and cell.lstrip("$-").replace(",", "").replace(".", "", 1).isdigit()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, gap: str = "  ") -> str:
    """``headers`` over ``rows``; a cell that reads as a number (or money) is right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right = [
        all(_numeric(r[i]) for r in cells if r[i]) and bool(cells) for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        out = [c.rjust(widths[i]) if right[i] else c.ljust(widths[i]) for i, c in enumerate(row)]
        return gap.join(out).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *map(line, cells)])
