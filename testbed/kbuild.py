"""Build a guest kernel for the testbed from a Linux source tree.

    bzimage = build_kernel(Path("/src/linux"), Path("/build/linux"), progress=print)

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
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import TestbedError, ToolMissing, UsageError
from .image.kernel import parse_config
from .paths import guest_images_dir

Progress = Callable[[str], None] | None

BUILD_PACKAGES = "build-essential flex bison bc libelf-dev libssl-dev dwarves"

# host tool -> why; every one of them is in BUILD_PACKAGES
BUILD_TOOLS = ("make", "gcc", "ld", "flex", "bison", "bc", "perl", "pahole")
# headers the build needs (objtool: libelf; certificates/signing: openssl)
BUILD_HEADERS = ("/usr/include/gelf.h", "/usr/include/openssl/opensslv.h")

STAMP = ".testbed-config.json"
LOG = "testbed-build.log"

# lines of Kbuild's quiet output that mean "one step done"
_STEP = re.compile(r"^\s{2}([A-Z][A-Z0-9_\[\] ]{1,10}?)\s+(\S+)")


class KernelBuildError(TestbedError):
    """A make step failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class BuildResult:
    bzimage: Path
    output: Path
    release: str
    configured: bool          # False: the configuration was up to date and kept
    seconds: float


def default_fragment() -> Path:
    return guest_images_dir() / "kernel" / "p2pdma.config"


def check_source_tree(ksrc: Path) -> Path:
    """The absolute source tree, or UsageError saying why ``ksrc`` is not one."""
    if not ksrc.exists():
        raise UsageError(f"{ksrc}: no such directory (expected a Linux source tree)")
    if not ksrc.is_dir():
        raise UsageError(f"{ksrc}: not a directory (expected a Linux source tree)")
    missing = [p for p in ("Makefile", "Kconfig", "arch/x86/Kconfig",
                           "scripts/kconfig/merge_config.sh", "drivers/pci/Kconfig")
               if not (ksrc / p).is_file()]
    if missing or "KERNELRELEASE" not in _read(ksrc / "Makefile"):
        raise UsageError(f"{ksrc}: not a Linux source tree (expected a top-level Makefile, "
                         f"Kconfig and arch/x86/; missing: {', '.join(missing) or 'Makefile'})")
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


def fragment_options(fragment: Path) -> dict[str, str]:
    """``CONFIG_X -> value`` of a fragment (``# CONFIG_X is not set`` -> ``n``)."""
    return parse_config("\n".join(line.strip() for line in _read(fragment).splitlines()))


def config_values(config: Path) -> dict[str, str]:
    """``CONFIG_X -> value`` of a .config (unset options: ``n``)."""
    return fragment_options(config)


def missing_options(fragment: dict[str, str], config: dict[str, str]) -> list[str]:
    """The fragment's =y options the final config does not have as =y, as messages.

    >>> missing_options({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "m"},
    ...                 {"CONFIG_A": "y", "CONFIG_B": "m"})
    ['CONFIG_B=y (got m)']
    """
    out = []
    for name, want in fragment.items():
        if want != "y":
            continue
        got = config.get(name, "n")
        if got != "y":
            out.append(f"{name}=y (got {'not set' if got == 'n' else got})")
    return out


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


def _run(argv: list[str], cwd: Path, log, what: str, progress: Progress,
         watch: bool = False) -> None:
    """Run one build step, output to ``log``; ``watch`` reports Kbuild steps as they go."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    start = time.monotonic()
    last_report = start
    steps = 0
    tail: list[str] = []
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ToolMissing(argv[0], package=BUILD_PACKAGES) from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-40]
            m = _STEP.match(line)
            if m:
                steps += 1
            now = time.monotonic()
            if watch and progress and now - last_report >= 15:
                last_report = now
                where = f"{m.group(1).strip()} {m.group(2)}" if m else line.strip()[:70]
                progress(f"[{_mmss(now - start)}] {steps} steps; {where}")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        log.flush()
    if rc != 0:
        errors = [t for t in tail if "error" in t.lower() or "***" in t] or tail[-15:]
        raise KernelBuildError(f"{what} failed (exit {rc}); last lines:\n  "
                               + "\n  ".join(errors[-15:]) + f"\nfull log: {log.name}")
    if progress:
        progress(f"{what}: done in {_mmss(time.monotonic() - start)}"
                 + (f" ({steps} steps)" if watch else ""))


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"


def build_kernel(ksrc: Path, output: Path, fragment: Path | None = None,
                 progress: Progress = None, jobs: int | None = None,
                 reconfigure: bool = False) -> BuildResult:
    """Configure (unless up to date) and build ``bzImage`` out of tree; see the module doc."""
    start = time.monotonic()
    ksrc = check_source_tree(Path(ksrc))
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
    make = ["make", "-C", str(ksrc), f"O={output}"]

    stamp_path = output / STAMP
    stamp = _stamp(ksrc, fragment)
    old = None
    try:
        old = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        pass
    configured = reconfigure or old != stamp or not (output / ".config").is_file()
    with open(output / LOG, "a") as log:
        log.write(f"\n=== testbed kernel build {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        if configured:
            stamp_path.unlink(missing_ok=True)
            if progress:
                progress(f"configuring {output} from {ksrc} (fragment {fragment.name})")
            _run(make + ["defconfig"], output, log, "make defconfig", progress)
            _run(make + ["kvm_guest.config"], output, log, "make kvm_guest.config", progress)
            _run([str(ksrc / "scripts/kconfig/merge_config.sh"), "-m", ".config",
                  str(fragment)], output, log, "merge_config.sh", progress)
            _run(make + ["olddefconfig"], output, log, "make olddefconfig", progress)
        elif progress:
            progress(f"configuration up to date in {output} (fragment unchanged); "
                     "building incrementally")
        lost = missing_options(want, config_values(output / ".config"))
        if lost:
            raise KernelBuildError(
                f"{len(lost)} option(s) of {fragment} did not stick in {output}/.config "
                f"(unmet dependencies, or not in this kernel version):\n  " + "\n  ".join(lost))
        stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
        if progress:
            progress(f"all {sum(v == 'y' for v in want.values())} =y options of the fragment "
                     f"are set; make -j{jobs} bzImage (log: {output / LOG})")
        _run(make + [f"-j{jobs}", "bzImage"], output, log, "make bzImage", progress, watch=True)
    bzimage = output / "arch/x86/boot/bzImage"
    if not bzimage.is_file():
        raise KernelBuildError(f"make bzImage succeeded but {bzimage} does not exist")
    release = _read(output / "include/config/kernel.release").strip()
    return BuildResult(bzimage=bzimage, output=output, release=release, configured=configured,
                       seconds=time.monotonic() - start)
