"""Host programs: finding them, and running one build step with its output kept.

    >>> run_step(["true"], "nothing").returncode
    0
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from ..errors import TestbedError, ToolMissing

log = logging.getLogger(__name__)

SBIN = "/usr/sbin:/sbin"


def find_tool(name: str, package: str | None = None) -> str:
    """Absolute path of a host program (also looked for in /usr/sbin, /sbin), or
    ToolMissing naming the Debian package that ships it."""
    found = shutil.which(name) or shutil.which(name, path=SBIN)
    if found is None:
        raise ToolMissing(name, package=package or name)
    return found


def run_step(argv: Sequence[str], what: str, *, error: type[TestbedError] = TestbedError,
             cwd: Path | None = None, timeout: float | None = None,
             log_file: TextIO | None = None, on_line: Callable[[str], None] | None = None,
             tail_lines: int = 40, package: str | None = None,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one step; its output goes to ``log_file`` and ``on_line`` as it comes.

    On a non-zero exit raise ``error`` with the step name and the output's last
    lines; a missing program raises ToolMissing (naming ``package``). ``env``: variables
    added to this process's environment for the step.
    """
    tail: deque[str] = deque(maxlen=tail_lines)
    if log_file is not None:
        log_file.write(f"\n$ {' '.join(argv)}\n")
        log_file.flush()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise ToolMissing(argv[0], package=package or argv[0]) from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if log_file is not None:
                log_file.write(line)
            tail.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line.rstrip("\n"))
            if timeout is not None and time.monotonic() - start > timeout:
                proc.kill()
                break
        rc = proc.wait(timeout=None if timeout is None else max(1.0, timeout))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if log_file is not None:
            log_file.flush()
    if rc != 0:
        raise error(f"{what} failed (exit status {rc}): {' '.join(argv)}\n" + "\n".join(tail))
    log.debug("%s: done in %.1f s", what, time.monotonic() - start)
    return subprocess.CompletedProcess(list(argv), rc, "\n".join(tail), "")
