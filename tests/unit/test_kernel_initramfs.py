"""The initramfs contents built from a fake image tree (pure)."""

import lzma
import stat
from pathlib import Path

from testbed.kernel.cpio import read_cpio
from testbed.kernel.initramfs import build_initramfs
from testbed.kernel.kmod import SIGNATURE_MAGIC

RELEASE = "7.3.4+test"


def make_tree(root: Path) -> None:
    moddir = root / "lib/modules" / RELEASE
    (moddir / "kernel/fs").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF busybox")
    sig = b"K" * 7 + bytes(8) + (7).to_bytes(4, "big") + SIGNATURE_MAGIC
    for name in ("ext4", "jbd2"):
        (moddir / f"kernel/fs/{name}.ko.xz").write_bytes(lzma.compress(b"\x7fELF " + name.encode() + sig))
    (moddir / "modules.dep").write_text("kernel/fs/ext4.ko.xz: kernel/fs/jbd2.ko.xz\n"
                                        "kernel/fs/jbd2.ko.xz:\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")


def test_initramfs_contents(tmp_path):
    make_tree(tmp_path)
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/busybox sh\n")
    data, plan = build_initramfs(tmp_path, RELEASE, init, main=["virtio_blk", "ext4", "absent"])
    assert plan.names() == {"early": [], "main": ["jbd2", "ext4"], "parallel": []}
    entries = {e.name: e for e in read_cpio(data)}
    assert entries["modules"].data == b"jbd2.ko\next4.ko\n"
    assert entries["modules.early"].data == b""
    assert entries["modules.parallel"].data == b""
    assert entries["lib/modules/ext4.ko"].data == b"\x7fELF ext4"  # decompressed, unsigned
    assert stat.S_IMODE(entries["init"].mode) == 0o755
    assert entries["init"].data == b"#!/bin/busybox sh\n"
    assert stat.S_ISCHR(entries["dev/console"].mode)
    assert entries["bin/sh"].data == b"busybox"
    for d in ("proc", "sys", "newroot"):
        assert stat.S_ISDIR(entries[d].mode)


def test_initramfs_keeps_signatures_when_asked(tmp_path):
    make_tree(tmp_path)
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/sh\n")
    data, _ = build_initramfs(tmp_path, RELEASE, init, main=["ext4"], unsigned=False)
    entries = {e.name: e for e in read_cpio(data)}
    assert entries["lib/modules/ext4.ko"].data.endswith(SIGNATURE_MAGIC)
