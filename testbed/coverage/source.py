"""Where a kernel's source (and debug information, and gcov notes) is: what the coverage of
a run is mapped onto.

- ``--coverage-source DIR`` (or ``$TESTBED_KERNEL_SOURCE``) names the source tree;
- a build tree (``--kernel /build/linux``) is its own: ``source`` links to the tree of an
  ``O=`` build, else the build tree is the source; its ``vmlinux`` has DWARF when built
  with debug information, and the ``.gcno`` files of a ``coverage`` profile lie in it;
- the image's kernel comes from Debian's ``linux-source-7.3``, unpacked once in the cache
  (:func:`testbed.kernel.source.debian_source`, ``testbed kernel source debian``; fetched
  on first use); Debian's ``-dbg`` package, when installed on the host, gives its DWARF
  (``/usr/lib/debug/boot/vmlinux-<release>``).

    >>> makefile_release("VERSION = 7\\nPATCHLEVEL = 3\\nSUBLEVEL = 4\\nEXTRAVERSION =\\n")
    '7.3.4'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..kernel.resolve import KernelSpec
from ..kernel.source import DEFAULT_PACKAGE, debian_source

ENV = "TESTBED_KERNEL_SOURCE"
DEBUG_ROOT = Path("/usr/lib/debug")


@dataclass(frozen=True)
class SourceTree:
    root: Path  # the kernel source tree
    how: str  # how it was found, for the report
    build: Path | None = None  # the build tree (object files, .gcno), when there is one
    vmlinux: Path | None = None  # with DWARF, when there is one
    release: str | None = None  # the source's version (VERSION.PATCHLEVEL.SUBLEVEL)

    def describe(self) -> str:
        extra = f", DWARF from {self.vmlinux}" if self.vmlinux else ""
        return f"{self.root} ({self.how}{extra})"

    def check_release(self, running: str | None) -> str | None:
        """A note when the running kernel is not the release this source is."""
        if not running or not self.release:
            return None
        if running == self.release or running.startswith(self.release + "+") or \
                running.startswith(self.release + "-"):
            return None
        return (f"the source {self.root} is Linux {self.release}, the guest ran {running}: "
                "functions and lines may not match")


def makefile_release(text: str) -> str | None:
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d+)\s*$", text, re.M))
    if "VERSION" not in fields or "PATCHLEVEL" not in fields:
        return None
    return ".".join(fields[k] for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL") if k in fields)


def is_source_tree(d: Path) -> bool:
    return (d / "Makefile").is_file() and (d / "Kconfig").is_file() and (d / "drivers").is_dir()


def _release_of(root: Path) -> str | None:
    try:
        return makefile_release((root / "Makefile").read_text(errors="replace")[:4000])
    except OSError:
        return None


def has_dwarf(elf: Path) -> bool:
    """Does this ELF file have a .debug_info section? (reads the section headers only)"""
    from elftools.elf.elffile import ELFFile  # only here: pyelftools is for coverage runs
    from elftools.common.exceptions import ELFError  # only here, as the line above
    try:
        with elf.open("rb") as f:
            return ELFFile(f).get_section_by_name(".debug_info") is not None
    except (OSError, ELFError):
        return False


def find_source(kernel: KernelSpec | None, override: Path | None = None,
                release: str | None = None) -> SourceTree:
    """The source tree of ``kernel`` (None: the image's); UsageError when there is none."""
    build = None
    vmlinux = None
    if kernel is not None and (kernel.build_tree is not None or kernel.kind == "build-tree"):
        build = kernel.build_tree or kernel.path
        if (build / "vmlinux").is_file() and has_dwarf(build / "vmlinux"):
            vmlinux = build / "vmlinux"
    rel = release or (kernel.release if kernel is not None else None)
    if rel and vmlinux is None:
        dbg = DEBUG_ROOT / "boot" / f"vmlinux-{rel}"
        if dbg.is_file() and has_dwarf(dbg):
            vmlinux = dbg
    chosen = override or (Path(os.environ[ENV]) if os.environ.get(ENV) else None)
    if chosen is not None:
        root = chosen.expanduser()
        what = "--coverage-source" if override else f"${ENV}"
        if not root.is_dir() or not is_source_tree(root):
            raise UsageError(f"{what} {chosen}: not a kernel source tree (no Makefile, Kconfig "
                             "and drivers/)")
        return SourceTree(root.resolve(), what, build, vmlinux, _release_of(root))
    if build is not None:
        link = build / "source"
        root = link.resolve() if link.is_symlink() or link.is_dir() else build
        if is_source_tree(root):
            return SourceTree(root, "the build tree's source", build, vmlinux, _release_of(root))
    if kernel is None:  # the image's kernel: Debian's source of it (fetched once)
        src = debian_source()
        return SourceTree(src.tree, f"Debian's {src.package} {src.version}", None, vmlinux,
                          _release_of(src.tree))
    raise UsageError(f"--coverage: no source tree for kernel {kernel.label} ({kernel.kind}): "
                     f"name it with --coverage-source DIR or ${ENV} (Debian's "
                     f"{DEFAULT_PACKAGE}: testbed kernel source debian)")
