"""Bad usage and the argument types every sub-command shares.  Kept apart from the I/O
helpers so the command line can be parsed without importing them (each call of the tool
is a new interpreter in a TCG guest: every module imported costs time).

    >>> parse_size("64K"), parse_seed("0x10")
    (65536, 16)
"""

import argparse
import re

USAGE = 2


class UsageError(Exception):
    """Bad usage: exit status 2 with a JSON document saying why."""


def parse_size(text):
    """'4096', '64K', '1M', '2G' (powers of 1024) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_seed(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError("the seed must be in [0, 2**64)")
    return value
