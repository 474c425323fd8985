"""Files written atomically, JSON caches, and output directories that never overwrite.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.json", '{"x": 1}\\n')
    >>> cache = JsonCache(d / "cache.json")
    >>> cache.load() is None
    True
    >>> cache.store({"answer": 42}); cache.load()
    {'answer': 42}
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError


def atomic_write(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a
    rename, so readers see the old content or the new, never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class JsonCache:
    """One JSON document in a file: ``load()`` gives None when it is missing or unreadable;
    ``store()`` writes atomically and ignores a read-only cache (it only costs speed)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> Any:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def store(self, value: Any) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(value, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass


def new_out_dir(path: Path | None, label: str, option: str = "--out",
                base: Path = Path("runs")) -> Path:
    """Create an output directory that holds no earlier results.

    ``path`` None: ``runs/<time>-<label>`` (``-1``, ``-2`` ... when taken).  A given
    path must not exist or be an empty directory; UsageError otherwise, before
    anything was created.
    """
    if path is None:
        candidate = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
        path, n = candidate, 1
        while path.exists() or path.is_symlink():
            path = candidate.with_name(f"{candidate.name}-{n}")
            n += 1
    check_out_dir(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create: {exc.strerror}") from None
    return path


def check_out_dir(path: Path, option: str = "--out") -> None:
    """UsageError unless ``path`` can become a fresh output directory (checks only)."""
    if str(path) == "":
        raise UsageError(f"{option}: an empty path")
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{option} {path}: a dangling symbolic link")
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{option} {path}: exists and is not a directory")
        try:
            empty = not any(path.iterdir())
        except OSError as exc:
            raise UsageError(f"{option} {path}: cannot read: {exc.strerror}") from None
        if not empty:
            raise UsageError(f"{option} {path}: exists and is not empty (results never "
                             "overwrite earlier results)")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {parent} is not writable")
