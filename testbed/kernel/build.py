"""Build a guest kernel for the testbed from a Linux source tree.

    bzimage = build_kernel(Path("/src/linux"), Path("/build/linux"))

Steps (out of tree, ``make O=OUT``): ``defconfig``, ``kvm_guest.config``,
``scripts/kconfig/merge_config.sh -m .config guest-images/kernel/p2pdma.config``,
``olddefconfig``; then every ``=y`` option of the fragment is checked in the
final ``.config`` (Kconfig silently drops an option whose dependencies are not
met; such a kernel would not boot the image, or would have no P2PDMA), and
``make -j$(nproc) bzImage`` runs with a progress line every few seconds. The
full make output goes to ``OUT/testbed-build.log``.

The configuration is stamped (``OUT/.testbed-config.json``: fragment hash and
the source tree's path); an unchanged stamp skips the configuration steps, so a
second run (after a source patch, say) only rebuilds what changed and relinks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TextIO

from ..errors import KernelBuildError, ToolMissing, UsageError
from ..machines import X86_64, MachineProfile
from ..paths import cache_dir, guest_images_dir
from ..util.procs import run_step
from .config import Kconfig

log = logging.getLogger(__name__)

BUILD_PACKAGES = "build-essential flex bison bc libelf-dev libssl-dev dwarves"

# host tool -> why; every one of them is in BUILD_PACKAGES
BUILD_TOOLS = ("make", "gcc", "ld", "flex", "bison", "bc", "perl", "pahole")
# headers the build needs (objtool: libelf; certificates/signing: openssl)
BUILD_HEADERS = ("/usr/include/gelf.h", "/usr/include/openssl/opensslv.h")

STAMP = ".testbed-config.json"
LOG = "testbed-build.log"

# lines of Kbuild's quiet output that mean "one step done"
_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_\[\] ]{1,10}?)\s+(\S+)")


@dataclass(frozen=True)
class BuildResult:
    bzimage: Path
    output: Path
    release: str
    configured: bool          # False: the configuration was up to date and kept
    seconds: float


def default_fragment() -> Path:
    return guest_images_dir() / "kernel" / "p2pdma.config"


def default_build_dir(ksrc: Path) -> Path:
    """Where ``testbed kernel build`` and ``testbed bisect`` build ``ksrc`` when not told:
    one directory per source tree, under the cache, so every build of it is incremental."""
    src = Path(ksrc).resolve()
    tag = hashlib.sha256(str(src).encode()).hexdigest()[:10]
    return cache_dir() / "kernel-builds" / f"{src.name}-{tag}"


def check_source_tree(ksrc: Path, profile: MachineProfile = X86_64) -> Path:
    """The absolute source tree, or UsageError saying why ``ksrc`` is not one (for the
    machine ``profile``: its architecture's Kconfig must be there)."""
    if not ksrc.exists():
        raise UsageError(f"{ksrc}: no such directory (expected a Linux source tree)")
    if not ksrc.is_dir():
        raise UsageError(f"{ksrc}: not a directory (expected a Linux source tree)")
    arch_kconfig = profile.kernel_build.kconfig
    missing = [p for p in ("Makefile", "Kconfig", arch_kconfig,
                           "scripts/kconfig/merge_config.sh", "drivers/pci/Kconfig")
               if not (ksrc / p).is_file()]
    if missing or "KERNELRELEASE" not in _read(ksrc / "Makefile"):
        raise UsageError(f"{ksrc}: not a Linux source tree (expected a top-level Makefile, "
                         f"Kconfig and {arch_kconfig.rsplit('/', 1)[0]}/; missing: "
                         f"{', '.join(missing) or 'Makefile'})")
    if (ksrc / ".config").exists() or (ksrc / "include" / "config").is_dir():
        raise UsageError(f"{ksrc}: the source tree has been configured or built in place "
                         f"(.config or include/config/ exists); out-of-tree builds need a clean "
                         f"tree: run 'make -C {ksrc} mrproper' first")
    return ksrc.resolve()


def check_build_tools() -> None:
    for tool in BUILD_TOOLS:
        if shutil.which(tool) is None:
            raise ToolMissing(tool, package=BUILD_PACKAGES)
    for header in BUILD_HEADERS:
        if not Path(header).is_file():
            raise ToolMissing(header, package=BUILD_PACKAGES)


def fragment_options(fragment: Path) -> Kconfig:
    """The options of a fragment (or a whole .config); an unreadable file has none."""
    return Kconfig.parse(_read(fragment), fragment)


def missing_options(fragment: Kconfig | Mapping[str, str],
                    config: Kconfig | Mapping[str, str]) -> list[str]:
    """The fragment's =y options the final config does not have as =y, as messages.

    >>> missing_options(Kconfig({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "m"}),
    ...                 Kconfig({"CONFIG_A": "y", "CONFIG_B": "m"}))
    ['CONFIG_B=y (got m)']
    """
    as_kconfig = [x if isinstance(x, Kconfig) else Kconfig(dict(x)) for x in (fragment, config)]
    return as_kconfig[1].unmet(as_kconfig[0])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _stamp(ksrc: Path, fragment: Path) -> dict:
    return {"source": str(ksrc), "fragment": str(fragment),
            "fragment_sha256": hashlib.sha256(fragment.read_bytes()).hexdigest(),
            "source_makefile_sha256": hashlib.sha256((ksrc / "Makefile").read_bytes()).hexdigest()}


def _jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Watch:
    """Counts Kbuild's quiet-output steps and logs where the build is every 15 s."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.steps = 0

    def __call__(self, line: str) -> None:
        m = _STEP.match(line)
        if m:
            self.steps += 1
        now = time.monotonic()
        if now - self.last >= 15:
            self.last = now
            where = f"{m.group(1).strip()} {m.group(2)}" if m else line.strip()[:70]
            log.info("[%s] %d steps; %s", _mmss(now - self.start), self.steps, where)


_COMPILER_ERROR = re.compile(r"(:\d+:(\d+:)? (fatal )?error: )|(^ld(\.\w+)?: .*(undefined|error))")
_DISK_FULL = "No space left on device"


def first_error(lines: list[str]) -> str | None:
    """The first line of a build's output that is the compiler's (or linker's) error.

    >>> first_error(["  CC      a.o", "a.c:3:5: error: 'x' undeclared", "make: *** Error 2"])
    "a.c:3:5: error: 'x' undeclared"
    """
    return next((t.strip() for t in lines if _COMPILER_ERROR.search(t)), None)


def _run(argv: list[str], cwd: Path, log_file: TextIO, what: str, watch: bool = False,
         env: Mapping[str, str] | None = None) -> None:
    """Run one build step, output to ``log_file``; ``watch`` reports Kbuild steps.

    A failure names the compiler's first error line (or a full disk) and the log."""
    start = time.monotonic()
    watcher = _Watch() if watch else None
    errors: list[str] = []

    def on_line(line: str) -> None:
        if len(errors) < 200 and (_COMPILER_ERROR.search(line) or _DISK_FULL in line):
            errors.append(line)
        if watcher is not None:
            watcher(line)
    try:
        run_step(argv, what, error=KernelBuildError, cwd=cwd, log_file=log_file,
                 on_line=on_line, package=BUILD_PACKAGES, env=env)
    except KernelBuildError as exc:
        if any(_DISK_FULL in t for t in errors):
            free = shutil.disk_usage(cwd).free / 1e9
            raise KernelBuildError(f"{what} failed: the disk is full ({cwd}: {free:.1f} GB "
                                   f"free)\nfull log: {log_file.name}") from None
        first = first_error(errors)
        if first:
            raise KernelBuildError(f"{what} failed: {first}\nfull log: {log_file.name}") \
                from None
        lines = str(exc).splitlines()[1:]
        tail = [t for t in lines if "error" in t.lower() or "***" in t] or lines[-15:]
        raise KernelBuildError(f"{what} failed; last lines:\n  " + "\n  ".join(tail[-15:])
                               + f"\nfull log: {log_file.name}") from None
    log.info("%s: done in %s%s", what, _mmss(time.monotonic() - start),
             f" ({watcher.steps} steps)" if watcher else "")


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"


def build_kernel(ksrc: Path, output: Path, fragment: Path | None = None,
                 jobs: int | None = None, reconfigure: bool = False,
                 profile: MachineProfile = X86_64) -> BuildResult:
    """Configure (unless up to date) and build the ``profile`` machine's kernel image (x86:
    ``bzImage``) out of tree; see the module doc."""
    start = time.monotonic()
    ksrc = check_source_tree(Path(ksrc), profile)
    image = profile.kernel_image
    fragment = (fragment or default_fragment()).resolve()
    if not fragment.is_file():
        raise UsageError(f"{fragment}: config fragment not found")
    want = fragment_options(fragment)
    if not want:
        raise UsageError(f"{fragment}: no CONFIG_ options in the fragment")
    check_build_tools()
    output = Path(output).absolute()
    if output.resolve() == ksrc:
        raise UsageError(f"--output {output}: is the source tree itself; the build is out of "
                         "tree, choose another directory")
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a directory")
    output.mkdir(parents=True, exist_ok=True)
    jobs = jobs or _jobs()
    make = ["make", "-C", str(ksrc), f"O={output}",
            *profile.kernel_build.make_vars(platform.machine(), profile.arch)]

    stamp_path = output / STAMP
    stamp = _stamp(ksrc, fragment)
    old = None
    try:
        old = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        pass
    configured = reconfigure or old != stamp or not (output / ".config").is_file()
    with open(output / LOG, "a") as build_log:
        build_log.write(f"\n=== testbed kernel build {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        if configured:
            stamp_path.unlink(missing_ok=True)
            log.info("configuring %s from %s (fragment %s)", output, ksrc, fragment.name)
            _run(make + ["defconfig"], output, build_log, "make defconfig")
            guest = profile.kernel_build.guest_config
            _run(make + [guest], output, build_log, f"make {guest}")
            _run([str(ksrc / "scripts/kconfig/merge_config.sh"), "-m", ".config",
                  str(fragment)], output, build_log, "merge_config.sh")
            _run(make + ["olddefconfig"], output, build_log, "make olddefconfig")
        else:
            log.info(f"configuration up to date in {output} (fragment unchanged); "
                     "building incrementally")
        lost = missing_options(want, fragment_options(output / ".config"))
        if lost:
            raise KernelBuildError(
                f"{len(lost)} option(s) of {fragment} did not stick in {output}/.config "
                f"(unmet dependencies, or not in this kernel version):\n  " + "\n  ".join(lost))
        stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
        log.info(f"all {sum(want[n] == 'y' for n in want)} =y options of the fragment "
                 f"are set; make -j{jobs} {image.build_target} (log: {output / LOG})")
        _run(make + [f"-j{jobs}", image.build_target], output, build_log,
             f"make {image.build_target}", watch=True)
    bzimage = output / image.path
    if not bzimage.is_file():
        raise KernelBuildError(f"make {image.build_target} succeeded but {bzimage} does not "
                               "exist")
    release = _read(output / "include/config/kernel.release").strip()
    return BuildResult(bzimage=bzimage, output=output, release=release, configured=configured,
                       seconds=time.monotonic() - start)
