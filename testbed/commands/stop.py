"""Shut a detached guest down (graceful, then hard) and clean its state."""

from __future__ import annotations

from .. import instances
from ..errors import UsageError

HELP = "stop a detached guest"


def add_arguments(p) -> None:
    p.add_argument("names", nargs="+", metavar="NAME")


def run(args) -> int:
    status = 0
    for name in args.names:
        inst = instances.load(name)
        if inst is None:
            if (instances.instances_dir() / name).exists():
                instances.remove(name)
                print(f"{name}: removed a broken instance directory")
                continue
            raise UsageError(f"no instance named {name!r}")
        print(f"{name}: {instances.stop(inst)}")
    return status
