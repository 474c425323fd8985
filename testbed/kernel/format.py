"""Kernel files as bytes: bzImage headers and payloads, ELF notes, the PVH entry.

Under TCG the bzImage's decompressor costs ~1.4 s per boot, so the builder
extracts the uncompressed ``vmlinux`` and boots it through its PVH entry point
(an ELF note ``Xen``/``XEN_ELFNOTE_PHYS32_ENTRY``) when it has one.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from pathlib import Path
from typing import Iterator

from ..errors import ImageError
from .kmod import zstd_decompress

XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4

# (magic, name) of the payload compressors the x86 decompressor supports.
_MAGICS = [
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x89LZO", "lzo"),
]


def bzimage_payload(data: bytes) -> tuple[str, bytes]:
    """(compressor, compressed payload) of an x86 bzImage (boot protocol >= 2.08)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ImageError("not an x86 bzImage (no HdrS signature)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise ImageError(f"bzImage boot protocol {version:#x} is too old (< 2.08)")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if len(payload) != length:
        raise ImageError("bzImage payload is truncated")
    for magic, name in _MAGICS:
        if payload.startswith(magic):
            return name, payload
    raise ImageError(f"unknown bzImage payload compression (magic {payload[:4].hex()})")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF vmlinux inside a bzImage."""
    kind, payload = bzimage_payload(bzimage)
    # The kernel build appends the uncompressed size (le32) to the payload.
    size = struct.unpack("<I", payload[-4:])[0]
    body = payload[:-4]
    if kind == "zstd":
        elf = zstd_decompress(body)
    elif kind == "xz":
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(body)
    elif kind == "lzma":
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(body)
    elif kind == "gzip":
        elf = zlib.decompressobj(wbits=31).decompress(body)
    elif kind == "bzip2":
        elf = bz2.BZ2Decompressor().decompress(body)
    else:
        raise ImageError(f"cannot decompress a {kind} kernel payload")
    if not elf.startswith(b"\x7fELF"):
        raise ImageError("the decompressed kernel is not an ELF file")
    if len(elf) != size:
        raise ImageError(f"decompressed kernel is {len(elf)} bytes, the header says {size}")
    return elf


def elf_notes(elf: bytes) -> Iterator[tuple[str, int, bytes]]:
    """Yield (name, type, desc) of every note in the PT_NOTE segments of an ELF64."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ImageError("not a little-endian ELF64 file")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            pos += 12
            name = elf[pos:pos + namesz].rstrip(b"\0").decode(errors="replace")
            pos += (namesz + 3) & ~3
            desc = elf[pos:pos + descsz]
            pos += (descsz + 3) & ~3
            yield name, ntype, desc


def has_pvh_entry(elf: bytes) -> bool:
    """True if the vmlinux has the PVH entry note QEMU needs to boot it directly."""
    return any(name == "Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY
               for name, ntype, _ in elf_notes(elf))


ARM64_MAGIC = b"ARM\x64"   # arm64 Image header: magic at offset 0x38 (booting.rst)
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine: EM_X86_64, EM_AARCH64


def kernel_file_kind(path: Path) -> str | None:
    """``bzImage``, ``elf``, ``Image`` (arm64) or ``Image.gz`` (a gzip'd arm64 Image, as
    Debian's arm64 vmlinuz) from the first bytes of ``path``; None if none of them."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
    except OSError:
        return None
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "bzImage"
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[0x38:0x3C] == ARM64_MAGIC:
        return "Image"
    if head[:3] == b"\x1f\x8b\x08":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 0x40)
        except zlib.error:
            return None
        return "Image.gz" if inner[0x38:0x3C] == ARM64_MAGIC else None
    return None


def kernel_file_arch(path: Path) -> str | None:
    """The architecture (a machine profile's ``arch``: x86_64, aarch64) a kernel file boots
    on, from its header; None when the file is no kernel image this testbed knows."""
    kind = kernel_file_kind(path)
    if kind == "bzImage":
        return "x86_64"
    if kind in ("Image", "Image.gz"):
        return "aarch64"
    if kind == "elf":
        try:
            with open(path, "rb") as f:
                head = f.read(20)
        except OSError:
            return None
        if len(head) < 20:
            return None
        order = "<" if head[5] == 1 else ">"
        return _ELF_MACHINES.get(struct.unpack_from(order + "H", head, 18)[0])
    return None


def bzimage_release(path: Path) -> str | None:
    """The release a bzImage's header names (first word of its version string).

    The x86 boot header's ``kernel_version`` (offset 0x20E) points, minus 0x200,
    at ``"7.3.4+bpo-amd64 (debian-kernel@lists.debian.org) #1 SMP ..."``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            ptr = struct.unpack_from("<H", head, 0x20E)[0]
            if not ptr:
                return None
            f.seek(ptr + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode(errors="replace").strip()
    return text.split()[0] if text else None
