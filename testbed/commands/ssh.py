"""Open a shell in a detached guest, or run a command there (its exit status passes through)."""

from __future__ import annotations

import os
import sys

from .. import instances
from ..errors import GuestError, ToolMissing, UsageError

HELP = "shell or command in a detached guest"


def add_arguments(p) -> None:
    p.add_argument("name", help="instance name (see `testbed ps`)")
    p.add_argument("cmd", nargs="*", metavar="-- CMD", help="command to run in the guest")
    p.add_argument("--timeout", type=float, default=3600.0)


def get_ready(name: str) -> instances.Instance:
    inst = instances.load(name)
    if inst is None:
        names = ", ".join(i.name for i in instances.list_instances()) or "none"
        raise UsageError(f"no instance named {name!r} (running: {names})")
    if not inst.alive():
        how = instances.stop(inst)
        raise GuestError(f"instance {name!r} is stale: its QEMU or supervisor died ({how})"
                         + (f": {inst.error}" if inst.error else ""))
    if inst.status != "ready":
        raise GuestError(f"instance {name!r} is {inst.status}")
    return inst


def run(args) -> int:
    inst = get_ready(args.name)
    if not args.cmd:
        try:
            os.execvp(inst.ssh[0], inst.ssh)
        except FileNotFoundError:
            raise ToolMissing("ssh", "openssh-client") from None
    from ..guest.ssh import GuestSSH
    ssh = GuestSSH("127.0.0.1", inst.port, inst.key, inst.host_public_key)
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
