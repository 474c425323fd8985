"""The second stage of a foreign-architecture image: boot the unpacked tree once in a guest
of its own architecture (TCG) and let dpkg install the packages there.

The guest boots the image's own kernel and initramfs, with the root filesystem (raw ext4,
written in place) as /dev/vda and the stage disk (:func:`testbed.image.foreign.make_stage`)
as /dev/vdb; its init is the recipe's ``stage2`` script, which reports on the console:
``testbed-stage2: step NAME`` as it goes, then ``testbed-stage2: ok`` or
``testbed-stage2: FAILED: WHY`` before it powers the guest off.  QEMU runs under
:class:`~testbed.qemu.machine.QemuMachine`: killed when the builder dies, when the stage
fails, or when it takes longer than its time limit.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from ..errors import ImageError, QemuError
from ..machines import PROFILES, MachineProfile
from ..qemu.machine import QemuMachine, QmpSocket
from ..util.procs import find_tool

# seconds: about 9 minutes of CPU time under TCG, 40 min of wall time on a 2-core host
# shared with a dozen other jobs
TIMEOUT = 7200.0
RAM = "2G"


# neoverse-n1 (ARMv8.2, no SVE, no pointer authentication) ran Python and gzip 1.3-1.7x
# faster than `max` under TCG here; the second stage needs no particular CPU
STAGE_CPU = {"aarch64": "neoverse-n1"}


def guest_profile(debian_arch: str) -> MachineProfile:
    """The machine that boots a ``debian_arch`` guest (its machine profile)."""
    for profile in PROFILES.values():
        if profile.debian_arch == debian_arch:
            return profile
    raise ImageError(f"cannot boot a {debian_arch} guest to finish its image (known: "
                     f"{', '.join(sorted(p.debian_arch for p in PROFILES.values()))})")


def stage2_argv(profile: MachineProfile, qemu: str, kernel: Path, initrd: Path, root: Path,
                stage: Path, console: Path, qmp: Path, init: str) -> list[str]:
    cmdline = [profile.console_word, "root=/dev/vda", "rootfstype=ext4", "rw",
               f"init={init}", "panic=-1", "cryptomgr.notests", "loglevel=4"]
    cpu = STAGE_CPU.get(profile.arch, profile.default_cpu)
    return [qemu, "-machine", profile.machine_option("tcg", None), "-cpu", cpu,
            "-accel", "tcg", "-smp", "2", "-m", RAM, "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(cmdline),
            "-drive", f"file={_escape(root)},if=none,id=tb-root,format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=tb-root",
            "-drive", f"file={_escape(stage)},if=none,id=tb-stage,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=tb-stage",
            "-device", "virtio-rng-pci",
            "-serial", f"file:{console}", "-qmp", f"unix:{qmp},server=on,wait=off"]


def _escape(path: Path) -> str:
    return str(path).replace(",", ",,")


def run_stage2(debian_arch: str, *, kernel: Path, initrd: Path, root: Path, stage: Path,
               work: Path, init: str, say: Callable[[str], None],
               timeout: float = TIMEOUT) -> dict[str, float]:
    """Boot the second stage and wait for its verdict; seconds per step on success,
    ImageError (with the console's tail) otherwise."""
    profile = guest_profile(debian_arch)
    qemu = find_tool(profile.qemu_binary, profile.qemu_package)
    console = work / "stage2-console.log"
    sock = QmpSocket.in_dir(work)
    machine = QemuMachine(stage2_argv(profile, qemu, kernel, initrd, root, stage, console,
                                      sock.path, init),
                          work, sock, name=f"{debian_arch} image second stage")
    start = time.monotonic()
    steps: dict[str, float] = {}
    seen = 0
    try:
        machine.launch()
        deadline = start + timeout
        while True:
            text = _read(console)
            for line in _markers(text)[seen:]:
                seen += 1
                steps[line] = round(time.monotonic() - start, 1)
                say(f"  second stage: {line} ({time.monotonic() - start:.0f}s)")
            verdict = _verdict(text)
            if verdict is not None or not machine.is_running():
                break
            if time.monotonic() > deadline:
                raise ImageError(f"the {debian_arch} second stage took longer than "
                                 f"{timeout:.0f} s; console tail:\n{_tail(console)}")
            time.sleep(0.5)
        machine.wait(60)  # it powers off after its verdict
        verdict = _verdict(_read(console))
        if verdict != "ok":
            what = verdict or (f"QEMU exited (status {machine.exitcode}) without a verdict; "
                               f"stderr: {machine.stderr_tail(5)}")
            raise ImageError(f"the {debian_arch} second stage failed: {what}\n"
                             f"console tail:\n{_tail(console)}")
        if machine.is_running():
            raise ImageError(f"the {debian_arch} second stage did not power off")
    except QemuError as exc:
        raise ImageError(f"the {debian_arch} second stage could not start QEMU: {exc}") from None
    finally:
        machine.kill()
    return steps


def _read(console: Path) -> str:
    try:
        return console.read_text(errors="replace")
    except OSError:
        return ""


def _markers(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^testbed-stage2: (step \S+|ok)\r?$", text, re.M)]


def _verdict(text: str) -> str | None:
    """``ok``, ``FAILED: ...``, or None while the stage runs."""
    m = re.search(r"^testbed-stage2: (ok|FAILED: .*?)\r?$", text, re.M)
    return m.group(1) if m else None


def _tail(console: Path, lines: int = 40) -> str:
    return "\n".join(_read(console).splitlines()[-lines:])
