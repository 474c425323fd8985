"""The functions a C source file defines, with their first and last lines, by
universal-ctags (Debian package ``universal-ctags``): no C parser of our own.

    defs = definitions(Path("/src/linux"), "drivers/pci/p2pdma.c")
    defs[0]   # Definition(name='__host_bridge_whitelist', start=611, end=642, ...)

ctags reads every branch of an ``#if``: a function defined twice (once per branch) is kept
once, with its first definition.  Functions that a macro generates (``DEVICE_ATTR_RO``
and the like) are not seen; the README says so.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..util.procs import find_tool


@dataclass(frozen=True)
class Definition:
    name: str
    start: int
    end: int
    text: str = ""  # the definition's first line (ctags' pattern), for the reader's eye


def parse_ctags_json(text: str) -> list[Definition]:
    """ctags' JSON lines -> the functions, first definition of each name, in line order.

    >>> parse_ctags_json('{"_type": "tag", "name": "f", "kind": "function", "line": 3, '
    ...                  '"end": 9, "pattern": "/^int f(void)$/"}')
    [Definition(name='f', start=3, end=9, text='int f(void)')]
    """
    out: dict[str, Definition] = {}
    for line in text.splitlines():
        try:
            tag = json.loads(line)
        except ValueError:
            continue
        if tag.get("_type") != "tag" or tag.get("kind") != "function" or "line" not in tag:
            continue
        name = str(tag["name"])
        start = int(tag["line"])
        end = int(tag.get("end", start))
        pattern = str(tag.get("pattern", "")).removeprefix("/^").removesuffix("$/")
        if name not in out:
            out[name] = Definition(name, start, max(start, end), pattern)
    return sorted(out.values(), key=lambda d: (d.start, d.name))


def definitions(root: Path, rel: str) -> list[Definition]:
    """The functions ``root/rel`` defines (ToolMissing without ctags)."""
    ctags = find_tool("ctags", "universal-ctags")
    argv = [ctags, "--languages=C", "--language-force=C", "--c-kinds=f", "--fields=+ne",
            "--output-format=json", "-o", "-", rel]
    try:
        proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"ctags could not read {root / rel}: {exc}") from None
    if proc.returncode != 0 and not proc.stdout:
        raise UsageError(f"ctags could not read {root / rel}: "
                         f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return parse_ctags_json(proc.stdout)
