"""A running guest: commands over SSH, files, dmesg, and (for a guest this process
booted) its QEMU, QMP, its run directory and its shutdown.

    >>> with boot(load_topology("switch-cmb")) as guest:     # doctest: +SKIP
    ...     guest.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout
    '67108864\\n67108864\\n'

:class:`SshGuest` holds what every guest offers (the protocols of
:mod:`testbed.guest.protocol`); :class:`Guest` adds the QEMU process, QMP and the
lifecycle.  Both are built whole: the boot (:mod:`testbed.guest.boot`) or the attach
gathers everything first and constructs the guest once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import GuestError
from ..image.model import Image
from ..kernel.prepare import PreparedKernel
from ..qemu.accel import Accel
from ..qemu.cmdline import backing_files, run_dir_files
from ..qemu.machine import QemuMachine, QmpEvent
from ..qemu.script import quote, to_script
from ..qemu.share import Share
from ..spec.model import Topology
from ..util.rundir import RunDir
from ..util.timing import Phases
from .console import Console
from .launch import Launch
from .protocol import Seen
from .tool import collect_bytecode
from .result import CommandResult

if TYPE_CHECKING:  # paramiko is slow to import: boot imports it while QEMU starts
    from .ssh import GuestSSH

log = logging.getLogger(__name__)


class SshGuest:
    """Commands, files and dmesg of a guest reached over SSH."""

    def __init__(self, topology: Topology, ssh: "GuestSSH | None", console: Console,
                 run_path: Path, seen: Seen, *, accel: Accel, boot_seconds: float = 0.0,
                 kernel_description: str | None = None, phases: Phases | None = None):
        self.topology = topology
        self._conn = ssh
        self.console = console
        self.run_path = run_path
        self.accel = accel
        self.boot_seconds = boot_seconds
        self.kernel_description = kernel_description
        self.phases = phases or Phases()  # where the boot's time went
        self.inventory: dict[str, Any] = seen.inventory
        self.names: dict[str, str] = seen.names  # spec name -> guest BDF
        self._dmesg_mark = 0

    @property
    def ssh(self) -> "GuestSSH | None":
        return self._conn

    @property
    def argv(self) -> list[str]:
        """The QEMU command line, when this process started QEMU."""
        return []

    def update(self, seen: Seen) -> None:
        """What a fresh inventory showed (after a hot-plug, a restart)."""
        self.inventory = seen.inventory
        self.names = seen.names

    # -- commands ------------------------------------------------------------------------
    def _ssh(self) -> "GuestSSH":
        if self.ssh is None:
            raise GuestError(f"{self.topology.name}: the guest is not connected")
        return self.ssh

    def run(self, command: str | list[str], timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command``; the result has exit_status, stdout, stderr (never raises on a
        non-zero exit)."""
        return self._ssh().run(command, timeout=timeout, stdin=stdin)

    def check(self, command: str | list[str], timeout: float = 60.0,
              stdin: bytes | None = None) -> CommandResult:
        """Run ``command``; GuestError with its output unless it exits 0."""
        res = self.run(command, timeout=timeout, stdin=stdin)
        if not res.ok:
            raise GuestError(f"guest command failed: {res.describe()}")
        return res

    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None:
        """Copy a file into the guest; its mode is kept unless ``mode`` says otherwise."""
        if mode is None:
            try:
                mode = Path(local).stat().st_mode & 0o7777
            except OSError:
                mode = None
        self._ssh().put(local, remote, mode)

    def get(self, remote: str, local: str | Path) -> None:
        self._ssh().get(remote, local)

    def dmesg(self) -> str:
        return self.check(["dmesg"], timeout=30).stdout

    def dmesg_delta(self) -> str:
        """dmesg lines since the previous call."""
        lines = self.dmesg().splitlines()
        new = lines[self._dmesg_mark:]
        self._dmesg_mark = len(lines)
        return "\n".join(new)

    def reset_dmesg_mark(self) -> None:
        self._dmesg_mark = 0

    # -- what only some guests can do ----------------------------------------------------
    @property
    def can_restart(self) -> bool:
        return False

    @property
    def qemu(self) -> QemuMachine | None:
        return None

    def restart(self) -> float:
        raise GuestError(f"{self.topology.name}: this guest cannot be restarted from here")

    def script(self) -> str | None:
        """The QEMU command line as a runnable script, when this process started QEMU."""
        return None

    def shutdown(self, graceful: bool = True) -> int | None:
        if self._conn is not None:
            self._conn.close()
        return None


