"""The kernel's own selftests (tools/testing/selftests), built from the source of the kernel
under test, for the ``kselftest:*`` workloads.

A suite is data (:data:`SUITES`): its directory under tools/testing/selftests, the
programs the testbed runs (each with the device it needs and its time bound), the kernel
options without which it cannot run, the modules to load in the guest.  Building is an
explicit step: :func:`build_suite` makes the UAPI headers of the source (``make headers``
into the cache, never into the source tree) and the suite's programs (``make -C
tools/testing/selftests/DIR OUTPUT=...``) with the host's compiler, and caches the
programs by the source's identity, the suite and the compiler.  Each program is linked
with a small shim (``kselftest_timeout.c``, ``-Wl,--wrap=poll``) that scales the harness's
compiled-in per-test bound (30 s) by ``$TESTBED_KSFT_TIMEOUT_FACTOR`` at run time, so the
bound follows an emulated CPU on a busy host.  The source is the kernel
under test's: a profile kernel's tree (its build tree's ``source`` link), a built source
tree, or for the image kernel Debian's linux-source (:func:`testbed.kernel.source.debian_source`).

    >>> sorted(SUITES)
    ['hmm', 'iommu', 'vfio']
    >>> [p.name for p in SUITES["vfio"].programs if p.device == "igb"]
    ['vfio_pci_driver_test']
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import TestbedError
from ..paths import cache_dir
from ..util.fingerprint import tree_fingerprint
from ..util.procs import find_tool, run_step
from .config import Kconfig
from .extmod import ExtModule
from .resolve import KernelSpec
from .source import debian_source, source_of_tree

LAYOUT_VERSION = 2
BUILD_TIMEOUT = 1800.0
SELFTESTS = "tools/testing/selftests"
# linked into every program (-Wl,--wrap=poll): the harness's per-test bound (30 s compiled
# in) times the factor in this variable of the program's environment
TIMEOUT_SHIM = Path(__file__).with_name("kselftest_timeout.c")
TIMEOUT_FACTOR_ENV = "TESTBED_KSFT_TIMEOUT_FACTOR"


class SelftestBuildError(TestbedError):
    """A selftest suite could not be built; the message carries make's output tail."""

    kind = "selftest-build"


@dataclass(frozen=True)
class Program:
    """One test program: what it needs from the topology and how long it may take."""

    name: str
    device: str | None = None  # "nvme-cmb": an NVMe with a CMB; "igb": an igb NIC
    timeout: float = 300.0
    needs_config: tuple[str, ...] = ()  # without them its result is "unsupported (why)"
    hugepages: int = 0  # 2 MiB pages reserved while it runs (its hugetlb variants use them)
    args: tuple[str, ...] = ()  # the harness's own options (e.g. -T TEST: leave it out)


@dataclass(frozen=True)
class Suite:
    name: str  # the workload is kselftest:<name>
    directory: str  # under tools/testing/selftests
    programs: tuple[Program, ...]
    needs_config: tuple[str, ...]  # the whole suite needs these (=y or =m)
    modules: tuple[str, ...] = ()  # modprobe'd in the guest first
    host_packages: tuple[str, ...] = ()  # -dev packages its build links against
    what: str = ""
    # the kernel's own test module the suite drives, built from the source as an external
    # module when the kernel lacks it: (its option, its directory, its files)
    test_module: tuple[str, str, tuple[str, ...]] | None = None

    def module(self, src: Path) -> ExtModule | None:
        """The test module as an external module of ``src`` (None: the suite has none)."""
        if self.test_module is None:
            return None
        _, directory, files = self.test_module
        return ExtModule(name=Path(files[0]).stem, needs_config=self.needs_config,
                         needs_symbols=(), tree=src / directory, tree_files=files)

    @property
    def workload(self) -> str:
        return f"kselftest:{self.name}"

    def unsupported(self, config: Kconfig | None, program: Program | None = None) -> str | None:
        """Why a kernel with ``config`` cannot run the suite (or the program); None: it can,
        or the config is unknown."""
        if config is None:
            return None
        for opt in self.needs_config + (program.needs_config if program else ()):
            if not config.enabled(opt):
                return f"{opt} is not set"
        return None


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("vfio", "vfio", (
        Program("vfio_dma_mapping_test", "nvme-cmb", 600.0, hugepages=4),
        Program("vfio_dma_mapping_mmio_test", "nvme-cmb", 300.0),
        # these two use libvfio's default mode, iommufd (a VFIO device cdev bound to it)
        Program("vfio_pci_device_test", "nvme-cmb", 300.0,
                needs_config=("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV")),
        Program("vfio_pci_driver_test", "igb", 300.0,
                needs_config=("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV")),
        Program("vfio_iommufd_setup_test", "nvme-cmb", 300.0,
                needs_config=("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV")),
    ), needs_config=("CONFIG_VFIO", "CONFIG_VFIO_PCI"), modules=("vfio-pci",),
        host_packages=("uuid-dev",),
        what="VFIO: DMA mapping (anonymous, hugetlb, a device BAR), device setup, a "
             "userspace driver's DMA (igb), the iommufd setup"),
    Suite("iommu", "iommu", (
        Program("iommufd", None, 900.0, hugepages=80),
    ), needs_config=("CONFIG_IOMMUFD", "CONFIG_IOMMUFD_TEST"), host_packages=("libcap-dev",),
        what="iommufd's user API against its mock IOMMU (IOMMUFD_TEST)"),
    Suite("hmm", "mm", (
        # its THP migration benchmark measures speed, not correctness, and under TCG on a
        # busy host it fails now and then (256 MiB migrations): left out
        Program("hmm-tests", None, 900.0, args=("-T", "benchmark_thp_migration")),
    ), needs_config=("CONFIG_HMM_MIRROR", "CONFIG_DEVICE_PRIVATE"),
        test_module=("CONFIG_TEST_HMM", "lib", ("test_hmm.c", "test_hmm_uapi.h")),
        what="the HMM mirror (test_hmm's /dev/hmm_dmirror*): faults, migration to device "
             "memory, device-private and coherent pages"),
)}


