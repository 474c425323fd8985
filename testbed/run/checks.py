"""Input checks for the workloads that cover the paths merged since 6.2: what a topology
must have for them, the --pair and --inject values.  Bad input is a UsageError (exit 2)
before anything boots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError
from ..spec.model import Topology
from ..verdicts.predict import pairs
from ..workloads.hotunplug import slot_problems

if TYPE_CHECKING:
    from .runner import RunOptions

NEEDS_PAIRS = ("fio", "mixed-iovec", "split", "concurrent", "hot-unplug", "hmm-p2p")
INJECTIONS = ("corrupt", "warning")


def check_newer(topo: Topology, names: list[str], opts: "RunOptions") -> None:
    all_pairs = pairs(topo)
    for n in names:
        if n in NEEDS_PAIRS and not all_pairs:
            raise UsageError(f"--workload {n}: topology {topo.name} has no (provider, client) "
                             "pair: it needs an NVMe with a CMB and another NVMe")
        if n == "pool" and not topo.providers():
            raise UsageError(f"--workload pool: topology {topo.name} has no NVMe with a CMB")
    if "hot-unplug" in names:
        problems = slot_problems(topo)
        if problems is not None:
            raise UsageError(f"--workload hot-unplug: no provider of {topo.name} sits in a "
                             f"hot-pluggable slot ({problems})")
    needs = [n for n in names if n in NEEDS_PAIRS]
    for pair in opts.pairs:
        if needs and tuple(pair) not in all_pairs:
            raise UsageError(f"--pair {pair[0]}:{pair[1]}: not a (provider, client) pair of "
                             f"{topo.name} (needed by --workload {needs[0]}); pairs: "
                             + ", ".join(f"{p}:{c}" for p, c in all_pairs))
    for i in opts.inject:
        if i not in INJECTIONS:
            raise UsageError(f"inject {i!r}: unknown; known: {', '.join(INJECTIONS)}")
    if opts.fio_args and "fio" not in names:
        raise UsageError("--fio-arg is for the fio workload: add -w fio")
