"""One result of a workload: what ``testbed run`` writes to results.json and the pytest
plugin returns from ``guest.workload(...)``.

A record is *judged* when it has both a predicted and an observed verdict; it
passes when they are equal.

    >>> r = Record(name="p2p-copy", provider="nvme0", client="nvme1", predicted="ok",
    ...            observed="ok")
    >>> r.judged, r.passed
    (True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Record:
    """One result.  ``predicted``/``observed`` are verdicts when the record is judged."""

    name: str
    provider: str | None = None
    client: str | None = None
    predicted: str | None = None
    reason: str | None = None
    observed: str | None = None
    data_verified: bool | None = None
    mb_per_s: float | None = None
    detail: str = ""
    qemu_limit: bool = False
    seconds: float = 0.0
    dmesg: dict[str, list[str]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    # exec workload
    command: str | None = None
    exit_status: int | None = None
    stdout: str | None = None
    stderr: str | None = None

    @property
    def judged(self) -> bool:
        return self.predicted is not None and self.observed is not None

    @property
    def passed(self) -> bool:
        return not self.judged or self.predicted == self.observed

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        d["name"] = self.name
        if self.judged:
            d["passed"] = self.passed
        return d
