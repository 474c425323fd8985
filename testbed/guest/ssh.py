"""SSH to a guest with paramiko, pinned to the host key generated with the image.

    >>> conn = GuestSSH("127.0.0.1", 2222, key_file, "ssh-ed25519 AAAA...")  # doctest: +SKIP
    >>> conn.connect(timeout=2.0)                                            # doctest: +SKIP
    >>> conn.run("uname -r").stdout                                          # doctest: +SKIP
    '7.3.0-1-amd64\\n'
"""

from __future__ import annotations

import base64
import logging
import shlex
import time
from pathlib import Path

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
        """Run ``command`` (a string for the guest shell, or an argv list that gets quoted)."""
        if isinstance(command, list):
            command = " ".join(shlex.quote(c) for c in command)
        start = time.monotonic()
        try:
            chan = self._session(timeout)
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot open an SSH session to the guest: {exc}") from None
        chan.settimeout(1.0)
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = start + timeout
        timed_out = False
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            # sshd may send exit-status before the last output: stop only at EOF
            if chan.exit_status_ready() and chan.eof_received and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            if chan.closed and not chan.recv_ready():
                break
            time.sleep(0.005)
        status = -1 if timed_out else chan.recv_exit_status()
        chan.close()
        return CommandResult(command, status, out.decode(errors="replace"),
                             err.decode(errors="replace"), time.monotonic() - start, timed_out)

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
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot copy {local} to the guest's {remote}: {exc}") from None

    def get(self, remote: str, local: Path | str) -> None:
        try:
            with self._client().open_sftp() as sftp:
                sftp.get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"cannot copy the guest's {remote} to {local}: {exc}") from None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
