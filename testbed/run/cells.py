"""The matrix as data: cells, runs and the regressions between kernels.

The matrix keeps one *cell* per topology × kernel × pair (workload, provider,
client): predicted, observed, data_verified, MB/s.

A cell is a **regression** when the baseline kernel's cell for the same row was
``ok`` and the later kernel's is anything else (``rejected``, ``iommu-fault``,
``unsupported``, ``error``, missing because the run broke), or when the
baseline's data was verified and the later kernel's is not.

Files: ``matrix.json``, ``matrix.md``, ``matrix.html`` and one directory per
run, ``<topology>/<kernel>/`` (results.json, console.log, dmesg.txt, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..results.model import RunResult
from .groups import GroupChange, compare, observed_groups

# what a cell can show, in the order a legend lists them
VERDICTS = ("ok", "rejected", "iommu-fault", "isolation-hole", "unsupported", "error",
            "missing")


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
    kind: str = "verdict"  # or "mechanism": the same verdict reached another way

    def __str__(self) -> str:
        pair = f"{self.provider or '?'} -> {self.client or '?'}"
        return (f"{self.topology} {self.workload} {pair}: {self.baseline_kernel} {self.was}, "
                f"{self.kernel} {self.now} ({self.reason})")


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

    def sort(self) -> None:
        """Runs and cells in plan order (topologies, then kernels), whatever order the
        boots finished in."""
        t_order = {t: i for i, t in enumerate(self.topologies)}
        k_order = {k: i for i, k in enumerate(self.labels)}
        self.runs.sort(key=lambda r: (t_order.get(r.topology, 1 << 30),
                                      k_order.get(r.kernel, 1 << 30)))
        self.cells = [c for _, c in sorted(enumerate(self.cells), key=lambda ic: (
            t_order.get(ic[1].topology, 1 << 30), k_order.get(ic[1].kernel, 1 << 30), ic[0]))]

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
                         (data.get("planned") or {}).items()})
        m.runs = [RunEntry(**{k: v for k, v in r.items() if k in run_fields})
                  for r in data["runs"]]
        broke = {(r.topology, r.kernel) for r in m.runs if r.error}
        m.cells = [Cell(**{k: v for k, v in c.items() if k in cell_fields})
                   for c in data["cells"] if (c["topology"], c["kernel"]) not in broke
                   and c.get("verdict") != "missing"]
        return m

    @property
    def labels(self) -> list[str]:
        return [k["label"] for k in self.kernels]

    @property
    def baseline(self) -> str:
        return self.labels[0]

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

    def cell(self, row: tuple, kernel: str) -> Cell | None:
        """The cell of ``row`` for ``kernel``; when that run happened but has no such
        pair (it broke, or the pair vanished), a placeholder saying so; None when the
        run has not happened (yet)."""
        for c in self.cells:
            if c.row == row and c.kernel == kernel:
                return c
        run = self.run(row[0], kernel)
        if run is None:
            return None
        if run.error:
            return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "error",
                        None, None, f"the run broke: {run.error.splitlines()[0]}")
        return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "missing",
                    None, None, "no such pair in this run")

    def run(self, topology: str, kernel: str) -> RunEntry | None:
        for r in self.runs:
            if r.topology == topology and r.kernel == kernel:
                return r
        return None

    def regressions(self) -> list[Regression]:
        """Verdict regressions against the baseline kernel."""
        return find_regressions(self)

    def mechanism_regressions(self) -> list[Regression]:
        """Pairs a later kernel maps another way than the baseline (ok by bus address on
        the baseline, ok through the host bridge now, say): a regression of its own kind."""
        return find_mechanism_changes(self)

    def group_changes(self) -> list[GroupChange]:
        """Later kernels whose IOMMU groups differ from the baseline's, per topology (not
        regressions by themselves)."""
        out = []
        for topo in self.topologies:
            base = self.run(topo, self.baseline)
            if base is None or base.iommu_groups is None:
                continue
            for label in self.labels[1:]:
                later = self.run(topo, label)
                if later is None or later.iommu_groups is None:
                    continue
                changes = compare(base.iommu_groups, later.iommu_groups)
                if changes:
                    out.append(GroupChange(topo, label, self.baseline, tuple(changes)))
        return out

    @property
    def incomplete(self) -> list[RunEntry]:
        """Runs that broke before their workloads finished (boot failure, ...)."""
        return [r for r in self.runs if r.error]

    @property
    def status(self) -> int:
        """1 when any cell regressed against the baseline or a run broke; else 0."""
        return 1 if self.regressions() or self.mechanism_regressions() or self.incomplete \
            else 0

    def to_json(self) -> dict[str, Any]:
        regs = self.regressions()
        return {
            "started": self.started, "seconds": round(self.seconds, 1),
            "plan_id": self.plan_id, "shard": self.shard, "boots": self.boots,
            "planned": self.planned,
            "baseline": self.baseline, "kernels": self.kernels, "topologies": self.topologies,
            "runs": [asdict(r) for r in self.runs],
            "cells": [c.to_json() for row in self.rows() for label in self.labels
                      if (c := self.cell(row, label)) is not None],
            "regressions": [asdict(r) for r in regs],
            "mechanism_regressions": [asdict(r) for r in self.mechanism_regressions()],
            "group_changes": [g.to_json() for g in self.group_changes()],
            "incomplete": [f"{r.topology} × {r.kernel}: {r.error.splitlines()[0]}"
                           for r in self.incomplete],
            "status": self.status,
        }


def _worse(base: Cell, later: Cell) -> str | None:
    """Why ``later`` is a regression against ``base`` (None: it is not)."""
    detail = f": {later.detail.splitlines()[0]}" if later.detail else ""
    informational = base.observed is None and later.observed is None  # e.g. host-baseline
    if base.verdict == "ok" and later.verdict != "ok" and not informational:
        return f"was ok, now {later.verdict}{detail}"
    if base.data_verified is True and later.data_verified is not True:
        return f"data no longer verified{detail}"
    return None


def _against_baseline(m: Matrix) -> Iterator[tuple[tuple[str, str, str, str], Cell, str, Cell]]:
    """(row, baseline cell, later kernel, its cell) for every cell both runs have (a run
    that has not happened has no cell)."""
    if not m.kernels:
        return
    for row in m.rows():
        b = m.cell(row, m.baseline)
        if b is None:
            continue
        for label in m.labels[1:]:
            later = m.cell(row, label)
            if later is not None:
                yield row, b, label, later


def find_regressions(m: Matrix) -> list[Regression]:
    out: list[Regression] = []
    for row, b, label, later in _against_baseline(m):
        why = _worse(b, later)
        if why:
            out.append(Regression(row[0], row[1], row[2] or None, row[3] or None, label,
                                  m.baseline, b.verdict, later.verdict, why))
    return out


def find_mechanism_changes(m: Matrix) -> list[Regression]:
    out: list[Regression] = []
    for row, b, label, later in _against_baseline(m):
        before, after = b.observed_map_type, later.observed_map_type
        if before and after and after != before and later.verdict == b.verdict:
            out.append(Regression(
                row[0], row[1], row[2] or None, row[3] or None, label, m.baseline,
                f"{b.verdict} by {before}", f"{later.verdict} by {after}",
                f"the same verdict, but {label} maps the transfer by {after} where "
                f"{m.baseline} used {before}", kind="mechanism"))
    return out


NO_CELLS = ("inventory", "exec")  # workloads whose records are never cells


def cells_from_result(topology: str, kernel: str, result: RunResult) -> list[Cell]:
    """The cells of one run: every judged record and every record with a pair."""
    cells = []
    for r in result.workloads:
        if r.name in NO_CELLS or r.command is not None:
            continue
        if not (r.judged or r.provider or r.client):
            continue
        cells.append(Cell(topology, kernel, r.name, r.provider, r.client, r.predicted,
                          r.observed, r.data_verified, r.mb_per_s, r.detail or "",
                          r.predicted_map_type, r.observed_map_type,
                          r.passed if r.judged else None))
    return cells


def add_run(m: Matrix, topology: str, kernel: str, result: RunResult,
            directory: Path | str) -> None:
    """Record one run's result."""
    kinfo = result.kernel or {}
    error = result.error or ("" if result.finished else "the run did not finish")
    m.runs.append(RunEntry(topology, kernel, str(directory), result.status, error,
                           kinfo.get("release"), kinfo.get("p2pdma"),
                           round(result.boot_seconds, 2), round(result.seconds, 2),
                           error_kind=result.error_kind,
                           iommu_groups=observed_groups(result.workloads)))
    m.cells += cells_from_result(topology, kernel, result)
