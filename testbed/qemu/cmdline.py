"""Topology -> QEMU argv.  Pure: no process is started here.

The argv covers the machine the topology describes (CPU, memory, vIOMMU and the
PCIe tree with its NVMe controllers).  Booting a guest adds the kernel, boot
disk, NIC, QMP and console (see :mod:`testbed.guest.boot`).

Derived names: every user name is the QEMU id of its device; drives, memory
backends and the vIOMMU get ids with the reserved ``tb-`` prefix.  Each root or
downstream port gets its own chassis number (slot 0), so hot-plug slot
identities never clash.

    >>> from testbed.spec import load_topology
    >>> topo = load_topology("switch-cmb", probe_qemu=False)
    >>> argv = machine_argv(topo, "qemu-system-x86_64", Path("/run/x"), accel="tcg")
    >>> [a for a in argv if a.startswith("xio3130")]
    ['xio3130-downstream,id=sw0-dp0,bus=sw0,chassis=2,slot=0', 'xio3130-downstream,id=sw0-dp1,bus=sw0,chassis=3,slot=0']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..spec.model import DownstreamPort, Nvme, RootPort, Switch, Topology
from ..spec.units import MiB

ROOT_BUS = "pcie.0"

# Guest kernel command line words for each vIOMMU model and mode.
IOMMU_CMDLINE = {
    ("intel", "strict"): ("intel_iommu=on", "iommu.strict=1", "iommu.passthrough=0"),
    ("intel", "passthrough"): ("intel_iommu=on", "iommu=pt"),
    ("amd", "strict"): ("amd_iommu=on", "iommu.strict=1", "iommu.passthrough=0"),
    ("amd", "passthrough"): ("amd_iommu=on", "iommu=pt"),
    ("virtio", "strict"): ("iommu.strict=1", "iommu.passthrough=0"),
    ("virtio", "passthrough"): ("iommu=pt", "iommu.passthrough=1"),
}


@dataclass(frozen=True)
class BackingFile:
    """A file QEMU needs to exist before it starts (created sparse when missing)."""

    path: Path
    size: int
    role: str  # "namespace" or "pmr"


def namespace_path(nvme: Nvme, index: int, run_dir: Path) -> Path:
    ns = nvme.namespaces[index]
    return ns.file or run_dir / f"{nvme.name}-ns{index + 1}.img"


def pmr_path(nvme: Nvme, run_dir: Path) -> Path:
    assert nvme.pmr is not None
    return nvme.pmr.file or run_dir / f"{nvme.name}-pmr.img"


def backing_files(topo: Topology, run_dir: Path) -> list[BackingFile]:
    """Every image and PMR file the machine uses, with its size."""
    out = []
    for nvme in topo.nvmes():
        for i, ns in enumerate(nvme.namespaces):
            out.append(BackingFile(namespace_path(nvme, i, run_dir), ns.size, "namespace"))
        if nvme.pmr:
            out.append(BackingFile(pmr_path(nvme, run_dir), nvme.pmr.size, "pmr"))
    return out


def create_backing_files(topo: Topology, run_dir: Path) -> None:
    """Create missing backing files sparse; grow a too-small PMR file."""
    for bf in backing_files(topo, run_dir):
        if not bf.path.exists() or (bf.role == "pmr" and bf.path.stat().st_size < bf.size):
            with open(bf.path, "ab") as f:
                f.truncate(max(bf.size, f.tell()))


def iommu_cmdline(topo: Topology) -> tuple[str, ...]:
    """Guest kernel command line words the vIOMMU choice implies."""
    return IOMMU_CMDLINE.get((topo.iommu.model, topo.iommu.mode), ())


def machine_argv(topo: Topology, binary: str, run_dir: Path, accel: str) -> list[str]:
    """The argv for the topology's machine; ``accel`` is ``tcg`` or ``kvm`` (resolved)."""
    assert accel in ("tcg", "kvm"), accel
    machine = "q35"
    if accel == "kvm" and topo.iommu.model in ("intel", "amd"):
        machine += ",kernel-irqchip=split"  # interrupt remapping needs a userspace IOAPIC
    cpu = topo.machine.cpu
    argv = [binary, "-machine", machine, "-accel", accel, "-cpu", cpu,
            "-m", f"{max(topo.machine.memory // MiB, 1)}M", "-smp", str(topo.machine.cpus),
            "-nodefaults", "-no-user-config", "-display", "none"]
    # The vIOMMU comes before every PCI device (older QEMUs insist).
    if topo.iommu.model == "intel":
        argv += ["-device", "intel-iommu,id=tb-viommu"
                 + (",intremap=on" if accel == "kvm" else "")]
    elif topo.iommu.model == "amd":
        argv += ["-device", "amd-iommu,id=tb-viommu"]
    elif topo.iommu.model == "virtio":
        argv += ["-device", f"virtio-iommu-pci,id=tb-viommu,bus={ROOT_BUS}"]
    chassis = iter(range(1, 256))
    for node in topo.pcie:
        argv += _node_argv(node, ROOT_BUS, chassis, run_dir)
    return argv


def _node_argv(node, bus: str, chassis, run_dir: Path) -> list[str]:
    if isinstance(node, RootPort):
        out = ["-device", f"pcie-root-port,id={node.name},bus={bus},chassis={next(chassis)},slot=0"]
    elif isinstance(node, Switch):
        out = ["-device", f"x3130-upstream,id={node.name},bus={bus}"]
    elif isinstance(node, DownstreamPort):
        out = ["-device",
               f"xio3130-downstream,id={node.name},bus={bus},chassis={next(chassis)},slot=0"]
    elif isinstance(node, Nvme):
        return _nvme_argv(node, bus, run_dir)
    else:  # pragma: no cover - the parser only builds the kinds above
        raise TypeError(node)
    for child in node.children:
        out += _node_argv(child, node.name, chassis, run_dir)
    return out


def _nvme_argv(nvme: Nvme, bus: str, run_dir: Path) -> list[str]:
    out: list[str] = []
    props = [f"nvme,id={nvme.name}", f"serial={_escape(nvme.serial)}", f"bus={bus}"]
    if nvme.cmb:
        props.append(f"cmb_size_mb={nvme.cmb // MiB}")
    if nvme.pmr:
        backend = f"tb-{nvme.name}-pmr"
        out += ["-object", f"memory-backend-file,id={backend},share=on,"
                f"mem-path={_escape(str(pmr_path(nvme, run_dir)))},size={nvme.pmr.size}"]
        props.append(f"pmrdev={backend}")
    out += ["-device", ",".join(props)]
    for i, ns in enumerate(nvme.namespaces):
        drive = f"tb-{nvme.name}-ns{i + 1}"
        out += ["-drive", f"file={_escape(str(namespace_path(nvme, i, run_dir)))},if=none,"
                f"id={drive},format=raw,cache=writeback",
                "-device", f"nvme-ns,drive={drive},bus={nvme.name},nsid={i + 1}"
                + (f",logical_block_size={ns.block_size},physical_block_size={ns.block_size}"
                   if ns.block_size != 512 else "")]
    return out


def _escape(value: str) -> str:
    """QEMU option values double a comma to keep it literal."""
    return value.replace(",", ",,")
