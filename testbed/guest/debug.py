"""``--gdb``: what a person needs to attach gdb to a guest's kernel.

QEMU's gdbstub listens on a locked free port on 127.0.0.1 (``-gdb``, built by
:mod:`testbed.qemu.cmdline`) and the kernel runs with ``nokaslr``, so its addresses are
the link-time ones of its vmlinux (and of the guest's ``/proc/kallsyms``).  The right
vmlinux is the one with the symbols of the kernel the guest runs:

- a custom kernel's build tree: ``<tree>/vmlinux`` (``--kernel`` given the tree, or its
  ``arch/x86/boot/bzImage``, or an INSTALL_MOD_PATH tree's ``build`` link);
- an unpacked package with its debug package unpacked beside it:
  ``usr/lib/debug/boot/vmlinux-<release>``;
- the image's own (Debian) kernel: its symbols are in Debian's
  ``linux-image-<release>-dbg`` (several hundred MB, never downloaded unasked); unpacked
  (its vmlinux alone is enough) into :func:`debug_root`, or installed on the host, it is
  found.

    >>> print(gdb_help(1234, Path("/b/vmlinux"), "7.3.4", default_kernel=False))
    gdb: QEMU's gdbstub is on 127.0.0.1:1234 (the guest kernel runs with nokaslr)
      gdb -q /b/vmlinux -ex 'target remote 127.0.0.1:1234'
      (attaching stops the guest; 'continue' or 'detach' lets it run on)
"""

from __future__ import annotations

import shlex
import struct
from pathlib import Path

from ..kernel.resolve import KernelSpec
from ..machines import PROFILES, X86_64, MachineProfile
from ..paths import cache_dir

SHT_SYMTAB = 2


def debug_root() -> Path:
    """Where ``dpkg-deb -x linux-image-<release>-dbg_*.deb`` puts the image kernel's
    symbols for ``--gdb`` to find (``usr/lib/debug/boot/vmlinux-<release>`` below it)."""
    return cache_dir() / "debug"


def dbg_package(release: str) -> str:
    """Debian's debug-symbols package of a kernel release."""
    return f"linux-image-{release}-dbg"


def _debug_paths(root: Path, release: str) -> list[Path]:
    return [root / "usr/lib/debug/boot" / f"vmlinux-{release}",
            root / "usr/lib/debug/lib/modules" / release / "vmlinux"]


def elf_has_symbols(path: Path) -> bool:
    """True if ``path`` is a little-endian ELF64 file with a symbol table (``.symtab``): a
    vmlinux gdb can name functions and variables in.  Reads the headers only (a debug
    vmlinux is hundreds of MB).  The vmlinux the image extracts from Debian's bzImage
    has none."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            shoff = struct.unpack_from("<Q", head, 0x28)[0]
            shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
            if not shoff or shentsize < 8 or not shnum:
                return False
            f.seek(shoff)
            table = f.read(shentsize * shnum)
    except OSError:
        return False
    return any(struct.unpack_from("<I", table, i * shentsize + 4)[0] == SHT_SYMTAB
               for i in range(len(table) // shentsize))


def vmlinux_candidates(kernel: KernelSpec | None, release: str | None) -> list[Path]:
    """Where the vmlinux of ``kernel`` (None: the image's) may be, most specific first."""
    out: list[Path] = []
    if kernel is not None:
        if kernel.kind == "build-tree":
            out.append(kernel.path / "vmlinux")
        if kernel.build_tree is not None:  # a profile kernel's kept build tree
            out.append(kernel.build_tree / "vmlinux")
        img = kernel.image_file
        for profile in PROFILES.values():  # a build tree's image: its vmlinux is at the top
            depth = len(Path(profile.kernel_image.path).parts)
            if img.parts[-depth:] == Path(profile.kernel_image.path).parts:
                out.append(img.parents[depth - 1] / "vmlinux")
        if kernel.modules_dir is not None:
            out.append(kernel.modules_dir / "build" / "vmlinux")
        if kernel.kind in ("package", "install-mod-path") and release:
            out += _debug_paths(kernel.path, release)
            out.append(kernel.path / "boot" / f"vmlinux-{release}")
    if release:
        out += _debug_paths(debug_root(), release) + _debug_paths(Path("/"), release)
    return out


def find_vmlinux(kernel: KernelSpec | None, release: str | None) -> Path | None:
    """The first candidate that is an ELF file with a symbol table, or None."""
    for path in vmlinux_candidates(kernel, release):
        if path.is_file() and elf_has_symbols(path):
            return path
    return None


def gdb_command(port: int, vmlinux: Path | None) -> list[str]:
    """The gdb argv that attaches to the gdbstub on ``port``.

    >>> gdb_command(1234, None)
    ['gdb', '-q', '-ex', 'target remote 127.0.0.1:1234']
    """
    return ["gdb", "-q", *([str(vmlinux)] if vmlinux else []),
            "-ex", f"target remote 127.0.0.1:{port}"]


def gdb_help(port: int, vmlinux: Path | None, release: str | None,
             default_kernel: bool, profile: MachineProfile = X86_64) -> str:
    """The lines ``testbed boot --gdb`` prints: the command, and how to get symbols when
    there is no vmlinux with them."""
    lines = [f"gdb: QEMU's gdbstub is on 127.0.0.1:{port} (the guest kernel runs with nokaslr)",
             "  " + shlex.join(gdb_command(port, vmlinux))]
    if vmlinux is None:
        lines.append("  no vmlinux with symbols found: gdb sees addresses only (the guest's "
                     "/proc/kallsyms names them)")
        if default_kernel and release:
            vmlinux_path = f"./usr/lib/debug/boot/vmlinux-{release}"
            lines += [f"  symbols of the image's kernel {release} are in Debian's "
                      f"{dbg_package(release)} (over a GB: not downloaded); with its .deb,",
                      f"    mkdir -p {debug_root()} && dpkg-deb --fsys-tarfile "
                      f"{dbg_package(release)}_*.deb | tar -x -C {debug_root()} {vmlinux_path}",
                      "  and --gdb uses it (the README's 'A debugger' shows the download)"]
        else:
            lines.append("  a custom kernel's symbols are in its build tree's vmlinux: pass "
                         f"--kernel the build tree (or its {profile.kernel_image.path})")
    lines.append("  (attaching stops the guest; 'continue' or 'detach' lets it run on)")
    return "\n".join(lines)
