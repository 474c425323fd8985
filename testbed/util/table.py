"""Plain-text tables for terminals: columns padded to their widest cell.

    >>> print(format_table([("NAME", "STATE"), ("a", "running"), ("bb", "-")]))
    NAME  STATE
    a     running
    bb    -
"""

from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[Sequence[str]], gap: str = "  ") -> str:
    if not rows:
        return ""
    n = max(len(r) for r in rows)
    rows = [list(r) + [""] * (n - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    return "\n".join(gap.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
