"""VFIO from userspace, stdlib only: the legacy container (type1) and group, and a
device's regions, config space, reset, request IRQ and dma-buf export.

The numbers and layouts are include/uapi/linux/vfio.h of Linux 7.3 (every VFIO ioctl is
``_IO(';', 100 + n)``: no size or direction is encoded).  ``fcntl.ioctl`` with a
``bytearray`` passes a pointer to it and returns the ioctl's own return value, which is
how ``VFIO_GROUP_GET_DEVICE_FD`` and the dma-buf feature hand back a file descriptor.

    >>> hex(VFIO_IOMMU_MAP_DMA), hex(VFIO_DEVICE_FEATURE)
    ('0x3b71', '0x3b75')
    >>> len(dma_map_struct(0x7f0000000000, 1 << 30, 4096))
    32
"""

import errno
import fcntl
import mmap
import os
import struct

from .dmamem import mmap_at

VFIO_TYPE, VFIO_BASE = ord(";"), 100


def _io(n):
    return (VFIO_TYPE << 8) | (VFIO_BASE + n)


VFIO_GET_API_VERSION, VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU = _io(0), _io(1), _io(2)
VFIO_GROUP_GET_STATUS, VFIO_GROUP_SET_CONTAINER = _io(3), _io(4)
VFIO_GROUP_UNSET_CONTAINER, VFIO_GROUP_GET_DEVICE_FD = _io(5), _io(6)
VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO = _io(7), _io(8)
VFIO_DEVICE_GET_IRQ_INFO, VFIO_DEVICE_SET_IRQS, VFIO_DEVICE_RESET = _io(9), _io(10), _io(11)
VFIO_DEVICE_FEATURE = _io(17)
VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA = _io(12), _io(13), _io(14)

VFIO_API_VERSION = 0
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1
VFIO_DEVICE_FLAGS_RESET = 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE = 1, 2
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 2, 1 << 5
VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_REQ_IRQ_INDEX = 7, 4
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_DMA_BUF = 11

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x2, 0x4


def ioctl(fd, request, arg, what):
    """``fcntl.ioctl`` whose OSError names the step (``what``)."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror}") from None


def errno_name(code):
    return errno.errorcode.get(code or 0, str(code))


def dma_map_struct(vaddr, iova, size, flags=VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE):
    """struct vfio_iommu_type1_dma_map."""
    return struct.pack("=IIQQQ", 32, flags, vaddr, iova, size)


def parse_iova_ranges(buf, cap_offset):
    """The IOVA ranges of a VFIO_IOMMU_GET_INFO answer's capability chain."""
    out, off, seen = [], cap_offset, set()
    while off and off not in seen and off + 8 <= len(buf):
        seen.add(off)
        cap_id, _version, nxt = struct.unpack_from("=HHI", buf, off)
        if cap_id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            (n,) = struct.unpack_from("=I", buf, off + 8)
            out = [struct.unpack_from("=QQ", buf, off + 16 + 16 * i) for i in range(n)
                   if off + 32 + 16 * i <= len(buf)]
        off = nxt
    return out


class Region:
    """One region of a device as VFIO_DEVICE_GET_REGION_INFO describes it."""

    def __init__(self, index, flags, size, offset):
        self.index, self.flags, self.size, self.offset = index, flags, size, offset

    @property
    def mappable(self):
        return bool(self.flags & VFIO_REGION_INFO_FLAG_MMAP)

    def to_json(self):
        return {"index": self.index, "flags": self.flags, "size": self.size,
                "offset": hex(self.offset), "mmap": self.mappable}


