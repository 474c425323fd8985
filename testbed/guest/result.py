"""The result of one command run in a guest (kept apart from the SSH client, which is
slow to import).

    >>> CommandResult("true", 0, "", "", 0.01).ok
    True
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int  # -1 when the command timed out
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def describe(self) -> str:
        status = "timed out" if self.timed_out else f"exit status {self.exit_status}"
        return (f"{self.command!r}: {status}\n--- stdout ---\n{self.stdout[-2000:]}"
                f"\n--- stderr ---\n{self.stderr[-2000:]}")
