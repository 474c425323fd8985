"""Shut a detached guest down (graceful, then hard) and clean its state."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..guest import instances
from . import options

HELP = "stop a detached guest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", type=options.name)


def run(args: argparse.Namespace) -> int:
    for name in args.names:  # every name is checked before any instance is stopped
        instances.check_name(name)
    for name in args.names:
        inst = instances.load(name)
        if inst is None:
            raise UsageError(f"no instance named {name!r}")
        print(f"{name}: {instances.stop(inst)}")
    return 0
