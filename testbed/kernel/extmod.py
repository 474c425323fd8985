"""Out-of-tree kernel modules of the project, built against the kernel under test.

A module is data (:class:`ExtModule`: its source directory under ``kernel-modules/``,
the config options and exported symbols it needs); a kernel is a :class:`BuildEnv`
(where ``make M=...`` runs: a built source tree on the host, or Debian's
linux-headers inside a private build root, see :mod:`testbed.image.buildroot`).
:func:`build_module` returns the ``.ko``, built once per (module source, kernel) and
cached under ``cache_dir()/modules/``; a kernel that cannot take the module raises
:class:`ModuleUnsupported` with the reason, before anything is compiled.

    >>> cfg = Kconfig.parse("CONFIG_MODULES=y\\nCONFIG_PCI_P2PDMA=y\\n")
    >>> HMM_P2P_TEST.unsupported(cfg, symbols={"hmm_dma_map_pfn": "vmlinux"})
    'CONFIG_HMM_MIRROR is not set'
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import TestbedError
from ..paths import cache_dir, project_root
from ..util.procs import find_tool, run_step
from .config import Kconfig

LAYOUT_VERSION = 1
BUILD_TIMEOUT = 600.0


class ModuleBuildError(TestbedError):
    """Building an out-of-tree module failed; the message carries the tail of make's output."""

    kind = "module-build"


class ModuleUnsupported(TestbedError):
    """The kernel under test cannot take the module (``why`` says which option or symbol
    is missing); workloads report it as ``unsupported (why)``."""

    kind = "unsupported"

    def __init__(self, module: str, why: str):
        self.module, self.why = module, why
        super().__init__(f"{module}: unsupported ({why})")


def kernel_modules_dir() -> Path:
    return project_root() / "kernel-modules"


@dataclass(frozen=True)
class ExtModule:
    """One of the project's modules: ``kernel-modules/<name>/`` holds its Kbuild and C."""

    name: str
    needs_config: tuple[str, ...]  # must be =y in the kernel's .config
    needs_symbols: tuple[str, ...]  # must be exported (Module.symvers)
    # a test module of the kernel's own (lib/test_hmm.c): these files of the kernel's source
    # directory ``tree``, built as one external module (a Kbuild written for it)
    tree: Path | None = None
    tree_files: tuple[str, ...] = ()

    @property
    def source(self) -> Path:
        return self.tree if self.tree is not None else kernel_modules_dir() / self.name

    def files(self) -> list[Path]:
        if self.tree is not None:
            return [self.tree / f for f in self.tree_files]
        return sorted(p for p in self.source.iterdir() if p.is_file()
                      and (p.suffix in (".c", ".h") or p.name in ("Kbuild", "Makefile")))

    def kbuild(self) -> str | None:
        """The Kbuild to write beside a kernel's own module's files (None: it has one)."""
        return f"obj-m += {self.name}.o\n" if self.tree is not None else None

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.name}\0{self.kbuild()}\0".encode())
        for p in self.files():
            h.update(f"{p.name}\0".encode() + p.read_bytes() + b"\0")
        return h.hexdigest()

    def unsupported(self, config: Kconfig, symbols: Mapping[str, str]) -> str | None:
        """Why a kernel with this config and these exported symbols cannot take the
        module (None: it can)."""
        if not config.builtin("CONFIG_MODULES"):
            return "CONFIG_MODULES is not set: the kernel loads no modules"
        for opt in self.needs_config:
            if not config.builtin(opt):
                value = config[opt]
                return f"{opt} is not set" if value == "n" else f"{opt}={value}, needs =y"
        missing = [s for s in self.needs_symbols if s not in symbols]
        if missing:
            return ("the kernel exports no " + ", ".join(missing) +
                    " (the hmm_dma_map_* API came in 6.16)")
        return None


HMM_P2P_TEST = ExtModule(
    name="hmm_p2p_test",
    needs_config=("CONFIG_HMM_MIRROR", "CONFIG_PCI_P2PDMA"),  # HMM_MIRROR selects MMU_NOTIFIER
    needs_symbols=("hmm_range_fault", "hmm_dma_map_alloc", "hmm_dma_map_pfn",
                   "hmm_dma_unmap_pfn", "mmu_interval_notifier_insert"),
)


def parse_symvers(text: str) -> dict[str, str]:
    """Module.symvers: ``CRC<TAB>symbol<TAB>module<TAB>export<TAB>namespace`` -> {symbol: module}.

    >>> parse_symvers("0x1234\\thmm_range_fault\\tvmlinux\\tEXPORT_SYMBOL\\t\\n")
    {'hmm_range_fault': 'vmlinux'}
    """
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out[parts[1]] = parts[2]
    return out


