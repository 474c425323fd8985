"""Boot a topology: run directory, overlay, QEMU, SSH, and the guest-side check.

    >>> with boot(load_topology("switch-cmb")) as guest:     # doctest: +SKIP
    ...     guest.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout
    '67108864\\n67108864\\n'

Every failure path shuts QEMU down and removes the run directory (unless
``keep``); the error (a :class:`~testbed.errors.BootError` subclass) carries the
console tail, the directory the logs were kept in and the QEMU argv.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    BootError,
    BootFailed,
    BootTimeout,
    DriverProbeFailed,
    GuestError,
    GuestViewMismatch,
    PortInUse,
    QemuStartError,
    ToolMissing,
)
from ..image.build import ensure_image
from ..image.model import Image
from ..kernel.cmdline import merge_words
from ..kernel.prepare import PreparedKernel, prepare
from ..kernel.resolve import KernelSpec
from ..paths import cache_dir
from ..qemu.accel import ProbeGuest, resolve_accel
from ..qemu.backing import create_backing_files
from ..qemu.cmdline import BootMedia, build
from ..qemu.devices import iommu_cmdline
from ..qemu.machine import QemuMachine
from ..qemu.probe import Capabilities, probe
from ..qemu.share import Share
from ..spec.model import Topology
from ..util.rundir import RunDir
from ..util.timing import Phases
from .guest import Guest
from .debug import find_vmlinux
from .ports import reserve_port
from .share import mount_shares
from .tool import install_and_run, package_tar
from .treecheck import check_tree, inventory_argv, map_names

log = logging.getLogger(__name__)

STALL_SECONDS = 90.0  # no ready line by then: retry the boot once (see _Stalled)
NVME_IO_TIMEOUT = 10  # seconds; a faulting P2P command must not hang a run for 30 s
PORT_ATTEMPTS = 3
INVENTORY_SECONDS = 90.0  # shipping the guest tool and its first inventory, on a slow host


@dataclass(frozen=True)
class BootOptions:
    """How to boot, beyond what the topology says."""

    kernel: KernelSpec | None = None  # None: the image's own kernel
    accel: str | None = None  # override the topology's accel
    timeout: float = 180.0  # seconds from QEMU start to SSH
    keep: bool = False  # keep the run directory after shutdown
    extra_cmdline: tuple[str, ...] = ()
    check_tree: bool = True
    observe: bool = False  # set up the kernel's P2P tracing with the first inventory
    run_base: Path | None = None
    label: str | None = None
    gdb: bool = False  # QEMU's gdbstub on a locked free port; the kernel gets nokaslr
    shares: tuple[Share, ...] = ()  # host directories mounted in the guest (virtio-9p)


# A vIOMMU that remaps interrupts (the profile's ``remaps_x2apic``: intel) routes the timer
# through a remapped IO-APIC, and the kernel's boot-time check that the timer interrupt
# comes through waits a few ticks of wall time: under TCG on a loaded host the tick comes
# late and the guest panics ("timer doesn't work through Interrupt-remapped IO-APIC").  The
# check guards real boards' broken timer wiring, not a VM's: skip it.
NO_TIMER_CHECK = "no_timer_check"


def timer_words(topo: Topology) -> tuple[str, ...]:
    viommu = topo.profile.viommu(topo.iommu.model)
    return (NO_TIMER_CHECK,) if viommu is not None and viommu.remaps_x2apic else ()


def kernel_cmdline(topo: Topology, image_cmdline: tuple[str, ...] | list[str],
                   extra: tuple[str, ...] | list[str] = (), debug: bool = False) -> list[str]:
    """The guest kernel's command line: the image's words, the vIOMMU's, the testbed's,
    the topology's, then ``extra``; later ``key=value`` words replace earlier ones.
    ``debug`` (``--gdb``) adds ``nokaslr``: the kernel then runs at its link-time
    addresses, the ones of its vmlinux's symbols.

        >>> from testbed.spec import load_topology
        >>> kernel_cmdline(load_topology("switch-cmb"), ["quiet"], debug=True)[-1]
        'nokaslr'
    """
    words = [*image_cmdline, *iommu_cmdline(topo),
             *timer_words(topo),
             f"nvme_core.io_timeout={NVME_IO_TIMEOUT}", *topo.kernel_cmdline, *extra,
             *(["nokaslr"] if debug else [])]
    return merge_words(words)


def default_kernel(image: Image) -> PreparedKernel:
    """The image's own kernel, as a prepared kernel."""
    return PreparedKernel(kernel=image.kernel, initrd=image.initrd, cmdline=(), drives=(),
                          label="default", description=f"image kernel {image.kernel_release}",
                          release=image.kernel_release, p2pdma=image.p2pdma)


