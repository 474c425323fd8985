"""The typed topology: what one YAML file describes, after validation.

Users name the devices; everything QEMU needs (ids, chassis and slot numbers,
buses) is derived in :mod:`testbed.qemu.cmdline`.  Endpoints (NVMe, igb, ...) are the kinds
of :mod:`testbed.spec.endpoints`.  The tree is immutable and
every node knows its name, so later stages (command line, guest check, oracle)
walk the same structure.

    >>> nvme = Nvme("nvme0", serial="n0", cmb=64 * MiB)
    >>> port = RootPort("rp0", device=nvme)
    >>> [d.name for d in walk((port,))]
    ['rp0', 'nvme0']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Mapping, Union, get_args

from ..machines import (DEFAULT_ARCH, IOMMU_MODELS, IOMMU_MODES, PROFILES, X86_64,
                        Hotplug, MachineProfile, machine_profile)
from .endpoints import ENDPOINTS, Endpoint, Igb, Namespace, Nvme, Pmr
from .units import MiB

ARCHS = tuple(PROFILES)
ACCELS = ("auto", "kvm", "tcg")
# What the kernel does with a P2P pair, and how it maps it (enum pci_p2pdma_map_type)
Verdict = Literal["ok", "rejected", "iommu-fault", "unsupported", "error"]
MapType = Literal["bus-address", "host-bridge", "not-supported"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
MAP_TYPES: tuple[MapType, ...] = get_args(MapType)


@dataclass(frozen=True)
class DownstreamPort:
    """A switch downstream port (xio3130-downstream); holds at most one device."""

    name: str
    device: "Device | None" = None

    kind = "downstream_port"

    @property
    def children(self) -> tuple:
        return (self.device,) if self.device else ()


@dataclass(frozen=True)
class Switch:
    """A PCIe switch: an upstream port (x3130-upstream) and its downstream ports."""

    name: str
    ports: tuple[DownstreamPort, ...] = ()

    kind = "switch"

    @property
    def children(self) -> tuple:
        return self.ports


@dataclass(frozen=True)
class RootPort:
    """A pcie-root-port on the root complex or a host bridge; holds at most one device.

    ``acs=False`` builds it without its ACS capability (QEMU's ``disable-acs=on``), so
    neither Linux's P2PDMA code nor its IOMMU grouping sees any isolation there."""

    name: str
    device: "Device | None" = None
    acs: bool = True

    kind = "root_port"

    @property
    def children(self) -> tuple:
        return (self.device,) if self.device else ()


@dataclass(frozen=True)
class HostBridge:
    """A host bridge of its own beside the machine's (QEMU's PCIe expander, pxb-pcie): a
    root bus numbered ``bus_nr`` with root ports on it, as on machines with several
    root complexes."""

    name: str
    ports: tuple[RootPort, ...] = ()
    bus_nr: int | None = None  # None: the testbed picks one

    kind = "host_bridge"

    @property
    def children(self) -> tuple:
        return self.ports


Device = Union[Endpoint, Switch]
Node = Union[RootPort, Switch, DownstreamPort, Endpoint, HostBridge]


@dataclass(frozen=True)
class Machine:
    """The machine: its architecture (which :class:`MachineProfile` describes it), CPU,
    memory, accelerator and QEMU program.  The parser fills ``cpu`` and ``qemu`` from the
    profile when the file does not name them."""

    cpu: str = X86_64.default_cpu
    memory: int = 2 << 30
    cpus: int = 2
    accel: str = "auto"
    qemu: str = X86_64.qemu_binary
    arch: str = DEFAULT_ARCH
    hotplug: str | None = None  # who drives the slots' hot-plug (None: the machine's default)

    @property
    def profile(self) -> MachineProfile:
        return machine_profile(self.arch)

    @property
    def hotplug_mode(self) -> Hotplug:
        """Who drives hot-plug on this machine (pciehp or acpiphp, and how to choose it)."""
        return self.profile.hotplug_mode(self.hotplug)


@dataclass(frozen=True)
class Iommu:
    model: str = "none"  # one of IOMMU_MODELS
    mode: str = "strict"  # one of IOMMU_MODES

    @property
    def translating(self) -> bool:
        """True when DMA of the guest's devices goes through IOMMU page tables."""
        return self.model != "none" and self.mode == "strict"


@dataclass(frozen=True)
class Expectation:
    """An explicit verdict for one (provider, client) pair, overriding the oracle."""

    provider: str
    client: str
    verdict: Verdict
    reason: str = "stated in the topology file"
    map_type: MapType | None = None  # when stated


@dataclass(frozen=True)
class Topology:
    name: str
    description: str = ""
    machine: Machine = field(default_factory=Machine)
    iommu: Iommu = field(default_factory=Iommu)
    kernel_cmdline: tuple[str, ...] = ()
    pcie: tuple[Node, ...] = ()  # RootPort, HostBridge or an endpoint on the root complex
    expect: tuple[Expectation, ...] = ()
    source: Path | None = None
    # where things were written, for problems found after parsing (see :meth:`position`)
    where: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    key_where: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False,
                                                     repr=False)
    node_paths: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    filename: str = field(default="", compare=False)  # the file as the user named it

    def position(self, path: str, key: bool = False) -> tuple[int, int]:
        """(line, column) of the value (or the key) at field ``path``; (1, 1) if unknown."""
        table = self.key_where if key else self.where
        while path:
            if path in table:
                return table[path]
            path = path.rsplit(".", 1)[0] if "." in path else ""
        return (1, 1)

    @property
    def profile(self) -> MachineProfile:
        """The machine profile (``machine.arch``) every stage reads."""
        return self.machine.profile

    def nodes(self) -> Iterator[Node]:
        return walk(self.pcie)

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint (NVMe, igb, ...), depth first."""
        return [n for n in self.nodes() if isinstance(n, Endpoint)]

    def providers(self) -> list[Endpoint]:
        """The endpoints that offer memory for P2P DMA (an NVMe with a CMB)."""
        return [n for n in self.endpoints() if n.p2p_memory]

    def clients(self) -> list[Endpoint]:
        """The endpoints the P2P workloads use as a pair's client (NVMe)."""
        return [n for n in self.endpoints() if ENDPOINTS[type(n)].pair_client]

    def nvmes(self) -> list[Nvme]:
        """The NVMe controllers (for what only an NVMe has: namespaces, a PMR, a serial)."""
        return [n for n in self.nodes() if isinstance(n, Nvme)]

    def find(self, name: str) -> Node:
        for n in self.nodes():
            if n.name == name:
                return n
        raise KeyError(name)

    def parents(self) -> dict[str, Node | None]:
        """Name of each node -> the node it is plugged into (None: root complex)."""
        out: dict[str, Node | None] = {}

        def visit(node, parent):
            out[node.name] = parent
            for c in node.children:
                visit(c, node)

        for n in self.pcie:
            visit(n, None)
        return out

    def host_bridges(self) -> list["HostBridge"]:
        return [n for n in self.pcie if isinstance(n, HostBridge)]

    def host_bridge_of(self, name: str) -> "HostBridge | None":
        """The expander host bridge ``name`` sits below (None: the machine's own)."""
        top = self.upstream_path(name)[-1]
        return top if isinstance(top, HostBridge) else None

    def upstream_path(self, name: str) -> list[Node]:
        """Nodes from ``name`` up to (excluding) the root complex, nearest first."""
        parents = self.parents()
        path = [self.find(name)]
        while (up := parents[path[-1].name]) is not None:
            path.append(up)
        return path

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name`` (KeyError when there is none)."""
        node = self.find(name)
        if not isinstance(node, Endpoint):
            raise KeyError(f"{name} is not an endpoint")
        return node

    def nvme(self, name: str) -> Nvme:
        """The NVMe controller called ``name`` (KeyError when there is none)."""
        node = self.find(name)
        if not isinstance(node, Nvme):
            raise KeyError(f"{name} is not an NVMe controller")
        return node


def walk(nodes) -> Iterator[Node]:
    """Every node of the tree, depth first, parents before children."""
    for n in nodes:
        yield n
        yield from walk(n.children)


__all__ = ["ARCHS", "MAP_TYPES", "MapType", "VERDICTS", "Verdict", "IOMMU_MODELS", "IOMMU_MODES", "MachineProfile", "MiB", "Namespace", "Pmr",
           "Nvme", "Igb", "Endpoint", "DownstreamPort", "Switch", "RootPort", "HostBridge",
           "Machine", "Iommu", "Expectation", "Topology", "walk", "Device", "Node"]
