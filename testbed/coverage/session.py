"""One run's coverage, from the plan made before the boot to the Coverage after the
workloads.

    plan = plan_coverage(CoverageRequest(files=("p2p",)), kernel=None)  # before booting
    session = CoverageSession(guest, plan)
    session.start()                       # after the boot, before the first workload
    session.checkpoint("p2p-copy")        # after each workload: what it ran
    coverage = session.finish(release)

Nothing here runs unless a run asks for coverage: a run without ``--coverage`` never
builds a plan, sets up a tracer or reads a counter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from typing import Callable

from ..errors import TestbedError, UsageError
from ..guest.protocol import GuestLike
from ..kernel.resolve import KernelSpec
from .functions import FunctionPlan, FunctionTracer, plan_functions
from .gcov import GcovCollector, GcovPlan, plan_gcov
from .model import LINE, Coverage
from .patch import Patch, PatchCoverage, is_git_range, load_patch, patch_coverage
from .selection import P2P, parse_requests
from .source import SourceTree, find_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoverageRequest:
    """What ``--coverage`` asked for (frozen; part of the run's options)."""

    files: tuple[str, ...] = (P2P,)  # parse_requests(): "p2p", files and directories
    source: Path | None = None  # --coverage-source
    patch: str | None = None  # --patch-coverage A..B or FILE.patch
    min_patch: float | None = None  # --min-patch-coverage: percent

    @classmethod
    def from_args(cls, items: list[str] | None, source: Path | None = None,
                  patch: str | None = None, min_patch: float | None = None
                  ) -> "CoverageRequest | None":
        """None when no coverage option was given."""
        if min_patch is not None and patch is None:
            raise UsageError("--min-patch-coverage: give the patch with --patch-coverage "
                             "A..B or FILE.patch")
        if min_patch is not None and not 0 <= min_patch <= 100:
            raise UsageError(f"--min-patch-coverage {min_patch:g}: a percentage, 0 to 100")
        if not items and source is None and patch is None:
            return None
        # with only a patch, its own files are measured (the P2P set when --coverage says so)
        files = parse_requests(items) if items else (() if patch else parse_requests([]))
        return cls(files, source, patch, min_patch)


@dataclass(frozen=True)
class CoveragePlan:
    request: CoverageRequest
    source: SourceTree
    functions: FunctionPlan  # the files the function tracer measures (none on a gcov kernel
    gcov: GcovPlan | None = None  # that profiled them all): the gcov files are gcov's
    patch: Patch | None = None


def plan_coverage(request: CoverageRequest, kernel: KernelSpec | None) -> CoveragePlan:
    """Everything the host can check and prepare before a boot (UsageError: bad input)."""
    patch = None  # a patch file is bad input whatever the source: say so before looking
    if request.patch and not is_git_range(request.patch):  # for (or unpacking) a source
        patch = load_patch(request.patch, None)
    source = find_source(kernel, request.source)
    if request.patch and patch is None:
        patch = load_patch(request.patch, source.root)
    files = request.files
    if patch is not None:  # the patch's C files are always measured
        files += tuple(f for f in patch.files if f.endswith(".c") and f not in files
                       and (source.root / f).is_file())
    if not files:
        raise UsageError(f"--patch-coverage {request.patch}: it changes no C file of "
                         f"{source.root}; name the files to measure with --coverage")
    functions = plan_functions(source, files)
    gcov = plan_gcov(source, functions.files)
    if gcov is not None:  # gcov measures its files line by line: the tracer the others
        functions = replace(functions, files=[f for f in functions.files
                                              if f not in gcov.files])
    return CoveragePlan(request, source, functions, gcov, patch)


class CoverageSession:
    """A guest's coverage over one run: the function tracer for the files it measures and
    gcov for the files a gcov kernel profiled.  Its steps never raise for a guest that
    stops answering: the coverage then says what is missing, and the run goes on."""

    def __init__(self, guest: GuestLike, plan: CoveragePlan):
        self.plan = plan
        self.functions = FunctionTracer(guest, plan.functions)
        self.tracer = self.functions if plan.functions.files else None  # None: nothing to trace
        self.gcov = GcovCollector(guest, plan.gcov) if plan.gcov is not None else None
        self.problems: list[str] = []

    def _step(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except TestbedError as exc:
            self.problems.append(f"coverage {what}: {exc}")

    def _each(self, what: str, tracer: Callable[[FunctionTracer], None],
              gcov: Callable[[GcovCollector], None]) -> None:
        if self.tracer is not None:
            t = self.tracer
            self._step(what, lambda: tracer(t))
        if self.gcov is not None:
            g = self.gcov
            self._step(f"gcov {what}", lambda: gcov(g))

    def start(self) -> None:
        self._each("setup", lambda t: t.start(), lambda g: g.start())

    def checkpoint(self, cell: str) -> None:
        self._each(f"read after {cell}", lambda t: t.checkpoint(cell),
                   lambda g: g.checkpoint(cell))

    def suspend(self, cell: str) -> None:
        """The guest is about to restart: keep what ``cell`` ran so far."""
        self._each(f"read before the restart in {cell}", lambda t: t.suspend(cell),
                   lambda g: g.suspend(cell))

    def resume(self) -> None:
        """The guest restarted: measure again."""
        self._each("setup after the restart", lambda t: t.start(), lambda g: g.resume())

    def finish(self, release: str | None) -> Coverage:
        if self.tracer is not None:
            self._step("teardown", self.tracer.stop)
        cov = self.functions.coverage(release)
        if self.gcov is not None:
            cov.mode = LINE
            cov.files.update(self.gcov.files(self.plan.functions.defs))
            cov.cells = list(dict.fromkeys(cov.cells + self.gcov.cells))
            cov.problems += self.gcov.problems
            cov.source += f"; lines by {self.plan.gcov.gcov if self.plan.gcov else 'gcov'}"
        cov.problems += self.problems
        return cov


def judge_patch(plan: CoveragePlan, cov: Coverage) -> PatchCoverage | None:
    """The patch's coverage, when the run was asked for one."""
    return patch_coverage(plan.patch, cov, plan.request.min_patch) \
        if plan.patch is not None else None
