"""Private per-run directories: QMP socket, console log, overlays, backing files.

A run directory is created 0700 under the state directory, so sockets and logs
of one user's runs are invisible to others and parallel runs never share one.

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

from .paths import state_dir


@dataclass
class RunDir:
    path: Path
    keep: bool = False

    @classmethod
    def create(cls, label: str, base: Path | None = None, keep: bool = False) -> "RunDir":
        base = base or state_dir() / "runs"
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
        path = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
        os.chmod(path, 0o700)
        return cls(path, keep)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
