"""Start one QEMU process for a guest and wait until its SSH answers: what a boot (and a
restart) does each time, returned whole as a :class:`Launch`.

    plan = LaunchPlan(...)          # fixed for the guest's life: machine, kernel, overlay
    launch = start(plan)            # QEMU running, SSH connected (BootError otherwise)

Every failure is a :class:`~testbed.errors.BootError` that carries the console tail, the
directory the logs were kept in and the QEMU argv (:class:`BootLog`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import (BootError, BootFailed, BootTimeout, DriverProbeFailed, PortInUse,
                      QemuStartError)
from ..image.model import Image
from ..kernel.prepare import PreparedKernel
from ..paths import cache_dir
from ..qemu.binary import Qemu
from ..qemu.cmdline import BootMedia, build
from ..qemu.machine import QemuMachine, QmpSocket
from ..qemu.share import Share
from ..spec.model import Topology
from ..util.rundir import RunDir
from ..util.timing import Phases
from .console import Console
from .ports import PortLease, reserve_port

if TYPE_CHECKING:  # paramiko is slow to import: a launch imports it while QEMU starts
    from .ssh import GuestSSH

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3
MONITOR_SOCKET = "monitor.sock"  # LaunchPlan.monitor_dir's second QMP monitor


class Stalled(Exception):
    """No ready line and no failure on the console within the stall time, or (under TCG)
    an int3 Oops of text poking (console.INT3).  Seen now and then on loaded 2-core hosts:
    a TCG guest that stalls or traps early and boots fine when started again.  The
    message says which."""


def preserve_logs(run: RunDir, label: str) -> Path:
    """Copy the console and QEMU logs somewhere that outlives the run directory."""
    dest = cache_dir() / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{run.path.name}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("console.log", "qemu.log"):
        if (run / name).exists():
            shutil.copy2(run / name, dest / name)
    return dest


@dataclass(frozen=True)
class BootLog:
    """Where a boot's failures point: its logs are kept, its console tail quoted."""

    run: RunDir
    label: str  # the topology's name
    console: Console

    def fail(self, cls: type[BootError], what: str, argv: list[str] | None,
             **fields: object) -> BootError:
        logs = preserve_logs(self.run, self.label)
        detail = (f"\n--- last console lines ---\n{self.console.tail(25)}\n"
                  f"--- full console log: {logs / 'console.log'}")
        if cls is BootTimeout:
            return BootTimeout(self.label, what, logs=logs, argv=argv, detail=detail)
        return cls(f"{self.label}: {what}{detail}", logs=logs, argv=argv, **fields)


@dataclass(frozen=True)
class LaunchPlan:
    """What every launch of one guest uses: fixed for the guest's life."""

    topology: Topology
    binary: Qemu         # the probed QEMU (program, loader, -L, environment)
    accel: str           # tcg | kvm (resolved)
    run: RunDir
    image: Image         # its SSH keys and ready marker
    kernel: PreparedKernel
    cmdline: tuple[str, ...]
    overlay: Path        # the per-run boot disk
    timeout: float       # seconds from QEMU start to SSH
    gdb: bool = False    # QEMU's gdbstub on a locked free port
    shares: tuple[Share, ...] = ()
    monitor_dir: Path | None = None  # a second QMP monitor's directory (later commands)

    @property
    def log(self) -> BootLog:
        return BootLog(self.run, self.topology.name, Console(self.run / "console.log"))


@dataclass(frozen=True)
class Launch:
    """One running QEMU of a guest and the SSH connection to it."""

    machine: QemuMachine
    ssh: "GuestSSH"
    lease: PortLease                # the SSH port, held while QEMU runs
    gdb_lease: PortLease | None     # the gdbstub's port (--gdb)

    @property
    def argv(self) -> list[str]:
        return self.machine.argv

    @property
    def port(self) -> int:
        return self.lease.port

    @property
    def gdb_port(self) -> int | None:
        return self.gdb_lease.port if self.gdb_lease is not None else None

    def kill(self) -> None:
        """SIGKILL QEMU, close SSH, release the ports (idempotent)."""
        self.machine.kill()
        self.ssh.close()
        self.lease.release()
        if self.gdb_lease is not None:
            self.gdb_lease.release()


