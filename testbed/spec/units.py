"""Sizes as people write them: ``64M``, ``1G``, ``512``, ``4k``.

Binary units (K = 1024).  Bare integers are bytes.

    >>> parse_size("64M")
    67108864
    >>> parse_size("1GiB")
    1073741824
    >>> format_size(64 * 1024 * 1024)
    '64M'
"""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

MiB = 1 << 20


def parse_size(value) -> int:
    """Bytes in ``value`` (int or string); ValueError with the reason otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64M or 1G, got a boolean (YAML reads yes, no, "
                         "on, off, true and false as booleans)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 64M or 1G, got {type(value).__name__}")
    m = _SIZE.match(value)
    if not m and value.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative, got {value!r}")
    if not m:
        raise ValueError(f"expected a size such as 64M or 1G, got {value!r}")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