class Guest(SshGuest):
    """A guest this process booted: use as a context manager or call shutdown()."""

    def __init__(self, topology: Topology, launch: Launch, seen: Seen, *, image: Image,
                 kernel: PreparedKernel, run: RunDir, accel: Accel, boot_seconds: float,
                 phases: Phases, shares: tuple[Share, ...] = (), debug: bool = False,
                 vmlinux: Path | None = None,
                 relaunch: Callable[[], tuple[Launch, Seen]] | None = None):
        super().__init__(topology, launch.ssh, Console(run / "console.log"), run.path, seen,
                         accel=accel, boot_seconds=boot_seconds,
                         kernel_description=kernel.description, phases=phases)
        self.image = image
        self.kernel = kernel
        self.run_dir = run
        self.shares = shares
        self.debug = debug  # --gdb: QEMU's gdbstub on gdb_port, the kernel with nokaslr
        self.vmlinux = vmlinux  # the running kernel's symbols, when found
        self._launch = launch
        self._relaunch = relaunch  # starts QEMU again for this guest (restart)

    # -- its QEMU ------------------------------------------------------------------------
    @property
    def ssh(self) -> "GuestSSH | None":
        return self._launch.ssh

    @property
    def machine(self) -> QemuMachine:
        return self._launch.machine

    @property
    def argv(self) -> list[str]:
        return self._launch.argv

    @property
    def port(self) -> int:
        return self._launch.port

    @property
    def gdb_port(self) -> int | None:
        return self._launch.gdb_port

    @property
    def qemu(self) -> QemuMachine | None:
        return self._launch.machine

    @property
    def can_restart(self) -> bool:
        return self._relaunch is not None

    # -- QMP (testbed.guest.protocol.Qmp) --------------------------------------------------
    def qmp(self, command: str, **args: Any) -> Any:
        return self._launch.machine.qmp(command, **args)

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Callable[[QmpEvent], bool] | None = None) -> QmpEvent | None:
        return self._launch.machine.event_wait(name, timeout, match)

    def clear_events(self) -> None:
        self._launch.machine.clear_events()

    def ssh_command(self) -> list[str]:
        """An OpenSSH command line that reaches this guest (for people)."""
        known = self.run_dir / "known_hosts"
        if not known.exists():
            known.write_text(f"[127.0.0.1]:{self.port} {self.image.host_public_key}\n")
        return ["ssh", "-p", str(self.port), "-i", str(self.image.client_key),
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                "-o", "LogLevel=ERROR", "root@127.0.0.1"]

    def script(self) -> str | None:
        """The exact QEMU command line as a runnable script: it recreates the run
        directory's files (sparse backing images, the boot overlay) when missing."""
        if not self.argv:
            return None
        rd = str(self.run_dir.path)
        prelude = [f"# {self.topology.name}: the guest as testbed booted it", 'mkdir -p "$RUN_DIR"']
        extra = [self.run_dir / "boot.qcow2", self.run_dir / "console.log",
                 self.machine.qmp_path]
        owned = run_dir_files(self.topology, self.run_dir.path, extra)
        for bf in backing_files(self.topology, self.run_dir.path):
            if bf.user_file:
                continue  # the user's own file: never created or truncated by the script
            q = quote(str(bf.path), rd, owned)
            prelude.append(f"[ -e {q} ] || truncate -s {bf.size} {q}")
        overlay = quote(str(self.run_dir / "boot.qcow2"), rd, owned)
        prelude.append(f"[ -e {overlay} ] || qemu-img create -q -f qcow2 -F qcow2 -b "
                       f"{quote(str(self.image.disk))} {overlay}")
        return to_script(self.argv, run_dir=rd, prelude=prelude, owned=owned)

    # -- shutdown ------------------------------------------------------------------------
    def poweroff_in_guest(self) -> None:
        self._launch.ssh.fire("sync; busybox poweroff -f || poweroff -f")

    def keeps_anything(self) -> bool:
        """Does anything the guest writes outlive it?  A file the user named (namespace,
        PMR), a writable share, a run directory kept (--keep).  Otherwise everything it
        could write is throwaway (the overlay, the testbed's own images) and a shutdown
        need not wait for the guest to flush and power off."""
        return (self.run_dir.keep or any(s.writable for s in self.shares)
                or any(bf.user_file for bf in backing_files(self.topology, self.run_dir.path)))

    def stop_qemu(self, graceful: bool = True) -> int | None:
        """Stop QEMU (graceful, then hard) but keep the run directory."""
        try:
            return self.machine.shutdown(self.poweroff_in_guest if graceful else None,
                                         graceful_timeout=10.0)
        finally:
            self.kill()

    def kill(self) -> None:
        self._launch.kill()

    def restart(self) -> float:
        """Power the guest off and boot it again from the same run directory (same
        overlay, namespace images and PMR files); returns the boot seconds."""
        if self._relaunch is None:
            return super().restart()
        self.stop_qemu()
        start = time.monotonic()
        self._launch, seen = self._relaunch()
        self.update(seen)
        self.reset_dmesg_mark()
        return time.monotonic() - start

    def shutdown(self, graceful: bool = True) -> int | None:
        """Stop QEMU and remove the run directory.  The guest powers off cleanly first
        only when something it wrote is kept (:meth:`keeps_anything`); otherwise QEMU
        quits at once (restart() always powers off cleanly: the overlay is booted again)."""
        if graceful and self.inventory and self._launch.machine.is_running():
            collect_bytecode(self._launch.ssh)  # once per tool version: later boots skip compiling
        try:
            status = self.stop_qemu(graceful and self.keeps_anything())
        finally:
            self.run_dir.cleanup()
        return status

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
