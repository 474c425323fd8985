"""Build a profile kernel: ``allnoconfig`` + the profile set, checked, built once per input.

    k = build_profile_kernel("debian", ["vfio-iommufd", "coverage"])
    k.image          # the bzImage of the last good build (a kept copy)
    k.tree           # the build tree (make O=): vmlinux, .config, .gcno, Module.symvers
    k.name           # 'base+vfio-iommufd+coverage'

Stages, each a step of its own:

1. The inputs and their key: the source's content identity (Debian's upload; a git tree's
   HEAD plus a digest of its uncommitted changes; otherwise its files' names, sizes and
   mtimes), the profile set's names and contents (and :data:`~.profile.FRAGMENT_FORMAT`),
   the compiler, the architecture. The same key again costs nothing: the kept result is
   returned without running make.
2. The build tree: one per (source tree, profile set, architecture) under
   ``cache_dir()/kernel-builds``, kept, so a changed file is recompiled and relinked and
   nothing else (make decides). A file lock per tree: two processes never build it at once;
   the second waits and then finds the result.
3. Configure (only when the profile set, compiler or source Makefile changed): ``make
   allnoconfig KCONFIG_ALLCONFIG=<the merged fragment>``; then every option the set asks for
   is checked in the final .config. One that Kconfig dropped, or does not know, is an error
   (exit 2) that names the profile and the unmet dependency (:mod:`.kconfig_why`).
4. Build: ``make -jN <image> modules`` with ``CC="ccache-cc gcc"`` (ccache except for
   sources that .incbin a build product) when ccache is installed
   (its cache is ``cache_dir()/ccache``), the profile set's make variables (per-file gcov),
   output to ``testbed-build.log`` in the tree. A failure names the compiler's first error
   line and the log.
5. Keep: the image, .config and System.map are copied to ``testbed-good/`` with
   ``good.json`` (the key, profile set, .config's sha256, release, times) and swapped in
   only after a successful build: a failed build never replaces the last good one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import KernelBuildError, UsageError
from ..machines import DEFAULT_ARCH, PROFILES, MachineProfile
from ..paths import cache_dir
from ..util.fingerprint import tree_fingerprint
from .build import LOG, _run, check_build_tools, check_source_tree
from .config import Kconfig
from .kconfig_why import explain
from .profile import ProfileSet, profile_set
from .source import debian_source, source_of_tree

log = logging.getLogger(__name__)

BUILD_FORMAT = 2  # 2: CC=ccache-cc (trees built by 1 may hold a stale bzImage payload)
GOOD = "testbed-good"
CCACHE_CC = Path(__file__).resolve().parent / "ccache-cc"  # the CC wrapper (see its text)
CONFIG_STAMP = ".testbed-profile-config.json"
FRAGMENT = "testbed-profile.config"
# a cold build of base needs about 1.5 GB (more with debug info); refuse below this
MIN_FREE_BYTES = 3_000_000_000


@dataclass(frozen=True)
class KernelArch:
    """How to build for one architecture on this host: read from the machine profile
    (:func:`kernel_arch`)."""

    name: str            # the testbed's arch name (topology.machine.arch)
    make_arch: str       # ARCH=
    cross_compile: str   # CROSS_COMPILE= ('' for the host's)
    image_target: str    # make target of the bootable image
    image_path: str      # where it lands in the build tree


def kernel_arch(profile: MachineProfile, host: str | None = None) -> KernelArch:
    """The profile's ARCH and image target; CROSS_COMPILE only when the host (``uname -m``)
    is another architecture."""
    host = host or platform.machine()
    kb, image = profile.kernel_build, profile.kernel_image
    return KernelArch(profile.arch, kb.arch, "" if host == profile.arch else kb.cross_compile,
                      image.build_target, image.path)


ARCHES = {arch: kernel_arch(p) for arch, p in PROFILES.items()}


@dataclass(frozen=True)
class ProfileKernel:
    """A built profile kernel: the kept image and the build tree it came from."""

    profiles: tuple[str, ...]
    source: Path
    source_identity: str
    tree: Path                 # make O=: vmlinux, .config, .gcno files, Module.symvers
    image: Path                # the kept copy of the last good image
    config: Path               # the kept copy of its .config
    release: str
    config_sha256: str
    key: str
    arch: str
    built: bool                # False: the same inputs were built before
    seconds: float             # this call
    cpu_seconds: float         # CPU time of make and the compiler (this call)
    build_seconds: float       # wall time of the build that made the kept image

    @property
    def name(self) -> str:
        return "+".join(self.profiles)

    @property
    def vmlinux(self) -> Path:
        return self.tree / "vmlinux"

    @property
    def spec(self) -> str:
        """The ``--kernel`` spec that names this kernel."""
        src = "" if self.source_identity.startswith("debian:") else f"@{self.source}"
        return f"profile:{self.name}{src}"


def resolve_source(ksrc: str | Path) -> Path:
    """``debian`` -> Debian's kernel source (fetched and unpacked once); else the tree."""
    if str(ksrc) == "debian":
        return debian_source().tree
    return check_source_tree(Path(ksrc).expanduser())


