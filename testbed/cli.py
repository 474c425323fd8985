"""``testbed`` command line: one sub-command per module in :mod:`testbed.commands`.

Every user error ends in a message and exit status 2, never a traceback;
SIGINT/SIGTERM unwind through the same cleanup as a normal exit.  Progress goes
to stderr through :mod:`logging` (``-q`` quieter, ``-v`` more).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from .errors import SpecError, TestbedError
from .util.log import setup as setup_logging
from .util.signals import install_signal_handlers

COMMANDS = ("validate", "render", "verify", "image", "boot", "ssh", "ps", "stop", "run",
            "matrix", "kernel", "bisect", "coverage", "qemu")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with its ``usage_status`` default: 2,
    unless the command's module says otherwise (``bisect``: git bisect run reads 2 as
    "bad")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.get_default("usage_status") or 2, f"{self.prog}: error: {message}\n")


def _verbosity(short_quiet: bool = True) -> _Parser:
    """-v/-q for every command; a command whose own ``-q`` means something else
    (``matrix -q QEMU``) keeps only ``--quiet``."""
    common = _Parser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                       default=0, help="more progress output (debug)")
    group.add_argument(*(("-q",) if short_quiet else ()), "--quiet", action="store_const",
                       const=-1, dest="verbosity", help="only warnings and errors")
    return common


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line.  ``only``: the command about to run; only its module is
    imported (the others are bare choices): importing every command's module (the
    runner, the workloads, jinja2, ...) cost each command 0.3-1 s of start-up."""
    parser = _Parser(prog="testbed", description="PCIe peer-to-peer DMA testbeds on QEMU")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)  # not the one that runs: not imported
            continue
        module = importlib.import_module(f".commands.{name}", __package__)
        common = _verbosity(getattr(module, "SHORT_QUIET", True))
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(handler=module.run, usage_status=getattr(module, "USAGE_STATUS", 2))
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (the first word, testbed itself takes only -h); None for
    anything else (``testbed --help``, a typo), which gets the whole parser.

    >>> command_of(["boot", "switch-cmb", "-c", "true"]), command_of(["-h"])
    ('boot', None)
    """
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS and argv[0] == first else None


def main(argv: Sequence[str] | None = None) -> int:
    install_signal_handlers()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_of(argv))
    rest = None
    if "--" in argv:  # `testbed ssh NAME [options] -- CMD ...`: CMD is never parsed
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the command's usage status, as its own errors are
        parser.set_defaults(usage_status=args.usage_status)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if rest is not None:
        if not hasattr(args, "cmd"):
            parser.error(f"'--' is for `testbed ssh NAME -- CMD`, not for {args.command}")
        args.cmd = [*args.cmd, *rest]
    setup_logging(args.verbosity)
    try:
        return int(args.handler(args) or 0)
    except TestbedError as exc:
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