def vermagic(ko: bytes) -> str | None:
    """The ``vermagic=`` string of a module's .modinfo (its first word is the release).

    >>> vermagic(b"\\x7fELF...\\0license=GPL\\0vermagic=7.3.4 SMP mod_unload \\0name=x\\0")
    '7.3.4 SMP mod_unload '
    """
    i = ko.find(b"\0vermagic=")
    if i < 0:
        return None
    end = ko.find(b"\0", i + 1)
    return ko[i + len(b"\0vermagic="):end].decode(errors="replace")


@dataclass(frozen=True)
class BuildEnv:
    """How ``make M=DIR`` runs against one kernel.

    ``kdir`` is the kernel's build directory as make sees it: a host path, or a path
    inside ``root`` (a private build root entered with chroot, in a mount namespace of
    its own with a fresh /proc, which objtool needs)."""

    kdir: str
    release: str
    identity: str  # what the kernel is, for the cache key
    description: str
    root: Path | None = None

    def host_path(self, inner: str) -> Path:
        """A path as make sees it -> the same file on the host."""
        return self.root / inner.lstrip("/") if self.root else Path(inner)

    @property
    def config(self) -> Kconfig:
        return Kconfig.read(self.host_path(self.kdir) / ".config")

    def symbols(self) -> dict[str, str]:
        path = self.host_path(self.kdir) / "Module.symvers"
        try:
            return parse_symvers(path.read_text(errors="replace"))
        except OSError:
            return {}

    def make_argv(self, inner_dir: str, *targets: str) -> list[str]:
        make = ["make", "-C", self.kdir, f"M={inner_dir}", *targets]
        if self.root is None:
            return [find_tool("make", "make"), "-j2", *make[1:]]
        return [find_tool("unshare", "util-linux"), "--mount", "--pid", "--fork",
                f"--mount-proc={self.root / 'proc'}", find_tool("chroot", "coreutils"),
                str(self.root), *make]

    def scratch(self, name: str) -> tuple[Path, str]:
        """A fresh directory for a build: (host path, the path make sees)."""
        base = (self.root / "build") if self.root else (cache_dir() / "modules" / ".build")
        base.mkdir(parents=True, exist_ok=True)
        host = base / f"{name}-{os.getpid()}"
        shutil.rmtree(host, ignore_errors=True)
        host.mkdir()
        inner = f"/build/{host.name}" if self.root else str(host)
        return host, inner


def check(module: ExtModule, env: BuildEnv) -> None:
    """Raise :class:`ModuleUnsupported` when the kernel cannot take the module."""
    try:
        config = env.config
    except OSError:
        raise ModuleUnsupported(module.name, f"no .config in {env.kdir}") from None
    why = module.unsupported(config, env.symbols())
    if why:
        raise ModuleUnsupported(module.name, why)


def build_module(module: ExtModule, env: BuildEnv) -> Path:
    """The module's ``.ko`` for the kernel of ``env``: from the cache, or built now
    (about 10 s; one build at a time per key, under a lock)."""
    check(module, env)
    key = hashlib.sha256(f"{LAYOUT_VERSION}\0{module.digest()}\0{env.identity}".encode()
                         ).hexdigest()[:24]
    out_dir = cache_dir() / "modules" / f"{module.name}-{key}"
    ko = out_dir / f"{module.name}.ko"
    if ko.is_file():
        return ko
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".lock-{out_dir.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ko.is_file():
            return ko
        host, inner = env.scratch(module.name)
        try:
            for p in module.files():
                shutil.copy2(p, host / p.name)
            kbuild = module.kbuild()
            if kbuild is not None:
                (host / "Kbuild").write_text(kbuild)
            run_step(env.make_argv(inner, "modules"),
                     f"building {module.name} against {env.description}",
                     error=ModuleBuildError, timeout=BUILD_TIMEOUT)
            built = host / f"{module.name}.ko"
            magic = vermagic(built.read_bytes()) if built.is_file() else None
            if magic is None:
                raise ModuleBuildError(f"building {module.name}: make left no {built.name}")
            if magic.split(" ", 1)[0] != env.release:
                raise ModuleBuildError(f"{module.name} was built for {magic.split()[0]!r}, "
                                       f"not {env.release!r} ({env.description})")
            tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            shutil.copy2(built, tmp / built.name)
            (tmp / "built-against").write_text(f"{env.description}\nvermagic={magic}\n")
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(host, ignore_errors=True)
    return ko


def tree_env(kdir: Path, release: str | None) -> BuildEnv:
    """A built kernel source (or object) tree on the host: make runs there with the
    host's compiler, the one that built it."""
    kdir = kdir.resolve()
    if release is None:
        try:
            release = (kdir / "include/config/kernel.release").read_text().strip()
        except OSError:
            release = "?"
    h = hashlib.sha256(str(kdir).encode())
    for name in (".config", "Module.symvers", "include/generated/utsrelease.h"):
        try:
            st = (kdir / name).stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{name}\0-\0".encode())
    return BuildEnv(kdir=str(kdir), release=release, identity=h.hexdigest(),
                    description=f"the kernel tree {kdir} ({release})")
