"""The JSON documents p2pdma-guest prints, written down once.

The guest side builds them; the host side (:mod:`testbed.verdicts.observe`) reads them
through these names instead of string literals of its own.

A transfer document (``copy``, ``passthru``)::

    {"steps": {STEP: Step, ...}, "data_verified": bool, "mismatched_blocks": [int],
     "mb_per_s": {"read": float|None, "write": float|None}, ...}

or, when the transfer could not start, ``{"stage": STAGE, "error": str, "errno": int|None}``.
"""

from typing import Dict, List, Optional, TypedDict

# -- stages at which a sub-command can give up before any transfer -------------------------
STAGE_USAGE = "usage"        # bad arguments (exit status 2)
STAGE_ALLOCATE = "allocate"  # the p2pmem buffer could not be had
STAGE_OPEN = "open"          # the client device could not be opened
NO_P2PMEM = "no p2pmem"      # the error of STAGE_ALLOCATE when the provider publishes none

# -- step names -----------------------------------------------------------------------------
SEED, CORRUPT = "seed", "corrupt"
P2P_READ, P2P_WRITE = "p2p_read", "p2p_write"          # copy: device -> buffer, buffer -> device
VERIFY_READ, VERIFY_WRITE = "verify_read", "verify_write"
PREPARE, WRITE, READ = "prepare", "write", "read"      # passthru
VERIFY, VERIFY_DEVICE = "verify", "verify_device"
IO = "io"                                              # fio: the jobs' I/O as a whole
# steps whose failure means the I/O itself failed (not the verification)
TRANSFER_STEPS = (P2P_READ, P2P_WRITE, WRITE, READ, IO)

# -- the newer sub-commands (each also carries the transfer keys below when it moved data) --
CASES, MISMATCHES = "cases", "mismatches"              # iovec: one entry per case
LIMITS = "limits"                                      # iovec, limits: the queue limits
PAIRS, WORKERS = "pairs", "workers"                    # concurrent: per pair, per thread
AVAILABLE = "available"                                # p2pmem/available samples
JOBS, PHASES, P2PMEM = "jobs", "phases", "p2pmem"      # fio: parsed jobs, fio runs, pool use
EXHAUST, MISUSE, KILL = "exhaust", "misuse", "kill"    # pool: its three checks
EVENT = "event"                                        # p2p-loop: one JSON line per event
LOOP_START, LOOP_ITER, LOOP_DONE = "start", "iter", "done"

# -- vfio-p2p: P2P to a BAR through VFIO and iommufd -----------------------------------------
# IOVAs the userspace driver uses, far above every bus address QEMU's q35 assigns: QEMU's
# NVMe fails a DMA whose (untranslated) address falls in its own BAR0 with a Data Transfer
# Error (nvme_addr_is_iomem), even behind a vIOMMU, where IOVAs are not bus addresses.
VFIO_BAR_IOVA = 0x2000000000  # where the provider's BAR goes (128 GiB: not a bus address)
VFIO_ARENA_IOVA = 0x1000000000  # the client's queues and host buffers (64 GiB)
METHODS, MAP, UNSUPPORTED = "methods", "map", "unsupported"  # vfio-p2p document keys

# -- hmm-p2p: the hmm_p2p_test module's report (see hmmp2p.py) -----------------------------
# {"layout": ["host", "p2p", ..., "host"], "bars": [...], MAP: {ioctl fields..., PAGES:
#  [{"kind", "state", "bits", "phys", "dma", "map_type", "expected_bus"}]}, UNMAP: {...,
#  PAGES: [[bit, ...]]}, INVALIDATE: {..., PAGES: [[bit, ...]]}} or a STAGE/"error" document
HMM_MAP, HMM_UNMAP, HMM_INVALIDATE, HMM_PAGES = "map", "unmap", "invalidate", "pages"
HMM_HOST, HMM_P2P = "host", "p2p"  # the kinds of page in the range

# -- what the kernel decided (``--observe``, ``trace read``) --------------------------------
MECHANISM = "mechanism"  # the key of a transfer document that holds a trace read
MECH_OK = "ok"           # False: not observed, and MECH_WHY says why
MECH_WHY = "why"
# map types as the testbed names them (enum pci_p2pdma_map_type)
BUS_ADDRESS, HOST_BRIDGE, NOT_SUPPORTED = "bus-address", "host-bridge", "not-supported"


class Step(TypedDict, total=False):
    ok: bool
    skipped: bool
    errno: Optional[int]
    error: Optional[str]
    seconds: float
    bytes: int
    reason: str
    mismatched_blocks: List[int]
    readback: "Step"  # copy's verify_write: the read-back that failed


class Transfer(TypedDict, total=False):
    steps: Dict[str, Step]
    buffer_source: str  # copy: where the write direction's buffer came from (P2P_READ, host)
    data_verified: bool
    mismatched_blocks: List[int]
    mb_per_s: Dict[str, Optional[float]]
    stage: str
    error: str
    errno: Optional[int]


# -- the inventory's isolation facts ---------------------------------------------------------
# inventory["pci"][BDF] has, besides vendor/device/class/driver/chain/p2pmem:
#   "iommu_group": "7" | None, "pcie_type": PCIE_TYPE | None (conventional PCI),
#   "multifunction": bool, "acs": Acs | None (no ACS extended capability)
# inventory["iommu_groups"] = IommuGroups
# inventory["kernel"]["grouping_symbols"] = {symbol: bool} | None   (--grouping-symbols)
ROOT_PORT, UPSTREAM, DOWNSTREAM, ENDPOINT = "root_port", "upstream", "downstream", "endpoint"


class Acs(TypedDict):
    offset: int
    cap: int   # ACS Capability register
    ctrl: int  # ACS Control register


class IommuGroup(TypedDict):
    type: Optional[str]  # the default domain: DMA, DMA-FQ, identity, ...
    devices: List[str]


class IommuGroups(TypedDict):
    present: bool  # /sys/kernel/iommu_groups exists (it is empty without an IOMMU driver)
    groups: Dict[str, IommuGroup]
