"""Which source files a coverage run measures: the P2P set by default, or what
``--coverage FILE|DIR`` (repeatable) names, relative to the kernel's source tree.

    >>> P2P in parse_requests(["p2p"]) and parse_requests([]) == (P2P,)
    True
    >>> parse_requests(["./drivers/pci/", "drivers/pci/p2pdma.c"])
    ('drivers/pci', 'drivers/pci/p2pdma.c')
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UsageError

P2P = "p2p"  # the name of the default set on the command line
# the files a P2P transfer's code runs through, from the provider's pool to the IOMMU
P2P_FILES = (
    "drivers/pci/p2pdma.c", "block/blk-mq-dma.c", "drivers/nvme/host/pci.c",
    "kernel/dma/mapping.c", "drivers/iommu/dma-iommu.c", "drivers/dma-buf/dma-buf.c",
    "mm/hmm.c", "drivers/vfio/pci/vfio_pci_dmabuf.c", "drivers/vfio/vfio_iommu_type1.c",
    "drivers/vfio/pci/vfio_pci_core.c", "drivers/iommu/iommufd/pages.c",
)
SUFFIXES = (".c",)
MAX_FILES = 2000  # a whole subsystem is fine; all of drivers/ is a mistake


def parse_requests(items: Sequence[str]) -> tuple[str, ...]:
    """The --coverage values, normalised (no ``./``, no trailing ``/``); empty: the P2P
    set.  An absolute path or one that climbs out of the tree is bad input."""
    out: list[str] = []
    for item in items or (P2P,):
        text = item.strip()
        if text == P2P:
            out.append(P2P)
            continue
        if not text or text.startswith("/") or "\0" in text:
            raise UsageError(f"--coverage {item!r}: expected a file or directory relative to "
                             "the kernel source tree (drivers/pci/p2pdma.c, drivers/pci/) or "
                             f"{P2P!r} for the P2P set")
        norm = posixpath.normpath(text)
        if norm == ".." or norm.startswith("../"):
            raise UsageError(f"--coverage {item!r}: outside the kernel source tree")
        out.append("." if norm == "." else norm)
    return tuple(dict.fromkeys(out))


def select_files(root: Path, requests: Iterable[str]) -> tuple[list[str], list[str]]:
    """(files to measure, notes): every request expanded against the source tree ``root``.
    A named file or directory that is not there is bad input; a file of the P2P set that
    this kernel's source does not have is a note (an older kernel)."""
    files: list[str] = []
    notes: list[str] = []
    for req in requests:
        if req == P2P:
            for rel in P2P_FILES:
                if (root / rel).is_file():
                    files.append(rel)
                else:
                    notes.append(f"{rel}: not in this kernel's source ({root})")
            continue
        path = root / req
        if path.is_dir():
            found = sorted(str(p.relative_to(root)) for p in path.rglob("*")
                           if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"--coverage {req}: no C source file under {path}")
            files += found
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise UsageError(f"--coverage {req}: not a C source file (.c)")
            files.append(req)
        else:
            raise UsageError(f"--coverage {req}: no such file or directory in the kernel "
                             f"source {root}")
    files = list(dict.fromkeys(files))
    if len(files) > MAX_FILES:
        raise UsageError(f"--coverage: {len(files)} source files, more than {MAX_FILES}; "
                         "name the subsystems you mean")
    return files, notes
