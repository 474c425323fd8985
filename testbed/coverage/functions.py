"""Function coverage on any kernel: the functions the source files define (ctags, or the
build's DWARF), traced in the guest by ftrace's function tracer (``p2pdma-guest coverage``),
counted per cell.

    plan = plan_functions(source, ["p2p"])      # host only: checked before anything boots
    tracer = FunctionTracer(guest, plan)
    tracer.start()                              # which functions can be traced; tracing on
    tracer.checkpoint("p2p-copy")               # the calls since the last checkpoint
    tracer.stop()                               # tracing off
    coverage = tracer.coverage(release)         # Coverage

A function the guest cannot trace is reported with the reason (not in the kernel: inlined
or not built; ``notrace``; its file's module not loaded; an ambiguous name), never as
"not executed".  Lost trace entries are counted (the ring buffer's per-CPU overrun and
dropped-event counters, and trace_pipe's LOST markers): counts are then lower bounds and
the coverage says so.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from typing import Any

from ..errors import TestbedError
from ..guest.protocol import GuestLike
from ..guest.tool import GUEST_TOOL
from .ctags import Definition, definitions
from .dwarf import DwarfInfo, dwarf_functions
from .model import EXECUTED, FUNCTION, NOT_EXECUTED, UNTRACEABLE, Coverage, FileCov, FunctionCov
from .selection import select_files
from .source import SourceTree

log = logging.getLogger(__name__)

SETUP_TIMEOUT = 300.0  # reading the kernel's symbol lists takes seconds under a loaded TCG
READ_TIMEOUT = 120.0
WHY = {
    "absent": "not in the running kernel: inlined, or not built with this configuration",
    "notrace": "in the kernel but not traceable (notrace, noinstr or __init)",
    "ambiguous": "several functions have this name and none is clearly this file's",
    "refused": "ftrace refused to trace it",
    "not-loaded": "its file's code is not in the running kernel (a module that is not "
                  "loaded, or not built)",
}


@dataclass
class FunctionPlan:
    """What to trace: the files and the functions each defines (host side, pure data)."""

    source: SourceTree
    files: list[str]
    defs: dict[str, list[Definition]]
    notes: list[str] = field(default_factory=list)
    dwarf: dict[str, DwarfInfo] = field(default_factory=dict)  # file -> what DWARF says

    def request(self) -> dict[str, Any]:
        """The guest's ``coverage setup`` input."""
        files: dict[str, list[dict[str, Any]]] = {}
        text = None
        for path in self.files:
            info = self.dwarf.get(path)
            entries = []
            for d in self.defs[path]:
                where = info.functions.get(d.name) if info else None
                entries.append({"name": d.name, "module": info.module if info else None,
                                "addr": where.addr if where else None})
            files[path] = entries
            if info and info.text is not None:
                text = info.text
        return {"files": files, "text": text}


def plan_functions(source: SourceTree, requests: tuple[str, ...]) -> FunctionPlan:
    files, notes = select_files(source.root, requests)
    defs = {f: definitions(source.root, f) for f in files}
    dwarf: dict[str, DwarfInfo] = {}
    if source.vmlinux is not None:
        try:
            dwarf = dwarf_functions(source.vmlinux, files, source.build)
        except TestbedError as exc:
            notes.append(f"DWARF not used: {exc}")
    return FunctionPlan(source, files, defs, notes, dwarf)


