"""The way a P2P transfer goes through the topology, for the drawing: which nodes, in
which order, and where it turns or stops.

- **switch**: mapped by PCI bus address, up from the provider to the nearest bridge the
  client also sits below (a switch's upstream port, usually), and down to the client;
- **self**: a controller's own CMB for its own I/O (the device itself is the common
  upstream device);
- **host**: mapped through the host bridge, up to the machine's root complex (through the vIOMMU
  when DMA is translated) and down to the client;
- **refused**: the kernel would not map it (``not-supported``): up to the root complex, no
  further;
- **fault**: mapped by bus address, but QEMU sends every DMA through the vIOMMU at the
  root complex, where a translating vIOMMU faults: up to the vIOMMU, no further;
- **iommu**: the BAR mapped in the vIOMMU at an IOVA (``iommu-mmio``: a device handed to
  userspace through VFIO or iommufd): up to the root complex, through the vIOMMU and down;
- **revoked**: such a mapping revoked (the dma-buf's exporter went away): the client's
  DMA goes up to the vIOMMU and stops there (this route starts at the client).

    >>> from testbed.spec import load_topology
    >>> topo = load_topology("switch-cmb")
    >>> route(topo, "nvme0", "nvme1", "bus-address", "ok", translating=False)
    Route(nodes=('nvme0', 'sw0-dp0', 'sw0', 'sw0-dp1', 'nvme1'), how='switch', top='sw0')
    >>> topo = load_topology("switch-cmb-intel-iommu")
    >>> route(topo, "nvme0", "nvme1", "bus-address", "iommu-fault", translating=True).nodes
    ('nvme0', 'sw0-dp0', 'sw0', 'rp0', '@root-complex', '@viommu')
    >>> route(topo, "nvme0", "nvme1", "iommu-mmio", "ok", translating=True).how
    'iommu'
    >>> route(topo, "nvme0", "nvme1", "iommu-mmio", "revoked", translating=True).nodes
    ('nvme1', 'sw0-dp1', 'sw0', 'rp0', '@root-complex', '@viommu')
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.model import HostBridge, Topology

# Node ids of what the spec does not name; spec names never hold "@".
ROOT_COMPLEX = "@root-complex"  # whatever the machine (q35's, virt's)
VIOMMU = "@viommu"
HOWS = ("switch", "self", "host", "refused", "fault", "iommu", "revoked")
IOMMU_MMIO = "iommu-mmio"  # the map type of a BAR mapped in the IOMMU (verdicts.vfio)


@dataclass(frozen=True)
class Route:
    nodes: tuple[str, ...]  # provider first; the client last unless it stops on the way
    how: str  # one of HOWS
    top: str  # where the route turns (the common bridge, the root complex) or stops


def _up(topo: Topology, name: str) -> list[str]:
    """``name`` and the nodes above it (expander host bridges included), nearest first."""
    return [n.name for n in topo.upstream_path(name)]


def common_bridge(topo: Topology, provider: str, client: str) -> str | None:
    """The nearest node above (or being) the provider that the client also sits below;
    an expander host bridge does not count (it is a host bridge, not an upstream bridge)."""
    below = set(_up(topo, client))
    for node in topo.upstream_path(provider):
        if isinstance(node, HostBridge):
            return None
        if node.name in below:
            return node.name
    return None


def route(topo: Topology, provider: str, client: str, map_type: str | None,
          verdict: str | None, translating: bool) -> Route | None:
    """The route of a transfer the kernel mapped (or refused) as ``map_type`` with the
    outcome ``verdict``; None when nothing moves for a reason unrelated to the fabric
    (``unsupported``: no P2PDMA in the kernel, or no CMB).  Without a map type the route
    follows the tree: through the common bridge when there is one."""
    if verdict == "unsupported" or map_type == "none":
        return None
    up = _up(topo, provider)
    down = list(reversed(_up(topo, client)))
    iommu = topo.iommu.model != "none"
    if provider == client:
        return Route((provider,), "self", provider)
    common = common_bridge(topo, provider, client)
    if verdict == "iommu-fault":
        return Route((*up, ROOT_COMPLEX, *((VIOMMU,) if iommu else ())), "fault",
                     VIOMMU if iommu else ROOT_COMPLEX)
    if map_type == IOMMU_MMIO:
        if verdict == "revoked":
            return Route((*_up(topo, client), ROOT_COMPLEX, VIOMMU), "revoked", VIOMMU)
        return Route((*up, ROOT_COMPLEX, VIOMMU, ROOT_COMPLEX, *down), "iommu", VIOMMU)
    if verdict == "rejected" or map_type == "not-supported":
        return Route((*up, ROOT_COMPLEX), "refused", ROOT_COMPLEX)
    if common is not None and map_type in ("bus-address", None):
        top = up.index(common)
        return Route((*up[:top + 1], *down[down.index(common) + 1:]), "switch", common)
    through = (ROOT_COMPLEX, VIOMMU, ROOT_COMPLEX) if translating and iommu else (ROOT_COMPLEX,)
    return Route((*up, *through, *down), "host", ROOT_COMPLEX)
