"""The one place a QEMU command line is assembled.  Pure: no process is started here.

:func:`build` puts together, in order:

- the machine the topology describes (CPU, memory, vIOMMU, the PCIe tree with its
  endpoints, each rendered by its kind): :func:`machine_argv`, which ``testbed render``
  prints;
- what a boot adds (:class:`BootMedia`): firmware, kernel, initrd, command line, the
  per-run boot disk, the NIC with SSH forwarding, an RNG, pvpanic, extra drives, the
  gdbstub (``-gdb tcp:127.0.0.1:PORT``) and shared host directories (virtio-9p);
- how the orchestrator talks to QEMU: the QMP socket, the serial console log, ``-S``.

The KVM probe and the CPU-model query build their (smaller) command lines here too.

Derived names: every user name is the QEMU id of its device; drives, memory
backends and the vIOMMU get ids with the reserved ``tb-`` prefix.  Each root or
downstream port gets its own chassis number (slot 0), so hot-plug slot identities
never clash.

    >>> from testbed.spec import load_topology
    >>> topo = load_topology("switch-cmb")
    >>> argv = machine_argv(topo, "qemu-system-x86_64", Path("/run/x"), accel="tcg")
    >>> [a for a in argv if a.startswith("xio3130")]
    ['xio3130-downstream,id=sw0-dp0,bus=sw0,chassis=2,slot=0', 'xio3130-downstream,id=sw0-dp1,bus=sw0,chassis=3,slot=0']
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..machines import X86_64, MachineProfile, Viommu
from ..spec.endpoints import ENDPOINTS, BackingFile, Endpoint
from ..spec.endpoints.base import escape as _escape
from ..spec.endpoints.nvme import (namespace_drive, namespace_path, nvme_argv, nvme_device,
                                   pmr_backend, pmr_path)
from ..spec.model import DownstreamPort, HostBridge, Node, RootPort, Switch, Topology
from ..spec.units import MiB
from .binary import Qemu
from .devices import DEVICES, DISABLE_ACS, bus_numbers, iommu_cmdline
from .share import Share, share_tag

__all__ = ["BackingFile", "BootMedia", "Drive", "build", "machine_argv", "boot_argv",
           "share_argv", "probe_argv", "bare_argv", "backing_files", "namespace_path", "pmr_path",
           "iommu_cmdline", "firmware", "nvme_argv", "nvme_device", "namespace_drive",
           "pmr_backend"]


@dataclass(frozen=True)
class Drive:
    """An extra virtio disk a boot needs (a custom kernel's modules disk, say)."""

    path: Path
    id: str
    serial: str
    readonly: bool = True
    format: str = "raw"


@dataclass(frozen=True)
class BootMedia:
    """What the guest boots from: plain data, prepared by the guest and kernel stages."""

    kernel: Path
    initrd: Path | None
    cmdline: tuple[str, ...]
    disk: Path  # the per-run qcow2 overlay holding the root filesystem
    ssh_port: int
    drives: tuple[Drive, ...] = ()
    gdb_port: int | None = None  # QEMU's gdbstub on 127.0.0.1:gdb_port
    shares: tuple[Share, ...] = ()  # host directories exported over virtio-9p


def backing_files(topo: Topology, run_dir: Path) -> list[BackingFile]:
    """Every file the machine's endpoints use (NVMe namespaces and PMRs), with its size."""
    return [f for e in topo.endpoints() for f in ENDPOINTS[type(e)].backing_files(e, run_dir)]


def run_dir_files(topo: Topology, run_dir: Path, extra: Iterable[Path] = ()) -> list[str]:
    """The files the testbed itself puts in ``run_dir`` for this machine: the namespace
    and PMR images it creates, and ``extra`` (the boot overlay, the console log, the QMP
    socket).  Never a file the topology names (``file:``), wherever it lives: these are
    the only paths a script may spell relative to ``$RUN_DIR``.

        >>> from testbed.spec import load_topology
        >>> run_dir_files(load_topology("switch-cmb"), Path("/r"), [Path("/r/console.log")])
        ['/r/nvme0-ns1.img', '/r/nvme1-ns1.img', '/r/console.log']
    """
    files = backing_files(topo, run_dir)
    users = {bf.path for bf in files if bf.user_file}
    mine = [bf.path for bf in files if not bf.user_file] + list(extra)
    return [str(p) for p in mine if p not in users and p.is_relative_to(run_dir)]


# -- the machine ---------------------------------------------------------------------------

def program(binary: str | Qemu) -> list[str]:
    """The argv up to the machine's options: a program's path, or a :class:`Qemu`'s prefix
    (a private root's loader, the program, its firmware directories)."""
    return binary.argv if isinstance(binary, Qemu) else [binary]


def machine_argv(topo: Topology, binary: str | Qemu, run_dir: Path, accel: str) -> list[str]:
    """The argv for the topology's machine; ``accel`` is ``tcg`` or ``kvm`` (resolved)."""
    assert accel in ("tcg", "kvm"), accel
    profile = topo.profile
    viommu = profile.viommu(topo.iommu.model)
    expanders = bool(topo.host_bridges())
    argv = [*program(binary), "-machine", profile.machine_option(accel, viommu, expanders),
            "-accel", accel, "-cpu", profile.cpu_option(topo.machine.cpu, accel),
            "-m", f"{max(topo.machine.memory // MiB, 1)}M",
            "-smp", str(topo.machine.cpus), "-nodefaults", "-no-user-config", "-display", "none"]
    argv += topo.machine.hotplug_mode.argv  # who drives the slots' hot-plug (q35: ACPI)
    root_bus = profile.root_bus.name
    if viommu is not None and not viommu.as_machine_option(expanders):
        # before every PCI device (older QEMUs insist; a device's DMA address space is
        # chosen when it is created)
        argv += ["-device", viommu.device_value(accel, root_bus)]
    # a vIOMMU of its own for each expander's root complex (aarch64's SMMUv3)
    per_rc = viommu if viommu is not None and viommu.per_root_complex and expanders else None
    chassis = iter(range(1, 256))
    numbers = bus_numbers(topo)
    for node in topo.pcie:
        argv += _node_argv(node, root_bus, chassis, run_dir, numbers, per_rc, accel)
    return argv


def device_props(node: Node, bus: str, chassis: int | None = None) -> str:
    """The ``-device`` value of one port or switch node (for the command line and for
    QMP ``device_add`` of the same thing)."""
    kind = DEVICES[type(node)]
    props = [kind.qemu_device, f"id={node.name}", f"bus={bus}"]
    if chassis is not None:
        props += [f"chassis={chassis}", "slot=0"]
    if isinstance(node, RootPort) and not node.acs:
        props.append(f"{DISABLE_ACS}=on")
    return ",".join(props)


def _node_argv(node: Node, bus: str, chassis: Iterator[int], run_dir: Path,
               numbers: dict[str, int], per_rc: Viommu | None = None,
               accel: str = "tcg") -> list[str]:
    if isinstance(node, Endpoint):
        return ENDPOINTS[type(node)].argv(node, bus, run_dir)
    if isinstance(node, (RootPort, DownstreamPort)):
        out = ["-device", device_props(node, bus, next(chassis))]
    elif isinstance(node, Switch):
        out = ["-device", device_props(node, bus)]
    elif isinstance(node, HostBridge):
        out = ["-device", f"{device_props(node, bus)},bus_nr={numbers[node.name]}"]
        if per_rc is not None:  # its root bus exists now; the devices on it come next
            out += ["-device", per_rc.device_value(accel, node.name, per_rc.device_id(node.name))]
    else:  # pragma: no cover - the parser only builds the kinds above
        raise TypeError(node)
    for child in node.children:
        out += _node_argv(child, node.name, chassis, run_dir, numbers, per_rc, accel)
    return out


# -- a boot ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _data_dirs(binary: str | Qemu) -> tuple[str, ...]:
    env = binary.environ() if isinstance(binary, Qemu) else None
    try:
        out = subprocess.run([*program(binary), "-L", "help"], capture_output=True, text=True,
                             timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def firmware(binary: str | Qemu, topo: Topology | None = None,
             profile: MachineProfile | None = None) -> list[str]:
    """The profile's fast firmware (x86: qboot) when this QEMU ships it: it boots a PVH kernel
    ~1.5 s faster than SeaBIOS under TCG and Linux assigns the BARs behind the switches
    itself.  Where it cannot number an expander host bridge's root bus (qboot), a topology
    with one gets QEMU's default firmware, else nothing behind it would be enumerated."""
    profile = profile or (topo.profile if topo is not None else X86_64)
    fw = profile.firmware
    expanders = topo is not None and bool(topo.host_bridges())
    if expanders and not fw.fast_bios_numbers_expanders:
        found = expander_firmware(binary, profile)
        return ["-bios", str(found)] if found is not None else []
    if fw.fast_bios is None:
        return []
    for d in _data_dirs(binary):
        if (Path(d) / fw.fast_bios).is_file():
            return ["-bios", str(Path(d) / fw.fast_bios)]
    return []


def expander_firmware(binary: str | Qemu, profile: MachineProfile) -> Path | None:
    """The firmware a topology with expander host bridges boots with, when the profile
    names one (aarch64: UEFI): the first of its files that exists, absolute or in QEMU's
    data directories; None when there is none (x86: QEMU's default, SeaBIOS)."""
    for name in profile.firmware.expander_bios:
        candidates = [Path(name)] if Path(name).is_absolute() else \
            [Path(d) / name for d in _data_dirs(binary)]
        for path in candidates:
            if path.is_file():
                return path
    return None


def boot_argv(media: BootMedia, binary: str | Qemu, topo: Topology | None = None) -> list[str]:
    """The options a boot adds to the machine: firmware, kernel, then the root-bus devices of
    the machine's layout (boot disk, NIC, RNG) with their backends, the platform devices,
    extra drives, the gdbstub and shares."""
    profile = topo.profile if topo is not None else X86_64
    bus = profile.root_bus.name
    argv = [*firmware(binary, topo, profile),
            "-kernel", str(media.kernel), "-append", " ".join(media.cmdline), "-no-reboot"]
    for dev in profile.root_bus.boot_devices:
        argv += _backend_argv(dev.role, media) + ["-device", dev.device_value(bus)]
    for name in profile.platform_devices:
        argv += ["-device", name]
    if media.initrd:
        argv += ["-initrd", str(media.initrd)]
    for d in media.drives:
        argv += ["-drive", f"file={_escape(str(d.path))},if=none,id={d.id},format={d.format}"
                           + (",readonly=on" if d.readonly else ""),
                 "-device", f"virtio-blk-pci,drive={d.id},serial={d.serial},bus={bus}"]
    if media.gdb_port is not None:  # loopback only: the stub gives full control of the guest
        argv += ["-gdb", f"tcp:127.0.0.1:{media.gdb_port}"]
    for i, share in enumerate(media.shares):
        argv += share_argv(share, i, bus)
    return argv


def _backend_argv(role: str, media: BootMedia) -> list[str]:
    """What a boot device of the root-bus layout needs before its ``-device``."""
    if role == "disk":
        return ["-drive", f"file={_escape(str(media.disk))},if=none,id=tb-boot,format=qcow2,"
                          "cache=unsafe,discard=unmap"]
    if role == "nic":
        return ["-netdev",
                f"user,id=tb-net,restrict=on,hostfwd=tcp:127.0.0.1:{media.ssh_port}-:22"]
    return []


def share_argv(share: Share, index: int, bus: str = X86_64.root_bus.name) -> list[str]:
    """The ``-fsdev``/``-device`` pair exporting one shared directory over virtio-9p.

    ``security_model=none``: files the guest creates belong to the user running QEMU;
    ``multidevs=remap`` keeps inode numbers unique across host mounts inside the
    directory; a read-only share is refused by QEMU itself (EROFS in the guest), not only
    by the guest's mount options.

        >>> share_argv(Share(Path("/src,x"), "/mnt/src"), 0)[1]
        'local,id=tb-share0,path=/src,,x,security_model=none,multidevs=remap,readonly=on'
    """
    tag = share_tag(index)
    return ["-fsdev", f"local,id={tag},path={_escape(str(share.host))},security_model=none,"
                      "multidevs=remap" + ("" if share.writable else ",readonly=on"),
            "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag},id={tag}-dev,bus={bus}"]


def plumbing_argv(qmp: Path | None, console: Path | None, paused: bool = False,
                  monitor: Path | None = None) -> list[str]:
    """How the orchestrator reaches QEMU: QMP socket, console log file, start paused; and
    ``monitor``, a second QMP monitor for other processes (a detached guest's later
    commands: QEMU events go to every monitor, a monitor serves one client at a time)."""
    argv: list[str] = []
    for sock in (qmp, monitor):
        if sock is not None:
            argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    if console is not None:
        argv += ["-serial", f"file:{console}"]
    if paused:
        argv.append("-S")
    return argv


def build(topo: Topology, binary: str | Qemu, run_dir: Path, accel: str, *,
          media: BootMedia | None = None, qmp: Path | None = None,
          console: Path | None = None, paused: bool = False, monitor: Path | None = None,
          extra: Sequence[str] = ()) -> list[str]:
    """The whole command line: machine, boot (when ``media``), plumbing, ``extra``."""
    argv = machine_argv(topo, binary, run_dir, accel)
    if media is not None:
        argv += boot_argv(media, binary, topo)
    return argv + plumbing_argv(qmp, console, paused, monitor) + list(extra)


def probe_argv(binary: str | Qemu, accel: str, kernel: Path, initrd: Path | None,
               cmdline: Sequence[str], console: Path,
               profile: MachineProfile = X86_64) -> list[str]:
    """A bare machine of ``profile`` that boots ``kernel`` once (the accelerator probe)."""
    argv = [*program(binary), "-machine", profile.machine_type, "-accel", accel,
            "-cpu", profile.default_cpu, "-m", "512M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel), "-append", " ".join(cmdline)]
    if initrd:
        argv += ["-initrd", str(initrd)]
    return argv


def bare_argv(binary: str | Qemu, qmp: Path) -> list[str]:
    """No machine at all, just QMP (to ask QEMU about CPU models)."""
    return [*program(binary), "-machine", "none", "-accel", "tcg", "-nodefaults", "-display", "none",
            *plumbing_argv(qmp, None, paused=True)]