def suite_source(kernel: KernelSpec | None) -> Path:
    """The source tree the kernel under test was built from."""
    if kernel is None:
        return debian_source().tree  # the image kernel is Debian's linux-source
    for tree in (kernel.build_tree, kernel.path if kernel.kind == "build-tree" else None):
        if tree is None:
            continue
        src = (tree / "source").resolve() if (tree / "source").is_dir() else tree
        if (src / SELFTESTS).is_dir():
            return src
    raise SelftestBuildError(f"no kernel source for {kernel.description}: selftests are "
                             "built from the kernel's own source (a profile kernel, a built "
                             "source tree, or the image kernel)")


def source_identity(src: Path, suite: Suite | None = None) -> str:
    """What the build cache keys a suite's programs by: a Debian upload, or (any other
    tree) the files the build reads, by size and mtime."""
    deb = source_of_tree(src)
    if deb is not None:
        return deb.identity
    h = hashlib.sha256(str(src.resolve()).encode())
    for part in ("Makefile", "include/uapi", "arch/x86/include/uapi", "tools/include",
                 *((f"{SELFTESTS}/{suite.directory}",) if suite else ()),
                 SELFTESTS + "/lib.mk", SELFTESTS + "/kselftest.h",
                 SELFTESTS + "/kselftest_harness.h"):
        p = src / part
        h.update(tree_fingerprint(p).encode() if p.is_dir() else
                 f"{part}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() if p.exists()
                 else f"{part}:-".encode())
    return h.hexdigest()


def _compiler() -> str:
    try:
        return subprocess.run([find_tool("gcc", "gcc"), "--version"], capture_output=True,
                              text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


@dataclass(frozen=True)
class BuiltSuite:
    suite: Suite
    directory: Path  # the programs (and whatever they read at run time)
    source: Path

    def tar(self) -> bytes:
        """The programs as a tar, to unpack in the guest."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p in self.suite.programs:
                f = self.directory / p.name
                if f.is_file():
                    tar.add(f, arcname=p.name)
        return buf.getvalue()


def _cached(name: str, make: Callable[[Path], None]) -> Path:
    """``cache_dir()/kselftests/NAME``: made by ``make(tmp)`` once (a lock, a rename)."""
    out = cache_dir() / "kselftests" / name
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".lock-{name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").is_file():
            return out
        tmp = out.with_name(f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            make(tmp)
            (tmp / ".complete").write_text(f"{name}\n")
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def uapi_headers(src: Path) -> Path:
    """The UAPI headers of ``src`` (``make headers`` into the cache: the source tree stays
    read-only), once per source; the directory to pass as ``-isystem``."""
    key = hashlib.sha256(repr((LAYOUT_VERSION, source_identity(src))).encode()).hexdigest()

    def make_headers(tmp: Path) -> None:
        run_step([find_tool("make", "make"), "-s", "-C", str(src), f"O={tmp / 'o'}",
                  "headers"], f"make headers of {src}", error=SelftestBuildError,
                 timeout=BUILD_TIMEOUT)
        (tmp / "o/usr/include").rename(tmp / "include")
        shutil.rmtree(tmp / "o")

    return _cached(f"headers-{key[:20]}", make_headers) / "include"


def build_suite(suite: Suite, src: Path) -> BuiltSuite:
    """The suite's programs built from ``src`` with the host's compiler: cached by the
    source, the programs and the compiler, or built now (the headers once per source, a
    few minutes on two busy cores; the programs well under a minute)."""
    headers = uapi_headers(src)
    shim = TIMEOUT_SHIM.read_bytes()
    key = hashlib.sha256(repr((LAYOUT_VERSION, suite.directory,
                               tuple(p.name for p in suite.programs),
                               source_identity(src, suite), _compiler(),
                               hashlib.sha256(shim).hexdigest())).encode()).hexdigest()

    def make_programs(tmp: Path) -> None:
        out = tmp / "build"
        out.mkdir()
        targets = [str(out / p.name) for p in suite.programs]
        shim_o = tmp / "kselftest_timeout.o"
        run_step([find_tool("gcc", "gcc"), "-O2", "-Wall", "-c", str(TIMEOUT_SHIM), "-o",
                  str(shim_o)], "compiling the harness timeout shim",
                 error=SelftestBuildError, timeout=120)
        try:
            run_step([find_tool("make", "make"), "-j2", "-C",
                      str(src / SELFTESTS / suite.directory), f"OUTPUT={out}",
                      f"KHDR_INCLUDES=-isystem {headers}",
                      f"USERLDFLAGS={shim_o} -Wl,--wrap=poll", *targets],
                     f"building the {suite.name} selftests of {src}",
                     error=SelftestBuildError, timeout=BUILD_TIMEOUT)
        except SelftestBuildError as exc:
            need = ", ".join(suite.host_packages) or "gcc"
            raise SelftestBuildError(f"{exc}\n(the {suite.name} selftests need {need} on "
                                     "the host: scripts/setup-host.sh installs them)") from None
        for p in suite.programs:
            if (out / p.name).is_file():
                shutil.copy2(out / p.name, tmp / p.name)
        shutil.rmtree(out)
        shim_o.unlink()

    return BuiltSuite(suite, _cached(f"{suite.name}-{key[:20]}", make_programs), src)
