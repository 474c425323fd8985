"""A matrix's coverage: per kernel, the sum over every run (the union) and, per topology,
what only that topology reached (which topologies earn their place).

It is computed from the runs' own coverage.json files, so a matrix run whole and the
merge of its shards (which copies the same run directories) sum the same way.

Files beside matrix.json: ``coverage.json`` (``{"kernels": {label: {the union as a run's
coverage.json, "by_topology": {topology: {"functions": n, "lines": n, "only": {file:
{"functions": [...], "lines": [[a, b], ...]}}}}}}}``), and per kernel
``coverage-<kernel>.info`` (lcov) and ``coverage-<kernel>.xml`` (Cobertura).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coverage.cobertura import to_cobertura
from ..coverage.lcov import to_lcov
from ..coverage.model import EXECUTED, Coverage, ranges, union
from ..coverage.outputs import judge_again, read_coverage
from ..coverage.patch import PatchCoverage
from ..util.files import atomic_write
from .cells import Matrix


@dataclass
class TopologyShare:
    functions: int = 0  # functions this topology's runs executed
    lines: int = 0
    only: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> only here

    def to_json(self) -> dict[str, Any]:
        return {"functions": self.functions, "lines": self.lines, "only": self.only,
                "only_functions": sum(len(v.get("functions", [])) for v in self.only.values()),
                "only_lines": sum(b - a + 1 for v in self.only.values()
                                  for a, b in v.get("lines", []))}


@dataclass
class KernelCoverage:
    label: str
    total: Coverage
    by_topology: dict[str, TopologyShare]
    patch: PatchCoverage | None = None  # --patch-coverage, judged on the sum

    def to_json(self) -> dict[str, Any]:
        return {**self.total.to_json(),
                "by_topology": {t: s.to_json() for t, s in self.by_topology.items()},
                **({"patch_coverage": self.patch.to_json()} if self.patch else {})}


def patch_failure(covs: list[KernelCoverage]) -> str | None:
    """Why the matrix falls short of --min-patch-coverage: a kernel that carries the patch
    is below it, or no kernel carries it (kernels that do not, a baseline, are not judged)."""
    judged = [k for k in covs if k.patch is not None and k.patch.carried]
    if not any(k.patch is not None and k.patch.minimum is not None for k in covs):
        return None
    if not judged:
        return "no kernel of the matrix carries the patch"
    for k in judged:
        assert k.patch is not None
        if k.patch.failed:
            return f"{k.label}: {k.patch.failed}"
    return None


def cell_prefix(topology: str, kernel: str) -> str:
    return f"{topology}@{kernel}:"


def _topology_of(cell: str, topologies: list[str]) -> str | None:
    for t in topologies:
        if cell.startswith(f"{t}@"):
            return t
    return None


def shares(total: Coverage, topologies: list[str]) -> dict[str, TopologyShare]:
    """Per topology: what its cells executed, and what no other topology's did."""
    out = {t: TopologyShare() for t in topologies}
    for path, f in total.files.items():
        func_by: dict[str, set[str]] = {t: set() for t in topologies}
        for fn in f.functions.values():
            if fn.status != EXECUTED:
                continue
            for cell, n in fn.cells.items():
                t = _topology_of(cell, topologies)
                if t is not None and n > 0:
                    func_by[t].add(fn.name)
        line_by: dict[str, set[int]] = {t: set() for t in topologies}
        for cell, ls in f.line_cells.items():
            t = _topology_of(cell, topologies)
            if t is not None:
                line_by[t] |= ls
        for t in topologies:
            others_f = set().union(*(func_by[o] for o in topologies if o != t))
            others_l = set().union(*(line_by[o] for o in topologies if o != t))
            out[t].functions += len(func_by[t])
            out[t].lines += len(line_by[t])
            only_f = sorted(func_by[t] - others_f)
            only_l = ranges(line_by[t] - others_l)
            if only_f or only_l:
                out[t].only[path] = {"functions": only_f, **({"lines": only_l} if only_l
                                                             else {})}
    return out


def matrix_coverage(m: Matrix, out: Path) -> list[KernelCoverage]:
    """The coverage of every kernel of the matrix whose runs measured some."""
    result = []
    for label in m.labels:
        parts = []
        files = []
        for run in m.runs:
            if run.kernel != label:
                continue
            cov = read_coverage(out / run.directory / "coverage.json")
            if cov is not None:
                parts.append(cov.relabel(cell_prefix(run.topology, run.kernel)))
                files.append(out / run.directory / "coverage.json")
        total = union(parts)
        if total is None:
            continue
        topos = [t for t in m.topologies if any(c.startswith(f"{t}@") for c in total.cells)]
        patch = next((pc for f in files if (pc := judge_again(f, total)) is not None), None)
        result.append(KernelCoverage(label, total, shares(total, topos), patch))
    return result


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "kernel"


def write_matrix_coverage(m: Matrix, out: Path) -> list[KernelCoverage]:
    covs = matrix_coverage(m, out)
    if not covs:
        return covs
    atomic_write(out / "coverage.json", json.dumps(
        {"kernels": {k.label: k.to_json() for k in covs}}, indent=1) + "\n")
    for k in covs:
        atomic_write(out / f"coverage-{slug(k.label)}.info",
                     to_lcov(k.total, k.total.root, f"matrix_{k.label}"))
        atomic_write(out / f"coverage-{slug(k.label)}.xml",
                     to_cobertura(k.total, k.total.root, int(time.time())))
        if k.patch is not None:
            atomic_write(out / f"patch-coverage-{slug(k.label)}.txt",
                         f"{k.label}: {k.patch.summary()}\n")
    return covs