def _create_overlay(base: Path, overlay: Path) -> None:
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                        str(overlay)], check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ToolMissing("qemu-img", "qemu-utils") from None
    except subprocess.CalledProcessError as exc:
        raise BootError(f"qemu-img could not create the overlay: {exc.stderr.strip()}") from None


def boot(topo: Topology, image: Image | None = None, options: BootOptions = BootOptions(),
         caps: Capabilities | None = None) -> Guest:
    """Boot ``topo`` and return a :class:`Guest` with SSH ready and the tree checked
    (``caps``: the caller's probe of the topology's QEMU, asked now when not given)."""
    start = time.monotonic()
    phases = Phases()
    with phases.phase("prepare"):
        image = image or ensure_image(profile=topo.profile)
        kernel = prepare(options.kernel, image.initrd, topo.profile) if options.kernel else \
            default_kernel(image)
        caps = caps or probe(topo.machine.qemu)
        accel = resolve_accel(options.accel or topo.machine.accel, caps,
                              guest=ProbeGuest(image.kernel, image.initrd, tuple(image.cmdline),
                                               topo.profile))
        run = RunDir.create(options.label or topo.name, base=options.run_base, keep=options.keep)
    guest = Guest(topo, image, kernel, run, accel, options.timeout)
    guest.phases = phases
    guest.debug = options.gdb
    guest.shares = options.shares
    try:
        with phases.phase("prepare"):
            create_backing_files(topo, run.path)
            overlay = run / "boot.qcow2"
            _create_overlay(image.disk, overlay)
        cmdline = tuple(kernel_cmdline(topo, [*image.cmdline, *kernel.cmdline],
                                       options.extra_cmdline, debug=options.gdb))

        def launch(stall: float | None = None) -> None:
            _launch(guest, caps.path, overlay, cmdline, stall)

        try:
            launch(STALL_SECONDS if options.timeout > STALL_SECONDS else None)
        except _Stalled:
            logs = preserve_logs(run, topo.name)
            log.info("no progress after %.0f s (console kept in %s); booting the guest once "
                     "more", STALL_SECONDS, logs)
            guest.kill()
            overlay.unlink(missing_ok=True)
            _create_overlay(image.disk, overlay)
            launch()
        guest.boot_seconds = time.monotonic() - start
        log.info("SSH ready after %.1f s", guest.boot_seconds)

        def relaunch() -> None:
            launch()
            check_guest_view(guest, trace=options.observe)
            mount_shares(guest, options.shares)

        guest.relaunch = relaunch
        if options.check_tree:
            with phases.phase("tree check"):
                check_guest_view(guest, trace=options.observe)
            # the parts the guest timed itself: devices still settling, the probes' set-up
            for part, seconds in (guest.inventory.get("seconds") or {}).items():
                if isinstance(seconds, (int, float)):
                    phases.add(f"tree check: {part}", float(seconds))
        mount_shares(guest, options.shares)
        if options.gdb:
            guest.vmlinux = find_vmlinux(options.kernel, kernel.release)
        return guest
    except BaseException:
        guest.kill()
        run.cleanup()
        raise


class _Stalled(Exception):
    """No ready line and no failure on the console within STALL_SECONDS.  Seen now and
    then on loaded 2-core hosts: a TCG guest that stalls early (RCU stall, empty console)
    and boots fine when started again."""


def _launch(guest: Guest, binary: str, overlay: Path, cmdline: tuple[str, ...],
            stall: float | None = None) -> None:
    """Start QEMU for ``guest`` (retrying on a port clash) and wait for SSH."""
    start = time.monotonic()
    run = guest.run_dir
    for attempt in range(PORT_ATTEMPTS):
        lease = guest.lease = reserve_port()
        gdb = guest.gdb_lease = reserve_port() if guest.debug else None
        media = BootMedia(kernel=guest.kernel.kernel, initrd=guest.kernel.initrd,
                          cmdline=cmdline, disk=overlay, ssh_port=lease.port,
                          drives=guest.kernel.drives, gdb_port=gdb.port if gdb else None,
                          shares=guest.shares)
        guest.machine = QemuMachine(
            lambda qmp: build(guest.topology, binary, run.path, guest.accel.name, media=media,
                              qmp=qmp, console=run / "console.log"),
            run.path, name=f"{guest.topology.name} guest")
        guest.argv = guest.machine.argv
        try:
            with guest.phases.phase("qemu start"):
                guest.machine.launch()
            break
        except PortInUse:
            lease.release()
            if gdb is not None:
                gdb.release()
            if attempt == PORT_ATTEMPTS - 1:
                raise _fail(guest, BootFailed, "QEMU could not bind an SSH port "
                            f"{PORT_ATTEMPTS} times") from None
        except QemuStartError as exc:
            lease.release()
            if gdb is not None:
                gdb.release()
            logs = preserve_logs(run, guest.topology.name)
            raise BootFailed(f"QEMU did not start: {exc}\n(logs: {logs})", logs=logs,
                             argv=guest.argv) from None
    log.info("QEMU started (%s: %s); waiting for SSH on port %d", guest.accel.name,
             guest.accel.reason, guest.port)
    from .ssh import GuestSSH  # paramiko takes ~0.3 s to import: do it while QEMU boots
    guest.ssh = GuestSSH("127.0.0.1", guest.port, guest.image.client_key,
                         guest.image.host_public_key)
    _wait_for_ssh(guest, start + guest.timeout, start + stall if stall else None)


