"""bzImage payload extraction, PVH note detection, kernel config parsing (pure)."""

import lzma
import struct

import pytest

from testbed.errors import ImageError
from testbed.kernel.format import (XEN_ELFNOTE_PHYS32_ENTRY, bzimage_payload, extract_vmlinux,
                                  has_pvh_entry)
from testbed.kernel.config import Kconfig


def fake_elf(note_type: int | None) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding a "Xen" note."""
    notes = b""
    if note_type is not None:
        notes = struct.pack("<III", 4, 8, note_type) + b"Xen\0" + struct.pack("<Q", 0x1000000)
    ehdr_size, phdr_size = 64, 56
    phoff = ehdr_size
    note_off = phoff + phdr_size
    ehdr = (b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0, phoff, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
    return ehdr + phdr + notes + bytes(64)


def fake_bzimage(elf: bytes) -> bytes:
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    payload += struct.pack("<I", len(elf))
    setup_sects = 1
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    offset = 100
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    return bytes(setup) + bytes(offset) + payload + bytes(16)


def test_extract_xz_vmlinux_with_pvh_note():
    elf = fake_elf(XEN_ELFNOTE_PHYS32_ENTRY)
    bz = fake_bzimage(elf)
    kind, payload = bzimage_payload(bz)
    assert kind == "xz"
    assert extract_vmlinux(bz) == elf
    assert has_pvh_entry(elf)


def test_no_pvh_note():
    assert not has_pvh_entry(fake_elf(None))
    assert not has_pvh_entry(fake_elf(5))


def test_not_a_bzimage():
    with pytest.raises(ImageError, match="HdrS"):
        bzimage_payload(bytes(4096))
    with pytest.raises(ImageError):
        has_pvh_entry(b"MZ" + bytes(100))


def test_parse_config():
    cfg = Kconfig.parse("# comment\nCONFIG_PCI_P2PDMA=y\n# CONFIG_FOO is not set\nCONFIG_S=\"x\"\n")
    assert dict(cfg.values) == {"CONFIG_PCI_P2PDMA": "y", "CONFIG_FOO": "n", "CONFIG_S": '"x"'}
