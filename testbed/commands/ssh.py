"""Open a shell in a detached guest, or run a command there (its exit status passes through).

    testbed ssh NAME                      # an interactive shell
    testbed ssh NAME [--timeout S] -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ToolMissing
from ..guest import instances
from . import options

HELP = "shell or command in a detached guest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=options.name, help="instance name (see `testbed ps`)")
    p.add_argument("cmd", nargs="*", metavar="CMD", help="command to run in the guest "
                   "(after --)")
    p.add_argument("--timeout", type=options.seconds, default=3600.0)


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
        res = ssh.run(args.cmd if len(args.cmd) > 1 else args.cmd[0], timeout=args.timeout)
    finally:
        ssh.close()
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if res.timed_out:
        print(f"testbed: command timed out after {args.timeout:.0f} s", file=sys.stderr)
        return 124
    return res.exit_status