def preserve_logs(run: RunDir, label: str) -> Path:
    """Copy the console and QEMU logs somewhere that outlives the run directory."""
    dest = cache_dir() / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{run.path.name}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("console.log", "qemu.log"):
        if (run / name).exists():
            shutil.copy2(run / name, dest / name)
    return dest


def _fail(guest: Guest, cls: type[BootError], what: str, **fields: object) -> BootError:
    logs = preserve_logs(guest.run_dir, guest.topology.name)
    detail = (f"\n--- last console lines ---\n{guest.console.tail(25)}\n"
              f"--- full console log: {logs / 'console.log'}")
    if cls is BootTimeout:
        return BootTimeout(guest.topology.name, what, logs=logs, argv=guest.argv, detail=detail)
    return cls(f"{guest.topology.name}: {what}{detail}", logs=logs, argv=guest.argv,
               **fields)


def _wait_for_ssh(guest: Guest, deadline: float, stall_deadline: float | None = None) -> None:
    machine = guest.machine
    assert machine is not None and guest.ssh is not None

    def alive() -> None:
        if not machine.is_running():
            status = machine.wait(1)
            failure = guest.console.failure()
            stderr = machine.stderr_tail(5)
            raise _fail(guest, BootFailed, f"QEMU exited (status {status}) before SSH came up"
                        + (f": {failure.line}" if failure else "")
                        + (f"\n--- QEMU stderr ---\n{stderr}" if stderr else ""),
                        line=failure.line if failure else None)
        failure = guest.console.failure()
        if failure is not None:
            cls = DriverProbeFailed if failure.kind == "driver-probe" else BootFailed
            what = ("a driver failed to probe a device the topology needs"
                    if failure.kind == "driver-probe" else "the guest failed to boot")
            raise _fail(guest, cls, f"{what}: {failure.line}", line=failure.line)

    marker = guest.image.ready_marker
    # Connecting before the guest's network is up stalls in QEMU's user networking:
    # wait for the guest to say sshd listens, then connect once.
    waiting = time.monotonic()
    while marker not in guest.console.text():
        alive()
        if stall_deadline is not None and time.monotonic() > stall_deadline:
            raise _Stalled()
        if time.monotonic() > deadline:
            raise _fail(guest, BootTimeout, f"the guest never printed {marker!r} within the "
                        "boot timeout")
        time.sleep(0.02)
    guest.phases.add("kernel to ready", time.monotonic() - waiting)
    try:
        with guest.phases.phase("ssh connect"):
            guest.ssh.wait(deadline, alive)
    except TimeoutError as exc:
        raise _fail(guest, BootTimeout, f"no SSH within the boot timeout ({exc})") from None


def check_guest_view(guest: Guest, trace: bool = False) -> None:
    """Ask the guest for its inventory and check it shows the topology (``trace``: set the
    kernel's P2P tracing up in the same guest process, which saves an interpreter start)."""
    topo = guest.topology
    # the guest tool is shipped here, in the same command as its first inventory
    try:
        res = guest.run(install_and_run(inventory_argv(topo, wait=30)
                                        + (["--trace"] if trace else [])),
                        timeout=INVENTORY_SECONDS, stdin=package_tar())
    except GuestError as exc:
        raise _fail(guest, BootFailed, f"the guest tool could not be run: {exc}") from None
    if res.timed_out:  # a guest too slow (a loaded host): a matrix boots it once more
        raise _fail(guest, BootTimeout, f"the guest tool's first inventory did not finish "
                    f"within {INVENTORY_SECONDS:.0f} s")
    if not res.ok:
        raise _fail(guest, GuestViewMismatch, f"the guest inventory failed: {res.describe()}")
    try:
        guest.inventory = json.loads(res.stdout)
    except ValueError:
        raise _fail(guest, GuestViewMismatch, "the guest inventory is not JSON: "
                    f"{res.stdout[:300]!r}") from None
    diffs = check_tree(topo, guest.inventory)
    if diffs:
        raise _fail(guest, GuestViewMismatch, "the guest does not see the topology:\n  "
                    + "\n  ".join(diffs), diffs=diffs)
    guest.names = map_names(topo, guest.inventory)[0]
