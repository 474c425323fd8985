"""The newc cpio writer of the initramfs (pure, no QEMU)."""

import stat

import pytest

from testbed.kernel.cpio import HEADER_LEN, MAGIC, CpioWriter, read_cpio


def test_round_trip_preserves_names_modes_data():
    w = CpioWriter()
    w.directories("lib/modules")
    w.file("lib/modules/a.ko", b"\x7fELF" + bytes(1001), mode=0o644)
    w.file("init", b"#!/bin/sh\nexit 0\n", mode=0o755)
    w.directory("bin")
    w.symlink("bin/sh", "busybox")
    w.directory("dev")
    w.device("dev/console", 5, 1)
    entries = {e.name: e for e in read_cpio(w.finish())}
    assert list(entries) == ["lib", "lib/modules", "lib/modules/a.ko", "init", "bin", "bin/sh",
                             "dev", "dev/console"]
    assert stat.S_ISDIR(entries["lib"].mode)
    assert entries["lib/modules/a.ko"].data == b"\x7fELF" + bytes(1001)
    assert stat.S_IMODE(entries["init"].mode) == 0o755 and stat.S_ISREG(entries["init"].mode)
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    con = entries["dev/console"]
    assert stat.S_ISCHR(con.mode) and (con.rdevmajor, con.rdevminor) == (5, 1)
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in entries.values())


def test_header_layout_and_alignment():
    w = CpioWriter()
    w.file("abc", b"xyz", mode=0o600)
    data = w.finish()
    assert data[:6] == MAGIC
    fields = [int(data[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, size, _, _, _, _, namesize, check = fields
    assert (ino, mode, size, namesize, check) == (1, 0o100600, 3, 4, 0)
    # header (110) + "abc\0" (4) = 114 -> padded to 116; data at 116, padded to 120
    assert data[HEADER_LEN:HEADER_LEN + 4] == b"abc\0"
    assert data[116:119] == b"xyz" and data[119:120] == b"\0"
    assert data[120:126] == MAGIC  # trailer entry starts 4-aligned
    assert b"TRAILER!!!\0" in data[120:]
    assert len(data) % 4 == 0


def test_output_is_reproducible():
    def build():
        w = CpioWriter()
        w.directory("d")
        w.file("d/f", b"1234567")
        return w.finish()

    assert build() == build()


def test_duplicates_and_finish_are_rejected():
    w = CpioWriter()
    w.file("x", b"")
    with pytest.raises(ValueError):
        w.file("/x/", b"")
    w.finish()
    with pytest.raises(ValueError):
        w.file("y", b"")


def test_linux_unpacks_names_longer_than_header_padding():
    # Names of every length mod 4 must keep the data 4-aligned.
    w = CpioWriter()
    for n in range(1, 9):
        w.file("f" * n, bytes([n]) * n)
    entries = read_cpio(w.finish())
    assert [e.data for e in entries] == [bytes([n]) * n for n in range(1, 9)]
