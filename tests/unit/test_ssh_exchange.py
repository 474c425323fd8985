"""The SSH layer against a real SSH server on a local socket (paramiko's server side):
standard input reaches the command whole (binary, then EOF) even when the guest is slow
to read it, input and output move together (no deadlock), a guest that never reads
ends in a timed-out result rather than an exception, and a command that exits without
reading a terminal that nobody types into ends the call at once."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testbed.guest.ssh import GuestSSH

WINDOW = 32768  # the server's receive window: small, so a sender must wait for it


def _key() -> tuple[str, paramiko.PKey]:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    return pem, paramiko.Ed25519Key(file_obj=io.StringIO(pem))


def _read_all(chan: paramiko.Channel) -> bytes:
    data = bytearray()
    while True:
        chunk = chan.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk


def _finish(chan: paramiko.Channel, status: int) -> None:
    chan.send_exit_status(status)
    chan.shutdown_write()
    chan.close()


GUEST_FILES: dict[str, bytes] = {}  # what `cat PATH 2>/dev/null` finds in the fake guest


def _behave(command: str, chan: paramiko.Channel) -> None:
    """What the fake guest does for each command the tests send."""
    word, _, arg = command.partition(" ")
    shown = re.search(r"(?:^|; )cat (\S+) 2>/dev/null$", command)
    if shown:  # a file of the guest
        path = shown.group(1)
        if path in GUEST_FILES:
            chan.sendall(GUEST_FILES[path])
        _finish(chan, 0 if path in GUEST_FILES else 1)
    elif word == "stall-then-digest":  # reads nothing for a while, then everything
        time.sleep(float(arg))
        data = _read_all(chan)
        chan.sendall(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode())
        _finish(chan, 0)
    elif word == "cat":  # echoes as it reads; blocks when its output is not read
        while True:
            chunk = chan.recv(65536)
            if not chunk:
                break
            chan.sendall(chunk)
        chan.sendall_stderr(b"done\n")
        _finish(chan, 0)
    elif word == "exit":  # exits at once without reading its input
        chan.sendall(b"bye\n")
        _finish(chan, int(arg))
    elif word == "never-read":
        while not chan.closed:
            time.sleep(0.05)
    else:
        _finish(chan, 127)


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        # paramiko sends the request's reply after this returns: start the command only
        # then (an exit racing ahead of the reply would close the channel first, which
        # no real sshd does)
        timer = threading.Timer(0.3, _behave, args=(command.decode(), channel))
        timer.daemon = True
        timer.start()
        return True


@pytest.fixture
def guest_ssh(tmp_path: Path):
    """A GuestSSH connected to an in-process SSH server with a small receive window."""
    pem, host_key = _key()
    client_pem, _ = _key()
    key_file = tmp_path / "client_key"
    key_file.write_text(client_pem)
    key_file.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(sock, default_window_size=WINDOW,
                                   default_max_packet_size=WINDOW)
            t.add_server_key(host_key)
            t.start_server(server=_Server())
            transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    conn = GuestSSH("127.0.0.1", listener.getsockname()[1], key_file,
                    f"ssh-ed25519 {host_key.get_base64()}")
    conn.connect(timeout=5)
    yield conn
    conn.close()
    listener.close()
    for t in transports:
        t.close()


def test_input_reaches_a_guest_slow_to_read_it(guest_ssh):
    """The guest reads nothing for 2 s while 256 KiB wait behind an 32 KiB window:
    the sender waits (it used to raise TimeoutError from chan.sendall after 1 s)."""
    data = os.urandom(256 * 1024)
    res = guest_ssh.run("stall-then-digest 2", timeout=30, stdin=data)
    assert res.ok and not res.timed_out, res.describe()
    assert res.stdout.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


def test_a_guest_that_never_reads_times_out_as_a_result(guest_ssh):
    start = time.monotonic()
    res = guest_ssh.run("never-read", timeout=1.5, stdin=b"x" * (4 * WINDOW))
    assert res.timed_out and res.exit_status == -1
    assert time.monotonic() - start < 10


def test_input_and_output_move_together(guest_ssh):
    """2.5 MiB through a command that echoes as it reads: more than both windows, so a
    sender that stopped reading while it sends would deadlock."""
    data = os.urandom(5 * 1024 * 1024 // 2)
    out, err = bytearray(), bytearray()
    r, w = os.pipe()

    def writer() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    threading.Thread(target=writer, daemon=True).start()
    try:
        status, timed_out = guest_ssh.stream("cat", 60, r, out.extend, err.extend)
    finally:
        os.close(r)
    assert (status, timed_out) == (0, False)
    assert bytes(out) == data  # every byte, binary, in order
    assert bytes(err) == b"done\n"


def test_empty_input_is_eof_at_once(guest_ssh):
    out = bytearray()
    with open(os.devnull, "rb") as null:
        status, timed_out = guest_ssh.stream("cat", 10, null.fileno(), out.extend, out.extend)
    assert (status, timed_out, bytes(out)) == (0, False, b"done\n")
    status, timed_out = guest_ssh.stream("cat", 10, None, out.extend, out.extend)
    assert (status, timed_out) == (0, False)


def test_a_command_that_ignores_a_silent_terminal_ends_the_call(guest_ssh):
    """stdin is a terminal nobody types into: the command exits, the call returns."""
    primary, secondary = os.openpty()
    try:
        start = time.monotonic()
        out = bytearray()
        status, timed_out = guest_ssh.stream("exit 3", 30, secondary, out.extend, out.extend)
        assert (status, timed_out, bytes(out)) == (3, False, b"bye\n")
        assert time.monotonic() - start < 5
    finally:
        os.close(primary)
        os.close(secondary)


def test_output_is_binary_and_bounded(guest_ssh):
    GUEST_FILES["/blob"] = bytes(range(256)) * 64
    assert guest_ssh.output("cat /blob 2>/dev/null", 10, limit=1 << 20) == \
        (0, GUEST_FILES["/blob"], False)
    status, data, _ = guest_ssh.output("cat /blob 2>/dev/null", 10, limit=100)
    assert (status, data) == (-1, GUEST_FILES["/blob"][:100])
    assert guest_ssh.output("cat /missing 2>/dev/null", 10, limit=100)[:2] == (1, b"")


def test_the_bytecode_a_guest_compiled_is_cached_and_shipped(guest_ssh, tmp_path, monkeypatch):
    """The guest tool's bytecode, compiled once in a guest, is fetched into the host's
    cache (only the package's .pyc files) and every later tar of the tool carries it; a
    guest that has none (not compiled yet) leaves the cache empty."""
    import tarfile

    from testbed.guest import tool
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    GUEST_FILES.pop(tool.GUEST_BYTECODE, None)
    assert not tool.collect_bytecode(guest_ssh, wait=0.2) and not tool.has_bytecode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((tool.PYCACHE + "cli.cpython-313.pyc", b"\x0d\x0d\r\n"),
                           ("p2pdma_guest/cli.py", b"evil = 1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    GUEST_FILES[tool.GUEST_BYTECODE] = buf.getvalue()
    assert tool.collect_bytecode(guest_ssh) and tool.has_bytecode()
    assert tool.read_bytecode(tool.bytecode_file().read_bytes()) == \
        {"cli.cpython-313.pyc": b"\x0d\x0d\r\n"}
    tool.package_tar.cache_clear()
    try:
        shipped = tarfile.open(fileobj=io.BytesIO(tool.package_tar()))
        assert shipped.extractfile(tool.PYCACHE + "cli.cpython-313.pyc").read() == \
            b"\x0d\x0d\r\n"
        source = (Path(tool.__file__).parent.parent / "guest_tool" / "cli.py").read_bytes()
        assert shipped.extractfile("p2pdma_guest/cli.py").read() == source
    finally:
        tool.package_tar.cache_clear()
