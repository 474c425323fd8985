"""A writer (and a small reader, for tests) of the ``newc`` cpio format.

This is the format the Linux kernel unpacks as an initramfs
(Documentation/driver-api/early-userspace/buffer-format.rst). Writing it
ourselves needs no host ``cpio`` and no root: device nodes and ownership are
just numbers in the header.

    >>> w = CpioWriter()
    >>> w.directory("dev")
    >>> w.device("dev/console", major=5, minor=1, mode=0o600)
    >>> w.file("init", b"#!/bin/sh\\n", mode=0o755)
    >>> w.symlink("bin/sh", "busybox")
    >>> data = w.finish()
    >>> [(e.name, oct(e.mode), e.data) for e in read_cpio(data)]   # doctest: +NORMALIZE_WHITESPACE
    [('dev', '0o40755', b''), ('dev/console', '0o20600', b''),
     ('init', '0o100755', b'#!/bin/sh\\n'), ('bin/sh', '0o120777', b'busybox')]
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdevmajor: int
    rdevminor: int
    data: bytes


class CpioWriter:
    """Accumulates entries in memory; :meth:`finish` returns the archive bytes.

    Entries are written in the order they are added: add a directory before
    the files in it. Timestamps default to 0 so that the output is
    reproducible.
    """

    def __init__(self, mtime: int = 0):
        self._parts: list[bytes] = []
        self._ino = 0
        self._mtime = mtime
        self._names: set[str] = set()
        self._finished = False

    def _entry(self, name: str, mode: int, data: bytes = b"", *, uid: int = 0, gid: int = 0,
               nlink: int = 1, rdevmajor: int = 0, rdevminor: int = 0) -> None:
        if self._finished:
            raise ValueError("cpio archive already finished")
        name = name.strip("/")
        if not name or name == TRAILER:
            raise ValueError(f"bad cpio entry name {name!r}")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, uid, gid, nlink, self._mtime, len(data),
                  0, 0, rdevmajor, rdevminor, len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        assert len(header) == HEADER_LEN
        self._parts.append(header + encoded + b"\0" * _pad4(HEADER_LEN + len(encoded)))
        if data:
            self._parts.append(data + b"\0" * _pad4(len(data)))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | (mode & 0o7777), nlink=2)

    def directories(self, path: str, mode: int = 0o755) -> None:
        """Add ``path`` and each of its parents that is not in the archive yet."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            name = "/".join(parts[:i])
            if name not in self._names:
                self.directory(name, mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, major: int, minor: int, mode: int = 0o600,
               char: bool = True) -> None:
        kind = stat.S_IFCHR if char else stat.S_IFBLK
        self._entry(name, kind | (mode & 0o7777), rdevmajor=major, rdevminor=minor)

    def __contains__(self, name: str) -> bool:
        return name.strip("/") in self._names

    def finish(self) -> bytes:
        """Append the trailer and return the whole archive."""
        if not self._finished:
            encoded = TRAILER.encode() + b"\0"
            fields = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(encoded), 0)
            header = MAGIC + b"".join(b"%08X" % f for f in fields)
            self._parts.append(header + encoded + b"\0" * _pad4(HEADER_LEN + len(encoded)))
            self._finished = True
        return b"".join(self._parts)


def read_cpio(data: bytes) -> list[CpioEntry]:
    """Parse a newc archive (up to its trailer) into entries."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        (_ino, mode, uid, gid, nlink, mtime, filesize,
         _maj, _min, rmaj, rmin, namesize, _check) = fields
        name_start = pos + HEADER_LEN
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += _pad4(pos)
        if name == TRAILER:
            return entries
        body = data[pos:pos + filesize]
        pos += filesize
        pos += _pad4(pos)
        entries.append(CpioEntry(name, mode, uid, gid, nlink, mtime, rmaj, rmin, body))
