"""The matrix plan: every topology loaded and every kernel resolved, before anything boots.

    plan = plan_matrix(["switch-cmb"], ["default", "/build/linux"], workloads=["p2p-copy"])

The first kernel is the baseline.  Bad input (an unknown topology or workload, a
kernel that is not one, the same kernel twice) is a UsageError here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..coverage.session import CoverageRequest, plan_coverage
from ..errors import UsageError
from ..kernel.resolve import KernelSpec, resolve_kernel
from ..qemu.accel import requested_accel
from ..qemu.validate import load_checked
from ..spec.model import Topology
from .runner import RunOptions, plan


@dataclass
class KernelEntry:
    label: str
    spec: str
    kernel: KernelSpec | None  # None for the image's
    description: str
    release: str | None = None
    p2pdma: bool | None = None


@dataclass
class MatrixPlan:
    topologies: list[Topology]
    kernels: list[KernelEntry]
    workloads: tuple[str, ...] = ()
    size: int = 1 << 20
    timeout: float = 120.0
    accel: str | None = None
    boot_retries: int = 1  # retries of a run whose boot timed out (not: panicked)
    fio_args: tuple[str, ...] = ()
    coverage: CoverageRequest | None = None  # --coverage: summed across the runs


def _disambiguate(entries: list[KernelEntry]) -> None:
    """Make labels unique: ``7.3.4 (build)`` / ``7.3.4 (build-patched)``."""
    groups: dict[str, list[KernelEntry]] = {}
    for e in entries:
        groups.setdefault(e.label, []).append(e)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        parts = [Path(str(getattr(e.kernel, "image_file", e.spec))).resolve().parts
                 for e in group]
        n = min(len(p) for p in parts)
        idx = next((i for i in range(n) if len({p[i] for p in parts}) > 1), None)
        for i, e in enumerate(group):
            tag = parts[i][idx] if idx is not None else f"#{i + 1}"
            e.label = f"{label} ({tag})"
        if len({e.label for e in group}) < len(group):
            for i, e in enumerate(group):
                e.label = f"{label} #{i + 1}"


def plan_matrix(topologies: Sequence[str], kernels: Sequence[str],
                workloads: Sequence[str] = (), size: int = 1 << 20, timeout: float = 120.0,
                accel: str | None = None, fio_args: Sequence[str] = (),
                coverage: CoverageRequest | None = None) -> MatrixPlan:
    """Load every topology and resolve every kernel; UsageError on bad input."""
    if not topologies:
        raise UsageError("--topology: give at least one topology")
    requested_accel(accel or "auto")  # a bad TESTBED_ACCEL is bad input, found now
    if not kernels:
        raise UsageError("--kernel: give at least one kernel (the first is the baseline; "
                         "'default' is the image's)")
    topos: list[Topology] = []
    seen_topos: dict[str, str] = {}
    for t in topologies:
        topo = load_checked(t)
        key = str(topo.source.resolve()) if topo.source else topo.name
        if key in seen_topos or topo.name in {x.name for x in topos}:
            raise UsageError(f"--topology {t}: given twice")
        seen_topos[key] = t
        topos.append(topo)
    entries: list[KernelEntry] = []
    identities: dict[str, str] = {}
    for spec in kernels:
        k = resolve_kernel(spec)
        ident = "default" if k is None else k.identity()
        if ident in identities:
            raise UsageError(f"--kernel {spec}: the same kernel as --kernel {identities[ident]} "
                             "(each kernel once; the first is the baseline)")
        identities[ident] = spec
        if k is None:
            entries.append(KernelEntry("default", "default", None, "the image's kernel"))
        else:
            entries.append(KernelEntry(k.label, spec, k, k.description, k.release, k.p2pdma))
    _disambiguate(entries)
    for topo in topos:
        plan(topo, RunOptions(workloads=tuple(workloads),  # unknown workload -> UsageError
                              fio_args=tuple(fio_args)))
    if coverage is not None:
        for e in entries:  # every kernel's source, found before anything boots
            plan_coverage(coverage, e.kernel)
    return MatrixPlan(topos, entries, tuple(workloads), size, timeout, accel,
                      fio_args=tuple(fio_args), coverage=coverage)
