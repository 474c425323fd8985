"""What an endpoint kind is: one class per kind, describing the whole kind in one place --
how a topology writes it, what QEMU device realises it and with which options, how the
guest shows it (PCI ID, driver), whether it offers P2P memory and in which BAR, whether the
P2P workloads use it as a client.  Pure data and functions: the stages apply them (the
parser reads with :meth:`EndpointKind.read`, the command line renders
:meth:`EndpointKind.argv`, the QEMU checks ask :meth:`EndpointKind.needs` and
:meth:`EndpointKind.bars`, the guest check :meth:`EndpointKind.guest_problems`).

The kinds are listed in :data:`testbed.spec.endpoints.ENDPOINTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..fields import FieldReader
from ..yamlsource import Sourced


def escape(value: str) -> str:
    """A QEMU option value as the command line takes it: a comma is doubled to stay
    literal (``-drive file=a,,b.img``)."""
    return value.replace(",", ",,")


@dataclass(frozen=True)
class Endpoint:
    """A PCI endpoint of the topology; each kind is a frozen subclass with its own fields."""

    name: str

    kind: ClassVar[str] = "endpoint"  # the topology's word (nvme, igb)
    children: ClassVar[tuple] = ()

    @property
    def p2p_memory(self) -> int:
        """Bytes of memory it offers for P2P DMA (published as p2pmem); 0: none."""
        return 0


@dataclass(frozen=True)
class BackingFile:
    """A file QEMU needs to exist before it starts (see :mod:`testbed.qemu.backing`)."""

    path: Path
    size: int
    role: str  # "namespace" or "PMR"
    owner: str  # the endpoint's name
    user_file: bool  # named in the topology (the user's) rather than made per run
    create: bool = False  # the topology lets the testbed create the user's file


@dataclass(frozen=True)
class Need:
    """Something the QEMU binary must have for one field of an endpoint: a device, and
    (when ``prop``) a property of it.  ``path`` is the field the problem points at."""

    path: str
    device: str
    prop: str | None = None


@dataclass(frozen=True)
class Bar:
    """A memory BAR QEMU must show for an endpoint (``size``), or must not show (None)."""

    index: int
    size: int | None
    what: str  # "CMB", "PMR": for the differences


class EndpointKind:
    """One kind of endpoint.  Subclasses set the class attributes and override what their
    kind has (an NVMe has namespaces and backing files; an igb has nothing to read)."""

    word: ClassVar[str]                     # the topology's key: nvme, igb
    node: ClassVar[type[Endpoint]]          # the frozen node class
    keys: ClassVar[tuple[str, ...]]         # keys its entry may have (the word first)
    qemu_device: ClassVar[str]              # -device NAME (and the QOM type)
    extra_devices: ClassVar[tuple[str, ...]] = ()  # other QEMU devices it needs (nvme-ns)
    pci_id: ClassVar[tuple[str, str]]       # vendor, device as the guest's sysfs prints them
    label: ClassVar[str]                    # for people: "NVMe controller"
    short: ClassVar[str]                    # in the picture: "NVMe"
    driver: ClassVar[str]                   # the guest driver that binds it
    module: ClassVar[str | None] = None     # its kernel module, loaded by the guest check
    p2p_bar: ClassVar[int | None] = None    # the BAR its P2P memory is in (None: it has none)
    dma_engine: ClassVar[bool] = True       # it masters DMA (a VFIO selftest can drive it)
    pair_client: ClassVar[bool] = False     # the P2P workloads use it as a pair's client
    no_acs: ClassVar[str] = "an endpoint has no ACS capability"  # for `acs:` on it

    def read(self, reader: FieldReader, item: Sourced, m: dict[str, Sourced], path: str,
             name: str | None) -> Endpoint | None:
        """The node from its entry ``m`` (keys checked already); problems go to ``reader``."""
        return self.node(name) if name else None

    def argv(self, node: Any, bus: str, run_dir: Path) -> list[str]:
        """Its QEMU options, plugged into ``bus``; per-run files live in ``run_dir``."""
        return ["-device", f"{self.qemu_device},id={node.name},bus={bus}"]

    def backing_files(self, node: Any, run_dir: Path) -> list[BackingFile]:
        return []

    def needs(self, node: Any, base: str) -> list[Need]:
        """What the QEMU binary must have for the fields of ``node`` written at ``base``,
        besides its devices."""
        return []

    def details(self, node: Any) -> str:
        """One line about ``node`` for the picture (an NVMe's CMB and PMR sizes)."""
        return ""

    def bars(self, node: Any) -> list[Bar]:
        """The memory BARs ``testbed verify`` checks."""
        return []

    def guest_problems(self, node: Any, bdf: str, inventory: Mapping[str, Any],
                       p2pdma: bool) -> list[str]:
        """What the guest's inventory shows wrong about ``node`` at ``bdf`` beyond the PCI ID
        and the driver (``p2pdma``: the kernel publishes p2pmem)."""
        return []
