"""The matrix as data: cells, runs and the regressions between kernels (and QEMUs).

The matrix keeps one *cell* per topology × kernel × pair (workload, provider,
client), and × QEMU when it has QEMUs (``-q``): predicted, observed, data_verified,
MB/s.  A *column* is a kernel, or a kernel @ QEMU.

A cell is a **regression** when the baseline kernel's cell for the same row (under the
same QEMU) was ``ok`` and the later kernel's is anything else (``rejected``,
``iommu-fault``, ``unsupported``, ``error``, missing because the run broke), or when the
baseline's data was verified and the later kernel's is not.  Between QEMUs (the same
kernel) the differences are **QEMU regressions** (:mod:`testbed.run.qemu_axis`).
A kernel test program (``kselftest:vfio/vfio_dma_mapping_test``, a KUnit suite) is one
row whose cell keeps its subtests: each subtest that passed on the baseline and fails,
errs or is missing on a later kernel is a regression naming that subtest.

Files: ``matrix.json``, ``matrix.md``, ``matrix.html`` and one directory per
run, ``<topology>/<kernel>/`` (results.json, console.log, dmesg.txt, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..results.model import RunResult
from ..verdicts.ktap import subtest_leaves
from .groups import GroupChange, compare, observed_groups
from .qemu_axis import DEFAULT_MBPS_TOLERANCE, qemu_regressions
from .regressions import Regression, column_label, worse

__all__ = ["Cell", "Matrix", "Regression", "RunEntry", "VERDICTS", "add_run",
           "cells_from_result", "column_label", "find_mechanism_changes", "find_regressions"]

# what a cell can show, in the order a legend lists them
VERDICTS = ("ok", "rejected", "iommu-fault", "isolation-hole", "unsupported", "skip", "fail",
            "error", "missing")


@dataclass
class Cell:
    topology: str
    kernel: str
    workload: str
    provider: str | None
    client: str | None
    predicted: str | None = None
    observed: str | None = None
    data_verified: bool | None = None
    mb_per_s: float | None = None
    detail: str = ""
    predicted_map_type: str | None = None
    observed_map_type: str | None = None  # what the guest kernel chose (None: unobserved)
    passed: bool | None = None  # the run judged it as predicted (verdict and mechanism)
    qemu: str = ""  # the QEMU's label ("" in a matrix without QEMUs)
    # a kernel test program's subtests: dotted path -> pass | fail | skip | xfail | error
    subtests: dict[str, str] = field(default_factory=dict)

    @property
    def row(self) -> tuple[str, str, str, str]:
        return (self.topology, self.workload, self.provider or "", self.client or "")

    @property
    def verdict(self) -> str:
        """What the cell shows: the observed verdict; informational rows: ok/error by data."""
        if self.observed:
            return self.observed
        if self.predicted is None:
            if self.data_verified is True:
                return "ok"
            return "missing" if self.data_verified is None and not self.detail else "error"
        return "missing"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


@dataclass
class RunEntry:
    topology: str
    kernel: str
    directory: str
    status: int
    error: str = ""
    release: str | None = None
    p2pdma: bool | None = None
    boot_seconds: float = 0.0
    seconds: float = 0.0
    first_attempt_error: str = ""  # a boot timeout that was retried
    error_kind: str = ""
    iommu_groups: list[list[str]] | None = None  # observed by the isolation workload
    qemu: str = ""  # the QEMU's label ("" in a matrix without QEMUs)
    qemu_version: str | None = None

    @property
    def column(self) -> str:
        return column_label(self.kernel, self.qemu)


@dataclass
class Matrix:
    kernels: list[dict[str, Any]]  # label, spec, description, release, p2pdma
    topologies: list[str]
    runs: list[RunEntry] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    plan_id: str = ""  # the plan this matrix (or shard) ran: shards of one plan merge
    shard: str | None = None  # "K/N" when this is one shard of a plan
    boots: list[str] = field(default_factory=list)  # the boots it was to run
    # topology -> the workloads planned for it that make cells: a run that broke before
    # any cell shows an error cell for each (rather than no row at all)
    planned: dict[str, list[str]] = field(default_factory=dict)
    # the QEMU axis: label, spec, version, binary of each QEMU (the first is the baseline);
    # empty: every topology ran on its own machine.qemu
    qemus: list[dict[str, Any]] = field(default_factory=list)
    mbps_tolerance: float = DEFAULT_MBPS_TOLERANCE  # a larger drop between QEMUs regresses

    def sort(self) -> None:
        """Runs and cells in plan order (topologies, then kernels, then QEMUs), whatever
        order the boots finished in."""
        t_order = {t: i for i, t in enumerate(self.topologies)}
        c_order = {c: i for i, c in enumerate(self.columns)}

        def key(topology: str, kernel: str, qemu: str) -> tuple[int, int]:
            return (t_order.get(topology, 1 << 30), c_order.get((kernel, qemu), 1 << 30))

        self.runs.sort(key=lambda r: key(r.topology, r.kernel, r.qemu))
        self.cells = [c for _, c in sorted(enumerate(self.cells), key=lambda ic: (
            *key(ic[1].topology, ic[1].kernel, ic[1].qemu), ic[0]))]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Matrix":
        """A matrix read back from its matrix.json (to merge shards)."""
        cell_fields = {f for f in Cell.__dataclass_fields__}
        run_fields = {f for f in RunEntry.__dataclass_fields__}
        m = cls(kernels=list(data["kernels"]), topologies=list(data["topologies"]),
                started=str(data.get("started", "")), seconds=float(data.get("seconds", 0)),
                plan_id=str(data.get("plan_id", "")), shard=data.get("shard"),
                boots=list(data.get("boots", [])),
                planned={str(t): [str(w) for w in ws] for t, ws in
                         (data.get("planned") or {}).items()},
                qemus=list(data.get("qemus") or []),
                mbps_tolerance=float(data.get("mbps_tolerance", DEFAULT_MBPS_TOLERANCE)))
        m.runs = [RunEntry(**{k: v for k, v in r.items() if k in run_fields})
                  for r in data["runs"]]
        broke = {(r.topology, r.kernel, r.qemu) for r in m.runs if r.error}
        m.cells = [Cell(**{k: v for k, v in c.items() if k in cell_fields})
                   for c in data["cells"]
                   if (c["topology"], c["kernel"], c.get("qemu", "")) not in broke
                   and c.get("verdict") != "missing"]
        return m

    @property
    def labels(self) -> list[str]:
        """The kernels' labels (the first is the baseline)."""
        return [k["label"] for k in self.kernels]

    @property
    def baseline(self) -> str:
        return self.labels[0]

    @property
    def qemu_labels(self) -> list[str]:
        """The QEMUs' labels (the first is the QEMU axis's baseline); [""] without QEMUs."""
        return [str(q["label"]) for q in self.qemus] or [""]

    @property
    def baseline_qemu(self) -> str:
        return self.qemu_labels[0]

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(kernel, QEMU) of every column, kernels first."""
        return [(k, q) for k in self.labels for q in self.qemu_labels]

    @property
    def baseline_column(self) -> str:
        return column_label(self.baseline, self.baseline_qemu)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Every row (topology, workload, provider, client), in first-seen order per topology."""
        seen: dict[tuple, None] = {}
        for topo in self.topologies:
            rows = [c.row for c in self.cells if c.topology == topo]
            if not rows and any(r.topology == topo and r.error for r in self.runs):
                rows = [(topo, w, "", "") for w in self.planned.get(topo, [])]
            for row in rows:
                seen.setdefault(row, None)
        return list(seen)

    def cell(self, row: tuple, kernel: str, qemu: str = "") -> Cell | None:
        """The cell of ``row`` for ``kernel`` (on ``qemu``); when that run happened but has
        no such pair (it broke, or the pair vanished), a placeholder saying so; None when
        the run has not happened (yet)."""
        for c in self.cells:
            if c.row == row and c.kernel == kernel and c.qemu == qemu:
                return c
        run = self.run(row[0], kernel, qemu)
        if run is None:
            return None
        if run.error:
            return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "error",
                        None, None, f"the run broke: {run.error.splitlines()[0]}", qemu=qemu)
        return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "missing",
                    None, None, "no such pair in this run", qemu=qemu)

    def run(self, topology: str, kernel: str, qemu: str = "") -> RunEntry | None:
        for r in self.runs:
            if r.topology == topology and r.kernel == kernel and r.qemu == qemu:
                return r
        return None

    def regressions(self) -> list[Regression]:
        """Verdict regressions against the baseline kernel."""
        return find_regressions(self)

    def mechanism_regressions(self) -> list[Regression]:
        """Pairs a later kernel maps another way than the baseline (ok by bus address on
        the baseline, ok through the host bridge now, say): a regression of its own kind."""
        return find_mechanism_changes(self)

    def qemu_regressions(self) -> list[Regression]:
        """Differences between a later QEMU and the first, under the same kernel: verdict,
        map type, MB/s beyond the tolerance, a run that broke (:mod:`.qemu_axis`)."""
        return qemu_regressions(self)

    def group_changes(self) -> list[GroupChange]:
        """Later kernels (under the same QEMU) and later QEMUs (with the same kernel) whose
        IOMMU groups differ from the baseline's, per topology (not regressions by
        themselves)."""
        out = []
        base_k, base_q = self.baseline, self.baseline_qemu
        comparisons = [((base_k, q), (k, q)) for q in self.qemu_labels for k in self.labels[1:]]
        comparisons += [((k, base_q), (k, q)) for k in self.labels for q in self.qemu_labels[1:]]
        for topo in self.topologies:
            for (bk, bq), (k, q) in comparisons:
                base, later = self.run(topo, bk, bq), self.run(topo, k, q)
                if base is None or base.iommu_groups is None or later is None \
                        or later.iommu_groups is None:
                    continue
                changes = compare(base.iommu_groups, later.iommu_groups)
                if changes:
                    out.append(GroupChange(topo, column_label(k, q), column_label(bk, bq),
                                           tuple(changes)))
        return out

    @property
    def incomplete(self) -> list[RunEntry]:
        """Runs that broke before their workloads finished (boot failure, ...)."""
        return [r for r in self.runs if r.error]

    @property
    def status(self) -> int:
        """1 when any cell regressed against the baseline (kernel or QEMU) or a run broke;
        else 0."""
        return 1 if self.regressions() or self.mechanism_regressions() or self.incomplete \
            or self.qemu_regressions() else 0

    def to_json(self) -> dict[str, Any]:
        regs = self.regressions()
        return {
            "started": self.started, "seconds": round(self.seconds, 1),
            "plan_id": self.plan_id, "shard": self.shard, "boots": self.boots,
            "planned": self.planned,
            "baseline": self.baseline, "kernels": self.kernels, "topologies": self.topologies,
            "qemus": self.qemus, "baseline_qemu": self.baseline_qemu,
            "mbps_tolerance": self.mbps_tolerance,
            "runs": [asdict(r) for r in self.runs],
            "cells": [c.to_json() for row in self.rows() for (k, q) in self.columns
                      if (c := self.cell(row, k, q)) is not None],
            "regressions": [asdict(r) for r in regs],
            "mechanism_regressions": [asdict(r) for r in self.mechanism_regressions()],
            "qemu_regressions": [asdict(r) for r in self.qemu_regressions()],
            "group_changes": [g.to_json() for g in self.group_changes()],
            "incomplete": [f"{r.topology} × {r.column}: {r.error.splitlines()[0]}"
                           for r in self.incomplete],
            "status": self.status,
        }


