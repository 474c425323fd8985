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
from dataclasses import dataclass
from pathlib import Path

from typing import Callable

from ..errors import TestbedError, UsageError
from ..guest.protocol import GuestLike
from ..kernel.resolve import KernelSpec
from .functions import FunctionPlan, FunctionTracer, plan_functions
from .model import Coverage
from .patch import Patch, PatchCoverage, load_patch, patch_coverage
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
    functions: FunctionPlan
    patch: Patch | None = None


def plan_coverage(request: CoverageRequest, kernel: KernelSpec | None) -> CoveragePlan:
    """Everything the host can check and prepare before a boot (UsageError: bad input)."""
    source = find_source(kernel, request.source)
    patch = load_patch(request.patch, source.root) if request.patch else None
    files = request.files
    if patch is not None:  # the patch's C files are always measured
        files += tuple(f for f in patch.files if f.endswith(".c") and f not in files
                       and (source.root / f).is_file())
    if not files:
        raise UsageError(f"--patch-coverage {request.patch}: it changes no C file of "
                         f"{source.root}; name the files to measure with --coverage")
    return CoveragePlan(request, source, plan_functions(source, files), patch)


class CoverageSession:
    """A guest's coverage over one run.  Its steps never raise for a guest that stops
    answering: the coverage then says what is missing, and the run goes on."""

    def __init__(self, guest: GuestLike, plan: CoveragePlan):
        self.plan = plan
        self.tracer = FunctionTracer(guest, plan.functions)

    def _step(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except TestbedError as exc:
            self.tracer.problems.append(f"coverage {what}: {exc}")
            self.tracer.active = False

    def start(self) -> None:
        self._step("setup", self.tracer.start)

    def checkpoint(self, cell: str) -> None:
        self._step(f"read after {cell}", lambda: self.tracer.checkpoint(cell))

    def suspend(self, cell: str) -> None:
        """The guest is about to restart: keep what ``cell`` ran so far."""
        self._step(f"read before the restart in {cell}", lambda: self.tracer.suspend(cell))

    def resume(self) -> None:
        """The guest restarted: trace again."""
        self._step("setup after the restart", self.tracer.start)

    def finish(self, release: str | None) -> Coverage:
        self._step("teardown", self.tracer.stop)
        return self.tracer.coverage(release)


def judge_patch(plan: CoveragePlan, cov: Coverage) -> PatchCoverage | None:
    """The patch's coverage, when the run was asked for one."""
    return patch_coverage(plan.patch, cov, plan.request.min_patch) \
        if plan.patch is not None else None
