"""The guest's serial console log: failure detection and tails for error messages.

    >>> c = Console(Path("/nonexistent"))
    >>> c.failure() is None
    True
"""

from __future__ import annotations

import re
from pathlib import Path

# Lines that mean the boot has failed for good, not "keep waiting".
FATAL = re.compile(r"Kernel panic - not syncing|end Kernel panic|BUG: kernel NULL pointer|"
                   r"Oops: |Unable to mount root fs|switch_root: |testbed-initramfs: FATAL")
PROBLEM = re.compile(r"Oops|WARNING: CPU|BUG:|Call Trace|Kernel panic|DMAR|page fault|"
                     r"p2pdma|iommu", re.I)


class Console:
    def __init__(self, path: Path):
        self.path = Path(path)

    def text(self) -> str:
        try:
            return self.path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        out = [ln.rstrip("\r") for ln in self.text().splitlines()]
        return "\n".join(out[-lines:])

    def failure(self) -> str | None:
        """The first fatal line (panic, oops, no root fs), or None."""
        m = FATAL.search(self.text())
        if not m:
            return None
        text = self.text()
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        return text[start:end if end >= 0 else None].strip()
