"""One VFIO session in the guest: the named functions handed to vfio-pci (their groups
checked first), a DMA space (a type1 container, or an iommufd IOAS with device cdevs),
the devices opened in it, DMA memory mapped at a known IOVA; and everything given back,
in that order reversed, whatever happened.

    with Session("type1", ["0000:03:00.0"]) as s:
        dev = s.device("0000:03:00.0")
        arena = s.arena(1 << 20)            # host memory the device reaches at ARENA_IOVA
"""

import os
from typing import Any

from . import vfiobind
from .dmamem import DmaArena
from .schema import VFIO_ARENA_IOVA as ARENA_IOVA  # host memory: queues, PRP lists, buffers
from .schema import VFIO_BAR_IOVA as BAR_IOVA  # the provider's BAR (P2P); not a bus address
MODULES = {"type1": ("vfio-pci", "vfio_iommu_type1"), "iommufd": ("vfio-pci", "iommufd")}


class Refused(Exception):
    """The session cannot start for a reason that is data (stage, reason), not a bug."""

    def __init__(self, stage, reason, errno=None):
        super().__init__(reason)
        self.stage, self.reason, self.errno = stage, reason, errno


def kernel_facts():
    """What this kernel offers for VFIO and iommufd, at run time."""
    return {"dev_vfio": os.path.exists("/dev/vfio/vfio"), "dev_iommu":
            os.path.exists("/dev/iommu"), "vfio_cdev": os.path.isdir("/dev/vfio/devices"),
            "modules": {m: os.path.isdir(f"/sys/module/{m}") for m in
                        ("vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "iommufd")}}


class Session:
    """A context manager; ``report`` collects what binding and restoring did."""

    def __init__(self, kind, bdfs, allow_unsafe_interrupts=False, restore=True):
        self.kind, self.bdfs = kind, list(dict.fromkeys(bdfs))
        self.allow_unsafe = allow_unsafe_interrupts
        self.restore = restore  # False: the caller restores (several sessions, one binding)
        self.space: Any = None
        self.arenas: list = []
        self.devices: dict = {}
        self.bound = False
        self.report = {"kind": kind, "devices": self.bdfs}

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _start(self):
        groups = vfiobind.groups(self.bdfs)
        self.report["groups"] = {b: {"group": g["group"], "members": g["members"]}
                                 for b, g in groups.items()}
        for bdf, g in groups.items():
            if g["group"] is None:
                raise Refused("group", f"{bdf} is in no IOMMU group (no IOMMU driver runs, "
                                       "so VFIO cannot isolate it)")
            if g["foreign"]:
                raise Refused("group", f"IOMMU group {g['group']} of {bdf} is not viable: "
                              + ", ".join(f"{b} is bound to {d}" for b, d in g["foreign"].items())
                              + "; the testbed does not take foreign devices from their "
                                "drivers")
        along = list(dict.fromkeys(m for g in groups.values() for m in g["along"]
                                   if m not in self.bdfs))
        if along:
            self.report["taken_along"] = along  # the testbed's own endpoints in the groups
        problems = [p for p in (vfiobind.modprobe(m) for m in MODULES[self.kind]) if p]
        if problems:
            raise Refused("modules", "; ".join(problems))
        if self.kind == "iommufd" and not os.path.exists("/dev/iommu"):
            raise Refused("iommufd", "no /dev/iommu: the kernel has no IOMMUFD")
        self.bound = True  # from here on, close() restores what the state file records
        if self.allow_unsafe:
            self.report["allow_unsafe_interrupts"] = {
                "was": vfiobind.allow_unsafe_interrupts(self.kind), "now": "Y"}
        bind = vfiobind.bind(self.bdfs + along)
        self.report["bind"] = bind
        if bind["problems"]:
            raise Refused("bind", "; ".join(bind["problems"]))
        self._open_space()

    def _open_space(self):
        try:
            if self.kind == "type1":
                from .vfio import Container  # only the kind of space this session uses
                self.space = Container()
            else:
                from .iommufd import IommuFd  # only the kind of space this session uses
                self.space = IommuFd()
        except OSError as exc:
            raise Refused("open", str(exc), exc.errno) from None

    def device(self, bdf):
        """The VFIO device of ``bdf`` (opened once; its group joins the container)."""
        if bdf not in self.devices:
            if self.kind == "type1":
                self.devices[bdf] = self.space.device(vfiobind.group_of(bdf), bdf)
            else:
                self.devices[bdf] = self.space.device(bdf)
        return self.devices[bdf]

    def forget(self, bdf):
        """The caller closed the device itself."""
        dev = self.devices.pop(bdf, None)
        if dev is not None:
            self.space.forget(dev)

    def arena(self, size, iova=ARENA_IOVA):
        """Host memory mapped into the DMA space at ``iova``."""
        arena = DmaArena(size, iova)
        try:
            self.space.map(arena.vaddr, iova, arena.size)
        except BaseException:
            arena.close()
            raise
        self.arenas.append(arena)
        return arena

    def close(self):
        """Close devices, the space and memory, then give the functions back; the restore
        report lands in ``report["restore"]``."""
        if self.space is not None:
            try:
                self.space.close()
            except OSError as exc:
                self.report.setdefault("close_problems", []).append(str(exc))
            self.space = None
        for arena in self.arenas:
            arena.close()
        self.arenas = []
        if self.bound and self.restore:
            self.report["restore"] = vfiobind.restore()
        self.bound = False
