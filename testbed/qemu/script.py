"""An argv as a runnable, shell-quoted script: one option per line.

Only the files the testbed itself puts in the run directory (``owned``: the namespace
and PMR images it creates, the boot overlay, the console log, the QMP socket) are
spelled relative to ``$RUN_DIR``; any other path is kept as it is, whatever its prefix
(a user's ``file:`` below the run directory stays the user's file).

    >>> print(to_script(["qemu", "-m", "1G", "-drive", "file=/r/a b.img",
    ...                  "-drive", "file=/r/mine.img"], run_dir="/r", owned=["/r/a b.img"]))
    #!/bin/sh
    RUN_DIR=${RUN_DIR:-/r}
    exec qemu \\
        -m 1G \\
        -drive file="$RUN_DIR"'/a b.img' \\
        -drive file=/r/mine.img
    <BLANKLINE>
"""

from __future__ import annotations

import re
import shlex
from typing import Collection, Sequence


def _prefix(run_dir: str) -> re.Pattern[str]:
    """``run_dir`` where it starts a path: at the start of an argument or of an option
    value (after ``=``, ``,`` or ``:``), and followed by ``/``, ``,`` or the end."""
    return re.compile(r"(?:^|(?<=[=,:]))" + re.escape(run_dir.rstrip("/") or "/")
                      + r"(?=/|,|$)")


def quote(arg: str, run_dir: str | None = None, owned: Collection[str] = ()) -> str:
    """Shell-quote ``arg``, spelling ``run_dir`` as ``"$RUN_DIR"`` where it starts one of
    the ``owned`` paths (the whole path, up to a ``,`` or the end; never inside a word:
    ``--run-dir q`` leaves ``q35`` alone).

    >>> quote("file=/r/a.img,if=none", "/r", ["/r/a.img"])
    'file="$RUN_DIR"/a.img,if=none'
    >>> quote("file=/r/user.img,if=none", "/r", ["/r/a.img"])
    'file=/r/user.img,if=none'
    >>> quote("q35", "q", ["q"])
    'q35'
    """
    mine = {str(p) for p in owned}
    if not run_dir or not mine:
        return shlex.quote(arg)
    out: list[str] = []
    last = 0
    for m in _prefix(run_dir).finditer(arg):
        end = arg.find(",", m.end())
        if m.start() < last or arg[m.start():len(arg) if end < 0 else end] not in mine:
            continue
        out += [shlex.quote(arg[last:m.start()]) if m.start() > last else "", '"$RUN_DIR"']
        last = m.end()
    if not out:
        return shlex.quote(arg)
    return "".join(out) + (shlex.quote(arg[last:]) if last < len(arg) else "")


def to_script(argv: Sequence[str], run_dir: str | None = None,
              prelude: Sequence[str] = (), owned: Collection[str] = ()) -> str:
    """The argv as ``exec`` line(s); the ``owned`` paths (the testbed's files in
    ``run_dir``) are spelled relative to ``$RUN_DIR``, nothing else."""
    lines = ["#!/bin/sh"]
    if run_dir:
        lines.append(f"RUN_DIR=${{RUN_DIR:-{shlex.quote(run_dir)}}}")
    lines += list(prelude)
    out = [f"exec {shlex.quote(argv[0])}"]
    i = 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out.append(f"{quote(argv[i], run_dir, owned)} {quote(argv[i + 1], run_dir, owned)}")
            i += 2
        else:
            out.append(quote(argv[i], run_dir, owned))
            i += 1
    lines.append(" \\\n    ".join(out))
    return "\n".join(lines) + "\n"
