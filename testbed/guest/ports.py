"""Collision-safe host ports for SSH forwarding.

The kernel picks a free port; a lock file under the state directory then makes
sure no other testbed process takes the same one while this guest lives (the
QEMU launch is retried if a foreign program grabs it in between).

    >>> lease = reserve_port()                 # doctest: +SKIP
    >>> 1024 < lease.port < 65536              # doctest: +SKIP
    True
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass

from ..paths import state_dir


@dataclass
class PortLease:
    port: int
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:  # the lock file stays: unlinking it would race
            os.close(self.fd)
            self.fd = None


def _lock_path(port: int) -> str:
    return str(state_dir() / "ports" / f"{port}.lock")


def reserve_port(attempts: int = 64) -> PortLease:
    (state_dir() / "ports").mkdir(parents=True, exist_ok=True, mode=0o700)
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        fd = os.open(_lock_path(port), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return PortLease(port, fd)
    raise OSError("no free local port for SSH forwarding")
