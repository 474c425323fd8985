"""SSH to a guest with paramiko, pinned to the host key generated with the image.

    >>> conn = GuestSSH("127.0.0.1", 2222, key_file, "ssh-ed25519 AAAA...")  # doctest: +SKIP
    >>> conn.connect(timeout=2.0)                                            # doctest: +SKIP
    >>> conn.run("uname -r").stdout                                          # doctest: +SKIP
    '7.3.0-1-amd64\\n'
"""

from __future__ import annotations

import base64
import logging
import os
import select
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paramiko

from ..errors import GuestError
from .result import CommandResult

GUEST_USER = "root"

# paramiko logs every refused early connection attempt with a traceback; the
# retry loop below is the expected path while the guest boots.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
logging.getLogger("paramiko").propagate = False


def _host_key(public: str) -> paramiko.PKey:
    kind, data = public.split()[:2]
    if kind != "ssh-ed25519":
        raise GuestError(f"unsupported pinned host key type {kind!r}")
    return paramiko.Ed25519Key(data=base64.b64decode(data))


class GuestSSH:
    """One SSH connection to a guest; commands never raise on a non-zero exit."""

    def __init__(self, host: str, port: int, key_file: Path, host_public_key: str):
        self.host, self.port = host, port
        self.key_file = Path(key_file)
        self.host_public_key = host_public_key
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 5.0) -> None:
        """One attempt; raises OSError / paramiko.SSHException when the guest is not ready."""
        client = paramiko.SSHClient()
        keys = client.get_host_keys()
        name = f"[{self.host}]:{self.port}" if self.port != 22 else self.host
        keys.add(name, "ssh-ed25519", _host_key(self.host_public_key))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, self.port, username=GUEST_USER,
                           key_filename=str(self.key_file), timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout,
                           look_for_keys=False, allow_agent=False)
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)
        self.client = client

    def wait(self, deadline: float, alive=lambda: None) -> float:
        """Retry :meth:`connect` until ``deadline`` (monotonic); ``alive()`` raises to abort."""
        start = time.monotonic()
        last: Exception | None = None
        while time.monotonic() < deadline:
            alive()
            try:
                self.connect(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
                return time.monotonic() - start
            except paramiko.BadHostKeyException as exc:
                raise GuestError(f"the guest's SSH host key does not match the image's pinned "
                                 f"key: {exc}") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = exc
                time.sleep(0.1)
        raise TimeoutError(f"no SSH on {self.host}:{self.port} ({last})")

    @property
    def connected(self) -> bool:
        t = self.client.get_transport() if self.client else None
        return bool(t and t.is_active())

    def _client(self) -> paramiko.SSHClient:
        if not self.connected:
            self.connect()
        assert self.client is not None
        return self.client

    def _session(self, timeout: float) -> paramiko.Channel:
        transport = self._client().get_transport()
        if transport is None:
            raise GuestError("the SSH connection to the guest is closed")
        return transport.open_session(timeout=timeout)

    def run(self, command: str | list[str], timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` (a string for the guest shell, or an argv list that gets quoted)
        with ``stdin`` as its standard input (then EOF).  Input and output move together,
        so a guest slow to read its input is waited for up to ``timeout``, like a command
        slow to finish: the result then says ``timed_out``; nothing raises on a slow guest."""
        command = _command_text(command)
        out, err = bytearray(), bytearray()
        start = time.monotonic()
        status, timed_out = self.exchange(command, timeout, _Feed(data=stdin or b""),
                                          out.extend, err.extend)
        return CommandResult(command, status, out.decode(errors="replace"),
                             err.decode(errors="replace"), time.monotonic() - start, timed_out)

    def output(self, command: str | list[str], timeout: float,
               limit: int) -> tuple[int, bytes, bool]:
        """Run ``command`` with no input; (exit status, its standard output as bytes, timed
        out).  An output longer than ``limit`` bytes ends the command (status -1)."""
        out = bytearray()

        def take(chunk: bytes) -> None:
            if len(out) <= limit:
                out.extend(chunk)

        status, timed_out = self.exchange(_command_text(command), timeout, _Feed(),
                                          take, lambda chunk: None)
        return (status if len(out) <= limit else -1), bytes(out[:limit]), timed_out

    def stream(self, command: str | list[str], timeout: float, stdin_fd: int | None,
               stdout: Callable[[bytes], object],
               stderr: Callable[[bytes], object]) -> tuple[int, bool]:
        """Run ``command`` with the file descriptor ``stdin_fd`` as its standard input
        (read until EOF, as ssh does; None: an empty input), handing its output to
        ``stdout``/``stderr`` as it comes.  Returns (exit status, timed out); the command
        ending ends the call even while ``stdin_fd`` (a terminal) has nothing to read."""
        return self.exchange(_command_text(command), timeout, _Feed(fd=stdin_fd), stdout, stderr)

    def exchange(self, command: str, timeout: float, feed: "_Feed",
                 stdout: Callable[[bytes], object],
                 stderr: Callable[[bytes], object]) -> tuple[int, bool]:
        """The one loop behind :meth:`run` and :meth:`stream`: send the input only as fast
        as the guest's window opens, read the output meanwhile (so a command that writes
        while it reads never deadlocks with us), stop at the command's exit or
        ``timeout`` seconds after the start.  Errors of the connection are GuestError."""
        deadline = time.monotonic() + timeout
        try:
            chan = self._session(max(1.0, min(timeout, 30.0)))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"cannot open an SSH session to the guest: {exc}") from None
        try:
            return _pump(chan, command, feed, stdout, stderr, deadline)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"the SSH connection to the guest failed during {command[:80]!r}: "
                             f"{type(exc).__name__}: {exc}") from None
        finally:
            chan.close()

    def fire(self, command: str) -> None:
        """Start ``command`` and do not wait for it (e.g. a poweroff that ends the session)."""
        try:
            chan = self._session(2)
            chan.exec_command(command)
        except (OSError, paramiko.SSHException, GuestError):
            pass

    def put(self, local: Path | str, remote: str, mode: int | None = None) -> None:
        try:
            with self._client().open_sftp() as sftp:
                sftp.put(str(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"cannot copy {local} to the guest's {remote}: {exc}") from None

    def get(self, remote: str, local: Path | str) -> None:
        try:
            with self._client().open_sftp() as sftp:
                sftp.get(remote, str(local))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"cannot copy the guest's {remote} to {local}: {exc}") from None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


CHUNK = 32768  # bytes read from an input descriptor at a time


def _command_text(command: str | list[str]) -> str:
    return command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)


@dataclass
class _Feed:
    """A command's standard input: bytes already in hand, or a descriptor read to EOF."""

    data: bytes = b""
    fd: int | None = None

    @property
    def done(self) -> bool:
        return not self.data and self.fd is None

    def fill(self) -> None:
        """Read what the descriptor has (call when it is readable)."""
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # an input that cannot be read ends like an empty one
        if chunk:
            self.data = chunk
        else:
            self.fd = None

    def drop(self) -> None:
        """The command will read no more: forget what is left."""
        self.data, self.fd = b"", None


def _pump(chan: paramiko.Channel, command: str, feed: _Feed,
          stdout: Callable[[bytes], object], stderr: Callable[[bytes], object],
          deadline: float) -> tuple[int, bool]:
    chan.settimeout(0.0)  # never block in send/recv: readiness is checked first
    chan.exec_command(command)
    shut = False
    while True:
        if feed.data and chan.send_ready():
            try:
                sent = chan.send(feed.data[:CHUNK])
            except OSError:  # the channel closed: the command is gone
                sent = 0
                feed.drop()
            if sent == 0:
                feed.drop()  # the remote side takes no more input
            feed.data = feed.data[sent:]
        if feed.done and not shut:
            chan.shutdown_write()  # EOF on the command's input
            shut = True
        while chan.recv_ready():
            stdout(chan.recv(CHUNK))
        while chan.recv_stderr_ready():
            stderr(chan.recv_stderr(CHUNK))
        # sshd may send exit-status before the last output: stop only at EOF
        if chan.exit_status_ready() and chan.eof_received and not chan.recv_ready() \
                and not chan.recv_stderr_ready():
            return chan.recv_exit_status(), False
        if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
            return (chan.exit_status if chan.exit_status_ready() else -1), False
        now = time.monotonic()
        if now > deadline:
            return -1, True
        if chan.eof_received:  # the output is over; only the exit status is to come
            chan.status_event.wait(min(0.05, deadline - now))
            continue
        watch: list[Any] = [chan]
        if feed.fd is not None and not feed.data:
            watch.append(feed.fd)
        # with input waiting for the window to open, look again soon
        wait = 0.01 if feed.data else min(0.25, deadline - now)
        ready = select.select(watch, [], [], max(0.0, wait))[0]
        if feed.fd is not None and feed.fd in ready:
            feed.fill()
