"""The coverage section of report.html: a table per file and the source with its lines
coloured (executed, not executed, not measured), read from the source tree.

In function mode a line takes its function's colour; with gcov each executable line has
its own count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .model import EXECUTED, NOT_EXECUTED, Coverage, FileCov

MAX_LINES = 20000  # a file longer than this is summarised, not shown


@dataclass
class Line:
    number: int
    text: str
    css: str  # "hit", "miss", "untraced" or ""
    note: str = ""  # count or function status


@dataclass
class FileView:
    path: str
    counts: dict
    note: str
    lines: list[Line] = field(default_factory=list)
    missing: str = ""  # why there is no source to show


def _function_lines(f: FileCov) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for fn in f.functions.values():
        css = {EXECUTED: "hit", NOT_EXECUTED: "miss"}.get(fn.status, "untraced")
        note = (f"{fn.name}: {fn.calls} call(s)" if fn.status == EXECUTED else
                f"{fn.name}: not executed" if fn.status == NOT_EXECUTED else
                f"{fn.name}: {fn.why}")
        for n in range(fn.start, fn.end + 1):
            out.setdefault(n, (css, note if n == fn.start else ""))
    return out


def file_views(cov: Coverage) -> list[FileView]:
    views = []
    for path, f in sorted(cov.files.items()):
        v = FileView(path, f.counts(), f.note)
        src = Path(cov.root) / path if cov.root else None
        try:
            text = src.read_text(errors="replace").splitlines() if src else None
        except OSError:
            text = None
        if text is None:
            v.missing = f"the source ({src}) is not readable here"
        elif len(text) > MAX_LINES:
            v.missing = f"{len(text)} lines: too long to show"
        else:
            marks = _function_lines(f)
            for n, t in enumerate(text, 1):
                if f.lines is not None:
                    c = f.lines.get(n)
                    css = "" if c is None else ("hit" if c > 0 else "miss")
                    note = "" if c is None else str(c)
                    if c is None and marks.get(n, ("", ""))[0] == "untraced":
                        css = "untraced"
                else:
                    css, note = marks.get(n, ("", ""))
                v.lines.append(Line(n, t, css, note))
        views.append(v)
    return views