def _against_baseline(m: Matrix) -> Iterator[tuple[tuple[str, str, str, str], Cell, str,
                                                   str, Cell]]:
    """(row, baseline cell, later kernel, QEMU, its cell) for every cell both runs have,
    under the same QEMU (a run that has not happened has no cell)."""
    if not m.kernels:
        return
    for row in m.rows():
        for q in m.qemu_labels:
            b = m.cell(row, m.baseline, q)
            if b is None:
                continue
            for label in m.labels[1:]:
                later = m.cell(row, label, q)
                if later is not None:
                    yield row, b, label, q, later


BROKEN = ("fail", "error")


def subtest_regressions(b: Cell, later: Cell) -> list[tuple[str, str, str]]:
    """(subtest, was, now) for every subtest of a kernel test that passed on the baseline
    and fails, errs or is gone on the later kernel (gone: the program stopped before it)."""
    if not later.subtests:
        return []  # it did not run (error, unsupported, skipped): the cell's verdict says so
    out = []
    for name, was in b.subtests.items():
        now = later.subtests.get(name, "missing")
        if was == "pass" and (now in BROKEN or now == "missing"):
            out.append((name, was, now))
    return out


def find_regressions(m: Matrix) -> list[Regression]:
    out: list[Regression] = []
    for row, b, label, q, later in _against_baseline(m):
        if b.subtests:
            regs = subtest_regressions(b, later)
            for name, was, now in regs:
                out.append(Regression(row[0], row[1], row[2] or None, row[3] or None, label,
                                      m.baseline, was, now,
                                      f"subtest {name}: passed on {m.baseline}, {now} on "
                                      f"{label}", kind="subtest", qemu=q, baseline_qemu=q))
            if regs or (later.subtests and later.verdict != "error"):
                continue  # judged subtest by subtest (an oops or hang: by the cell too)
        why = worse(b, later)
        if why:
            out.append(Regression(row[0], row[1], row[2] or None, row[3] or None, label,
                                  m.baseline, b.verdict, later.verdict, why, qemu=q,
                                  baseline_qemu=q))
    return out


