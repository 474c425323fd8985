"""The igb endpoint kind: QEMU's emulated Intel 82576 Gigabit NIC (``-device igb``,
8086:10c9), bound by the guest's ``igb`` driver (a module, loaded by the boot's guest
check).  No P2P memory; a DMA engine the kernel's VFIO selftests drive, not a client of
the testbed's own P2P workloads.  Its port is cabled to a user-mode network restricted to
the guest (``restrict=on``: nothing reaches the host or beyond); QEMU would otherwise warn
that the NIC has no peer.

    >>> IGB.argv(Igb("nic0"), "sw0-dp2", Path("/run/x"))
    ['-netdev', 'user,id=tb-nic0-net,restrict=on', '-device', 'igb,id=nic0,bus=sw0-dp2,netdev=tb-nic0-net']
    >>> Igb("nic0").p2p_memory, IGB.pair_client
    (0, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import Endpoint, EndpointKind


@dataclass(frozen=True)
class Igb(Endpoint):
    """An Intel 82576 NIC: an endpoint with nothing to set but its name."""

    kind = "igb"


class IgbKind(EndpointKind):
    word = "igb"
    node = Igb
    keys = ("igb",)
    qemu_device = "igb"
    pci_id = ("0x8086", "0x10c9")
    label = "igb NIC (82576)"
    short = "igb NIC"
    driver = "igb"
    module = "igb"
    dma_engine = True
    pair_client = False
    no_acs = "only a root port can switch ACS off: QEMU's igb has no ACS capability"

    def argv(self, node: Igb, bus: str, run_dir: Path) -> list[str]:
        net = f"tb-{node.name}-net"
        return ["-netdev", f"user,id={net},restrict=on",
                "-device", f"{self.qemu_device},id={node.name},bus={bus},netdev={net}"]

    def details(self, node: Igb) -> str:
        return "DMA engine, no P2P memory"


IGB = IgbKind()

