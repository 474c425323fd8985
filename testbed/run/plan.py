"""The matrix plan: every topology loaded and every kernel and QEMU resolved, before
anything boots.

    plan = plan_matrix(["switch-cmb"], ["default", "/build/linux"], workloads=["p2p-copy"])
    plan = plan_matrix(["switch-cmb"], ["default"], qemus=["host", "11.1"])

The first kernel is the baseline; with QEMUs (``-q``) the first QEMU is the baseline of
the QEMU axis, and every topology is checked against every QEMU (a topology one of them
cannot build is bad input, as it is for ``testbed validate``).  Bad input (an unknown
topology or workload, a kernel that is not one, the same kernel or QEMU twice, a QEMU
that is not one) is a UsageError here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..coverage.session import CoverageRequest, plan_coverage
from ..errors import QemuError, UsageError
from ..kernel.resolve import KernelSpec, resolve_kernel
from ..qemu.accel import requested_accel
from ..qemu.binary import Qemu
from ..qemu.installed import resolve_qemu
from ..qemu.probe import probe
from ..qemu.validate import load_checked
from ..spec.model import Topology
from .qemu_axis import DEFAULT_MBPS_TOLERANCE
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
class QemuEntry:
    label: str  # "host", "11.1", ... (a path: its version)
    spec: str  # as given to -q; what a topology's machine.qemu is set to
    qemu: Qemu
    version: str  # what its probe found ("11.1.3")

    def to_json(self) -> dict[str, str]:
        return {"label": self.label, "spec": self.spec, "version": self.version,
                "binary": self.qemu.binary}


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
    qemus: list[QemuEntry] = field(default_factory=list)  # empty: each topology's own
    mbps_tolerance: float = DEFAULT_MBPS_TOLERANCE
    # each topology as checked against each QEMU: (topology name, QEMU label) -> Topology
    on_qemu: dict[tuple[str, str], Topology] = field(default_factory=dict)

    @property
    def qemu_labels(self) -> list[str]:
        return [q.label for q in self.qemus] or [""]

    def topology(self, name: str, qemu: str = "") -> Topology:
        """The topology ``name`` as it runs on the QEMU labelled ``qemu``."""
        if qemu:
            return self.on_qemu[(name, qemu)]
        return next(t for t in self.topologies if t.name == name)


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


def _qemus(specs: Sequence[str]) -> list[QemuEntry]:
    """Each -q resolved and probed, labelled (a path by its version), each QEMU once."""
    out: list[QemuEntry] = []
    seen: dict[str, str] = {}
    for spec in specs:
        try:
            q = resolve_qemu(spec)
            version = probe(q).version_str
        except QemuError as exc:
            raise UsageError(f"--qemu {spec}: {exc}") from None
        ident = q.identity()
        if ident in seen:
            raise UsageError(f"--qemu {spec}: the same QEMU as --qemu {seen[ident]} "
                             "(each QEMU once; the first is the baseline)")
        seen[ident] = spec
        label = version if "/" in spec or spec.startswith("~") else spec
        taken = {e.label for e in out}
        if label in taken:
            label = next(f"{label} #{n}" for n in range(2, len(out) + 3)
                         if f"{label} #{n}" not in taken)
        out.append(QemuEntry(label, spec, q, version))
    return out



def _matrix_kernel(spec: str, topos: list[Topology], archs: list[str]) -> KernelSpec | None:
    """``--kernel spec`` resolved for the matrix's machines: a kernel other than the images'
    boots one architecture, so it needs every topology on that architecture."""
    if spec is None or str(spec).strip() in ("", "default"):
        return None
    if len(archs) > 1:
        raise UsageError(f"--kernel {spec}: this matrix mixes architectures ({', '.join(archs)}"
                         "); a kernel other than the images' ('default') boots only one: run "
                         "each architecture's topologies in a matrix of their own")
    return resolve_kernel(spec, topos[0].profile) if topos else resolve_kernel(spec)

def plan_matrix(topologies: Sequence[str], kernels: Sequence[str],
                workloads: Sequence[str] = (), size: int = 1 << 20, timeout: float = 120.0,
                accel: str | None = None, fio_args: Sequence[str] = (),
                coverage: CoverageRequest | None = None, qemus: Sequence[str] = (),
                mbps_tolerance: float = DEFAULT_MBPS_TOLERANCE) -> MatrixPlan:
    """Load every topology and resolve every kernel and QEMU; UsageError on bad input."""
    if not topologies:
        raise UsageError("--topology: give at least one topology")
    requested_accel(accel or "auto")  # a bad TESTBED_ACCEL is bad input, found now
    if not kernels:
        raise UsageError("--kernel: give at least one kernel (the first is the baseline; "
                         "'default' is the image's)")
    if not 0 <= mbps_tolerance <= 1:
        raise UsageError("--mbps-tolerance: a percentage from 0 to 100")
    qemu_entries = _qemus(qemus)
    topos: list[Topology] = []
    on_qemu: dict[tuple[str, str], Topology] = {}
    seen_topos: dict[str, str] = {}
    for t in topologies:
        # checked against every QEMU it will run on
        variants = {q.label: load_checked(t, qemu=q.spec) for q in qemu_entries}
        topo = next(iter(variants.values())) if variants else load_checked(t)
        on_qemu.update({(topo.name, label): v for label, v in variants.items()})
        key = str(topo.source.resolve()) if topo.source else topo.name
        if key in seen_topos or topo.name in {x.name for x in topos}:
            raise UsageError(f"--topology {t}: given twice")
        seen_topos[key] = t
        topos.append(topo)
    entries: list[KernelEntry] = []
    identities: dict[str, str] = {}
    archs = sorted({t.profile.arch for t in topos})
    for spec in kernels:
        k = _matrix_kernel(spec, topos, archs)
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
                      fio_args=tuple(fio_args), coverage=coverage, qemus=qemu_entries,
                      mbps_tolerance=mbps_tolerance, on_qemu=on_qemu)
