"""IOMMU groups as the guest kernel formed them, and which grouping code it carries.

``/sys/kernel/iommu_groups/N/{type,devices/}``: every group, its default domain type
(``DMA``, ``DMA-FQ``, ``identity``, ...) and its members.  The directory exists but is
empty when no IOMMU driver runs.

Which algorithm ``pci_device_group()`` follows is visible in ``/proc/kallsyms``: Linux up
to at least 7.3 has ``get_pci_function_alias_group`` (a static function, listed as ``t``);
the 2025 series "Fix incorrect iommu_groups with PCIe ACS" adds ``pci_bus_isolated`` and
``pci_reachable_set`` and removes it.  Reading kallsyms takes about a second under TCG,
so only ``inventory --grouping-symbols`` does it.
"""

import os

GROUPS = "/sys/kernel/iommu_groups"
GROUPING_SYMBOLS = ("pci_device_group", "get_pci_function_alias_group", "get_pci_alias_group",
                    "pci_bus_isolated", "pci_reachable_set")


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def iommu_groups(base=GROUPS):
    """{"present": bool, "groups": {id: {"type": str|None, "devices": [bdf]}}}."""
    if not os.path.isdir(base):
        return {"present": False, "groups": {}}
    groups = {}
    for gid in sorted(os.listdir(base), key=lambda g: int(g) if g.isdigit() else -1):
        devs = os.path.join(base, gid, "devices")
        groups[gid] = {"type": read(os.path.join(base, gid, "type")),
                       "devices": sorted(os.listdir(devs)) if os.path.isdir(devs) else []}
    return {"present": True, "groups": groups}


def device_group(device_dir):
    """The IOMMU group number of one sysfs PCI device directory (None: in no group)."""
    link = os.path.join(device_dir, "iommu_group")
    return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None


def grouping_symbols(path="/proc/kallsyms", chunk=1 << 20):
    """{symbol: present} for :data:`GROUPING_SYMBOLS`; None when kallsyms is unreadable or
    empty (CONFIG_KALLSYMS off).  Read in large chunks and searched as bytes: a line-by-line
    loop takes four times as long under TCG."""
    # "ffffffff81d830d0 t get_pci_function_alias_group\n"; module symbols end in "\t[mod]"
    wanted = {s: (b" %s\n" % s.encode(), b" %s\t" % s.encode()) for s in GROUPING_SYMBOLS}
    found = {s: False for s in GROUPING_SYMBOLS}
    overlap = max(len(s) for s in GROUPING_SYMBOLS) + 2
    tail, total = b"", 0
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk)
                if not data:
                    break
                total += len(data)
                text = tail + data
                for name, needles in wanted.items():
                    found[name] = found[name] or any(n in text for n in needles)
                tail = text[-overlap:]
    except OSError:
        return None
    return found if total else None
