"""What the guest's sysfs says: PCI devices with their upstream chains, IOMMU groups and
ACS registers, NVMe controllers, p2pmem pools, the kernel's P2PDMA config."""

import os

from .iommu import device_group
from .pciconfig import read_device

SYS_PCI = "/sys/bus/pci/devices"


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _open_text(path):
    if path.endswith(".gz"):
        import gzip  # only here: most kernels have no /proc/config.gz, and it costs 0.1 s
        return gzip.open(path, "rt")
    return open(path)


def kernel_config():
    """CONFIG_PCI_P2PDMA as the running kernel reports it (None: unknown)."""
    release = os.uname().release
    for path in ("/proc/config.gz", f"/boot/config-{release}",
                 f"/lib/modules/{release}/build/.config"):
        try:
            with _open_text(path) as f:
                for line in f:
                    if line.startswith("CONFIG_PCI_P2PDMA="):
                        return line.split("=", 1)[1].strip() == "y"
                return False
        except OSError:
            continue
    return os.path.isdir("/sys/module/p2pdma") or None


def pci_devices():
    out = {}
    for bdf in sorted(os.listdir(SYS_PCI)):
        d = os.path.join(SYS_PCI, bdf)
        real = os.path.realpath(d)
        chain = [p for p in real.split("/") if p.count(":") == 2 and "." in p]
        out[bdf] = {
            "vendor": read(f"{d}/vendor"), "device": read(f"{d}/device"),
            "class": read(f"{d}/class"), "driver": os.path.basename(
                os.path.realpath(f"{d}/driver")) if os.path.exists(f"{d}/driver") else None,
            "chain": chain[:-1],  # upstream bridges, root port first
            # the root bus it hangs from ("pci0000:40" -> "0000:40"): one per host bridge
            "root": next((p[3:] for p in real.split("/") if p.startswith("pci")
                          and p.count(":") == 1), None),
            "iommu_group": device_group(d),
        }
        # PCIe port type, multifunction, ACS capability/control (see pciconfig)
        out[bdf].update(read_device(f"{d}/config", int(bdf.rsplit(".", 1)[1], 16)))
        p2p = f"{d}/p2pmem"
        if os.path.isdir(p2p):
            out[bdf]["p2pmem"] = {k: read(f"{p2p}/{k}") for k in ("size", "available", "published")}
    return out


def nvme_controllers():
    out = {}
    base = "/sys/class/nvme"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        dev = os.path.realpath(f"{base}/{name}/device")
        out[name] = {"serial": read(f"{base}/{name}/serial"),
                     "bdf": os.path.basename(dev), "state": read(f"{base}/{name}/state"),
                     "model": read(f"{base}/{name}/model")}
    return out


QUEUE_LIMITS = ("max_hw_sectors_kb", "max_sectors_kb", "max_segments", "max_segment_size",
                "logical_block_size", "physical_block_size", "dma_alignment",
                "virt_boundary_mask")


def queue_limits(dev):
    """The request queue limits of block device ``dev`` (/dev/nvme1n1 or nvme1n1), as ints."""
    name = os.path.basename(os.path.realpath(dev)) if dev.startswith("/") else dev
    out = {}
    for key in QUEUE_LIMITS:
        value = read(f"/sys/block/{name}/queue/{key}")
        out[key] = int(value) if value is not None and value.isdigit() else value
    return out
