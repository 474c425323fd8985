"""An argv as a runnable, shell-quoted script: one option per line.

    >>> print(to_script(["qemu", "-m", "1G", "-drive", "file=/r/a b.img"], run_dir="/r"))
    #!/bin/sh
    RUN_DIR=${RUN_DIR:-/r}
    exec qemu \\
        -m 1G \\
        -drive file="$RUN_DIR"'/a b.img'
    <BLANKLINE>
"""

from __future__ import annotations

import re
import shlex
from typing import Sequence


def _prefix(run_dir: str) -> re.Pattern[str]:
    """``run_dir`` where it starts a path: at the start of an argument or of an option
    value (after ``=``, ``,`` or ``:``), and followed by ``/``, ``,`` or the end."""
    return re.compile(r"(?:^|(?<=[=,:]))" + re.escape(run_dir.rstrip("/") or "/")
                      + r"(?=/|,|$)")


def quote(arg: str, run_dir: str | None = None) -> str:
    """Shell-quote ``arg``, spelling ``run_dir`` as ``"$RUN_DIR"`` where it is the start
    of a path (never inside a word: ``--run-dir q`` leaves ``q35`` alone).

    >>> quote("file=/r/a.img,if=none", "/r")
    'file="$RUN_DIR"/a.img,if=none'
    >>> quote("q35", "q")
    'q35'
    """
    if not run_dir:
        return shlex.quote(arg)
    pieces = _prefix(run_dir).split(arg)
    if len(pieces) == 1:
        return shlex.quote(arg)
    return '"$RUN_DIR"'.join(shlex.quote(p) if p else "" for p in pieces)


def to_script(argv: Sequence[str], run_dir: str | None = None,
              prelude: Sequence[str] = ()) -> str:
    """The argv as ``exec`` line(s); occurrences of ``run_dir`` become ``$RUN_DIR``."""
    lines = ["#!/bin/sh"]
    if run_dir:
        lines.append(f"RUN_DIR=${{RUN_DIR:-{shlex.quote(run_dir)}}}")
    lines += list(prelude)
    out = [f"exec {shlex.quote(argv[0])}"]
    i = 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out.append(f"{quote(argv[i], run_dir)} {quote(argv[i + 1], run_dir)}")
            i += 2
        else:
            out.append(quote(argv[i], run_dir))
            i += 1
    lines.append(" \\\n    ".join(out))
    return "\n".join(lines) + "\n"
