"""The files a topology names for NVMe namespaces and PMRs, and what the testbed will do
with them.  The rule, checked at validation and again just before QEMU starts:

- an existing path must be a regular file (not a directory, device, FIFO, socket or a
  loop of symbolic links, and not under /proc, /sys or /dev) of exactly the size the
  topology gives: it is the user's image, used as it is (the guest writes to it);
- the testbed never grows, truncates or overwrites a file: a file of another size is an
  error, not something to fix;
- a missing path is created (sparse, exactly that size) only when the topology says
  ``create: true`` for it, so a mistyped path is an error, not a fresh empty image.

Files the topology does not name live in the per-run directory and go with it.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> check_backing_file(d / "new.img", 1 << 20, create=False, role="namespace")
    'does not exist (add create: true to let the testbed create it)'
    >>> check_backing_file(pathlib.Path("/dev/zero"), 1 << 20, create=True, role="PMR") is not None
    True
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .source import file_kind
from .units import format_size

SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def _under(path: Path, base: str) -> bool:
    return path == Path(base) or Path(base) in path.parents


def check_backing_file(path: Path, size: int, create: bool, role: str) -> str | None:
    """Why ``path`` cannot back a ``role`` (``namespace``, ``PMR``) of ``size`` bytes, or
    None when it can (see the module doc for the rule)."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, RuntimeError):
        return "a loop of symbolic links"
    for base in SYSTEM_DIRS:
        if _under(real, base):
            return f"is under {base}: a {role} needs a regular file of your own"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            return "is a symbolic link to nothing"
        if not create:
            return "does not exist (add create: true to let the testbed create it)"
        parent = path.parent
        if not parent.is_dir():
            what = "is not a directory" if parent.exists() else "does not exist"
            return f"directory {str(parent)!r} {what}: create it or give another path"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"directory {str(parent)!r} is not writable"
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        return f"unusable path: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}, not a regular file"
    if st.st_size != size:
        return (f"is {st.st_size} bytes but the {role} is "
                f"{format_size(size)}: the testbed never grows, truncates or overwrites a file "
                f"of another size (give one of exactly {format_size(size)}, or a new path with "
                "create: true)")
    if not os.access(path, os.R_OK | os.W_OK):
        return "is not readable and writable"
    return None
