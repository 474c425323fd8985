"""QEMU as a matrix axis: what changes when only the QEMU changes.

A matrix run with ``-q host -q 11.1`` has one column per kernel × QEMU; the first QEMU
is the baseline of the QEMU axis.  For each kernel, every later QEMU's cells are compared
with the baseline QEMU's, and each difference is a **QEMU regression**:

- ``verdict``: the baseline QEMU's cell was ``ok`` (or its data verified) and this one's
  is not (the same rule as between kernels);
- ``mechanism``: the same verdict, but the guest kernel chose another map type;
- ``throughput``: both ``ok`` with verified data, and the MB/s fell by more than the
  matrix's tolerance (``--mbps-tolerance``, default 50 %: TCG throughput varies by tens
  of percent from run to run on a busy host, so smaller drops are noise);
- ``boot``: the run broke (boot failure, timeout, lost guest) on this QEMU and not on the
  baseline's; its cells are then not compared one by one.

    >>> from .cells import Cell, Matrix, RunEntry
    >>> m = Matrix(kernels=[{"label": "default"}], topologies=["t"],
    ...            qemus=[{"label": "host"}, {"label": "11.1"}])
    >>> m.runs = [RunEntry("t", "default", "a", 0, qemu="host"),
    ...           RunEntry("t", "default", "b", 0, qemu="11.1")]
    >>> m.cells = [Cell("t", "default", "p2p-copy", "n0", "n1", "ok", "ok", True, 60.0,
    ...                 qemu="host"),
    ...            Cell("t", "default", "p2p-copy", "n0", "n1", "ok", "ok", True, 20.0,
    ...                 qemu="11.1")]
    >>> [str(r) for r in qemu_regressions(m)]
    ['t p2p-copy n0 -> n1: default @ host ok 60.0 MB/s, default @ 11.1 ok 20.0 MB/s (throughput fell 67 %, more than the 50 % tolerance)']
"""

from __future__ import annotations

from typing import Protocol

from .regressions import CellLike, Regression, worse


class RunLike(Protocol):
    error: str


class MatrixLike(Protocol):
    """What the QEMU axis reads of a matrix (:class:`testbed.run.cells.Matrix`)."""

    topologies: list[str]
    mbps_tolerance: float

    @property
    def labels(self) -> list[str]: ...

    @property
    def qemu_labels(self) -> list[str]: ...

    def rows(self) -> list[tuple[str, str, str, str]]: ...

    def run(self, topology: str, kernel: str, qemu: str = "") -> RunLike | None: ...

    def cell(self, row: tuple, kernel: str, qemu: str = "") -> CellLike | None: ...

DEFAULT_MBPS_TOLERANCE = 0.5


def _throughput(base: CellLike, later: CellLike, tolerance: float) -> str | None:
    if not (base.verdict == later.verdict == "ok" and base.data_verified and
            later.data_verified and base.mb_per_s and later.mb_per_s is not None):
        return None
    drop = 1 - later.mb_per_s / base.mb_per_s
    if drop > tolerance:
        return (f"throughput fell {drop:.0%}, more than the {tolerance:.0%} tolerance"
                .replace("%", " %"))
    return None


def qemu_regressions(m: MatrixLike) -> list[Regression]:
    """Every difference between a later QEMU and the first one, kernel by kernel."""
    qemus = m.qemu_labels
    if len(qemus) < 2:
        return []
    base_q = qemus[0]
    out: list[Regression] = []
    for topo in m.topologies:
        for k in m.labels:
            base_run = m.run(topo, k, base_q)
            for q in qemus[1:]:
                run = m.run(topo, k, q)
                if run is None or base_run is None:
                    continue
                if run.error and not base_run.error:
                    out.append(Regression(topo, "boot", None, None, k, k, "booted",
                                          "broke", f"the run broke: {run.error.splitlines()[0]}",
                                          kind="boot", qemu=q, baseline_qemu=base_q,
                                          axis="qemu"))
    broken = {(r.topology, r.kernel, r.qemu) for r in out}
    for row in m.rows():
        for k in m.labels:
            base = m.cell(row, k, base_q)
            if base is None:
                continue
            for q in qemus[1:]:
                later = m.cell(row, k, q)
                if later is None or (row[0], k, q) in broken:
                    continue
                out += _differences(row, k, base_q, base, q, later, m.mbps_tolerance)
    return out


def _differences(row: tuple[str, str, str, str], kernel: str, base_q: str, base: CellLike,
                 q: str, later: CellLike, tolerance: float) -> list[Regression]:
    def reg(was: str, now: str, why: str, kind: str) -> Regression:
        return Regression(row[0], row[1], row[2] or None, row[3] or None, kernel, kernel,
                          was, now, why, kind=kind, qemu=q, baseline_qemu=base_q, axis="qemu")

    why = worse(base, later)
    if why:
        return [reg(base.verdict, later.verdict, why, "verdict")]
    before, after = base.observed_map_type, later.observed_map_type
    if before and after and before != after and base.verdict == later.verdict:
        return [reg(f"{base.verdict} by {before}", f"{later.verdict} by {after}",
                    f"the same verdict, but QEMU {q} makes the kernel map the transfer by "
                    f"{after} where QEMU {base_q} gave {before}", "mechanism")]
    slower = _throughput(base, later, tolerance)
    if slower:
        return [reg(f"ok {base.mb_per_s:.1f} MB/s", f"ok {later.mb_per_s:.1f} MB/s", slower,
                    "throughput")]
    return []
