"""A running guest: commands over SSH, files, dmesg, and (for a guest this process
booted) its QEMU, its run directory and its shutdown.

    >>> with boot(load_topology("switch-cmb")) as guest:     # doctest: +SKIP
    ...     guest.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout
    '67108864\\n67108864\\n'

:class:`SshGuest` holds what every guest offers (it is what
:class:`~testbed.guest.protocol.GuestLike` describes); :class:`Guest` adds the QEMU
process and its lifecycle.  Booting is :mod:`testbed.guest.boot`'s job.
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
from ..qemu.machine import QemuMachine
from ..qemu.script import quote, to_script
from ..qemu.share import Share
from ..spec.model import Topology
from ..util.rundir import RunDir
from ..util.timing import Phases
from .console import Console
from .ports import PortLease
from .result import CommandResult

if TYPE_CHECKING:  # paramiko is slow to import: boot imports it while QEMU starts
    from .ssh import GuestSSH

log = logging.getLogger(__name__)


class SshGuest:
    """Commands, files and dmesg of a guest reached over SSH."""

    def __init__(self, topology: Topology, ssh: "GuestSSH | None", console: Console,
                 run_path: Path):
        self.topology = topology
        self.ssh = ssh
        self.console = console
        self.run_path = run_path
        self.boot_seconds: float = 0.0
        self.inventory: dict[str, Any] = {}
        self.names: dict[str, str] = {}  # spec name -> guest BDF
        self.accel = Accel("unknown", "not booted by this process")
        self.kernel_description: str | None = None
        self.argv: list[str] = []  # the QEMU command line, when this process started it
        self.phases = Phases()  # where the boot's time went
        self._dmesg_mark = 0

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
        if self.ssh is not None:
            self.ssh.close()
        return None


class Guest(SshGuest):
    """A guest this process booted: use as a context manager or call shutdown()."""

    def __init__(self, topology: Topology, image: Image, kernel: PreparedKernel, run: RunDir,
                 accel: Accel, timeout: float):
        super().__init__(topology, None, Console(run / "console.log"), run.path)
        self.image = image
        self.kernel = kernel
        self.kernel_description = kernel.description
        self.run_dir = run
        self.accel = accel
        self.timeout = timeout
        self.machine: QemuMachine | None = None
        self.lease: PortLease | None = None
        self.debug = False  # --gdb: QEMU's gdbstub on gdb_port, the kernel with nokaslr
        self.gdb_lease: PortLease | None = None
        self.vmlinux: Path | None = None  # the running kernel's symbols, when found
        self.shares: tuple[Share, ...] = ()
        # set by the boot: starts QEMU again for this guest (used by restart)
        self.relaunch: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        assert self.lease is not None
        return self.lease.port

    @property
    def gdb_port(self) -> int | None:
        return self.gdb_lease.port if self.gdb_lease is not None else None

    @property
    def qemu(self) -> QemuMachine | None:
        return self.machine

    @property
    def can_restart(self) -> bool:
        return self.relaunch is not None

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
        extra = [self.run_dir / "boot.qcow2", self.run_dir / "console.log"]
        if self.machine is not None:
            extra.append(self.machine.qmp_path)
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
        if self.ssh is not None:
            self.ssh.fire("sync; busybox poweroff -f || poweroff -f")

    def keeps_anything(self) -> bool:
        """Does anything the guest writes outlive it?  A file the user named (namespace,
        PMR), a writable share, a run directory kept (--keep).  Otherwise everything it
        could write is throwaway (the overlay, the testbed's own images) and a shutdown
        need not wait for the guest to flush and power off."""
        return (self.run_dir.keep or any(s.writable for s in self.shares)
                or any(bf.user_file for bf in backing_files(self.topology, self.run_dir.path)))

    def stop_qemu(self, graceful: bool = True) -> int | None:
        """Stop QEMU (graceful, then hard) but keep the run directory."""
        status = None
        try:
            if self.machine is not None:
                status = self.machine.shutdown(self.poweroff_in_guest if graceful else None,
                                               graceful_timeout=10.0)
        finally:
            self.kill()
        return status

    def kill(self) -> None:
        if self.machine is not None:
            self.machine.kill()
        if self.ssh is not None:
            self.ssh.close()
        if self.lease is not None:
            self.lease.release()
        if self.gdb_lease is not None:
            self.gdb_lease.release()

    def restart(self) -> float:
        """Power the guest off and boot it again from the same run directory (same
        overlay, namespace images and PMR files); returns the boot seconds."""
        if self.relaunch is None:
            return super().restart()
        self.stop_qemu()
        start = time.monotonic()
        self.relaunch()
        self.reset_dmesg_mark()
        return time.monotonic() - start

    def shutdown(self, graceful: bool = True) -> int | None:
        """Stop QEMU and remove the run directory.  The guest powers off cleanly first
        only when something it wrote is kept (:meth:`keeps_anything`); otherwise QEMU
        quits at once (restart() always powers off cleanly: the overlay is booted again)."""
        try:
            status = self.stop_qemu(graceful and self.keeps_anything())
        finally:
            self.run_dir.cleanup()
        return status

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
