"""iommufd from userspace, stdlib only: /dev/iommu, an IO address space (IOAS), maps of
user memory and of files (memfd, or a VFIO dma-buf), and VFIO device cdevs bound to it.

Numbers and layouts are include/uapi/linux/iommufd.h and vfio.h of Linux 7.3: every
iommufd ioctl is ``_IO(';', 0x80 + n)``; a device cdev is /dev/vfio/devices/vfioN
(``/sys/bus/pci/devices/BDF/vfio-dev/vfioN``), bound with VFIO_DEVICE_BIND_IOMMUFD and
attached with VFIO_DEVICE_ATTACH_IOMMUFD_PT (kernels with CONFIG_VFIO_DEVICE_CDEV).

    >>> hex(IOMMU_IOAS_MAP), hex(IOMMU_IOAS_MAP_FILE), hex(VFIO_DEVICE_BIND_IOMMUFD)
    ('0x3b85', '0x3b8f', '0x3b76')
"""

import errno
import os
import struct

from .vfio import Device, ioctl

IOMMUFD_TYPE = ord(";")


def _io(cmd):
    return (IOMMUFD_TYPE << 8) | cmd


IOMMU_DESTROY, IOMMU_IOAS_ALLOC = _io(0x80), _io(0x81)
IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP, IOMMU_IOAS_MAP_FILE = _io(0x85), _io(0x86), _io(0x8F)
VFIO_DEVICE_BIND_IOMMUFD = (ord(";") << 8) | (100 + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = (ord(";") << 8) | (100 + 19)

IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE = 1, 2, 4
RW = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE
DEV_IOMMU = "/dev/iommu"


def cdev_path(bdf, sys_pci="/sys/bus/pci/devices"):
    """/dev/vfio/devices/vfioN of a device bound to vfio-pci, None without a cdev."""
    base = f"{sys_pci}/{bdf}/vfio-dev"
    try:
        names = [n for n in os.listdir(base) if n.startswith("vfio")]
    except OSError:
        return None
    return f"/dev/vfio/devices/{names[0]}" if names else None


class IommuFd:
    """One /dev/iommu context with one IOAS."""

    kind = "iommufd"

    def __init__(self):
        self.fd = os.open(DEV_IOMMU, os.O_RDWR | os.O_CLOEXEC)
        self.devices: list = []
        try:
            buf = bytearray(struct.pack("=III", 12, 0, 0))
            ioctl(self.fd, IOMMU_IOAS_ALLOC, buf, "IOMMU_IOAS_ALLOC")
            self.ioas = struct.unpack("=III", buf)[2]
        except BaseException:
            os.close(self.fd)
            raise

    def device(self, bdf):
        """Open the device's cdev, bind it to this iommufd, attach it to the IOAS."""
        path = cdev_path(bdf)
        if path is None:
            raise OSError(errno.ENODEV, f"{bdf} has no VFIO device cdev "
                                        "(CONFIG_VFIO_DEVICE_CDEV, bound to vfio-pci?)")
        dev = Device(os.open(path, os.O_RDWR | os.O_CLOEXEC), bdf, "cdev")
        try:
            buf = bytearray(struct.pack("=IIiIQ", 24, 0, self.fd, 0, 0))
            ioctl(dev.fd, VFIO_DEVICE_BIND_IOMMUFD, buf, f"VFIO_DEVICE_BIND_IOMMUFD {bdf}")
            dev.devid = struct.unpack("=IIiIQ", buf)[3]
            buf = bytearray(struct.pack("=IIII", 16, 0, self.ioas, 0))
            ioctl(dev.fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, buf,
                  f"VFIO_DEVICE_ATTACH_IOMMUFD_PT {bdf}")
            dev.hwpt = struct.unpack("=IIII", buf)[2]
        except BaseException:
            dev.close()
            raise
        self.devices.append(dev)
        return dev

    def map(self, vaddr, iova, size, read=True, write=True):
        """IOMMU_IOAS_MAP of user memory at a fixed IOVA."""
        flags = IOMMU_IOAS_MAP_FIXED_IOVA | (IOMMU_IOAS_MAP_READABLE if read else 0) | (
            IOMMU_IOAS_MAP_WRITEABLE if write else 0)
        buf = bytearray(struct.pack("=IIIIQQQ", 40, flags, self.ioas, 0, vaddr, size, iova))
        ioctl(self.fd, IOMMU_IOAS_MAP, buf, "IOMMU_IOAS_MAP")

    def map_file(self, fd, start, size, iova):
        """IOMMU_IOAS_MAP_FILE of a memfd or a VFIO dma-buf at a fixed IOVA."""
        buf = bytearray(struct.pack("=IIIiQQQ", 40, IOMMU_IOAS_MAP_FIXED_IOVA | RW, self.ioas,
                                    fd, start, size, iova))
        ioctl(self.fd, IOMMU_IOAS_MAP_FILE, buf, "IOMMU_IOAS_MAP_FILE")

    def unmap(self, iova, size):
        buf = bytearray(struct.pack("=IIQQ", 24, self.ioas, iova, size))
        ioctl(self.fd, IOMMU_IOAS_UNMAP, buf, "IOMMU_IOAS_UNMAP")
        return struct.unpack("=IIQQ", buf)[3]

    def forget(self, dev):
        """The caller closed ``dev`` itself (a revocation step)."""
        self.devices = [d for d in self.devices if d is not dev]

    def close(self):
        for dev in self.devices:
            dev.close()
        self.devices = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
