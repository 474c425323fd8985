"""Reading KTAP (Documentation/dev-tools/ktap.rst) and kselftest's TAP 13: what the kernel's
own tests print, as a tree of results with their diagnostics.

Result lines are ``ok|not ok N [- ]description [# DIRECTIVE [reason]]``; ``#`` lines before
a result line are its diagnostics; a subtest document (its own version line and plan) is
indented deeper than its parent (two spaces in KTAP, four in KUnit's output) and ends with
the parent's result line for it.  kselftest's ``1..0 # SKIP why`` (a whole program skipped)
and ``Bail out!`` are kept; lines that are none of these stay as diagnostics.  Nothing is
dropped: every subtest's ok / not ok / SKIP and its diagnostics reach the results.

    >>> doc = parse('''TAP version 13
    ... 1..3
    ... # Starting 3 tests from 1 test cases.
    ... #  RUN           f.a ...
    ... #            OK  f.a
    ... ok 1 f.a
    ... # f.c: Test failed
    ... not ok 2 f.c
    ... ok 3 f.d # SKIP no /dev/iommu
    ... # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
    ... ''')
    >>> [(t.name, t.status) for t in doc.tests], doc.complete
    ([('f.a', 'pass'), ('f.c', 'fail'), ('f.d', 'skip')], True)
    >>> doc.tests[1].diagnostics, doc.tests[2].reason
    (['f.c: Test failed'], 'no /dev/iommu')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

VERSION = re.compile(r"^(KTAP version \d+|TAP version \d+)\s*$")
PLAN = re.compile(r"^1\.\.(\d+)\s*(?:#\s*(.*))?$")
RESULT = re.compile(r"^(ok|not ok)\s+(\d+)\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
DIRECTIVE = re.compile(r"^(SKIP|TODO|XFAIL|XPASS|TIMEOUT|ERROR)\b[:\s]*(.*)$", re.I)
BAIL = re.compile(r"^Bail out!\s*(.*)$")
SUBTEST_HEADER = re.compile(r"^#\s*Subtest:")  # a document's name line: the result names it

# what a result line means: pass, fail, skip, xfail (expected failure), error
STATUSES = ("pass", "fail", "skip", "xfail", "error")


@dataclass
class KtapResult:
    """One test: its name, status, the directive's reason and the lines before it."""

    name: str
    status: str  # pass | fail | skip | xfail | error
    number: int = 0
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list["KtapResult"] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        if self.diagnostics:
            d["diagnostics"] = self.diagnostics
        if self.subtests:
            d["subtests"] = [t.to_json() for t in self.subtests]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "KtapResult":
        return cls(name=str(d.get("name", "")), status=str(d.get("status", "error")),
                   reason=str(d.get("reason", "")),
                   diagnostics=[str(x) for x in d.get("diagnostics") or []],
                   subtests=[cls.from_json(s) for s in d.get("subtests") or []])

    def leaves(self, prefix: str = "") -> list[tuple[str, "KtapResult"]]:
        """(dotted path, result) of every test without subtests, depth first."""
        path = f"{prefix}.{self.name}" if prefix else self.name
        if not self.subtests:
            return [(path, self)]
        return [leaf for t in self.subtests for leaf in t.leaves(path)]


@dataclass
class KtapDocument:
    """A parsed document: its top-level tests, the plan, what was printed outside tests."""

    tests: list[KtapResult]
    plan: int | None
    skip_all: str | None = None  # "1..0 # SKIP why": the whole program skipped
    bail_out: str | None = None
    diagnostics: list[str] = field(default_factory=list)  # after the last result

    @property
    def complete(self) -> bool:
        """The plan was printed and every planned test reported (a crash cuts it short)."""
        if self.skip_all is not None:
            return True
        return self.plan is not None and len(self.tests) >= self.plan

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for t in self.tests:
            for _, leaf in t.leaves():
                out[leaf.status] += 1
        return out


def _status(result: str, directive: str) -> tuple[str, str]:
    m = DIRECTIVE.match(directive)
    if m:
        word, reason = m.group(1).upper(), m.group(2).strip()
        if word == "SKIP":
            return "skip", reason
        if word == "XFAIL":
            return ("xfail" if result == "ok" else "fail"), reason
        if word in ("ERROR", "TIMEOUT"):
            return "error", f"{word.lower()}: {reason}" if reason else word.lower()
        if word == "TODO":
            return "xfail", reason  # a known failure the test itself marks
        return ("pass" if result == "ok" else "fail"), reason  # XPASS: it passed
    return ("pass" if result == "ok" else "fail"), directive.strip()


@dataclass
class _Frame:
    indent: int
    tests: list[KtapResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # diagnostics for the next result
    plan: int | None = None
    skip_all: str | None = None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def parse(text: str) -> KtapDocument:
    """The KTAP/TAP document in ``text`` (anything before the first version line or plan
    is kept as diagnostics)."""
    frames = [_Frame(indent=0)]
    bail = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        ind, line = _indent(raw), raw.strip()
        top = frames[-1]
        if (VERSION.match(line) or PLAN.match(line)) and ind > top.indent and \
                (top.tests or top.plan is not None):
            frames.append(_Frame(indent=ind))  # a subtest document starts
            top = frames[-1]
        if VERSION.match(line):
            continue
        m = PLAN.match(line)
        if m and top.plan is None:
            top.plan = int(m.group(1))
            if top.plan == 0 and m.group(2):
                top.skip_all = re.sub(r"^SKIP\s*", "", m.group(2), flags=re.I).strip()
            continue
        m = RESULT.match(line)
        if m:
            children: list[KtapResult] = []
            pending: list[str] = []
            while len(frames) > 1 and frames[-1].indent > ind:
                child = frames.pop()
                children, pending = child.tests, child.pending
            parent = frames[-1]
            status, reason = _status(m.group(1), m.group(4) or "")
            name = m.group(3).strip() or f"test {m.group(2)}"
            parent.tests.append(KtapResult(name, status, int(m.group(2)), reason,
                                           parent.pending + pending, children))
            parent.pending = []
            continue
        if SUBTEST_HEADER.match(line):
            continue
        m = BAIL.match(line)
        if m:
            bail = m.group(1).strip() or "bail out"
            continue
        top.pending.append(line[1:].strip() if line.startswith("#") else line)
    while len(frames) > 1:  # a cut-short subtest document: keep what it reported
        child = frames.pop()
        frames[-1].pending += child.pending
        frames[-1].tests += child.tests
    root = frames[0]
    return KtapDocument(root.tests, root.plan, root.skip_all, bail, root.pending)


def subtest_leaves(tests: list[dict[str, Any]], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted path, subtest) of every subtest without subtests of its own, in a record's
    ``subtests`` (the JSON form of :class:`KtapResult`)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for t in tests:
        path = f"{prefix}.{t.get('name', '')}" if prefix else str(t.get("name", ""))
        subs = t.get("subtests") or []
        out += subtest_leaves(subs, path) if subs else [(path, t)]
    return out
