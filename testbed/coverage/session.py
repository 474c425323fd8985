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

from ..errors import TestbedError
from ..guest.protocol import GuestLike
from ..kernel.resolve import KernelSpec
from .functions import FunctionPlan, FunctionTracer, plan_functions
from .model import Coverage
from .selection import P2P, parse_requests
from .source import SourceTree, find_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoverageRequest:
    """What ``--coverage`` asked for (frozen; part of the run's options)."""

    files: tuple[str, ...] = (P2P,)  # parse_requests(): "p2p", files and directories
    source: Path | None = None  # --coverage-source

    @classmethod
    def from_args(cls, items: list[str] | None, source: Path | None = None
                  ) -> "CoverageRequest | None":
        """None when neither --coverage nor --coverage-source was given."""
        if not items and source is None:
            return None
        return cls(parse_requests(items or []), source)


@dataclass(frozen=True)
class CoveragePlan:
    request: CoverageRequest
    source: SourceTree
    functions: FunctionPlan


def plan_coverage(request: CoverageRequest, kernel: KernelSpec | None) -> CoveragePlan:
    """Everything the host can check and prepare before a boot (UsageError: bad input)."""
    source = find_source(kernel, request.source)
    return CoveragePlan(request, source, plan_functions(source, request.files))


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
