"""Input checks for the workloads a run names: what a topology must have for each (the
workload's own ``missing()``), the --pair, --inject and --fio-arg values.  Bad input is a
UsageError (exit 2) before anything boots."""

from __future__ import annotations

from ..errors import UsageError
from ..spec.model import Topology
from ..verdicts.predict import pairs
from ..workloads import WORKLOADS
from ..workloads.base import INJECTIONS, PairWorkload, WorkloadOptions


def check_workloads(topo: Topology, names: list[str], opts: WorkloadOptions) -> None:
    for n in names:
        workload = WORKLOADS[n]
        lack = workload.missing(topo) if workload.insists else None
        if lack is not None:
            raise UsageError(f"--workload {n}: topology {topo.name} has {lack}")
    all_pairs = pairs(topo)
    needs = [n for n in names if issubclass(WORKLOADS[n], PairWorkload) and WORKLOADS[n].insists]
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
