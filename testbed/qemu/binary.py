"""A QEMU to run: the host's own, one installed in a private root, or a program by path.

A :class:`Qemu` is everything needed to start one: the argv prefix (for a private root,
the root's own dynamic loader with the root's library directories, then the program),
the firmware directories QEMU searches first (``-L``), and the environment it needs
(``QEMU_MODULE_DIR``: a root's QEMU must never load the host's modules, which belong to
another build).  The probe, validation, the command-line builder, the KVM probe, render
and verify take it, so a QEMU from a root runs exactly like the host's.

    >>> q = Qemu("host", "/usr/bin/qemu-system-x86_64")
    >>> q.argv
    ['/usr/bin/qemu-system-x86_64']
    >>> r = from_root(Path("/r"), "11.1", check=False)
    >>> r.argv[:3]
    ['/r/lib64/ld-linux-x86-64.so.2', '--library-path', '/r/usr/lib/x86_64-linux-gnu:/r/lib/x86_64-linux-gnu']
    >>> r.argv[3:6]
    ['/r/usr/bin/qemu-system-x86_64', '-L', '/r/usr/share/qemu']
    >>> dict(r.env)
    {'QEMU_MODULE_DIR': '/r/usr/lib/x86_64-linux-gnu/qemu'}
    >>> r.for_program("qemu-system-aarch64", check=False).binary
    '/r/usr/bin/qemu-system-aarch64'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import QemuNotFound
from ..machines import X86_64, profile_for_binary

# the QEMU program when nothing names one: the default machine profile's
DEFAULT_PROGRAM = X86_64.qemu_binary

# Where things are inside a Debian root for this host (amd64; the guest's architecture is
# the program's business, not the root's): the dynamic loader, the library
# directories it must search, QEMU's firmware and data directories, its modules.
LOADER = "lib64/ld-linux-x86-64.so.2"
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
DATA_DIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu")
MODULE_DIR = "usr/lib/x86_64-linux-gnu/qemu"
BIN_DIR = "usr/bin"
MODULE_ENV = "QEMU_MODULE_DIR"

RUN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Qemu:
    """One QEMU program and how to start it."""

    name: str                          # "host", an installation's name, or the path given
    binary: str                        # absolute path of the QEMU program itself
    loader: str | None = None          # the root's dynamic loader, when it runs through one
    library_path: tuple[str, ...] = ()
    data_dirs: tuple[str, ...] = ()    # searched first for firmware (-L)
    env: tuple[tuple[str, str], ...] = ()
    root: str | None = None            # the private root it comes from
    version: str = ""                  # as its installation recorded it ("" when unknown)

    @property
    def argv(self) -> list[str]:
        """The command line up to the first option of the machine."""
        out = [self.loader, "--library-path", ":".join(self.library_path)] \
            if self.loader else []
        out.append(self.binary)
        for d in self.data_dirs:
            out += ["-L", d]
        return out

    @property
    def program(self) -> str:
        """``qemu-system-x86_64``, ``qemu-system-aarch64``, ..."""
        return os.path.basename(self.binary)

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """The environment to start it with; None: the caller's own, unchanged."""
        if not self.env:
            return None
        out = dict(os.environ if base is None else base)
        out.update(self.env)
        return out

    def exports(self) -> list[str]:
        """Shell lines that set :attr:`env` (for a script that runs it)."""
        from shlex import quote  # (only scripts need it)
        return [f"export {k}={quote(v)}" for k, v in self.env]

    def for_program(self, program: str, check: bool = True) -> "Qemu":
        """The same installation's ``program`` (qemu-system-aarch64 beside -x86_64)."""
        if program == self.program:
            return self
        path = os.path.join(os.path.dirname(self.binary), program)
        if check and not _executable(path):
            where = f"installation {self.name!r}" if self.root else os.path.dirname(path)
            raise QemuNotFound(f"{where} has no {program} ({path})")
        return replace(self, binary=path)

    def identity(self) -> str:
        """What makes two QEMUs the same for caches: the program, loader and data dirs,
        with the size and mtime of the files that run."""
        parts = [self.binary, self.loader or "", *self.data_dirs,
                 *(f"{k}={v}" for k, v in self.env)]
        for f in (self.binary, self.loader):
            if f:
                try:
                    st = os.stat(f)
                    parts.append(f"{st.st_size}:{st.st_mtime_ns}")
                except OSError:
                    parts.append("missing")
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]

    def describe(self) -> str:
        where = f"root {self.root}" if self.root else self.binary
        return f"{self.name} ({where})" if self.name != self.binary else self.binary

    def run(self, args: Sequence[str], timeout: float = RUN_TIMEOUT) -> str:
        """Run it with ``args`` (``--version``, ``-device help``); its stdout, or
        QemuNotFound with what it printed."""
        argv = [*self.argv, *args]
        try:
            out = subprocess.run(argv, capture_output=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL, env=self.environ())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise QemuNotFound(f"cannot run {self.describe()}: {exc}") from None
        stdout = out.stdout.decode("utf-8", errors="replace")
        if out.returncode != 0:
            err = (out.stderr.decode("utf-8", errors="replace") or stdout).strip()
            raise QemuNotFound(f"{self.describe()} {' '.join(args)} failed "
                               f"(status {out.returncode}): {err[:300]}")
        return stdout


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def inside_root(root: Path, path: str) -> Path:
    """``path`` (absolute inside the root) resolved as the root would see it: symbolic
    links, absolute ones included, never leave the root.

        >>> inside_root(Path("/nonexistent-root"), "/usr/lib/x")
        PosixPath('/nonexistent-root/usr/lib/x')
    """
    parts = [p for p in path.split("/") if p and p != "."]
    out: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if out:
                out.pop()
            continue
        candidate = root.joinpath(*out, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise QemuNotFound(f"{root}: a loop of symbolic links at {candidate}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                out = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        out.append(part)
    return root.joinpath(*out)


def from_root(root: Path, name: str, program: str = DEFAULT_PROGRAM, version: str = "",
              check: bool = True) -> Qemu:
    """The QEMU of a private root (a Debian tree holding qemu-system-*), run through the
    root's own loader; QemuNotFound when the root has no loader or no such program."""
    root = Path(os.path.abspath(root))
    loader = inside_root(root, "/" + LOADER) if check else root / LOADER
    binary = root / BIN_DIR / program
    if check:
        if not loader.is_file() or not os.access(loader, os.X_OK):
            raise QemuNotFound(f"{root} is not a usable QEMU root: its dynamic loader /{LOADER} "
                               "is missing (a broken or interrupted install: install it again)")
        if not _executable(str(binary)):
            raise QemuNotFound(f"{root} is not a usable QEMU root: it has no "
                               f"/{BIN_DIR}/{program}")
    return Qemu(name=name, binary=str(binary), loader=str(loader),
                library_path=tuple(str(root / d) for d in LIBRARY_DIRS),
                data_dirs=tuple(str(root / d) for d in DATA_DIRS
                                if not check or (root / d).is_dir()),
                env=((MODULE_ENV, str(root / MODULE_DIR)),), root=str(root), version=version)


def root_of(path: Path) -> Path | None:
    """The private root a program path lies in (``ROOT/usr/bin/qemu-system-*`` with a
    ``ROOT/lib64`` loader), None for a program of this host."""
    path = Path(os.path.abspath(path))
    if path.parent.name == "bin" and path.parent.parent.name == "usr":
        root = path.parent.parent.parent
        if root != Path("/") and (root / LOADER).exists():
            return root
    return None


def host(program: str = DEFAULT_PROGRAM) -> Qemu:
    """The host's own QEMU: ``program`` on PATH."""
    found = shutil.which(program)
    if not found or not _executable(found):
        profile = profile_for_binary(program)
        pkg = f" (Debian package {profile.qemu_package})" if profile is not None else ""
        raise QemuNotFound(f"the host has no {program}{pkg}")
    return Qemu("host", os.path.realpath(found))


def from_path(text: str, program: str = DEFAULT_PROGRAM) -> Qemu:
    """A QEMU given by path: a program (the host's, or one inside a private root), or a
    private root directory."""
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return from_root(path, text, program)
    root = root_of(path)
    if root is not None:
        return from_root(root, text, path.name)
    if not path.exists():
        raise QemuNotFound(f"QEMU binary {text!r} not found or not executable (no such file "
                           "or directory)")
    if not _executable(str(path)):
        raise QemuNotFound(f"QEMU binary {text!r} not found or not executable (not an "
                           "executable program)")
    return Qemu(text, os.path.realpath(path))