class Device:
    """An open VFIO device (from a group, or a cdev bound to an iommufd)."""

    def __init__(self, fd, bdf, how):
        self.fd, self.bdf, self.how = fd, bdf, how
        self.maps: list = []  # (mmap, vaddr): closed before the fd
        self.req_fd = -1
        self.devid = self.hwpt = -1  # iommufd: set when bound and attached

    def info(self):
        buf = bytearray(struct.pack("=IIIIII", 24, 0, 0, 0, 0, 0))
        ioctl(self.fd, VFIO_DEVICE_GET_INFO, buf, "VFIO_DEVICE_GET_INFO")
        _, flags, regions, irqs, _, _ = struct.unpack("=IIIIII", buf)
        return {"flags": flags, "regions": regions, "irqs": irqs,
                "reset": bool(flags & VFIO_DEVICE_FLAGS_RESET)}

    def region(self, index):
        buf = bytearray(struct.pack("=IIIIQQ", 32, 0, index, 0, 0, 0))
        ioctl(self.fd, VFIO_DEVICE_GET_REGION_INFO, buf, f"VFIO_DEVICE_GET_REGION_INFO {index}")
        _, flags, _, _, size, offset = struct.unpack("=IIIIQQ", buf)
        return Region(index, flags, size, offset)

    def config_read(self, off, size):
        cfg = self.region(VFIO_PCI_CONFIG_REGION_INDEX)
        data = os.pread(self.fd, size, cfg.offset + off)
        return int.from_bytes(data, "little")

    def config_write(self, off, size, value):
        cfg = self.region(VFIO_PCI_CONFIG_REGION_INDEX)
        os.pwrite(self.fd, value.to_bytes(size, "little"), cfg.offset + off)

    def command(self, set_bits=0, clear_bits=0):
        """Read-modify-write the PCI command register; the new value."""
        cmd = (self.config_read(PCI_COMMAND, 2) | set_bits) & ~clear_bits & 0xFFFF
        self.config_write(PCI_COMMAND, 2, cmd)
        return self.config_read(PCI_COMMAND, 2)

    def map_region(self, index, length=None, offset=0):
        """(mmap, vaddr) of a region's ``length`` bytes from ``offset``; kept until close."""
        reg = self.region(index)
        if not reg.mappable:
            raise OSError(errno.EINVAL, f"region {index} of {self.bdf} cannot be mmapped")
        length = reg.size - offset if length is None else length
        mm, vaddr = mmap_at(self.fd, length, reg.offset + offset, "vfio")
        self.maps.append((mm, vaddr))
        return mm, vaddr

    def unmap_region(self, mm):
        self.maps = [(m, v) for m, v in self.maps if m is not mm]
        mm.close()

    def reset(self):
        ioctl(self.fd, VFIO_DEVICE_RESET, 0, "VFIO_DEVICE_RESET")

    def dma_buf(self, index, offset, length, open_flags=os.O_RDWR | os.O_CLOEXEC):
        """A dma-buf fd for ``length`` bytes of region ``index`` from ``offset``
        (VFIO_DEVICE_FEATURE_DMA_BUF, Linux >= 6.19)."""
        buf = bytearray(struct.pack("=II" "IIII" "QQ", 40, VFIO_DEVICE_FEATURE_GET
                                    | VFIO_DEVICE_FEATURE_DMA_BUF, index, open_flags, 0, 1,
                                    offset, length))
        return ioctl(self.fd, VFIO_DEVICE_FEATURE, buf, "VFIO_DEVICE_FEATURE_DMA_BUF")

    def probe_feature(self, feature):
        """None when the device supports ``feature`` for GET, else the errno."""
        buf = bytearray(struct.pack("=II", 8, VFIO_DEVICE_FEATURE_PROBE
                                    | VFIO_DEVICE_FEATURE_GET | feature))
        try:
            ioctl(self.fd, VFIO_DEVICE_FEATURE, buf, "VFIO_DEVICE_FEATURE probe")
        except OSError as exc:
            return exc.errno
        return None

    def request_eventfd(self):
        """An eventfd the kernel signals when it wants the device back (removal)."""
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        buf = bytearray(struct.pack("=IIIIIi", 24, VFIO_IRQ_SET_DATA_EVENTFD
                                    | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX,
                                    0, 1, efd))
        try:
            ioctl(self.fd, VFIO_DEVICE_SET_IRQS, buf, "VFIO_DEVICE_SET_IRQS (request)")
        except OSError:
            os.close(efd)
            raise
        self.req_fd = efd
        return efd

    def close(self):
        for mm, _ in self.maps:
            mm.close()
        self.maps = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.req_fd >= 0:
            os.close(self.req_fd)
            self.req_fd = -1


