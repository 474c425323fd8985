"""The result of one ``testbed run``: what results.json holds.

    >>> r = RunResult(topology="switch-cmb")
    >>> r.status
    0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..workloads.base import Record


@dataclass
class RunResult:
    topology: str
    kernel: dict = field(default_factory=dict)  # release, p2pdma, source
    qemu: dict = field(default_factory=dict)  # version, accel, accel_reason, binary
    boot_seconds: float = 0.0
    workloads: list[Record] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    error: str = ""  # a failure that stopped the run early (boot failed, ...)

    @property
    def judged(self) -> list[Record]:
        return [r for r in self.workloads if r.judged]

    @property
    def mismatches(self) -> list[Record]:
        return [r for r in self.judged if not r.passed]

    @property
    def status(self) -> int:
        """0: every judged verdict matched its prediction; 1: some did not (or the run broke)."""
        return 1 if self.error or self.mismatches else 0

    def to_json(self) -> dict:
        return {
            "topology": self.topology, "kernel": self.kernel, "qemu": self.qemu,
            "boot_seconds": round(self.boot_seconds, 2), "started": self.started,
            "seconds": round(self.seconds, 2), "error": self.error or None,
            "status": "pass" if self.status == 0 else "fail",
            "workloads": [r.to_json() for r in self.workloads],
        }
