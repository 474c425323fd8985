"""Problems found in a topology file, each pinned to a file, line, column and field.

The classes live in :mod:`testbed.errors` (one exception hierarchy); this module
gathers what the topology parser reports with.

    >>> p = Problem("t.yaml", 3, 5, "machine.memory", "expected a size such as 2G")
    >>> str(p)
    't.yaml:3:5: machine.memory: expected a size such as 2G'
"""

from __future__ import annotations

from ..errors import Problem, SpecError, did_you_mean

__all__ = ["Problem", "SpecError", "did_you_mean"]