def find_mechanism_changes(m: Matrix) -> list[Regression]:
    out: list[Regression] = []
    for row, b, label, q, later in _against_baseline(m):
        before, after = b.observed_map_type, later.observed_map_type
        if before and after and after != before and later.verdict == b.verdict:
            out.append(Regression(
                row[0], row[1], row[2] or None, row[3] or None, label, m.baseline,
                f"{b.verdict} by {before}", f"{later.verdict} by {after}",
                f"the same verdict, but {label} maps the transfer by {after} where "
                f"{m.baseline} used {before}", kind="mechanism", qemu=q, baseline_qemu=q))
    return out


NO_CELLS = ("inventory", "exec")  # workloads whose records are never cells


def cells_from_result(topology: str, kernel: str, result: RunResult,
                      qemu: str = "") -> list[Cell]:
    """The cells of one run: every judged record and every record with a pair."""
    cells = []
    for r in result.workloads:
        if r.name in NO_CELLS or r.command is not None:
            continue
        if r.test is not None:  # a kernel test program: a row of its own, its subtests kept
            observed = r.observed or ("unsupported" if r.detail.startswith("unsupported")
                                      else "skip")  # not run: why is in the detail
            cells.append(Cell(topology, kernel, f"{r.name}/{r.test}", None, None, r.predicted,
                              observed, None, None, r.detail or "",
                              passed=r.passed if r.judged else None, qemu=qemu,
                              subtests={path: str(t.get("status")) for path, t in
                                        subtest_leaves(r.subtests)}))
            continue
        if not (r.judged or r.provider or r.client):
            continue
        cells.append(Cell(topology, kernel, r.name, r.provider, r.client, r.predicted,
                          r.observed, r.data_verified, r.mb_per_s, r.detail or "",
                          r.predicted_map_type, r.observed_map_type,
                          r.passed if r.judged else None, qemu))
    return cells


def add_run(m: Matrix, topology: str, kernel: str, result: RunResult,
            directory: Path | str, qemu: str = "") -> None:
    """Record one run's result (``qemu``: its QEMU's label in a matrix with QEMUs)."""
    kinfo = result.kernel or {}
    error = result.error or ("" if result.finished else "the run did not finish")
    m.runs.append(RunEntry(topology, kernel, str(directory), result.status, error,
                           kinfo.get("release"), kinfo.get("p2pdma"),
                           round(result.boot_seconds, 2), round(result.seconds, 2),
                           error_kind=result.error_kind,
                           iommu_groups=observed_groups(result.workloads), qemu=qemu,
                           qemu_version=(result.qemu or {}).get("version")))
    m.cells += cells_from_result(topology, kernel, result, qemu)
