"""What a regression is: one cell (or one run) worse than the same on the baseline.

A matrix has two axes.  Along the **kernel** axis a later kernel is compared with the
first one under the same QEMU; along the **QEMU** axis a later QEMU is compared with the
first one under the same kernel (:mod:`testbed.run.qemu_axis`).  Both say it the same
way: which cell, what the baseline showed, what the later one shows, why it is worse.

    >>> r = Regression("switch-cmb", "p2p-copy", "nvme0", "nvme1", "default", "default",
    ...                "ok", "error", "was ok, now error", qemu="11.1", baseline_qemu="host",
    ...                axis="qemu")
    >>> str(r)
    'switch-cmb p2p-copy nvme0 -> nvme1: default @ host ok, default @ 11.1 error (was ok, now error)'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CellLike(Protocol):
    """What a comparison reads of a matrix cell (:class:`testbed.run.cells.Cell`)."""

    observed: str | None
    data_verified: bool | None
    mb_per_s: float | None
    detail: str
    observed_map_type: str | None

    @property
    def verdict(self) -> str: ...


def column_label(kernel: str, qemu: str = "") -> str:
    """A matrix column: the kernel's label, and the QEMU's when the matrix has QEMUs."""
    return f"{kernel} @ {qemu}" if qemu else kernel


@dataclass
class Regression:
    topology: str
    workload: str
    provider: str | None
    client: str | None
    kernel: str
    baseline_kernel: str
    was: str
    now: str
    reason: str
    kind: str = "verdict"  # mechanism: the same verdict reached another way; throughput;
    #                        boot: the run broke on this QEMU and not on the baseline's
    qemu: str = ""  # the QEMU of ``kernel``'s cell ("" in a matrix without QEMUs)
    baseline_qemu: str = ""
    axis: str = "kernel"  # or "qemu": a later QEMU against the first, the same kernel

    @property
    def column(self) -> str:
        return column_label(self.kernel, self.qemu)

    @property
    def baseline_column(self) -> str:
        return column_label(self.baseline_kernel, self.baseline_qemu)

    def __str__(self) -> str:
        what = f"{self.provider or '?'} -> {self.client or '?'}" \
            if self.provider or self.client else ""
        head = f"{self.topology} {self.workload}" + (f" {what}" if what else "")
        return (f"{head}: {self.baseline_column} {self.was}, {self.column} {self.now} "
                f"({self.reason})")


def worse(base: CellLike, later: CellLike) -> str | None:
    """Why ``later`` is a regression against ``base`` (None: it is not): the baseline was
    ``ok`` and the later cell is not, or its data was verified and the later's is not."""
    detail = f": {later.detail.splitlines()[0]}" if later.detail else ""
    informational = base.observed is None and later.observed is None  # e.g. host-baseline
    if base.verdict == "ok" and later.verdict != "ok" and not informational:
        return f"was ok, now {later.verdict}{detail}"
    if base.data_verified is True and later.data_verified is not True:
        return f"data no longer verified{detail}"
    return None
