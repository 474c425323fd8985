"""A cheap identity of a directory tree's contents: its file list with sizes and mtimes.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a").write_text("x")
    >>> tree_fingerprint(d) == tree_fingerprint(d)
    True
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_fingerprint(d: Path) -> str:
    """sha256 of a tree's file list with sizes and mtimes (symlinks: their target)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, d)
        for name in sorted(filenames + [n for n in dirnames if os.path.islink(
                os.path.join(dirpath, n))]):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.islink(p):
                h.update(f"{rel_dir}/{name}\0l\0{os.readlink(p)}\n".encode())
            else:
                h.update(f"{rel_dir}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
