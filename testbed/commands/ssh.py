"""Open a shell in a detached guest, or run a command there (its exit status passes through).

    testbed ssh NAME                      # an interactive shell
    testbed ssh NAME [--timeout S] [-n] -- CMD ARGS...

As with ssh, the command reads this command's standard input (bytes as they are, then
EOF) and its output comes out as it is written; ``-n`` gives it an empty input instead.
A command that does not read its input ends the call when it exits, even when the input
is a terminal nobody types into.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, TextIO

from ..errors import ToolMissing
from ..guest import instances
from . import options

HELP = "shell or command in a detached guest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=options.name, help="instance name (see `testbed ps`)")
    p.add_argument("cmd", nargs="*", metavar="CMD", help="command to run in the guest "
                   "(after --)")
    p.add_argument("--timeout", type=options.seconds, default=3600.0)
    p.add_argument("-n", "--no-stdin", action="store_true",
                   help="give the command an empty standard input (as ssh -n)")


def run(args: argparse.Namespace) -> int:
    instances.check_name(args.name)
    inst = instances.get_ready(args.name)
    if not args.cmd:
        try:
            os.execvp(inst.ssh[0], inst.ssh)
        except FileNotFoundError:
            raise ToolMissing("ssh", "openssh-client") from None
    from ..guest.ssh import GuestSSH  # paramiko is slow to import: only when it is used
    ssh = GuestSSH("127.0.0.1", inst.port, Path(inst.key), inst.host_public_key)
    try:
        status, timed_out = ssh.stream(args.cmd if len(args.cmd) > 1 else args.cmd[0],
                                       args.timeout, None if args.no_stdin else _stdin_fd(),
                                       _writer(sys.stdout), _writer(sys.stderr))
    finally:
        ssh.close()
    if timed_out:
        print(f"testbed: command timed out after {args.timeout:.0f} s", file=sys.stderr)
        return 124
    return status


def _stdin_fd() -> int | None:
    """This process's standard input, when it has one."""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, ValueError, OSError):
        return None  # closed or not a file
    return fd


def _writer(stream: TextIO) -> Callable[[bytes], None]:
    """Write bytes to a text stream's binary buffer at once (output is passed on as it
    comes, unchanged)."""
    sink = stream.buffer

    def write(data: bytes) -> None:
        sink.write(data)
        sink.flush()
    return write
