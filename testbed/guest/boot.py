"""Boot a topology: run directory, overlay, QEMU, SSH, and the guest-side check; the
:class:`Guest` is built once, complete, at the end.

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
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import (BootError, BootFailed, BootTimeout, GuestError, GuestViewMismatch,
                      ToolMissing)
from ..image.build import ensure_image
from ..image.model import Image
from ..kernel.cmdline import merge_words
from ..kernel.prepare import PreparedKernel, prepare
from ..kernel.resolve import KernelSpec
from ..qemu.accel import ProbeGuest, resolve_accel
from ..qemu.backing import create_backing_files
from ..qemu.devices import iommu_cmdline
from ..qemu.probe import Capabilities, probe_for
from ..qemu.share import Share
from ..spec.model import Topology
from ..util.rundir import RunDir
from ..util.timing import Phases
from .debug import find_vmlinux
from .guest import Guest
from .launch import BootLog, Launch, LaunchPlan, Stalled, preserve_logs, start
from .protocol import Seen
from .share import mount_shares
from .tool import compile_in_background, has_bytecode, install_and_run, package_tar
from .treecheck import check_tree, inventory_argv, map_names

log = logging.getLogger(__name__)

# No ready line by then: boot once more (see launch.Stalled).  A guest that boots reaches it
# in 5-10 s of a 2-core host running two guests (CI); a stalled one never does, and every
# CI run here lost 90 s of one worker to one (an RCU stall, or no console at all).  A loaded
# host boots slowly without stalling, so the limit grows with the load beyond two runnable
# tasks per core (up to STALL_MAX: at a load of 30 on 2 cores boots took 40-70 s).
STALL_SECONDS = 45.0
STALL_MAX = 120.0
NVME_IO_TIMEOUT = 10  # seconds; a faulting P2P command must not hang a run for 30 s
INVENTORY_SECONDS = 90.0  # shipping the guest tool and its first inventory, on a slow host

__all__ = ["BootOptions", "boot", "default_kernel", "kernel_cmdline", "preserve_logs"]


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
    monitor_dir: Path | None = None  # a second QMP monitor here, for later commands (detached)


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


def stall_seconds(load: float | None = None, cores: int | None = None) -> float:
    """How long a boot may show no ready line before it counts as stalled: STALL_SECONDS
    up to a load of two runnable tasks per core, longer in proportion beyond, at most
    STALL_MAX (``load``: the 1-minute load average, ``cores``: the host's; both asked of
    the host when not given).

        >>> stall_seconds(load=3.0, cores=2), stall_seconds(load=8.0, cores=2)
        (45.0, 90.0)
        >>> stall_seconds(load=30.0, cores=2)
        120.0
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    cores = cores or os.cpu_count() or 1
    return min(STALL_MAX, STALL_SECONDS * max(1.0, load / cores / 2))


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
    begin = time.monotonic()
    phases = Phases()
    with phases.phase("prepare"):
        image = image or ensure_image(profile=topo.profile)
        kernel = prepare(options.kernel, image.initrd, topo.profile) if options.kernel else \
            default_kernel(image)
        caps = caps or probe_for(topo)
        accel = resolve_accel(options.accel or topo.machine.accel, caps,
                              guest=ProbeGuest(image.kernel, image.initrd, tuple(image.cmdline),
                                               topo.profile))
        run = RunDir.create(options.label or topo.name, base=options.run_base, keep=options.keep)
    launch: Launch | None = None
    try:
        with phases.phase("prepare"):
            create_backing_files(topo, run.path)
            overlay = run / "boot.qcow2"
            _create_overlay(image.disk, overlay)
        plan = LaunchPlan(topo, caps.runner, accel.name, run, image, kernel,
                          tuple(kernel_cmdline(topo, [*image.cmdline, *kernel.cmdline],
                                               options.extra_cmdline, debug=options.gdb)),
                          overlay, options.timeout, gdb=options.gdb, shares=options.shares,
                          monitor_dir=options.monitor_dir)
        log.info("starting QEMU (%s: %s)", accel.name, accel.reason)
        try:
            stall = stall_seconds()
            launch = start(plan, phases, stall if options.timeout > stall else None)
        except Stalled as exc:
            logs = preserve_logs(run, topo.name)
            log.warning("%s (stall limit %.0f s; console kept in %s); booting the guest once "
                        "more", exc, stall, logs)
            overlay.unlink(missing_ok=True)
            _create_overlay(image.disk, overlay)
            launch = start(plan, phases)
        boot_seconds = time.monotonic() - begin
        log.info("SSH ready after %.1f s", boot_seconds)
        seen = Seen({}, {})
        if options.check_tree:
            with phases.phase("tree check"):
                seen = first_inventory(launch, plan, options.observe)
            # the parts the guest timed itself: devices still settling, the probes' set-up
            for part, seconds in (seen.inventory.get("seconds") or {}).items():
                if isinstance(seconds, (int, float)):
                    phases.add(f"tree check: {part}", float(seconds))
        mount_shares(launch.ssh, options.shares, launch.argv)

        def relaunch() -> tuple[Launch, Seen]:
            again = start(plan, Phases())
            try:
                seen = first_inventory(again, plan, options.observe)
                mount_shares(again.ssh, options.shares, again.argv)
            except BaseException:
                again.kill()
                raise
            return again, seen

        vmlinux = find_vmlinux(options.kernel, kernel.release) if options.gdb else None
        return Guest(topo, launch, seen, image=image, kernel=kernel, run=run, accel=accel,
                     boot_seconds=boot_seconds, phases=phases, shares=options.shares,
                     debug=options.gdb, vmlinux=vmlinux, relaunch=relaunch)
    except BaseException:
        if launch is not None:
            launch.kill()
        run.cleanup()
        raise


def first_inventory(launch: Launch, plan: LaunchPlan, trace: bool = False) -> Seen:
    """Ship the guest tool, ask for its inventory and check it shows the topology
    (``trace``: set the kernel's P2P tracing up in the same guest process, which saves an
    interpreter start)."""
    topo, blog = plan.topology, plan.log
    try:
        res = launch.ssh.run(install_and_run(inventory_argv(topo, wait=30)
                                             + (["--trace"] if trace else [])),
                             timeout=INVENTORY_SECONDS, stdin=package_tar())
    except GuestError as exc:
        raise _fail(blog, launch, BootFailed, f"the guest tool could not be run: {exc}") \
            from None
    if res.timed_out:  # a guest too slow (a loaded host): a matrix boots it once more
        raise _fail(blog, launch, BootTimeout, f"the guest tool's first inventory did not "
                    f"finish within {INVENTORY_SECONDS:.0f} s")
    if not res.ok:
        raise _fail(blog, launch, GuestViewMismatch,
                    f"the guest inventory failed: {res.describe()}")
    try:
        inventory = json.loads(res.stdout)
    except ValueError:
        raise _fail(blog, launch, GuestViewMismatch, "the guest inventory is not JSON: "
                    f"{res.stdout[:300]!r}") from None
    diffs = check_tree(topo, inventory)
    if diffs:
        raise _fail(blog, launch, GuestViewMismatch, "the guest does not see the topology:\n  "
                    + "\n  ".join(diffs), diffs=diffs)
    if not has_bytecode():  # the host has no bytecode of this tool yet: let the guest make it
        launch.ssh.fire(compile_in_background())
    return Seen(inventory, map_names(topo, inventory)[0])


def _fail(blog: BootLog, launch: Launch, cls: type[BootError], what: str,
          **fields: object) -> BootError:
    return blog.fail(cls, what, launch.argv, **fields)
