"""One client connection to a QMP monitor: commands, and the events it receives, queued.

Used by :class:`~testbed.qemu.machine.QemuMachine` for the QEMU it started, and by a
later command for a detached guest's second monitor (:func:`attach_monitor`), which
the guest's supervisor asked QEMU for: a QEMU monitor serves one client at a time, so
such a client holds a lock file for as long as it is connected.

    >>> mon = attach_monitor(Path("/run/x/monitor.sock"), Path("/run/x/monitor.lock"),
    ...                      "guest a")                                  # doctest: +SKIP
    >>> mon.qmp("query-status")["status"]                                # doctest: +SKIP
    'running'
    >>> mon.close()                                                      # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypedDict, cast

from ..errors import QemuError

if TYPE_CHECKING:  # qemu.qmp (asyncio) takes ~0.1 s to import: only when connecting
    from qemu.qmp.legacy import QEMUMonitorProtocol

LOCK_WAIT = 120.0  # seconds a second client waits for the monitor to be free


class QmpEvent(TypedDict, total=False):
    """A QMP event as qemu.qmp hands it over."""

    event: str
    data: dict[str, Any]
    timestamp: dict[str, int]


class MonitorBusy(QemuError):
    """Another process is connected to the monitor (a QEMU monitor serves one client)."""


class Monitor:
    """A connected QMP client (qemu.qmp's legacy synchronous API).  QMP events that
    nobody waited for yet are queued, as in QEMUMachine: :meth:`event_wait` takes the
    first queued match, else waits for one; the others stay queued."""

    def __init__(self, client: "QEMUMonitorProtocol", name: str,
                 lock_fd: int | None = None):
        self.client = client
        self.name = name
        self._lock = threading.Lock()
        self._events: list[QmpEvent] = []  # received, not yet waited for
        self._lock_fd = lock_fd

    @classmethod
    def connect(cls, path: Path, name: str, lock_fd: int | None = None) -> "Monitor":
        """Connect and negotiate; OSError or qemu.qmp's QMPError when QEMU is not there."""
        from qemu.qmp.legacy import QEMUMonitorProtocol  # asyncio: import when needed
        client = QEMUMonitorProtocol(str(path))
        try:
            client.connect()
        except BaseException:
            _close_quietly(client)
            raise
        client.settimeout(60)
        return cls(client, name, lock_fd)

    def qmp(self, command: str, **args: Any) -> Any:
        """Run one QMP command and return its result (QemuError on failure)."""
        from qemu.qmp import QMPError  # loaded already: connected
        with self._lock:
            try:
                return self.client.cmd(command, **args)
            except (QMPError, OSError, EOFError) as exc:
                raise QemuError(f"{self.name}: QMP {command} failed: {exc}") from None

    def event_wait(self, name: str, timeout: float = 60.0,
                   match: Callable[[QmpEvent], bool] | None = None) -> QmpEvent | None:
        """The first QMP event called ``name`` (and passing ``match``), from those received
        and not yet waited for, else the next to arrive within ``timeout`` seconds; None
        when none does.  Events that do not match stay queued for a later wait."""
        from qemu.qmp import QMPError  # loaded already: connected

        def wanted(ev: QmpEvent) -> bool:
            return ev.get("event") == name and (match is None or match(ev))

        with self._lock:
            for i, ev in enumerate(self._events):
                if wanted(ev):
                    return self._events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                try:
                    event = self.client.pull_event(wait=min(1.0, max(0.01, deadline -
                                                                     time.monotonic())))
                except (QMPError, OSError, EOFError, TimeoutError):
                    event = None
                if event is None:
                    continue
                queued = cast(QmpEvent, event)
                if wanted(queued):
                    return queued
                self._events.append(queued)
        return None

    def events(self) -> list[QmpEvent]:
        """The queued events (received, not waited for), oldest first; they are taken."""
        with self._lock:
            out, self._events = self._events, []
        return out

    def clear_events(self) -> None:
        """Forget the QMP events received so far (before waiting for a fresh one)."""
        from qemu.qmp import QMPError  # loaded already: connected
        with self._lock:
            self._events.clear()
            try:
                self.client.get_events(wait=False)
                self.client.clear_events()
            except (QMPError, OSError, EOFError):
                pass

    def close(self) -> None:
        """Disconnect (idempotent) and let the next client in."""
        _close_quietly(self.client)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def attach_monitor(path: Path, lock: Path, name: str, wait: float = LOCK_WAIT) -> Monitor:
    """Connect to the monitor at ``path`` that another process's QEMU serves, holding
    ``lock`` while connected: a second client would otherwise wait forever for QEMU's
    greeting.  :class:`MonitorBusy` when the lock stays taken for ``wait`` seconds,
    QemuError when nobody listens."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise MonitorBusy(f"{name}: another command has held the QMP monitor "
                                  f"({path}) for {wait:.0f} s; try again when it is done")
            time.sleep(0.1)
    from qemu.qmp import QMPError  # asyncio: imported only when connecting
    try:
        return Monitor.connect(path, name, fd)
    except (QMPError, OSError) as exc:
        os.close(fd)
        raise QemuError(f"{name}: cannot connect to the QMP monitor {path}: {exc}") from None


def _close_quietly(client: "QEMUMonitorProtocol") -> None:
    try:
        client.close()
    except Exception:
        pass
