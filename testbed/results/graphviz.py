"""Graphviz's ``dot``, run on DOT text: the one place the drawing leaves Python.

``dot`` comes from Debian's ``graphviz`` package (scripts/setup-host.sh installs it);
without it, :func:`to_svg` raises :class:`ToolMissing` naming the package.

    >>> svg = to_svg('digraph g { a -> b }')    # doctest: +SKIP
    >>> svg.lstrip().startswith("<svg")          # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
import subprocess

from ..errors import DotFailed
from ..util.procs import find_tool

PACKAGE = "graphviz"
TIMEOUT = 60.0


def to_svg(dot_text: str, timeout: float = TIMEOUT) -> str:
    """The SVG document ``dot -Tsvg`` makes of ``dot_text``, without its XML prologue and
    DOCTYPE (so it can stand alone as a file or sit inline in an HTML page)."""
    dot = find_tool("dot", PACKAGE)
    try:
        proc = subprocess.run([dot, "-Tsvg"], input=dot_text, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DotFailed(f"dot did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0 or "<svg" not in proc.stdout:
        raise DotFailed(f"dot failed (exit status {proc.returncode}): "
                        f"{proc.stderr.strip()[-500:]}", proc.stderr)
    return strip_prologue(proc.stdout)


def strip_prologue(svg: str) -> str:
    """The ``<svg>`` element and what follows, without ``<?xml ...?>``, DOCTYPE or comments
    before it.

    >>> strip_prologue('<?xml version="1.0"?>\\n<!DOCTYPE svg>\\n<!-- x -->\\n<svg></svg>\\n')
    '<svg></svg>\\n'
    """
    match = re.search(r"<svg\b", svg)
    return svg[match.start():] if match else svg
