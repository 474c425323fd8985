"""Problems found in a topology file, each pinned to a file, line, column and field.

    >>> p = Problem("t.yaml", 3, 5, "machine.memory", "expected a size such as 2G")
    >>> str(p)
    't.yaml:3:5: machine.memory: expected a size such as 2G'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class SpecError(UsageError):
    """One or more problems in a topology file (exit status 2)."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(word: str, choices) -> str:
    """A ``did you mean`` hint for a misspelled key, or ``""``.

    >>> did_you_mean("cbm", ["cmb", "pmr", "serial"])
    " (did you mean 'cmb'?)"
    """
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
