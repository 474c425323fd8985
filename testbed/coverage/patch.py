"""Patch coverage: was every line a patch adds or changes executed, and by which cell?

    patch = load_patch("v3-0001-PCI-P2PDMA-fix.patch", source_root)   # or "A..B" (git range)
    pc = patch_coverage(patch, coverage)
    print(pc.summary())     # "37 of 41 changed lines executed (90%); not executed: ..."

The patch is read with unidiff (a ``FILE.patch``) or made by ``git diff A..B`` in the kernel
source tree.  Its lines are those of the patched tree: a kernel whose source does not have
the added lines at those places does not carry the patch, and is not judged on it.

What counts: a line the patch adds or changes (pure deletions have no line left to run).
With gcov each such line that is executable counts (comments and declarations do not);
with function coverage a changed line counts as executed when its function ran (a
function that cannot be traced is *not measured*, never *not executed*), which the summary
says.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .model import EXECUTED, LINE, UNTRACEABLE, Coverage, ranges

MAX_PATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class Patch:
    spec: str  # what was given: a file or A..B
    added: dict[str, dict[int, str]]  # file -> target line -> its text
    deletions: int  # hunks that only delete

    @property
    def files(self) -> list[str]:
        return sorted(self.added)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "deletions": self.deletions,
                "added": {p: {str(n): t for n, t in ls.items()} for p, ls in self.added.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Patch":
        return cls(str(d["spec"]), {p: {int(n): str(t) for n, t in ls.items()}
                                    for p, ls in d["added"].items()}, int(d.get("deletions", 0)))


def parse_patch(text: str, spec: str) -> Patch:
    """A unified diff (``git format-patch``, ``git diff``, ``diff -u``) -> Patch."""
    from unidiff import PatchSet  # only here: patches are read for --patch-coverage only
    from unidiff.errors import UnidiffParseError  # the same
    try:
        ps = PatchSet(text)
    except UnidiffParseError as exc:
        raise UsageError(f"--patch-coverage {spec}: not a unified diff ({exc})") from None
    added: dict[str, dict[int, str]] = {}
    deletions = 0
    for f in ps:
        if f.is_removed_file:
            deletions += 1
            continue
        path = f.path
        for hunk in f:
            lines = {ln.target_line_no: ln.value.rstrip("\n") for ln in hunk
                     if ln.is_added and ln.target_line_no is not None}
            if lines:
                added.setdefault(path, {}).update(lines)
            elif any(ln.is_removed for ln in hunk):
                deletions += 1
    if not added and not deletions:
        raise UsageError(f"--patch-coverage {spec}: the patch changes no file")
    return Patch(spec, {p: dict(sorted(ls.items())) for p, ls in added.items()}, deletions)


def is_git_range(spec: str) -> bool:
    """Whether ``--patch-coverage SPEC`` names a git range (needs the kernel source) rather
    than a patch file (read at once, wherever the source is).

    >>> is_git_range("v6.19..HEAD"), is_git_range("fix.patch")
    (True, False)
    """
    return ".." in spec and not Path(spec).expanduser().is_file()


def load_patch(spec: str, root: Path | None) -> Patch:
    """``FILE.patch`` or a git range ``A..B`` (``A...B``) in the kernel source ``root``."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.stat().st_size > MAX_PATCH_BYTES:
            raise UsageError(f"--patch-coverage {spec}: larger than {MAX_PATCH_BYTES >> 20} MiB")
        return parse_patch(path.read_text(errors="replace"), spec)
    if ".." not in spec:
        raise UsageError(f"--patch-coverage {spec}: neither a patch file nor a git range A..B")
    if root is None or not (root / ".git").exists():
        raise UsageError(f"--patch-coverage {spec}: a git range needs the kernel source to be a "
                         f"git tree ({root or 'no source tree'} is not); give a patch file")
    try:
        proc = subprocess.run(["git", "-C", str(root), "diff", "--no-color", "--no-ext-diff",
                               "--unified=0", spec, "--"], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--patch-coverage {spec}: git diff failed: {exc}") from None
    if proc.returncode != 0:
        raise UsageError(f"--patch-coverage {spec}: git diff in {root}: "
                         f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    if not proc.stdout.strip():
        raise UsageError(f"--patch-coverage {spec}: the range changes nothing")
    return parse_patch(proc.stdout, spec)


def carried(patch: Patch, root: Path) -> str | None:
    """None when the source tree ``root`` has the patch's lines where the patch puts them;
    else why not (the kernel was built from another tree)."""
    for path, lines in patch.added.items():
        f = root / path
        try:
            text = f.read_text(errors="replace").splitlines()
        except OSError:
            return f"{path} is not in {root}"
        for n, want in lines.items():
            if n > len(text) or text[n - 1].rstrip() != want.rstrip():
                return f"{path}:{n} of {root} is not the patch's line"
    return None


@dataclass
class ChangedLine:
    path: str
    line: int
    state: str  # "executed", "not-executed", "not-measured", "not-code"
    function: str | None = None
    cells: list[str] = field(default_factory=list)


@dataclass
class PatchCoverage:
    spec: str
    mode: str
    lines: list[ChangedLine]
    deletions: int = 0
    problem: str = ""  # set when the patch could not be judged (not carried, not measured)
    patch: Patch | None = None  # what was judged
    minimum: float | None = None  # --min-patch-coverage
    carried: bool = True  # False: the kernel's source does not have the patch's lines

    @property
    def failed(self) -> str | None:
        """Why this falls short of --min-patch-coverage (None: it does not, or no minimum)."""
        return None if self.minimum is None else self.below(self.minimum)

    @property
    def executed(self) -> int:
        return sum(1 for c in self.lines if c.state == EXECUTED)

    @property
    def measured(self) -> int:
        return sum(1 for c in self.lines if c.state in (EXECUTED, "not-executed"))

    @property
    def percent(self) -> float | None:
        return 100.0 * self.executed / self.measured if self.measured else None

    def below(self, minimum: float) -> str | None:
        """Why the patch coverage is below ``minimum`` percent, or None."""
        if self.problem:
            return self.problem
        pct = self.percent
        if pct is None:
            return "no changed line could be measured"
        if pct < minimum:
            return f"patch coverage {pct:.0f}% is below --min-patch-coverage {minimum:g}"
        return None

    def _runs(self, state: str) -> list[tuple[str, int, int, str | None]]:
        out: list[tuple[str, int, int, str | None]] = []
        by_file: dict[tuple[str, str | None], list[int]] = {}
        for c in self.lines:
            if c.state == state:
                by_file.setdefault((c.path, c.function), []).append(c.line)
        for (path, fn), ls in sorted(by_file.items(), key=lambda kv: (kv[0][0], min(kv[1]))):
            for a, b in ranges(ls):
                out.append((path, a, b, fn))
        return sorted(out)

    def summary(self) -> str:
        """A few lines for a mailing-list reply."""
        if self.problem:
            return f"Patch coverage of {self.spec}: not judged: {self.problem}"
        unit = "changed lines" if self.mode == LINE else \
            "changed lines in executed functions (function coverage: a line counts when its " \
            "function ran)"
        total = self.measured
        text = [f"{self.executed} of {total} {unit}" + (f" ({self.percent:.0f}%)"
                                                        if total else "")]
        missing = self._runs("not-executed")
        if missing:
            text.append("not executed: " + ", ".join(
                f"{p}:{a}" + (f"-{b}" if b != a else "") + (f" ({fn}())" if fn else "")
                for p, a, b, fn in missing))
        unmeasured = self._runs("not-measured")
        if unmeasured:
            text.append("not measured: " + ", ".join(
                f"{p}:{a}" + (f"-{b}" if b != a else "") + (f" ({fn}(): cannot be traced)"
                                                            if fn else "")
                for p, a, b, fn in unmeasured))
        cells: dict[str, int] = {}
        for c in self.lines:
            for cell in c.cells:
                cells[cell] = cells.get(cell, 0) + 1
        lines = ["; ".join(text)]
        if cells:
            lines.append("executed by: " + ", ".join(f"{c} ({n} line(s))"
                                                     for c, n in sorted(cells.items())))
        if self.deletions:
            lines.append(f"{self.deletions} hunk(s) only delete lines (nothing left to run)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"patch": self.spec, "mode": self.mode, "executed": self.executed,
                "measured": self.measured, "percent": self.percent, "problem": self.problem,
                "minimum": self.minimum, "failed": self.failed, "carried": self.carried,
                "deletion_only_hunks": self.deletions, "summary": self.summary(),
                "lines": [{"file": c.path, "line": c.line, "state": c.state,
                           "function": c.function, "cells": c.cells} for c in self.lines]}


def patch_coverage(patch: Patch, cov: Coverage, minimum: float | None = None
                   ) -> PatchCoverage:
    """Judge every changed line of ``patch`` against ``cov``."""
    out = PatchCoverage(patch.spec, cov.mode, [], patch.deletions, patch=patch,
                        minimum=minimum)
    if cov.root:
        why = carried(patch, Path(cov.root))
        if why:
            out.problem = f"the kernel's source does not carry the patch ({why})"
            out.carried = False
            return out
    for path, lines in patch.added.items():
        f = cov.files.get(path)
        for n in lines:
            if f is None:
                out.lines.append(ChangedLine(path, n, "not-measured"))
                continue
            fn = f.function_at(n)
            name = fn.name if fn else None
            if f.lines is not None:
                count = f.lines.get(n)
                if count is None:
                    state, cells = "not-code", []
                else:
                    state = EXECUTED if count > 0 else "not-executed"
                    cells = sorted(c for c, ls in f.line_cells.items() if n in ls)
            elif fn is None:
                state, cells = "not-code", []
            elif fn.status == UNTRACEABLE:
                state, cells = "not-measured", []
            else:
                state = EXECUTED if fn.status == EXECUTED else "not-executed"
                cells = sorted(fn.cells)
            out.lines.append(ChangedLine(path, n, state, name, cells))
    return out
