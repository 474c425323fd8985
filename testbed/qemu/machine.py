"""One QEMU process: launch, QMP, and a shutdown that always cleans up.

Modelled on QEMUMachine (python/qemu/machine/machine.py): ``launch()`` starts
QEMU and connects QMP, ``shutdown()`` tries the graceful way first and falls
back to QMP ``quit`` and then SIGKILL.  QEMU never outlives its orchestrator:
the child asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), and every live machine is shut down on exit.

The command line comes from :mod:`testbed.qemu.cmdline`, built whole before the
machine: its QMP socket is a :class:`QmpSocket` chosen first (a short private
directory when the run directory's path would not fit a unix socket address), which
the machine then owns and removes.  Like QEMUMachine, the machine queues the QMP
events nobody waited for yet, and subclasses may hook into launch and shutdown
(:meth:`QemuMachine.pre_launch`, :meth:`post_launch`, :meth:`post_shutdown`).

    >>> sock = QmpSocket.in_dir(Path("/tmp/r"))                        # doctest: +SKIP
    >>> vm = QemuMachine(["qemu-system-x86_64", "-machine", "q35", "-S",
    ...                   "-qmp", f"unix:{sock.path},server=on,wait=off"],
    ...                  Path("/tmp/r"), sock)                         # doctest: +SKIP
    >>> with vm:                                                       # doctest: +SKIP
    ...     vm.query_status()
    'prelaunch'
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import PortInUse, QemuError, QemuStartError
from .monitor import Monitor, QmpEvent

if TYPE_CHECKING:  # qemu.qmp (asyncio) takes ~0.1 s to import: done while QEMU starts
    from qemu.qmp.legacy import QEMUMonitorProtocol

__all__ = ["QemuMachine", "QmpEvent", "QmpLike", "QmpSocket"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
UNIX_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes including the NUL; keep a margin
_LIVE: "weakref.WeakSet[QemuMachine]" = weakref.WeakSet()
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()  # a terminal's Ctrl-C goes to the orchestrator, which shuts QEMU down
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_all() -> None:
    for vm in list(_LIVE):
        vm.kill()


atexit.register(_kill_all)


@runtime_checkable
class QmpLike(Protocol):
    """What code that only talks QMP needs of a machine (a QemuMachine, a Guest this
    process booted, one day an attached guest through its supervisor)."""

    def qmp(self, command: str, **args: Any) -> Any: ...

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Callable[[QmpEvent], bool] | None = None) -> QmpEvent | None: ...

    def clear_events(self) -> None: ...


@dataclass(frozen=True)
class QmpSocket:
    """Where a machine's QMP listens: ``qmp.sock`` in the run directory, or in a private
    short directory when that path does not fit a unix socket address (108 bytes)."""

    path: Path
    private_dir: Path | None = None  # made for this socket; removed with it

    @classmethod
    def in_dir(cls, run_dir: Path, name: str = "qmp.sock") -> "QmpSocket":
        path = Path(run_dir) / name
        if len(str(path).encode()) < UNIX_PATH_MAX:
            return cls(path)
        short = Path(tempfile.mkdtemp(prefix="tb-qmp-"))
        os.chmod(short, 0o700)
        return cls(short / "qmp.sock", short)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


class QemuMachine:
    """A QEMU process driven over QMP (qemu.qmp) on a unix socket.

    ``argv`` is the whole command line; it serves QMP on ``qmp.path``
    (:func:`testbed.qemu.cmdline.build` with ``qmp=``) and, when ``monitor`` is given, a
    second QMP monitor there for other processes (``monitor=``: a detached guest's later
    commands); the machine removes both sockets when QEMU is gone."""

    def __init__(self, argv: Sequence[str], run_dir: Path, qmp: QmpSocket, *,
                 name: str = "qemu", monitor: QmpSocket | None = None,
                 env: Mapping[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.name = name
        self.env = dict(env) if env is not None else None  # None: the orchestrator's own
        self.socket = qmp
        self.qmp_path = qmp.path
        self.second_monitor = monitor
        self.argv = list(argv)
        self.stderr_log = self.run_dir / "qemu.log"
        self.proc: subprocess.Popen | None = None
        self._mon: Monitor | None = None
        self.exitcode: int | None = None

    # -- hooks (QEMUMachine's _pre_launch/_post_launch/_post_shutdown) ----------------------
    def pre_launch(self) -> None:
        """Called before QEMU starts (a subclass prepares files, sockets, ...)."""

    def post_launch(self) -> None:
        """Called once QMP is connected."""

    def post_shutdown(self) -> None:
        """Called once QEMU is gone and QMP closed (also after a failed launch)."""

    # -- launch ---------------------------------------------------------------------------
    def launch(self, timeout: float = 30.0) -> None:
        """Start QEMU and connect QMP; QemuError (with QEMU's stderr) on failure."""
        if self.proc is not None:
            raise QemuError(f"{self.name}: already launched")
        self.qmp_path.unlink(missing_ok=True)
        self.pre_launch()
        with open(self.stderr_log, "wb") as err:
            try:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err,
                                             stderr=subprocess.STDOUT, close_fds=True,
                                             preexec_fn=_child_setup, env=self.env)
            except OSError as exc:
                raise QemuStartError(f"{self.name}: cannot start {self.argv[0]}: {exc}") \
                    from None
        _LIVE.add(self)
        try:
            self._connect(timeout)
        except BaseException:
            self.kill()
            raise
        self.post_launch()

    def _connect(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.exitcode = code = self.proc.returncode
                how = (f"was killed by signal {-code}" if code < 0
                       else f"exited with status {code}")
                stderr = self.stderr_tail()
                message = (f"{self.name}: QEMU {how} before QMP came up:\n"
                           f"{stderr or '(QEMU printed nothing)'}")
                # QEMU's own words are the only way to know a port was taken (SSH
                # forwarding: "host forwarding"; the gdbstub: "gdbstub: couldn't create")
                if "host forwarding" in stderr or "gdbstub" in stderr:
                    raise PortInUse(message, stderr, code)
                raise QemuStartError(message, stderr, code)
            if self.qmp_path.exists():
                from qemu.qmp import QMPError  # asyncio: imported while QEMU starts
                try:
                    self._mon = Monitor.connect(self.qmp_path, self.name)
                    return
                except (QMPError, OSError):
                    pass
            if time.monotonic() > deadline:
                raise QemuError(f"{self.name}: no QMP greeting within {timeout:.0f} s:\n"
                                f"{self.stderr_tail()}")
            time.sleep(0.02)

    # -- use ------------------------------------------------------------------------------
    def _connected(self) -> Monitor:
        if self._mon is None:
            raise QemuError(f"{self.name}: QMP is not connected")
        return self._mon

    def qmp(self, command: str, **args: Any) -> Any:
        """Run one QMP command and return its result (QemuError on failure)."""
        return self._connected().qmp(command, **args)

    @property
    def monitor(self) -> "QEMUMonitorProtocol | None":
        """The qemu.qmp client itself, for callers that need more than commands."""
        return self._mon.client if self._mon is not None else None

    def query_status(self) -> str:
        """The run state: ``prelaunch``, ``running``, ``paused``, ..."""
        return str(self.qmp("query-status")["status"])

    def qom_get(self, path: str, prop: str) -> Any:
        return self.qmp("qom-get", path=path, property=prop)

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Callable[[QmpEvent], bool] | None = None) -> QmpEvent | None:
        """The first QMP event called ``name`` (and passing ``match``), from those received
        and not yet waited for, else the next to arrive within ``timeout`` seconds; None
        when none does.  Events that do not match stay queued for a later wait (like
        QEMUMachine.event_wait)."""
        return self._connected().event_wait(name, timeout, match)

    def events(self) -> list[QmpEvent]:
        """The queued events (received, not waited for), oldest first; they are taken."""
        return self._mon.events() if self._mon is not None else []

    def clear_events(self) -> None:
        """Forget the QMP events received so far (before waiting for a fresh one)."""
        if self._mon is not None:
            self._mon.clear_events()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for QEMU to exit; its exit status, or None on timeout."""
        if self.proc is None:
            return self.exitcode
        try:
            self.exitcode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exitcode

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- shutdown -------------------------------------------------------------------------
    def shutdown(self, graceful: Callable[[], None] | None = None,
                 graceful_timeout: float = 10.0, quit_timeout: float = 5.0) -> int | None:
        """Stop QEMU: ``graceful()`` (e.g. poweroff in the guest), then QMP quit, then kill.

        Always leaves no process and no socket behind; returns QEMU's exit status.
        """
        if self.proc is None:
            return self.exitcode
        try:
            if graceful is not None and self.is_running():
                try:
                    graceful()
                except Exception as exc:  # the fallback below is the point
                    log.debug("%s: graceful shutdown failed: %s", self.name, exc)
                self.wait(graceful_timeout)
            if self.is_running():
                try:
                    self.qmp("quit")
                except QemuError:
                    pass
                self.wait(quit_timeout)
        finally:
            self.kill()
        return self.exitcode

    def kill(self) -> None:
        """SIGKILL and reap (idempotent); close QMP and remove the socket."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.exitcode = self.proc.returncode
        if self._mon is not None:
            self._mon.close()
            self._mon = None
        self.socket.remove()
        if self.second_monitor is not None:
            self.second_monitor.remove()
        was_live = self in _LIVE
        _LIVE.discard(self)
        if was_live:
            self.post_shutdown()

    def __enter__(self) -> "QemuMachine":
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
