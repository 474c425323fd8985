"""Cutting a matrix into shards for CI engines, deterministically and balanced by cost.

A matrix is a set of *boots*: one per (topology, kernel) — per (topology, kernel,
QEMU) when the plan has QEMUs — each running the plan's workloads.  A shard is a set of whole boots (a boot's workloads are never split).  The
partition depends only on the plan: the longest boots first, each to the shard with the
least expected cost so far (ties to the lower shard number), so every runner computes
the same shards.  The plan id is a hash of everything that changes what a matrix runs.

    >>> boots = [Boot("a@k", "a", "k", ("p2p-copy",), 3.0), Boot("b@k", "b", "k", (), 2.0),
    ...          Boot("c@k", "c", "k", (), 2.0)]
    >>> [[b.id for b in s] for s in partition(boots, 2)]
    [['a@k'], ['b@k', 'c@k']]
    >>> parse_shard("2/3")
    (2, 3)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import UsageError
from ..spec.model import Topology
from ..verdicts.predict import pairs
from ..workloads import default_workloads
from .plan import MatrixPlan

BOOT_SECONDS = 12.0  # what a boot with its checks costs under TCG, roughly
# seconds per (provider, client) pair of each workload (under a translating vIOMMU the
# transfers are spaced out for the fault messages' rate limit)
PAIR_SECONDS = {"p2p-copy": 2.0, "host-baseline": 1.0, "passthru": 1.5}
FIXED_SECONDS = {"pmr": 15.0, "inventory": 0.5, "isolation": 4.0}
OTHER_SECONDS = 10.0


@dataclass(frozen=True)
class Boot:
    id: str  # "<topology>@<kernel label>" (+ "@<QEMU label>" when the plan has QEMUs)
    topology: str
    kernel: str
    workloads: tuple[str, ...]
    cost: float  # expected seconds
    qemu: str = ""  # the QEMU's label ("": the topology's own machine.qemu)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def boot_cost(topo: Topology, workloads: Sequence[str]) -> float:
    """Expected seconds of one boot running ``workloads`` on ``topo``."""
    spaced = 5.5 if topo.iommu.model != "none" and topo.iommu.mode == "strict" else 0.0
    n = len(pairs(topo))
    cost = BOOT_SECONDS + (8.0 if topo.iommu.model != "none" else 0.0)
    for w in workloads:
        if w in PAIR_SECONDS:
            cost += n * (PAIR_SECONDS[w] + spaced)
        else:
            cost += FIXED_SECONDS.get(w, OTHER_SECONDS)
    return round(cost, 1)


def boots(plan: MatrixPlan) -> list[Boot]:
    """Every boot of the plan, in plan order (topologies, then kernels, then QEMUs)."""
    out = []
    for topo in plan.topologies:
        workloads = tuple(plan.workloads) or tuple(default_workloads(topo))
        for k in plan.kernels:
            for q in plan.qemu_labels:
                out.append(Boot(f"{topo.name}@{k.label}" + (f"@{q}" if q else ""), topo.name,
                                k.label, workloads, boot_cost(topo, workloads), q))
    return out


def partition(all_boots: Sequence[Boot], n: int) -> list[list[Boot]]:
    """``n`` shards of whole boots, balanced by cost; deterministic."""
    shards: list[list[Boot]] = [[] for _ in range(n)]
    load = [0.0] * n
    for b in sorted(all_boots, key=lambda b: (-b.cost, b.id)):
        i = min(range(n), key=lambda j: (load[j], j))
        shards[i].append(b)
        load[i] += b.cost
    order = {b.id: i for i, b in enumerate(all_boots)}
    return [sorted(s, key=lambda b: order[b.id]) for s in shards]


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N), 1 <= K <= N (UsageError otherwise)."""
    k, sep, n = text.partition("/")
    try:
        ki, ni = int(k), int(n)
    except ValueError:
        ki = ni = 0
    if not sep or not 1 <= ki <= ni:
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, such as 1/4")
    return ki, ni


def plan_id(plan: MatrixPlan) -> str:
    """A hash of what the matrix runs: topology files, kernels, workloads, sizes."""
    h = hashlib.sha256(b"p2pdma-testbed matrix plan 1\0")
    for topo in plan.topologies:
        text = topo.source.read_bytes() if topo.source and topo.source.is_file() else b""
        h.update(f"{topo.name}\0{len(text)}\0".encode() + text)
    for k in plan.kernels:
        ident = "default" if k.kernel is None else k.kernel.identity()
        h.update(f"{k.label}\0{ident}\0".encode())
    h.update(json.dumps([list(plan.workloads), plan.size, plan.timeout]).encode())
    if plan.coverage is not None:  # shards that measured other files do not sum
        h.update(json.dumps(["coverage", list(plan.coverage.files),
                             str(plan.coverage.source or "")]).encode())
    for q in plan.qemus:  # by version, not path: every runner installs its own copy
        h.update(f"qemu\0{q.label}\0{q.version}\0".encode())
    if plan.qemus:
        h.update(f"{plan.mbps_tolerance}".encode())
    return h.hexdigest()[:16]


def plan_json(plan: MatrixPlan, shards: int | None = None) -> dict[str, Any]:
    """The plan as CI engines read it (see the README for the fields)."""
    all_boots = boots(plan)
    doc: dict[str, Any] = {
        "plan_id": plan_id(plan),
        "baseline": plan.kernels[0].label,
        "topologies": [t.name for t in plan.topologies],
        "kernels": [{"label": k.label, "spec": k.spec} for k in plan.kernels],
        "workloads": list(plan.workloads),
        "boots": [b.to_json() for b in all_boots],
        "cells": [{"topology": b.topology, "kernel": b.kernel, "workload": w,
                   **({"qemu": b.qemu} if b.qemu else {})}
                  for b in all_boots for w in b.workloads],
    }
    if plan.qemus:
        doc["qemus"] = [q.to_json() for q in plan.qemus]
        doc["baseline_qemu"] = plan.qemus[0].label
    if shards:
        doc["shards"] = [{"shard": f"{i + 1}/{shards}", "boots": [b.id for b in s],
                          "cost": round(sum(b.cost for b in s), 1)}
                         for i, s in enumerate(partition(all_boots, shards))]
    return doc
