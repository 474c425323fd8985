"""The matrix as KTAP (results.ktap in the matrix directory): one test per run (topology
× kernel) holding a test per workload holding a test per pair, as in each run's own
results.ktap, then one test for the matrix's own question: no regression against the
baseline kernel.

    >>> from testbed.results.model import RunResult
    >>> from testbed.verdicts.record import Record
    >>> from .cells import add_run
    >>> m = Matrix(kernels=[{"label": "default"}], topologies=["switch-cmb"])
    >>> r = RunResult("switch-cmb", finished=True, workloads=[
    ...     Record("p2p-copy", "nvme0", "nvme1", "ok", observed="ok")])
    >>> add_run(m, "switch-cmb", "default", r, "switch-cmb/default")
    >>> print(matrix_ktap(m), end="")
    KTAP version 1
    1..2
    # p2pdma-testbed matrix: baseline default, status PASS
      KTAP version 1
      1..1
        KTAP version 1
        1..1
        # predicted ok, observed ok
        ok 1 nvme0->nvme1
      ok 1 p2p-copy
    # results in switch-cmb/default
    ok 1 switch-cmb default
    ok 2 no regression against default
"""

from __future__ import annotations

from ..results.ktap import ERROR, SKIP, KtapTest, group, render, verdict_test
from .cells import Cell, Matrix, RunEntry


def _mechanism(c: Cell) -> str:
    if c.predicted_map_type is None:
        return ""
    if c.observed_map_type is None:
        return f"{c.predicted_map_type} (unobserved)"
    if c.observed_map_type == c.predicted_map_type:
        return c.observed_map_type
    return f"{c.observed_map_type} != {c.predicted_map_type}"


def kernel_cell_test(c: Cell) -> KtapTest:
    """A kernel test program's cell: its subtests as the run saw them (flattened paths)."""
    subs = []
    for path, status in c.subtests.items():
        if status == "skip":
            subs.append(KtapTest(path, directive=SKIP))
        elif status == "error":
            subs.append(KtapTest(path, ok=False, directive=ERROR))
        else:
            subs.append(KtapTest(path, ok=status in ("pass", "xfail")))
    name = c.workload.split("/", 1)[-1]
    if c.verdict == "error":
        return KtapTest(name, ok=False, directive=ERROR, reason=c.detail.splitlines()[0]
                        if c.detail else "error", subtests=subs)
    if c.predicted is None:
        return KtapTest(name, directive=SKIP, reason=c.detail or "not run", subtests=subs)
    return KtapTest(name, ok=bool(c.passed), subtests=subs)


def cell_test(c: Cell) -> KtapTest:
    """A cell as its run judged it (a cell without that judgement: by verdict and map type)."""
    if c.subtests or "/" in c.workload:
        return kernel_cell_test(c)
    passed = c.passed if c.passed is not None else (
        c.predicted == c.observed and (c.observed_map_type is None or c.predicted_map_type
                                       is None or c.observed_map_type == c.predicted_map_type))
    extra = [] if c.data_verified is None else \
        ["data verified" if c.data_verified else "data NOT verified"]
    why = "not judged: informational" + (f" ({c.mb_per_s:.1f} MB/s)"
                                         if c.mb_per_s is not None else "")
    return verdict_test(f"{c.provider or '?'}->{c.client or '?'}", predicted=c.predicted,
                        observed=c.observed, passed=passed, mechanism=_mechanism(c),
                        skip_why=why, diagnostics=extra)


def run_test(m: Matrix, run: RunEntry) -> KtapTest:
    cells = [c for c in m.cells if c.topology == run.topology and c.kernel == run.kernel
             and c.qemu == run.qemu]
    subtests = group((c.workload.split("/", 1)[0], cell_test(c)) for c in cells)
    if run.error:
        boot = run.error_kind.startswith(("boot", "driver", "guest-view"))
        subtests.append(KtapTest("boot" if boot else "run", ok=False, directive=ERROR,
                                 reason=run.error.splitlines()[0]))
    regressions = [f"{'QEMU ' if r.axis == 'qemu' else ''}"
                   f"{'' if r.kind == 'verdict' else r.kind + ' '}regression: {r}"
                   for r in m.regressions() + m.mechanism_regressions() + m.qemu_regressions()
                   if r.topology == run.topology and r.kernel == run.kernel
                   and r.qemu == run.qemu]
    return KtapTest(f"{run.topology} {run.column}", subtests=subtests,
                    diagnostics=[f"results in {run.directory}", *regressions])


def matrix_ktap(m: Matrix) -> str:
    regs, mech, broken = m.regressions(), m.mechanism_regressions(), m.incomplete
    qemu = m.qemu_regressions()
    against = m.baseline + (f" and QEMU {m.baseline_qemu}" if len(m.qemu_labels) > 1 else "")
    verdict = KtapTest(
        f"no regression against {against}", ok=not (regs or mech or broken or qemu),
        reason=f"{len(regs)} regression(s), {len(mech)} mechanism regression(s), "
               + (f"{len(qemu)} QEMU regression(s), " if len(m.qemu_labels) > 1 else "")
               + f"{len(broken)} incomplete run(s)" if regs or mech or broken or qemu else "",
        diagnostics=[*(str(r) for r in regs + mech),
                     *(f"QEMU {r.kind} regression: {r}" for r in qemu),
                     *(f"incomplete: {r.topology} {r.column}: {r.error.splitlines()[0]}"
                       for r in broken)])
    head = (f"p2pdma-testbed matrix: baseline {m.baseline}, status "
            f"{'FAIL' if m.status else 'PASS'}")
    return render([*(run_test(m, run) for run in m.runs), verdict], diagnostics=[head])
