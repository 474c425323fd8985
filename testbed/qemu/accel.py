"""Choose the accelerator: KVM only where a probe proved it runs a real guest.

``/dev/kvm`` opening is not proof: on this project's CI machines it is a
software nested hypervisor under which a Linux guest crashes or spins.  So
``auto`` boots the testbed's own kernel under KVM once, with a hard timeout,
and uses KVM only if that guest printed its marker and powered off.  A working
KVM boots the probe guest in well under a second; the timeout gives up on a
broken one after a few.  The result is cached per host kernel, KVM module list
and QEMU binary.

    >>> resolve_accel("tcg", caps=None).name
    'tcg'
"""

from __future__ import annotations

import atexit
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..machines import X86_64, MachineProfile
from ..paths import cache_dir
from ..util.files import JsonCache
from .cmdline import probe_argv
from .machine import _child_setup as qemu_child_setup
from .probe import Capabilities

_RUNNING: set[subprocess.Popen[bytes]] = set()  # probes still running

PROBE_TIMEOUT = 5.0  # a working KVM boots the probe guest in well under a second
PROBE_QUICK = 1.5  # how long a boot waits for the probe before it boots with TCG
PROBE_MARKER = "TESTBED-PROBE-OK"
ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class Accel:
    name: str  # "tcg" or "kvm"
    reason: str


@dataclass(frozen=True)
class ProbeGuest:
    """A kernel + initramfs whose init prints PROBE_MARKER and powers off when
    ``testbed.probe`` is on the command line."""

    kernel: Path
    initrd: Path | None
    cmdline: tuple[str, ...] = ()
    profile: MachineProfile = X86_64  # the machine it boots on (its console, its type)


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _cache(caps: Capabilities) -> JsonCache:
    try:
        modules = "".join(line for line in Path("/proc/modules").read_text().splitlines(True)
                          if line.startswith("kvm"))
    except OSError:
        modules = ""
    key = f"{platform.release()}|{modules}|{caps.runner.identity()}|{caps.version_text}"
    return JsonCache(cache_dir() / "probe" /
                     f"kvm-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json")


def _cached(caps: Capabilities) -> Accel | None:
    data = _cache(caps).load()
    try:
        return Accel(data["name"], data["reason"] + " (cached probe)")
    except (KeyError, TypeError):
        return None


def probe_kvm(caps: Capabilities, guest: ProbeGuest, timeout: float = PROBE_TIMEOUT,
              quick: float = PROBE_QUICK) -> Accel:
    """Boot ``guest`` under KVM with a hard timeout; the verdict is cached.

    The caller waits at most ``quick`` seconds: a working KVM has answered by then.  A
    probe still running after that goes on in a background thread up to ``timeout`` and
    caches its verdict for the next boot, while this one boots with TCG (on this
    project's machines the broken KVM's guest prints nothing and spins: the first
    `make boot` waited the whole 5 s for it).  The probe QEMU dies with this process
    (``PR_SET_PDEATHSIG``, and an exit handler), so it never outlives the orchestrator."""
    cached = _cached(caps)
    if cached is not None:
        return cached
    tmp = tempfile.TemporaryDirectory(prefix="kvm-probe-")
    console = Path(tmp.name) / "console.log"
    argv = probe_argv(caps.runner, "kvm", guest.kernel, guest.initrd,
                      (*guest.cmdline, guest.profile.console_word, "panic=-1",
                       "testbed.probe"), console, guest.profile)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=caps.runner.environ(),
                            preexec_fn=qemu_child_setup)
    _RUNNING.add(proc)

    def verdict() -> Accel:
        """Wait for the probe (to ``timeout`` in all), judge it, cache it, clean up."""
        try:
            try:
                _, err = proc.communicate(timeout=max(0.0, start + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                ok, reason = False, f"KVM probe guest hung for {timeout:.0f} s"
            else:
                out = console.read_text(errors="replace") if console.exists() else ""
                ok = PROBE_MARKER in out
                detail = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
                reason = (f"KVM probe booted a guest in {time.monotonic() - start:.1f} s" if ok
                          else f"KVM probe guest failed (QEMU status {proc.returncode}: "
                          f"{detail[:120]})")
            accel = Accel("kvm" if ok else "tcg", reason)
            if proc in _RUNNING:  # not killed by the exit handler: a real verdict
                _cache(caps).store({"name": accel.name, "reason": reason})
            return accel
        finally:
            _RUNNING.discard(proc)
            tmp.cleanup()

    try:
        proc.wait(timeout=quick)
    except subprocess.TimeoutExpired:
        threading.Thread(target=verdict, name="kvm-probe", daemon=True).start()
        return Accel("tcg", f"KVM did not answer its probe within {quick:.1f} s; the probe "
                            f"goes on in the background for the next boot")
    return verdict()


def _kill_probes() -> None:
    for proc in list(_RUNNING):
        _RUNNING.discard(proc)
        proc.kill()


atexit.register(_kill_probes)


def foreign_host(profile: MachineProfile) -> bool:
    """Is the machine another architecture than the host's (KVM cannot run it)?"""
    return platform.machine() != profile.arch


def requested_accel(requested: str) -> str:
    """The accelerator asked for, after ``TESTBED_ACCEL`` (UsageError when it is bad)."""
    env = os.environ.get("TESTBED_ACCEL")
    if env is not None and env != "":
        if env not in ACCELS:
            raise UsageError(f"TESTBED_ACCEL={env!r}: expected auto, kvm or tcg")
        return env if requested == "auto" else requested
    return requested


def expected_accel(requested: str, caps: Capabilities,
                   profile: MachineProfile = X86_64) -> str | None:
    """The accelerator a boot will use, when that is known without booting anything."""
    requested = requested_accel(requested)
    if requested in ("tcg", "kvm"):
        return requested
    if not kvm_usable() or foreign_host(profile):
        return "tcg"
    cached = _cached(caps)
    return cached.name if cached else None


def resolve_accel(requested: str, caps: Capabilities | None, guest: ProbeGuest | None = None,
                  allow_probe: bool = True, profile: MachineProfile | None = None) -> Accel:
    """``tcg``/``kvm``/``auto`` -> the accelerator to use, with the reason (``profile``: the
    machine's, else the probe guest's)."""
    profile = profile or (guest.profile if guest is not None else X86_64)
    requested = requested_accel(requested)
    if requested == "tcg":
        return Accel("tcg", "requested")
    foreign = (f"an {profile.arch} guest on an {platform.machine()} host: KVM runs only the "
               "host's own architecture")
    if requested == "kvm":
        if foreign_host(profile):
            raise UsageError(f"accel kvm requested for {foreign} (use accel: auto or tcg)")
        if not kvm_usable():
            raise UsageError("accel kvm requested but /dev/kvm cannot be opened "
                             "(use accel: auto or tcg)")
        return Accel("kvm", "requested")
    if foreign_host(profile):
        return Accel("tcg", foreign)
    if not kvm_usable():
        return Accel("tcg", "no usable /dev/kvm")
    assert caps is not None
    cached = _cached(caps)
    if cached is not None:
        return cached
    if allow_probe and guest is not None:
        return probe_kvm(caps, guest)
    return Accel("tcg", "KVM not yet proven on this host (the first boot probes it)")
