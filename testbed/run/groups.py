"""IOMMU group changes between kernels, per topology: what a grouping patch's author wants
to see.  Each run's observed groups come from its ``isolation`` record; a later kernel's
groups are compared with the baseline's, and every difference is listed as which groups
became which (merged, split or reshuffled).  A change is not a regression in itself: a fix
merges groups on purpose.  (A pair that reached and shared a group, and now sits in two,
is: its ``isolation`` cell goes from ``ok`` to ``isolation-hole``.)  The matrix lists
them (:meth:`testbed.run.cells.Matrix.group_changes`).

    >>> c = compare([["a"], ["b"], ["c"]], [["a", "b"], ["c"]])
    >>> [(ch.before, ch.after) for ch in c]
    [([['a'], ['b']], [['a', 'b']])]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..verdicts.record import Record

Partition = list[list[str]]


@dataclass(frozen=True)
class Change:
    before: Partition  # the baseline's groups that changed
    after: Partition   # what the later kernel made of their devices

    @property
    def kind(self) -> str:
        if len(self.before) > 1 and len(self.after) == 1:
            return "merged"
        if len(self.before) == 1 and len(self.after) > 1:
            return "split"
        return "regrouped"

    def __str__(self) -> str:
        def groups(p: Partition) -> str:
            return " + ".join("{" + ", ".join(g) + "}" for g in p) or "(no group)"
        return f"{self.kind} {groups(self.before)} -> {groups(self.after)}"


@dataclass(frozen=True)
class GroupChange:
    topology: str
    kernel: str
    baseline_kernel: str
    changes: tuple[Change, ...]

    def __str__(self) -> str:
        return (f"{self.topology}: {self.baseline_kernel} -> {self.kernel}: "
                + "; ".join(map(str, self.changes)))

    def to_json(self) -> dict[str, Any]:
        return {"topology": self.topology, "kernel": self.kernel,
                "baseline_kernel": self.baseline_kernel,
                "changes": [{"kind": c.kind, "before": c.before, "after": c.after}
                            for c in self.changes]}


def observed_groups(records: list[Record]) -> Partition | None:
    """The observed groups of a run (None: it has no isolation record with groups)."""
    for r in records:
        if r.name == "isolation" and r.provider is None and "observed_groups" in r.data:
            return [list(g) for g in r.data["observed_groups"]]
    return None


def compare(base: Partition, later: Partition) -> list[Change]:
    """The changed groups, as connected sets: baseline groups and later groups that share
    devices end up in one :class:`Change`."""
    old = [g for g in base if g not in later]
    new = [g for g in later if g not in base]
    out = []
    while old or new:
        b_part = [old.pop(0)] if old else []
        a_part = [] if b_part else [new.pop(0)]
        grew = True
        while grew:
            grew = False
            devs = {d for g in b_part + a_part for d in g}
            for pool, part in ((old, b_part), (new, a_part)):
                for g in [g for g in pool if devs & set(g)]:
                    pool.remove(g)
                    part.append(g)
                    grew = True
        out.append(Change(b_part, a_part))
    return out
