"""``testbed`` command line: one sub-command per module in :mod:`testbed.commands`.

Every user error ends in a message and exit status 2, never a traceback;
SIGINT/SIGTERM unwind through the same cleanup as a normal exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TestbedError

COMMANDS = ("validate", "render", "verify", "image", "boot", "ssh", "ps", "stop", "run",
            "matrix", "kernel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed", description="PCIe peer-to-peer DMA testbeds on QEMU")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # not written yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .qemu.machine import install_signal_handlers

    install_signal_handlers()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TestbedError as exc:
        from .spec.problems import SpecError
        # FILE:LINE:COL lines stay at the start of the line, for editors that jump to them
        print(str(exc) if isinstance(exc, SpecError) else f"testbed: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("testbed: interrupted; cleaned up", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
