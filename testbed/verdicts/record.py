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
    # the mechanism: how the kernel mapped the transfer (see verdicts.mechanism)
    predicted_map_type: str | None = None  # bus-address | host-bridge | not-supported
    observed_map_type: str | None = None   # from the guest kernel's own tracing
    mechanism: dict[str, Any] = field(default_factory=dict)  # distance, IOMMU evidence, ...
    mechanism_problem: str = ""  # why the observed mechanism is not the predicted one
    # a problem shown whether or not the record passed (an isolation hole)
    finding: str | None = None
    # the kernel's own tests: the program or KUnit suite, and its KTAP results as a tree
    # of {"name", "status": pass|fail|skip|xfail|error, "reason", "diagnostics", "subtests"}
    test: str | None = None
    subtests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return self.predicted is not None and self.observed is not None

    @property
    def mechanism_matches(self) -> bool | None:
        """None when there is nothing to compare (no prediction, or not observed)."""
        if self.predicted_map_type is None or self.observed_map_type is None:
            return None
        return self.predicted_map_type == self.observed_map_type and not self.mechanism_problem

    @property
    def verdict_matches(self) -> bool:
        return self.predicted == self.observed

    @property
    def passed(self) -> bool:
        """Judged records pass when the verdict and (where observed) the mechanism match."""
        return not self.judged or (self.verdict_matches and self.mechanism_matches is not False)

    @property
    def mechanism_text(self) -> str:
        """For tables: ``bus-address``, ``host-bridge != bus-address`` (observed first), or
        ``bus-address (unobserved)``; empty when there is no mechanism to speak of."""
        if self.predicted_map_type is None:
            return ""
        if self.observed_map_type is None:
            return f"{self.predicted_map_type} (unobserved)"
        if self.mechanism_matches:
            return self.observed_map_type
        if self.observed_map_type == self.predicted_map_type:
            return f"{self.observed_map_type} (IOMMU evidence differs)"
        return f"{self.observed_map_type} != {self.predicted_map_type}"

    @property
    def mismatch(self) -> str:
        """What did not match, for people ("" when the record passed)."""
        if self.passed:
            return ""
        parts = []
        if not self.verdict_matches:
            parts.append(f"predicted {self.predicted}, observed {self.observed}")
        if self.mechanism_matches is False:
            parts.append(f"mechanism: predicted {self.predicted_map_type}, observed "
                         f"{self.observed_map_type}"
                         + (f" ({self.mechanism_problem})" if self.mechanism_problem else ""))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {}
             and not (k == "mechanism_problem" and not v) and not (k == "subtests" and not v)}
        d["name"] = self.name
        if self.judged:
            d["passed"] = self.passed
        return d
