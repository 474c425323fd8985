"""Coverage as data: per source file, its functions (executed, not executed, or untraceable
and why) and, on a gcov kernel, its lines and branches; which cell ran what; sums.

A *cell* is what ran the code: within a run the workload (``p2p-copy``), in a matrix
``topology@kernel:workload``.  Counts add up across cells and runs; a function is executed
when any cell ran it, and traceable when any run could trace it (a module one boot did not
load may be loaded in another).

    >>> f = FileCov("drivers/pci/p2pdma.c", {"a": FunctionCov("a", 1, 3, EXECUTED, calls=2,
    ...     cells={"p2p-copy": 2}), "b": FunctionCov("b", 5, 9, NOT_EXECUTED)})
    >>> f.counts()["functions"]
    {'executed': 1, 'traceable': 2, 'defined': 2}
    >>> f.uncovered()
    [[5, 9]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

EXECUTED, NOT_EXECUTED, UNTRACEABLE = "executed", "not-executed", "untraceable"
FUNCTION, LINE = "function", "line"  # what a coverage measured: functions (ftrace) or lines (gcov)


@dataclass
class FunctionCov:
    name: str
    start: int  # first and last line of the definition
    end: int
    status: str  # EXECUTED, NOT_EXECUTED or UNTRACEABLE
    why: str = ""  # for UNTRACEABLE: inlined or not built, notrace, module not loaded, ...
    calls: int = 0
    cells: dict[str, int] = field(default_factory=dict)  # cell -> calls

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "start": self.start, "end": self.end,
                             "status": self.status, "calls": self.calls}
        if self.why:
            d["why"] = self.why
        if self.cells:
            d["cells"] = dict(sorted(self.cells.items()))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FunctionCov":
        return cls(str(d["name"]), int(d["start"]), int(d["end"]), str(d["status"]),
                   str(d.get("why", "")), int(d.get("calls", 0)),
                   {str(k): int(v) for k, v in (d.get("cells") or {}).items()})


def ranges(numbers: Iterable[int]) -> list[list[int]]:
    """Sorted numbers as [first, last] runs.

    >>> ranges([3, 1, 2, 7, 9, 8, 12])
    [[1, 3], [7, 9], [12, 12]]
    """
    out: list[list[int]] = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def from_ranges(rs: Iterable[Iterable[int]]) -> set[int]:
    return {n for a, b in (tuple(r) for r in rs) for n in range(int(a), int(b) + 1)}


@dataclass
class FileCov:
    path: str  # relative to the source tree
    functions: dict[str, FunctionCov] = field(default_factory=dict)
    lines: dict[int, int] | None = None  # executable line -> count (gcov only)
    branches: dict[int, list[int]] | None = None  # line -> count of each branch (gcov)
    line_cells: dict[str, set[int]] = field(default_factory=dict)  # cell -> lines it ran
    note: str = ""  # e.g. "not in the running kernel: ..."

    def counts(self) -> dict[str, Any]:
        fs = self.functions.values()
        out: dict[str, Any] = {"functions": {
            "executed": sum(f.status == EXECUTED for f in fs),
            "traceable": sum(f.status != UNTRACEABLE for f in fs),
            "defined": len(self.functions)}}
        if self.lines is not None:
            out["lines"] = {"executed": sum(1 for c in self.lines.values() if c > 0),
                            "executable": len(self.lines)}
        if self.branches is not None:
            taken = [c for cs in self.branches.values() for c in cs]
            out["branches"] = {"taken": sum(1 for c in taken if c > 0), "total": len(taken)}
        return out

    def uncovered(self) -> list[list[int]]:
        """Line ranges that could have run and did not: unexecuted lines (gcov), else the
        definitions of traceable functions that did not run."""
        if self.lines is not None:
            return _uncovered_lines(self.lines)
        return [[f.start, f.end] for f in sorted(self.functions.values(), key=lambda f: f.start)
                if f.status == NOT_EXECUTED]

    def function_at(self, line: int) -> FunctionCov | None:
        for f in self.functions.values():
            if f.start <= line <= f.end:
                return f
        return None

    def to_json(self) -> dict[str, Any]:
        fs = sorted(self.functions.values(), key=lambda f: (f.start, f.name))
        d: dict[str, Any] = {"counts": self.counts(), "uncovered": self.uncovered(),
                             "executed": [f.name for f in fs if f.status == EXECUTED],
                             "not_executed": [f.name for f in fs if f.status == NOT_EXECUTED],
                             "untraceable": {f.name: f.why for f in fs if f.status == UNTRACEABLE},
                             "functions": [f.to_json() for f in fs]}
        if self.note:
            d["note"] = self.note
        if self.lines is not None:
            d["lines"] = {str(k): v for k, v in sorted(self.lines.items())}
        if self.branches is not None:
            d["branches"] = {str(k): v for k, v in sorted(self.branches.items())}
        if self.line_cells:
            d["line_cells"] = {c: ranges(ls) for c, ls in sorted(self.line_cells.items())}
        return d

    @classmethod
    def from_json(cls, path: str, d: dict[str, Any]) -> "FileCov":
        f = cls(path, {x["name"]: FunctionCov.from_json(x) for x in d.get("functions", [])},
                note=str(d.get("note", "")))
        if "lines" in d:
            f.lines = {int(k): int(v) for k, v in d["lines"].items()}
        if "branches" in d:
            f.branches = {int(k): [int(c) for c in v] for k, v in d["branches"].items()}
        f.line_cells = {c: from_ranges(rs) for c, rs in (d.get("line_cells") or {}).items()}
        return f


def _uncovered_lines(lines: dict[int, int]) -> list[list[int]]:
    """Runs of unexecuted executable lines; lines that are not executable (comments,
    declarations) between two unexecuted ones do not break a run."""
    out: list[list[int]] = []
    prev_zero = False
    for n in sorted(lines):
        if lines[n] == 0:
            if prev_zero and out:
                out[-1][1] = n
            else:
                out.append([n, n])
            prev_zero = True
        else:
            prev_zero = False
    return out


@dataclass
class Coverage:
    """One run's (or a sum's) coverage of a set of source files."""

    mode: str  # FUNCTION or LINE
    source: str  # the source tree the functions were mapped from (and how)
    kernel: str = ""  # release (a sum over kernels is never made)
    root: str = ""  # the source tree's path on the host
    files: dict[str, FileCov] = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)  # what contributed, in order
    lost: int = 0  # trace entries lost (function tracer): counts are then lower bounds
    problems: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        tot: dict[str, Any] = {}
        for f in self.files.values():
            for kind, counts in f.counts().items():
                mine = tot.setdefault(kind, {})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0) + v
        return tot

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "source": self.source, "kernel": self.kernel,
                "root": self.root,
                "cells": self.cells, "lost": self.lost, "problems": self.problems,
                "totals": self.totals(),
                "files": {p: f.to_json() for p, f in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Coverage":
        return cls(str(d["mode"]), str(d.get("source", "")), str(d.get("kernel", "")),
                   str(d.get("root", "")),
                   {p: FileCov.from_json(p, x) for p, x in d.get("files", {}).items()},
                   [str(c) for c in d.get("cells", [])], int(d.get("lost", 0)),
                   [str(p) for p in d.get("problems", [])])

    def relabel(self, prefix: str) -> "Coverage":
        """The same coverage with every cell named ``prefix`` + its name (a run's workloads
        become a matrix's ``topology@kernel:workload``)."""
        out = Coverage.from_json(self.to_json())
        out.cells = [prefix + c for c in self.cells]
        for f in out.files.values():
            for fn in f.functions.values():
                fn.cells = {prefix + c: n for c, n in fn.cells.items()}
            f.line_cells = {prefix + c: ls for c, ls in f.line_cells.items()}
        return out


def _merge_function(a: FunctionCov, b: FunctionCov) -> FunctionCov:
    rank = {EXECUTED: 0, NOT_EXECUTED: 1, UNTRACEABLE: 2}
    status = min(a.status, b.status, key=rank.__getitem__)
    why = a.why if a.status == status else b.why
    cells = dict(a.cells)
    for c, n in b.cells.items():
        cells[c] = cells.get(c, 0) + n
    return FunctionCov(a.name, a.start, a.end, status, why if status == UNTRACEABLE else "",
                       a.calls + b.calls, cells)


def union(parts: Iterable[Coverage]) -> Coverage | None:
    """The sum of several coverages of the same kernel source: counts add, a function is
    executed (or traceable) when it was in any part.  None when there is nothing."""
    parts = list(parts)
    if not parts:
        return None
    first = parts[0]
    out = Coverage(first.mode, first.source, first.kernel, first.root)
    for p in parts:
        if p.mode != first.mode:
            out.problems.append(f"a {p.mode} coverage left out of a {first.mode} sum")
            continue
        out.cells += [c for c in p.cells if c not in out.cells]
        out.lost += p.lost
        out.problems += [x for x in p.problems if x not in out.problems]
        for path, f in p.files.items():
            mine = out.files.get(path)
            if mine is None:
                out.files[path] = FileCov.from_json(path, f.to_json())
                continue
            for name, fn in f.functions.items():
                mine.functions[name] = _merge_function(mine.functions[name], fn) \
                    if name in mine.functions else FunctionCov.from_json(fn.to_json())
            if f.lines is not None:
                mine.lines = mine.lines or {}
                for n, c in f.lines.items():
                    mine.lines[n] = mine.lines.get(n, 0) + c
            if f.branches is not None:
                mine.branches = mine.branches or {}
                for n, cs in f.branches.items():
                    old = mine.branches.get(n)
                    mine.branches[n] = [x + y for x, y in zip(old, cs)] if old and \
                        len(old) == len(cs) else list(cs)
            for cell, ls in f.line_cells.items():
                mine.line_cells[cell] = mine.line_cells.get(cell, set()) | ls
            if mine.note and not f.note:
                mine.note = ""
    return out
