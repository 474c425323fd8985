"""What a PCI function's config space says about isolation: its PCIe port type, whether it
is multifunction, and its ACS capability and control bits.

Read from ``/sys/bus/pci/devices/BDF/config`` with small positioned reads (the guest runs
as root, which may read all 4096 bytes; anyone else gets only the first 64).  The
extended capabilities start at 0x100; ACS is extended capability 0x000D with its
capability word at +4 and its control word at +6.
"""

import os
import struct

PCI_STATUS, PCI_HEADER_TYPE, PCI_CAPABILITY_LIST = 0x06, 0x0E, 0x34
STATUS_CAP_LIST = 0x10
CAP_ID_EXP = 0x10
EXT_CAP_START, EXT_CAP_ID_ACS = 0x100, 0x000D
CONFIG_SIZE = 4096
PCIE_TYPES = {0: "endpoint", 1: "legacy_endpoint", 4: "root_port", 5: "upstream",
              6: "downstream", 7: "pcie_to_pci", 8: "pci_to_pcie", 9: "rc_endpoint",
              10: "rc_event_collector"}


class Config:
    """Positioned little-endian reads of one config space (a file, or bytes in tests);
    reads past what the reader may see return all ones, like an absent register."""

    def __init__(self, fd=None, data=None):
        self.fd, self.data = fd, data

    def read(self, offset, size):
        if self.data is not None:
            raw = self.data[offset:offset + size]
        else:
            try:
                raw = os.pread(self.fd, size, offset)
            except OSError:
                raw = b""
        return raw if len(raw) == size else None

    def u8(self, offset):
        raw = self.read(offset, 1)
        return 0xFF if raw is None else raw[0]

    def u16(self, offset):
        raw = self.read(offset, 2)
        return 0xFFFF if raw is None else struct.unpack("<H", raw)[0]

    def u32(self, offset):
        raw = self.read(offset, 4)
        return 0xFFFFFFFF if raw is None else struct.unpack("<I", raw)[0]


def parse(cfg, function=0):
    """{"pcie_type", "multifunction", "acs": {"offset", "cap", "ctrl"} or None}."""
    header = cfg.u8(PCI_HEADER_TYPE)
    out = {"pcie_type": None, "multifunction": bool(header != 0xFF and header & 0x80)
           or function > 0, "acs": None}
    if cfg.u16(PCI_STATUS) == 0xFFFF or not cfg.u16(PCI_STATUS) & STATUS_CAP_LIST:
        return out
    pos, seen = cfg.u8(PCI_CAPABILITY_LIST) & ~3, set()
    while 0x40 <= pos < 0x100 and pos not in seen:
        seen.add(pos)
        if cfg.u8(pos) == CAP_ID_EXP:
            kind = (cfg.u16(pos + 2) >> 4) & 0xF
            out["pcie_type"] = PCIE_TYPES.get(kind, "type%d" % kind)
            break
        pos = cfg.u8(pos + 1) & ~3
    if out["pcie_type"] is None:
        return out  # conventional PCI: no extended capabilities
    pos, seen = EXT_CAP_START, set()
    while EXT_CAP_START <= pos < CONFIG_SIZE and pos not in seen:
        seen.add(pos)
        header = cfg.u32(pos)
        if header in (0, 0xFFFFFFFF):
            break
        if header & 0xFFFF == EXT_CAP_ID_ACS:
            out["acs"] = {"offset": pos, "cap": cfg.u16(pos + 4), "ctrl": cfg.u16(pos + 6)}
            break
        pos = (header >> 20) & 0xFFC
    return out


def read_device(path, function=0):
    """Parse the config space file of one device (``.../BDF/config``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return parse(Config(data=b""), function)
    try:
        return parse(Config(fd=fd), function)
    finally:
        os.close(fd)
