"""P2PDMA workloads: each runs guest-side code over SSH and returns judged records.

    >>> sorted(WORKLOADS)  # doctest: +NORMALIZE_WHITESPACE
    ['concurrent', 'exec', 'fio', 'hmm-p2p', 'host-baseline', 'hot-unplug', 'inventory',
     'isolation', 'kselftest:hmm', 'kselftest:iommu', 'kselftest:vfio', 'kunit',
     'mixed-iovec', 'nvmet-p2pmem', 'p2p-copy', 'passthru', 'pmr', 'pool', 'split',
     'vfio-dmabuf', 'vfio-p2p', 'vfio-pfnmap', 'vfio-revoke', 'vfio-type1']
"""

from __future__ import annotations

from typing import Iterable

from ..spec.model import Topology
from .base import Context, Record, Workload, WorkloadOptions
from .concurrent import Concurrent
from .copy import HostBaseline, P2PCopy
from .exec import Exec
from .fio import Fio
from .hmmp2p import HmmP2P
from .kselftest import SELFTEST_WORKLOADS, Kunit
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

# In the order a run runs them; the facts about each (default, observed, what it needs)
# are its class attributes.  The paths merged since 6.2 (fio ... hot-unplug), nvmet's
# in-kernel P2P user, the VFIO family (P2P to a BAR without struct page) and the HMM
# mapping paths (a test module of the project's own) run when named (-w), never by
# default.
VFIO = (VfioType1, VfioPfnmap, VfioDmabuf, VfioRevoke, VfioP2P)
# the kernel's own tests (tools/testing/selftests, KUnit): run when named
KERNEL_TESTS: tuple[type[Workload], ...] = (*SELFTEST_WORKLOADS, Kunit)
ALL: tuple[type[Workload], ...] = (
    Inventory, Isolation, P2PCopy, HostBaseline, Passthru, Pmr, Exec,
    Fio, MixedIovec, Split, Concurrent, Pool, HotUnplug, NvmetP2pmem, *VFIO, HmmP2P,
    *KERNEL_TESTS)
WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in ALL}


def default_workloads(topo: Topology) -> list[str]:
    """The default set, minus workloads the topology has nothing for."""
    return [n for n, w in WORKLOADS.items() if w.default and w.missing(topo) is None]


def observed(names: Iterable[str]) -> bool:
    """Do any of these workloads record the kernel's P2P mechanism (tracing first)?"""
    return any(WORKLOADS[n].observed for n in names if n in WORKLOADS)


__all__ = ["WORKLOADS", "default_workloads", "observed", "Context", "Record", "Workload",
           "WorkloadOptions"]