class FunctionTracer:
    """One guest's function coverage, from ``start`` to ``stop``."""

    def __init__(self, guest: GuestLike, plan: FunctionPlan):
        self.guest = guest
        self.plan = plan
        self.setup: dict[str, Any] = {}
        self.calls: dict[str, dict[str, dict[str, int]]] = {}  # file -> function -> cell -> n
        self.traced: dict[str, set[str]] = {}
        self.cells: list[str] = []
        self.lost = 0
        self.problems: list[str] = []
        self.active = False

    def _tool(self, action: str, timeout: float, stdin: bytes | None = None
              ) -> dict[str, Any] | None:
        res = self.guest.run(shlex.join([GUEST_TOOL, "coverage", action]), timeout=timeout,
                             stdin=stdin)
        try:
            doc = json.loads(res.stdout) if res.stdout.strip() else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.problems.append(f"coverage {action}: {res.describe()[:300]}")
            return None
        return doc

    def start(self) -> None:
        """Trace the plan's functions from now on (after a restart: again)."""
        doc = self._tool("setup", SETUP_TIMEOUT, json.dumps(self.plan.request()).encode())
        if doc is None:
            return
        self.problems += [p for p in doc.get("problems", []) if p not in self.problems]
        if not self.setup:
            self.setup = doc
        for path, f in (doc.get("files") or {}).items():
            self.traced.setdefault(path, set()).update(f.get("traced", {}))
        self.active = bool(doc.get("ok"))
        log.info("coverage: %d function(s) of %d file(s) traced (%.1f s in the guest)",
                 sum(len(v) for v in self.traced.values()), len(self.plan.files),
                 float(doc.get("seconds") or 0))

    def checkpoint(self, cell: str) -> None:
        """Count the calls since the last checkpoint for ``cell``."""
        if not self.active:
            return
        doc = self._tool("read", READ_TIMEOUT)
        if doc is None:
            return
        if not doc.get("ok"):
            self.problems.append(f"coverage read after {cell}: {doc.get('why')}")
            self.active = False
            return
        if cell not in self.cells:
            self.cells.append(cell)
        for path, funcs in (doc.get("calls") or {}).items():
            per_file = self.calls.setdefault(path, {})
            for name, n in funcs.items():
                per_cell = per_file.setdefault(name, {})
                per_cell[cell] = per_cell.get(cell, 0) + int(n)
        for path, funcs in (doc.get("newly_traced") or {}).items():
            self.traced.setdefault(path, set()).update(funcs)
        self.lost += int(doc.get("lost") or 0)

    def suspend(self, cell: str) -> None:
        """Before the guest restarts: count what ran so far (the trace dies with it)."""
        self.checkpoint(cell)
        self.active = False

    def stop(self) -> None:
        """Tracing off (after a last read)."""
        if self.active:
            self.active = False
            self._tool("teardown", READ_TIMEOUT)

    def coverage(self, release: str | None = None) -> Coverage:
        """The Coverage of what was counted so far."""
        cov = Coverage(FUNCTION, self.plan.source.describe(), release or "",
                       str(self.plan.source.root), cells=list(self.cells), lost=self.lost,
                       problems=list(self.plan.notes) + self.problems)
        note = self.plan.source.check_release(release)
        if note:
            cov.problems.append(note)
        if self.lost:
            cov.problems.append(f"{self.lost} trace entries were lost: call counts are lower "
                                "bounds and a function shown as not executed may have run")
        files = (self.setup.get("files") or {})
        for path in self.plan.files:
            guest = files.get(path, {})
            untraced = guest.get("untraced", {})
            traced = self.traced.get(path, set())
            info = self.plan.dwarf.get(path)
            in_kernel = bool(traced) or "notrace" in untraced.values()
            fc = FileCov(path)
            if self.setup and not in_kernel:
                fc.note = WHY["not-loaded"] + (f" (module {info.module})" if info and
                                               info.module else "")
            for d in self.plan.defs[path]:
                cells = self.calls.get(path, {}).get(d.name, {})
                calls = sum(cells.values())
                if d.name in traced or calls:
                    status, why = (EXECUTED if calls else NOT_EXECUTED), ""
                elif not self.setup:
                    status, why = UNTRACEABLE, "tracing could not be set up: " + \
                        "; ".join(self.problems[:2])
                else:
                    status = UNTRACEABLE
                    reason = untraced.get(d.name, "absent")
                    why = WHY["not-loaded"] if not in_kernel else \
                        _dwarf_why(info, d.name) or WHY.get(reason, reason)
                fc.functions[d.name] = FunctionCov(d.name, d.start, d.end, status, why, calls,
                                                   dict(cells))
            cov.files[path] = fc
        return cov


def _dwarf_why(info: DwarfInfo | None, name: str) -> str | None:
    """What the build's DWARF says about a function the guest does not have."""
    if info is None:
        return None
    f = info.functions.get(name)
    if f is None:
        return "not built with this configuration (no trace of it in the DWARF)"
    if f.addr is None and f.inlined:
        return "inlined everywhere it is called (no out-of-line copy)"
    return None