class Group:
    def __init__(self, number):
        self.number = number
        self.fd = os.open(f"/dev/vfio/{number}", os.O_RDWR | os.O_CLOEXEC)

    def viable(self):
        buf = bytearray(struct.pack("=II", 8, 0))
        ioctl(self.fd, VFIO_GROUP_GET_STATUS, buf, "VFIO_GROUP_GET_STATUS")
        return bool(struct.unpack("=II", buf)[1] & VFIO_GROUP_FLAGS_VIABLE)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Container:
    """A type1v2 container (/dev/vfio/vfio) holding groups: the legacy VFIO path."""

    kind = "type1"

    def __init__(self):
        self.fd = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
        self.groups: dict = {}
        self.devices: list = []
        try:
            version = ioctl(self.fd, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")
            if version != VFIO_API_VERSION:
                raise OSError(errno.EPROTO, f"VFIO API version {version}, expected 0")
            if not ioctl(self.fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU,
                         "VFIO_CHECK_EXTENSION"):
                raise OSError(errno.ENODEV, "the container has no type1v2 IOMMU "
                                            "(vfio_iommu_type1 not loaded?)")
        except BaseException:
            os.close(self.fd)
            raise

    def add_group(self, number):
        """Open the group, check it is viable, add it (the first sets the IOMMU type)."""
        if number in self.groups:
            return self.groups[number]
        group = Group(number)
        try:
            if not group.viable():
                raise OSError(errno.EBUSY, f"IOMMU group {number} is not viable (a device "
                                           "in it is bound to a driver other than vfio)")
            ioctl(group.fd, VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("=i", self.fd)),
                  "VFIO_GROUP_SET_CONTAINER")
            if not self.groups:
                ioctl(self.fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU, "VFIO_SET_IOMMU type1v2")
        except BaseException:
            group.close()
            raise
        self.groups[number] = group
        return group

    def device(self, number, bdf):
        group = self.add_group(number)
        fd = ioctl(group.fd, VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"),
                   f"VFIO_GROUP_GET_DEVICE_FD {bdf}")
        dev = Device(fd, bdf, "group")
        self.devices.append(dev)
        return dev

    def map(self, vaddr, iova, size, read=True, write=True):
        flags = (VFIO_DMA_MAP_FLAG_READ if read else 0) | (VFIO_DMA_MAP_FLAG_WRITE if write
                                                             else 0)
        ioctl(self.fd, VFIO_IOMMU_MAP_DMA, bytearray(dma_map_struct(vaddr, iova, size, flags)),
              "VFIO_IOMMU_MAP_DMA")

    def unmap(self, iova, size):
        buf = bytearray(struct.pack("=IIQQ", 24, 0, iova, size))
        ioctl(self.fd, VFIO_IOMMU_UNMAP_DMA, buf, "VFIO_IOMMU_UNMAP_DMA")
        return struct.unpack("=IIQQ", buf)[3]

    def forget(self, dev):
        """The caller closed ``dev`` itself."""
        self.devices = [d for d in self.devices if d is not dev]

    def info(self):
        """{"pgsizes": int, "iova_ranges": [(start, end)]}."""
        buf = bytearray(struct.pack("=IIQII", 24, 0, 0, 0, 0))
        ioctl(self.fd, VFIO_IOMMU_GET_INFO, buf, "VFIO_IOMMU_GET_INFO")
        argsz = struct.unpack_from("=I", buf)[0]
        if argsz > 24:
            buf = bytearray(struct.pack("=IIQII", argsz, 0, 0, 0, 0) + bytes(argsz - 24))
            ioctl(self.fd, VFIO_IOMMU_GET_INFO, buf, "VFIO_IOMMU_GET_INFO")
        _, flags, pgsizes, cap_offset, _ = struct.unpack_from("=IIQII", buf)
        ranges = parse_iova_ranges(bytes(buf), cap_offset) if flags & VFIO_IOMMU_INFO_CAPS \
            else []
        return {"pgsizes": pgsizes, "iova_ranges": [[hex(a), hex(b)] for a, b in ranges]}

    def close(self):
        for dev in self.devices:
            dev.close()
        self.devices = []
        for group in self.groups.values():
            group.close()
        self.groups = {}
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def page_align(n):
    return (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
