"""P2PDMA workloads: each runs guest-side code over SSH and returns judged records.

    >>> sorted(WORKLOADS)  # doctest: +NORMALIZE_WHITESPACE
    ['concurrent', 'exec', 'fio', 'hmm-p2p', 'host-baseline', 'hot-unplug', 'inventory',
     'isolation', 'mixed-iovec', 'nvmet-p2pmem', 'p2p-copy', 'passthru', 'pmr', 'pool',
     'split', 'vfio-dmabuf', 'vfio-p2p', 'vfio-pfnmap', 'vfio-revoke', 'vfio-type1']
"""

from __future__ import annotations

from ..spec.model import Topology
from ..verdicts.predict import pairs
from .base import Context, Record, Workload
from .concurrent import Concurrent
from .copy import HostBaseline, P2PCopy
from .exec import Exec
from .fio import Fio
from .hmmp2p import HmmP2P
from .hotunplug import HotUnplug
from .inventory import Inventory
from .iovec import MixedIovec, Split
from .nvmet import NvmetP2pmem
from .isolation import Isolation
from .passthru import Passthru
from .pmr import Pmr
from .pool import Pool
from .vfio import VfioDmabuf, VfioPfnmap, VfioType1
from .vfiorevoke import VfioP2P, VfioRevoke

WORKLOADS: dict[str, type[Workload]] = {
    w.name: w for w in (Inventory, Isolation, P2PCopy, HostBaseline, Passthru, Pmr, Exec)
}
# the paths merged since 6.2: run when named (-w), never by default
WORKLOADS.update({w.name: w for w in (Fio, MixedIovec, Split, Concurrent, Pool, HotUnplug)})
# the kernel's in-kernel P2P user's configuration (nvmet): run when named
WORKLOADS["nvmet-p2pmem"] = NvmetP2pmem
# P2P to a BAR without struct page: VFIO type1 and iommufd (run when named)
VFIO = (VfioType1, VfioPfnmap, VfioDmabuf, VfioRevoke, VfioP2P)
WORKLOADS.update({w.name: w for w in VFIO})
# workloads whose records carry the kernel's P2P mechanism (tracing is set up for them)
OBSERVED: frozenset[str] = frozenset({"p2p-copy", "passthru", *(w.name for w in VFIO)})
# the kernel's mapping paths without a transfer (a test module of the project's own)
WORKLOADS.update({w.name: w for w in (HmmP2P,)})


def default_workloads(topo: Topology) -> list[str]:
    """The default set, minus workloads the topology has nothing for."""
    out = ["inventory"]
    if topo.iommu.model != "none":
        out.append("isolation")  # cheap: one inventory, no I/O
    if pairs(topo):  # a provider and a client
        out += ["p2p-copy", "host-baseline", "passthru"]
    if any(n.pmr for n in topo.nvmes()):
        out.append("pmr")
    return out


__all__ = ["WORKLOADS", "OBSERVED", "default_workloads", "Context", "Record", "Workload"]
