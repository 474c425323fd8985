"""The one-screen summary table printed at the end of ``testbed run``."""

from __future__ import annotations

from .model import RunResult


def summary(result: RunResult, out_dir=None) -> str:
    rows = [("WORKLOAD", "PROVIDER", "CLIENT", "PREDICTED", "OBSERVED", "DATA", "MB/S", "")]
    for r in result.workloads:
        if r.name == "inventory":
            continue
        if r.command is not None:
            rows.append(("exec", "", "", "", f"exit {r.exit_status}", "", "", r.command[:40]))
            continue
        mark = "" if not r.judged else ("ok" if r.passed else "MISMATCH")
        rows.append((r.name, r.provider or "", r.client or "", r.predicted or "-",
                     r.observed or "-", "yes" if r.data_verified else "no",
                     "" if r.mb_per_s is None else f"{r.mb_per_s:.1f}", mark))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{result.topology}: kernel {result.kernel.get('release', '?')}, "
             f"{result.qemu.get('accel', '?')}, boot {result.boot_seconds:.1f} s"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    verdict = "PASS" if result.status == 0 else "FAIL"
    n = len(result.judged)
    lines.append(f"{verdict}: {n - len(result.mismatches)}/{n} judged verdicts as predicted"
                 + (f"; {result.error.splitlines()[0]}" if result.error else "")
                 + (f"; results in {out_dir}" if out_dir else ""))
    return "\n".join(lines)
