"""The second validation pass: what the QEMU machine makes of a parsed topology.

Two kinds of checks, both reported like the parser's (``FILE:LINE:COL: field: problem``,
through the positions the parser recorded in ``Topology.where``):

- constraints of the machine the testbed builds (root-bus slots), always;
- what the QEMU binary the topology names can do (devices, NVMe properties, CPU
  models), unless probing is off (``testbed validate --no-probe``).

    >>> topo = load_checked("switch-cmb", probe_qemu=False)
    >>> topo.name
    'switch-cmb'
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import Problem, QemuError, SpecError, UsageError, did_you_mean
from ..machines import PROFILES
from ..spec.endpoints import ENDPOINTS, Endpoint
from ..spec.model import HostBridge, Machine, RootPort, Topology
from ..spec.parse import parse
from ..spec.source import read_text, resolve
from ..spec.units import format_size
from ..spec.yamlsource import Sourced, load
from .accel import expected_accel
from .cmdline import expander_firmware
from .devices import (
    DEVICES,
    DISABLE_ACS,
    EXTRA_DEVICES,
    MAX_BUS,
    bus_numbers,
    buses_below,
    free_root_slots,
)
from .probe import Capabilities, probe


def _problem(topo: Topology, path: str, message: str, key: bool = False) -> Problem:
    line, col = topo.position(path, key=key)
    return Problem(topo.filename, line, col, path, message)


def host_memory() -> int | None:
    """MemTotal of this host in bytes (None when /proc/meminfo says nothing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def constraints(topo: Topology) -> list[Problem]:
    """Limits of the machine the testbed builds, whatever the binary."""
    out = []
    have = host_memory()
    if have is not None and topo.machine.memory > have:
        out.append(_problem(topo, "machine.memory", f"{format_size(topo.machine.memory)} is "
                            f"more than this host's memory ({have / (1 << 30):.1f}G): QEMU "
                            "could not allocate it"))
    numbers = bus_numbers(topo)
    if numbers:
        out += _bus_ranges(topo, numbers)
    slots = free_root_slots(topo)
    if len(topo.pcie) > slots:
        out.append(_problem(topo, "pcie", f"too many devices on the root complex: "
                            f"{len(topo.pcie)}, at most {slots} slots are free (put switches "
                            "under root ports)"))
    return out


def _bus_ranges(topo: Topology, numbers: dict[str, int]) -> list[Problem]:
    """Each root complex needs bus numbers for its ports and switches below its first."""
    out = []
    bridges = topo.host_bridges()
    starts: list[tuple[int, HostBridge | None]] = [(0, None)]
    starts += sorted(((numbers[hb.name], hb) for hb in bridges), key=lambda s: s[0])
    seen: dict[int, str] = {}
    for hb in bridges:
        nr = numbers[hb.name]
        if nr in seen:
            out.append(_problem(topo, f"{topo.node_paths.get(hb.name, '')}.bus_nr",
                                f"bus_nr {nr} is {seen[nr]}'s too"))
        seen[nr] = hb.name
    for i, (start, bridge) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else MAX_BUS + 1
        nodes = [n for n in topo.pcie if not isinstance(n, HostBridge)] if bridge is None \
            else list(bridge.ports)
        need = 1 + sum(buses_below(n) for n in nodes)
        if start + need > end:
            where = f"{topo.profile.machine_type}'s root complex" if bridge is None \
                else f"host bridge {bridge.name}"
            path = "pcie" if bridge is None else \
                f"{topo.node_paths.get(bridge.name, '')}.host_bridge"
            out.append(_problem(topo, path, f"{where} needs {need} bus numbers from {start}, "
                                f"but the next root bus starts at {end}: give the host "
                                "bridges bus_nr values with room between them",
                                key=bridge is not None))
    return out


def capabilities(topo: Topology, caps: Capabilities, accel: str | None = None) -> list[Problem]:
    """What the probed binary lacks for this topology.  ``accel`` is the accelerator that
    will be used, when known (``tcg`` cannot provide every CPU model)."""
    out: list[Problem] = []

    def need(path: str, device: str, prop: str | None = None, props: frozenset[str] = frozenset(),
             key: bool = False) -> bool:
        if device not in caps.devices:
            out.append(_problem(topo, path, f"{caps.describe()} has no {device!r} device", key))
            return False
        if prop and prop not in props:
            out.append(_problem(topo, path, f"{caps.describe()} lacks the {device} property "
                                f"{prop!r}", key))
            return False
        return True

    cpu = topo.machine.cpu
    if caps.cpu_models and cpu not in caps.cpu_models:
        out.append(_problem(topo, "machine.cpu", f"{caps.describe()} has no CPU model {cpu!r}"
                            + did_you_mean(cpu, caps.cpu_models)))
    elif cpu in topo.profile.kvm_only_cpus and accel == "tcg":
        out.append(_problem(topo, "machine.cpu", f"CPU model {cpu!r} needs KVM, and this "
                            "machine runs guests under TCG: name a model such as "
                            + _examples(topo.profile.tcg_cpu_examples)))
    hotplug = topo.machine.hotplug_mode
    if hotplug.qemu_global is not None:
        device, prop, _ = hotplug.qemu_global
        if prop not in caps.props(device):
            out.append(_problem(topo, "machine.hotplug", f"{caps.describe()} lacks the "
                                f"{device} property {prop!r}, which hotplug: {hotplug.name} "
                                "sets (QEMU 6.1 or newer has it)"))
    viommu = topo.profile.viommu(topo.iommu.model)
    expanders = bool(topo.host_bridges())
    if viommu is not None and viommu.as_machine_option(expanders):
        pass  # a machine option of the board (virt,iommu=smmuv3): every QEMU of it has it
    elif viommu is not None and viommu.machine_options and viommu.qemu_device not in caps.devices:
        out.append(_problem(topo, "iommu", f"{caps.describe()} makes one {viommu.model} only, "
                            f"on {topo.profile.root_bus.name} (-machine "
                            f"{','.join(viommu.machine_options)}); one per root complex, as "
                            f"a topology with host bridges needs, takes -device "
                            f"{viommu.qemu_device} (QEMU 11.1: `testbed qemu install`, then "
                            "--qemu trixie-backports)"))
    elif viommu is not None and need("iommu", viommu.qemu_device):
        limit = iommu_limit(topo, caps)
        if limit:
            out.append(_problem(topo, "iommu", limit))
    if expanders and topo.profile.firmware.expander_bios \
            and expander_firmware(caps.path, topo.profile) is None:
        fw = topo.profile.firmware
        first = topo.host_bridges()[0]
        out.append(_problem(topo, f"{topo.node_paths.get(first.name, '')}.host_bridge",
                            f"a host bridge on {topo.profile.machine_type} boots through "
                            f"UEFI (only its ACPI tables show the expander's root complex), "
                            f"and none of {', '.join(fw.expander_bios)} exists: apt-get "
                            f"install {fw.expander_bios_package}", key=True))
    for node in topo.nodes():
        kind = DEVICES[type(node)]
        path = f"{topo.node_paths.get(node.name, '')}.{kind.kind}".lstrip(".")
        if path not in topo.key_where:
            continue  # an implied downstream port: its switch asks for the device
        for device in (kind.qemu_device, *EXTRA_DEVICES.get(type(node), ())):
            if not need(path, device, key=True) and isinstance(node, Endpoint):
                break  # no point asking about nvme-ns without nvme
        if isinstance(node, RootPort) and not node.acs:
            need(f"{topo.node_paths.get(node.name, '')}.acs", kind.qemu_device, DISABLE_ACS,
                 caps.props(kind.qemu_device))
        if isinstance(node, Endpoint):
            for n in ENDPOINTS[type(node)].needs(node, topo.node_paths.get(node.name, "")):
                need(n.path, n.device, n.prop, caps.props(n.device))
    return _unique(out)


def _examples(names: tuple[str, ...]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def iommu_limit(topo: Topology, caps: Capabilities) -> str | None:
    """A vIOMMU this QEMU cannot give a guest that boots (a QEMU model limit), or None."""
    if topo.iommu.model == "amd" and "dma-remap" not in caps.device_props.get("amd-iommu", ()):
        return (f"{caps.describe()}: its amd-iommu has no dma-remap property, so it does not "
                "remap the DMA of emulated devices and guests do not come up (strict: the "
                "NVMe controllers fail 'Identify Controller' after ~64 s; passthrough: the "
                "guest stalls at the IO-APIC timer check) -- a QEMU model limit; use iommu: "
                "intel or virtio, or a QEMU whose amd-iommu has dma-remap (QEMU 11.x: "
                "`testbed qemu install trixie-backports`, then --qemu trixie-backports or "
                "machine.qemu: trixie-backports)")
    return None


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


Probe = Callable[[str, str], Capabilities]  # (QEMU spec, the machine's QEMU program)


def _machine_value(root: Sourced, key: str) -> Sourced | None:
    machine = root.value.get("machine") if isinstance(root.value, dict) else None
    if machine is not None and isinstance(machine.value, dict):
        return machine.value.get(key)
    return None


def _default_binary(root: Sourced) -> str:
    """The QEMU program of the machine.arch the file names (when it names a known one)."""
    arch = _machine_value(root, "arch")
    if arch is not None and isinstance(arch.value, str) and arch.value in PROFILES:
        return PROFILES[arch.value].qemu_binary
    return Machine().qemu


def with_qemu(topo: Topology, qemu: str) -> Topology:
    """The topology on another QEMU (``--qemu``): host, an installed QEMU's name or
    version, or a path (made absolute: it is the caller's, not the file's)."""
    if "/" in qemu or qemu.startswith("~"):
        qemu = os.path.abspath(os.path.expanduser(qemu))
    return replace(topo, machine=replace(topo.machine, qemu=qemu))


def check_document(root: Sourced, filename: str, base_dir: Path,
                   probe: Probe | None = probe, qemu: str | None = None) -> Topology:
    """Parse, then check against the machine and (unless ``probe`` is None) the QEMU
    binary the file names, or ``qemu`` instead (``--qemu``: a QEMU that cannot be used
    is a UsageError naming the option).  The binary is asked about even when other
    settings are bad, so a missing QEMU is reported with everything else."""
    if qemu is not None and probe is not None:
        try:
            probe(qemu, _default_binary(root))
        except QemuError as err:
            raise UsageError(f"--qemu {qemu}: {err}") from None
    try:
        topo = parse(root, filename, base_dir)
    except SpecError as exc:
        problems = list(exc.problems)
        node = _machine_value(root, "qemu")
        binary = str(node.value) if node is not None and isinstance(node.value, str) \
            else _default_binary(root)
        if qemu is not None:
            raise SpecError(problems) from None  # the --qemu QEMU was asked about above
        if probe is not None and not any(p.path == "machine.qemu" for p in problems):
            try:
                probe(binary, _default_binary(root))
            except QemuError as err:
                line, col = (node.line, node.col) if node is not None else (1, 1)
                problems.append(Problem(filename, line, col, "machine.qemu", str(err)))
        raise SpecError(problems) from None
    if qemu is not None:
        topo = with_qemu(topo, qemu)
    problems = constraints(topo)
    if probe is not None:
        try:
            caps = probe(topo.machine.qemu, topo.profile.qemu_binary)
        except QemuError as exc:
            problems.append(_problem(topo, "machine.qemu", str(exc)))
        else:
            problems += capabilities(topo, caps,
                                 expected_accel(topo.machine.accel, caps, topo.profile))
    if problems:
        raise SpecError(problems)
    return topo


def load_checked(name_or_path: str | Path, probe_qemu: bool = True,
                 qemu: str | None = None) -> Topology:
    """Load a topology and check it against the machine and (``probe_qemu``) the QEMU
    binary it names, or ``qemu`` (``--qemu``) instead; SpecError listing every problem."""
    path = resolve(name_or_path)
    root = load(read_text(path), str(path))
    return check_document(root, str(path), path.resolve().parent,
                          probe if probe_qemu else None, qemu)