def start(plan: LaunchPlan, phases: Phases, stall: float | None = None) -> Launch:
    """Start QEMU (another port when one clashes) and wait for SSH; :class:`Stalled` when
    nothing happens within ``stall`` seconds (the caller boots once more)."""
    begin = time.monotonic()
    run, topo, blog = plan.run, plan.topology, plan.log
    for attempt in range(PORT_ATTEMPTS):
        lease = reserve_port()
        gdb = reserve_port() if plan.gdb else None
        media = BootMedia(kernel=plan.kernel.kernel, initrd=plan.kernel.initrd,
                          cmdline=plan.cmdline, disk=plan.overlay, ssh_port=lease.port,
                          drives=plan.kernel.drives, gdb_port=gdb.port if gdb else None,
                          shares=plan.shares)
        sock = QmpSocket.in_dir(run.path)
        second = (QmpSocket.in_dir(plan.monitor_dir, MONITOR_SOCKET)
                  if plan.monitor_dir is not None else None)
        machine = QemuMachine(build(topo, plan.binary, run.path, plan.accel, media=media,
                                    qmp=sock.path, console=run / "console.log",
                                    monitor=second.path if second else None),
                              run.path, sock, name=f"{topo.name} guest", monitor=second,
                              env=plan.binary.environ())
        try:
            with phases.phase("qemu start"):
                machine.launch()
            break
        except BaseException as exc:
            lease.release()
            if gdb is not None:
                gdb.release()
            if isinstance(exc, PortInUse) and attempt < PORT_ATTEMPTS - 1:
                continue  # another program took a port: take others
            if isinstance(exc, PortInUse):
                raise blog.fail(BootFailed, "QEMU could not bind an SSH port "
                                f"{PORT_ATTEMPTS} times", machine.argv) from None
            if isinstance(exc, QemuStartError):
                logs = preserve_logs(run, topo.name)
                raise BootFailed(f"QEMU did not start: {exc}\n(logs: {logs})", logs=logs,
                                 argv=machine.argv) from None
            raise
    log.info("QEMU started (%s); waiting for SSH on port %d", plan.accel, lease.port)
    from .ssh import GuestSSH  # paramiko takes ~0.3 s to import: do it while QEMU boots
    launch = Launch(machine, GuestSSH("127.0.0.1", lease.port, plan.image.client_key,
                                      plan.image.host_public_key), lease, gdb)
    try:
        _wait_for_ssh(launch, plan, phases, begin + plan.timeout,
                      begin + stall if stall else None)
    except BaseException:
        launch.kill()
        raise
    return launch


def _wait_for_ssh(launch: Launch, plan: LaunchPlan, phases: Phases, deadline: float,
                  stall_deadline: float | None) -> None:
    machine, blog = launch.machine, plan.log
    console = blog.console

    def alive() -> None:
        running = machine.is_running()
        failure = console.failure()
        if failure is not None and failure.kind == "int3" and plan.accel == "tcg" \
                and stall_deadline is not None:
            raise Stalled(f"the guest trapped on a stale int3 of text poking under TCG "
                          f"({failure.line})")
        if not running:
            status = machine.wait(1)
            failure = console.failure()
            stderr = machine.stderr_tail(5)
            raise blog.fail(BootFailed, f"QEMU exited (status {status}) before SSH came up"
                            + (f": {failure.line}" if failure else "")
                            + (f"\n--- QEMU stderr ---\n{stderr}" if stderr else ""),
                            launch.argv, line=failure.line if failure else None)
        if failure is not None:
            cls = DriverProbeFailed if failure.kind == "driver-probe" else BootFailed
            what = ("a driver failed to probe a device the topology needs"
                    if failure.kind == "driver-probe" else "the guest failed to boot")
            raise blog.fail(cls, f"{what}: {failure.line}", launch.argv, line=failure.line)

    marker = plan.image.ready_marker
    # Connecting before the guest's network is up stalls in QEMU's user networking:
    # wait for the guest to say sshd listens, then connect once.
    waiting = time.monotonic()
    while marker not in console.text():
        alive()
        if stall_deadline is not None and time.monotonic() > stall_deadline:
            raise Stalled("no ready line and no failure within the stall time")
        if time.monotonic() > deadline:
            raise blog.fail(BootTimeout, f"the guest never printed {marker!r} within the "
                            "boot timeout", launch.argv)
        time.sleep(0.02)
    phases.add("kernel to ready", time.monotonic() - waiting)
    try:
        with phases.phase("ssh connect"):
            launch.ssh.wait(deadline, alive)
    except TimeoutError as exc:
        raise blog.fail(BootTimeout, f"no SSH within the boot timeout ({exc})",
                        launch.argv) from None
