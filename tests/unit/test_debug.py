"""--gdb without a guest: the gdbstub option, nokaslr, finding the vmlinux with symbols,
the printed gdb command, the detached instance's record of the port."""

from __future__ import annotations

import struct
from pathlib import Path

from testbed.guest import instances
from testbed.guest.boot import kernel_cmdline
from testbed.guest.debug import (dbg_package, debug_root, elf_has_symbols, find_vmlinux,
                                 gdb_command, gdb_help)
from testbed.kernel.resolve import KernelSpec
from testbed.qemu.cmdline import BootMedia, boot_argv
from testbed.spec import load_topology


def fake_elf(path: Path, section_types: list[int]) -> Path:
    """A minimal little-endian ELF64: a header and a section header table."""
    shoff, shentsize = 64, 64
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<HH", head, 0x3A, shentsize, len(section_types))
    table = b"".join(struct.pack("<II", 0, t) + bytes(shentsize - 8) for t in section_types)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(head) + table)
    return path


def test_gdbstub_on_loopback_only():
    media = BootMedia(kernel=Path("/k"), initrd=None, cmdline=(), disk=Path("/d"),
                      ssh_port=2222, gdb_port=40001)
    argv = boot_argv(media, "qemu-system-x86_64")
    assert argv[argv.index("-gdb") + 1] == "tcp:127.0.0.1:40001"


def test_nokaslr_only_when_debugging():
    topo = load_topology("switch-cmb")
    assert "nokaslr" in kernel_cmdline(topo, ["quiet"], debug=True)
    assert "nokaslr" not in kernel_cmdline(topo, ["quiet"])


def test_elf_symbol_table_detection(tmp_path):
    assert elf_has_symbols(fake_elf(tmp_path / "with", [0, 1, 2, 3]))  # SHT_SYMTAB = 2
    assert not elf_has_symbols(fake_elf(tmp_path / "without", [0, 1, 3]))
    (tmp_path / "text").write_text("not an elf")
    assert not elf_has_symbols(tmp_path / "text")
    assert not elf_has_symbols(tmp_path / "missing")
    truncated = tmp_path / "truncated"
    truncated.write_bytes((tmp_path / "with").read_bytes()[:100])
    assert not elf_has_symbols(truncated)


def test_build_tree_vmlinux_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "build"
    bz = tree / "arch/x86/boot/bzImage"
    bz.parent.mkdir(parents=True)
    bz.write_bytes(b"")
    k = KernelSpec("x", "build-tree", tree, bz, "7.3.4")
    assert find_vmlinux(k, "7.3.4") is None  # no vmlinux yet
    fake_elf(tree / "vmlinux", [0, 2])
    assert find_vmlinux(k, "7.3.4") == tree / "vmlinux"
    # the bzImage alone, inside its build tree, leads to the same vmlinux
    assert find_vmlinux(KernelSpec("x", "bzimage", bz, bz, "7.3.4"), "7.3.4") == tree / "vmlinux"


def test_default_kernel_symbols_from_the_unpacked_dbg_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    rel = "7.3.4+deb13-amd64"
    assert find_vmlinux(None, rel) is None
    help_text = gdb_help(4000, None, rel, default_kernel=True)
    assert dbg_package(rel) == "linux-image-7.3.4+deb13-amd64-dbg"
    assert (f"dpkg-deb --fsys-tarfile {dbg_package(rel)}_*.deb | tar -x -C {debug_root()} "
            f"./usr/lib/debug/boot/vmlinux-{rel}") in help_text
    assert "gdb -q -ex 'target remote 127.0.0.1:4000'" in help_text
    vmlinux = fake_elf(debug_root() / "usr/lib/debug/boot" / f"vmlinux-{rel}", [2])
    assert find_vmlinux(None, rel) == vmlinux
    assert f"gdb -q {vmlinux} -ex 'target remote 127.0.0.1:4000'" \
        in gdb_help(4000, vmlinux, rel, default_kernel=True)


def test_gdb_command_is_an_argv():
    assert gdb_command(1, Path("/a b/vmlinux")) == ["gdb", "-q", "/a b/vmlinux", "-ex",
                                                    "target remote 127.0.0.1:1"]


def test_instance_records_the_gdb_port(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    inst = instances.create("g")
    inst.gdb_port, inst.vmlinux, inst.shares = 4242, "/b/vmlinux", ["/h:/mnt/h:ro"]
    inst.save()
    back = instances.load("g")
    assert (back.gdb_port, back.vmlinux, back.shares) == (4242, "/b/vmlinux", ["/h:/mnt/h:ro"])
    data = (inst.directory / instances.STATE_FILE).read_text().replace("4242", '"4242"')
    (inst.directory / instances.STATE_FILE).write_text(data)
    assert instances.load("g").status == "broken"  # a wrong type is refused, not trusted
