"""Option values every command checks the same way (argparse ``type=`` functions):
each bad value is an argparse error, exit 2, naming the option.

    >>> seconds("2.5")
    2.5
    >>> seconds("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a number of seconds above 0, got 'nan'
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..coverage.session import CoverageRequest
from ..errors import UsageError
from ..qemu.share import Share, check_shares, parse_share
from ..spec.units import parse_size

MAX_SECONDS = 7 * 24 * 3600.0


def seconds(text: str) -> float:
    """A timeout: a finite number of seconds above 0 (and at most a week)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}"
                                         + (" (at most a week)" if math.isfinite(value)
                                            and value > MAX_SECONDS else ""))
    return value


def kernel(text: str) -> str:
    """``default`` or a path; an empty value is refused (it used to mean default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give 'default' or a path")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a NUL byte in the path")
    return text


QEMU_HELP = ("the QEMU to run instead of the topology's machine.qemu: host, an installed "
             "QEMU's name or version (testbed qemu list), or a path")


def qemu(text: str) -> str:
    """--qemu: host, an installed QEMU's name or version, or a path (resolved where it is
    used, so the error names the QEMU's problem)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value: give host, an installed QEMU's "
                                         "name or version, or a path")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a NUL byte in the value")
    return text


def transfer_size(text: str) -> int:
    """--size: a multiple of 4K between 4K and 64M."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 4096 or size % 4096 or size > (64 << 20):
        raise argparse.ArgumentTypeError("a multiple of 4K between 4K and 64M")
    return size


def name(text: str) -> str:
    """An instance name (checked fully by testbed.guest.instances.check_name)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty name")
    return text


def pair(text: str) -> tuple[str, str]:
    """--pair PROVIDER:CLIENT (the same name twice: a controller's own CMB for its own I/O)."""
    provider, sep, client = text.partition(":")
    if not sep or not provider or not client:
        raise argparse.ArgumentTypeError(f"expected PROVIDER:CLIENT, got {text!r}")
    return provider, client


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def share(text: str) -> Share:
    """--share HOSTDIR[:GUESTDIR][:ro|rw]: an existing host directory, a guest path that
    covers nothing the guest needs (see :mod:`testbed.qemu.share`)."""
    try:
        return parse_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SHARE_HELP = ("mount host directory HOSTDIR in the guest on GUESTDIR (default /mnt/<name>), "
              "read-only unless :rw; repeatable")


def shares(values: list[Share]) -> tuple[Share, ...]:
    """Several --share values together: no guest directory twice or inside another."""
    try:
        check_shares(values)
    except ValueError as exc:
        raise UsageError(f"--share: {exc}") from None
    return tuple(values)


COVERAGE_HELP = ("measure which kernel functions the workloads ran (with a gcov kernel: lines "
                 "and branches) in FILE or the C files under DIR, relative to the kernel "
                 "source; repeatable; alone: the P2P set (p2p)")


def add_coverage_arguments(p: argparse.ArgumentParser) -> None:
    """--coverage [FILE|DIR] and --coverage-source DIR (run, matrix, bisect)."""
    p.add_argument("--coverage", action="append", nargs="?", const="p2p", default=None,
                   metavar="FILE|DIR", help=COVERAGE_HELP)
    p.add_argument("--coverage-source", type=Path, metavar="DIR",
                   help="the kernel source tree to map the coverage onto (default: the build "
                        "tree's, or Debian's linux-source for the image's kernel)")
    p.add_argument("--patch-coverage", metavar="A..B|FILE.patch",
                   help="was every line the patch changes executed, and by what: a git range "
                        "in the kernel source tree or a patch file (implies --coverage of its "
                        "files)")
    p.add_argument("--min-patch-coverage", type=percent, metavar="N",
                   help="exit 1 when less than N%% of the patch's measurable changed lines "
                        "were executed")


def percent(text: str) -> float:
    """0 to 100."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def coverage_request(args: argparse.Namespace) -> "CoverageRequest | None":
    return CoverageRequest.from_args(args.coverage, args.coverage_source,
                                     args.patch_coverage, args.min_patch_coverage)
