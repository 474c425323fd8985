"""The result of one ``testbed run``: what results.json holds.

A run passes only when it finished (every planned workload ran and the results
were collected), no error stopped it, and every judged verdict matched its
prediction.  A run that did not finish is never a pass, whatever its records say.

    >>> r = RunResult(topology="switch-cmb")
    >>> r.status, r.verdict
    (1, 'incomplete')
    >>> r.finished = True
    >>> r.status, r.verdict
    (0, 'pass')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..coverage.model import Coverage
from ..coverage.outputs import brief
from ..coverage.patch import PatchCoverage
from ..verdicts.record import Record


@dataclass
class RunResult:
    topology: str
    kernel: dict[str, Any] = field(default_factory=dict)  # release, p2pdma, source
    qemu: dict[str, Any] = field(default_factory=dict)  # version, accel, accel_reason, binary
    boot_seconds: float = 0.0
    workloads: list[Record] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    error: str = ""  # a failure that stopped the run early (boot failed, ...)
    error_kind: str = ""  # the error's class word: boot-timeout, boot-failed, usage, ...
    logs: str = ""  # where a failed boot's console and QEMU logs were kept
    finished: bool = False  # every planned workload ran and the results were collected
    phases: dict[str, float] = field(default_factory=dict)  # where the wall time went
    coverage: Coverage | None = None  # --coverage: which kernel code the workloads ran
    patch_coverage: PatchCoverage | None = None  # --patch-coverage

    @property
    def judged(self) -> list[Record]:
        return [r for r in self.workloads if r.judged]

    @property
    def mismatches(self) -> list[Record]:
        return [r for r in self.judged if not r.passed]

    @property
    def findings(self) -> list[Record]:
        """Records that show a problem whatever their verdict (isolation holes)."""
        return [r for r in self.workloads if r.finding]

    @property
    def verdict(self) -> str:
        """``fail`` (an error stopped the run, or a verdict differed), ``incomplete`` (it
        did not get to its end, for no reported error) or ``pass``."""
        if self.error:
            return "fail"
        if not self.finished:
            return "incomplete"
        return "fail" if self.mismatches else "pass"

    @property
    def status(self) -> int:
        """0: finished and every judged verdict matched; 1: anything else."""
        return 0 if self.verdict == "pass" else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology, "kernel": self.kernel, "qemu": self.qemu,
            "boot_seconds": round(self.boot_seconds, 2), "started": self.started,
            "seconds": round(self.seconds, 2), "error": self.error or None,
            "error_kind": self.error_kind or None, "logs": self.logs or None,
            "finished": self.finished, "status": self.verdict, "phases": self.phases,
            "workloads": [r.to_json() for r in self.workloads],
            **({"coverage": brief(self.coverage)} if self.coverage is not None else {}),
            **({"patch_coverage": {k: v for k, v in self.patch_coverage.to_json().items()
                                   if k != "lines"}}
               if self.patch_coverage is not None else {}),
        }