def _git(ksrc: Path, *args: str) -> bytes | None:
    if not (ksrc / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        proc = subprocess.run(["git", "-C", str(ksrc), *args], capture_output=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


def source_identity(ksrc: Path) -> str:
    """What the source's content is, cheaply: see the module doc (stage 1)."""
    debian = source_of_tree(ksrc)
    if debian is not None:
        return debian.identity
    head = _git(ksrc, "rev-parse", "HEAD")
    if head is not None:
        # full object names: git abbreviates them to a length that grows with the object
        # count (an automatic gc after a commit changed 7 to 9 digits, and the key with it)
        h = hashlib.sha256(_git(ksrc, "diff", "HEAD", "--binary", "--full-index",
                                "--no-color", "--no-ext-diff", "--no-textconv") or b"")
        untracked = _git(ksrc, "ls-files", "-z", "--others", "--exclude-standard") or b""
        for name in sorted(n for n in untracked.split(b"\0") if n):
            p = ksrc / os.fsdecode(name)
            try:
                st = p.stat()
                h.update(name + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                continue
        return f"git:{head.decode().strip()}:{h.hexdigest()[:16]}"
    return f"tree:{ksrc}:{tree_fingerprint(ksrc)[:16]}"


def compiler_identity(arch: KernelArch) -> str:
    gcc = f"{arch.cross_compile}gcc"
    if shutil.which(gcc) is None:
        raise UsageError(f"{gcc}: not installed (the {arch.name} kernel is built with it"
                         + (": apt-get install gcc-aarch64-linux-gnu)" if arch.cross_compile
                            else ")"))
    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=60)
    return f"{arch.make_arch}:{arch.cross_compile}:{out.stdout.splitlines()[0].strip()}"


def default_tree(ksrc: Path, ps: ProfileSet, arch: KernelArch) -> Path:
    tag = hashlib.sha256(str(ksrc.resolve()).encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", ps.name)
    return cache_dir() / "kernel-builds" / f"{ksrc.name}-{tag}-{safe}-{arch.name}"


def read_good(tree: Path) -> dict | None:
    try:
        good = json.loads((tree / GOOD / "good.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(good, dict) and all((tree / GOOD / f).is_file()
                                        for f in ("image", "config"))
    return good if ok else None


def check_config(ps: ProfileSet, config: Kconfig) -> list[str]:
    """The options of the set the .config does not have as asked (``CONFIG_X=y``)."""
    wanted = ps.wanted
    lost = []
    for name in wanted:
        want, got = wanted[name], config[name]
        if (want == "n" and got != "n") or (want != "n" and got != want):
            lost.append(name)
    return lost


def _describe_lost(ps: ProfileSet, tree: Path, ksrc: Path, lost: list[str],
                   make: list[str], build_log) -> str:
    try:  # Kconfig's environment record (include/config/auto.conf.cmd) for the helper
        _run(make + ["syncconfig"], tree, build_log, "make syncconfig")
    except KernelBuildError:
        pass
    why = explain(tree, ksrc, lost) or {}
    config = Kconfig.read(tree / ".config")
    lines = []
    for name in lost:
        want, got = ps.wanted[name], config[name]
        e = why.get(name)
        if e is not None and not e.known:
            reason = e.reason
        elif e is not None:
            reason = f"got {got}; {e.reason}"
        else:
            reason = f"got {got}"
        lines.append(f"{name}={want} (profile {ps.asked_by(name)}): {reason}")
    return "\n  ".join(lines)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _keep(tree: Path, arch: KernelArch, good: dict) -> None:
    """Copy the image, .config and System.map into testbed-good/, replacing the old."""
    tmp = tree / f".{GOOD}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copyfile(tree / arch.image_path, tmp / "image")
    shutil.copyfile(tree / ".config", tmp / "config")
    if (tree / "System.map").is_file():
        shutil.copyfile(tree / "System.map", tmp / "System.map")
    (tmp / "good.json").write_text(json.dumps(good, indent=1) + "\n")
    old = tree / f".{GOOD}.old.{os.getpid()}"
    if (tree / GOOD).exists():
        (tree / GOOD).rename(old)
    tmp.rename(tree / GOOD)
    shutil.rmtree(old, ignore_errors=True)


def _result(tree: Path, good: dict, built: bool, start: float, cpu0: float) -> ProfileKernel:
    return ProfileKernel(
        profiles=tuple(good["profiles"]), source=Path(good["source"]),
        source_identity=good["source_identity"], tree=tree, image=tree / GOOD / "image",
        config=tree / GOOD / "config", release=good["release"],
        config_sha256=good["config_sha256"], key=good["key"], arch=good["arch"], built=built,
        seconds=time.monotonic() - start, cpu_seconds=_cpu_seconds() - cpu0,
        build_seconds=float(good.get("build_seconds", 0.0)))


def build_profile_kernel(ksrc: str | Path, profiles: list[str] | tuple[str, ...],
                         arch: str = DEFAULT_ARCH, jobs: int | None = None,
                         output: Path | None = None, check_only: bool = False,
                         rebuild: bool = False) -> ProfileKernel | None:
    """The profile kernel of ``ksrc`` (``debian`` or a tree) with ``profiles`` (``base`` is
    always included): built now, incrementally, or found; see the module doc.
    ``check_only``: configure and check the options, compile nothing, return None.
    ``rebuild``: run make even when the key is unchanged (make rebuilds what is newer)."""
    start, cpu0 = time.monotonic(), _cpu_seconds()
    if arch not in ARCHES:
        raise UsageError(f"arch {arch!r}: profile kernels are built for {', '.join(ARCHES)}")
    karch = ARCHES[arch]
    ps = profile_set(list(profiles), arch)
    src = resolve_source(ksrc)
    check_build_tools()
    compiler = compiler_identity(karch)
    identity = source_identity(src)
    make_vars = ps.make_variables()
    key = hashlib.sha256("\0".join([f"build-format {BUILD_FORMAT}", identity, ps.digest(),
                                    compiler, *make_vars]).encode()).hexdigest()[:20]
    tree = Path(output).absolute() if output else default_tree(src, ps, karch)
    if tree.resolve() == src.resolve():
        raise UsageError(f"--output {tree}: is the source tree; the build is out of tree")
    tree.mkdir(parents=True, exist_ok=True)
    with open(tree.parent / f".lock-{tree.name}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it", tree)
            fcntl.flock(lock, fcntl.LOCK_EX)
        good = read_good(tree)
        if good is not None and good.get("key") == key and not (check_only or rebuild):
            log.info("profile kernel %s: up to date (%s)", ps.name, tree)
            return _result(tree, good, False, start, cpu0)
        return _build(src, ps, karch, compiler, identity, key, tree, jobs, start, cpu0,
                      check_only)


def _ccache_cc() -> Path:
    """The CC wrapper, copied to one place in the cache: Kbuild records CC in every object's
    command, so a path that followed the checkout would recompile everything in each clone."""
    dest = cache_dir() / "bin" / CCACHE_CC.name
    text = CCACHE_CC.read_bytes()
    if not dest.is_file() or dest.read_bytes() != text:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        tmp.write_bytes(text)
        tmp.chmod(0o755)
        tmp.replace(dest)
    return dest


def _build(src: Path, ps: ProfileSet, arch: KernelArch, compiler: str, identity: str,
           key: str, tree: Path, jobs: int | None, start: float, cpu0: float,
           check_only: bool = False) -> ProfileKernel | None:
    free = shutil.disk_usage(tree).free
    if free < MIN_FREE_BYTES:
        raise KernelBuildError(f"{tree}: only {free / 1e9:.1f} GB free; a kernel build needs "
                               f"about {MIN_FREE_BYTES / 1e9:.0f} GB")
    ccache = shutil.which("ccache")
    cc = f"{arch.cross_compile}gcc"
    make = ["make", "-C", str(src), f"O={tree}", f"ARCH={arch.make_arch}"]
    if arch.cross_compile:
        make.append(f"CROSS_COMPILE={arch.cross_compile}")
    # ccache for C only: see ccache-cc (an .incbin'd vmlinux is invisible to ccache)
    make.append(f"CC={str(_ccache_cc()) + ' ' if ccache else ''}{cc}")
    env = {"KBUILD_BUILD_USER": "testbed", "KBUILD_BUILD_HOST": "profile"}
    if ccache and "CCACHE_DIR" not in os.environ:
        env["CCACHE_DIR"] = str(cache_dir() / "ccache")
    if ccache and "CCACHE_DEPEND" not in os.environ:
        # depend mode: the key comes from Kbuild's -Wp,-MMD files, so a miss does not run
        # the preprocessor a second time (a cold build pays no ccache surcharge)
        env["CCACHE_DEPEND"] = "1"
    stamp = {"format": BUILD_FORMAT, "profiles": ps.digest(), "compiler": compiler,
             "source": str(src), "makefile": hashlib.sha256(
                 (src / "Makefile").read_bytes()).hexdigest()}
    try:
        old = json.loads((tree / CONFIG_STAMP).read_text())
    except (OSError, ValueError):
        old = None
    with open(tree / LOG, "a") as build_log:
        build_log.write(f"\n=== testbed kernel build --profile {ps.name} "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        if old != stamp or not (tree / ".config").is_file():
            (tree / CONFIG_STAMP).unlink(missing_ok=True)
            (tree / FRAGMENT).write_text(ps.fragment())
            log.info("configuring %s: allnoconfig + %s", tree, ps.name)
            _run(make + [f"KCONFIG_ALLCONFIG={tree / FRAGMENT}", "allnoconfig"], tree,
                 build_log, "make allnoconfig", env=env)
            lost = check_config(ps, Kconfig.read(tree / ".config"))
            if lost:
                raise UsageError(
                    f"{len(lost)} option(s) of the kernel profile set {ps.name} are not in "
                    f"the configuration of {src} (the build stops before compiling):\n  "
                    + _describe_lost(ps, tree, src, lost, make, build_log))
            (tree / CONFIG_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        else:
            log.info("configuration of %s up to date; building incrementally", tree)
        if check_only:
            log.info("all %d options of %s are set as asked in %s/.config", len(ps.wanted),
                     ps.name, tree)
            return None
        n = jobs or len(os.sched_getaffinity(0))
        log.info("make -j%d %s modules (%s; log %s)", n, arch.image_target, ps.name,
                 tree / LOG)
        build_start = time.monotonic()
        _run(make + [f"-j{n}", *ps.make_variables(), arch.image_target, "modules"], tree,
             build_log, f"make {arch.image_target}", watch=True, env=env)
    if not (tree / arch.image_path).is_file():
        raise KernelBuildError(f"make succeeded but {tree / arch.image_path} does not exist")
    release = (tree / "include/config/kernel.release").read_text().strip()
    config_sha = hashlib.sha256((tree / ".config").read_bytes()).hexdigest()
    good = {"key": key, "profiles": list(ps.names), "source": str(src),
            "source_identity": identity, "arch": arch.name, "compiler": compiler,
            "release": release, "config_sha256": config_sha,
            "make_variables": list(ps.make_variables()),
            "build_seconds": round(time.monotonic() - build_start, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _keep(tree, arch, good)
    result = _result(tree, good, True, start, cpu0)
    log.info("profile kernel %s (%s) built in %.0f s (%.0f CPU s)", ps.name, release,
             result.seconds, result.cpu_seconds)
    return result
