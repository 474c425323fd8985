"""Private per-run directories: QMP socket, console log, overlays, backing files.

A run directory is created 0700 under the state directory, so sockets and logs
of one user's runs are invisible to others and parallel runs never share one.
It holds a marker file: only directories with it are ever deleted by a later
process (a stale instance's run directory, say).

    >>> with RunDir.create("demo") as run:                    # doctest: +SKIP
    ...     run.path.stat().st_mode & 0o777
    448
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..paths import state_dir

MARKER = ".p2pdma-testbed-run"


def runs_dir() -> Path:
    return state_dir() / "runs"


@dataclass
class RunDir:
    path: Path
    keep: bool = False

    @classmethod
    def create(cls, label: str, base: Path | None = None, keep: bool = False) -> "RunDir":
        base = base or runs_dir()
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
        path = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
        os.chmod(path, 0o700)
        (path / MARKER).write_text(f"{os.getpid()}\n")
        return cls(path, keep)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def owned_run_dir(path: str | Path) -> Path | None:
    """``path`` if it is a run directory the testbed made (inside the state directory's
    runs/, with the marker, owned by this user, not a symlink); else None."""
    try:
        p = Path(path)
        if not str(path) or p.is_symlink() or not p.is_dir():
            return None
        real = p.resolve()
        base = runs_dir().resolve()
        if real.parent != base or not (real / MARKER).is_file():
            return None
        if real.stat().st_uid != os.getuid():
            return None
        return real
    except (OSError, ValueError):
        return None


def remove_owned_run_dir(path: str | Path) -> bool:
    """Delete ``path`` only if :func:`owned_run_dir` vouches for it."""
    real = owned_run_dir(path)
    if real is None:
        return False
    shutil.rmtree(real, ignore_errors=True)
    return True
