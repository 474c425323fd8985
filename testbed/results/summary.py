"""The one-screen summary table printed at the end of ``testbed run``."""

from __future__ import annotations

from pathlib import Path

from ..util.table import format_table
from .model import RunResult


def summary(result: RunResult, out_dir: Path | None = None) -> str:
    rows = [("WORKLOAD", "PROVIDER", "CLIENT", "PREDICTED", "OBSERVED", "MECHANISM", "DATA",
             "MB/S", "")]
    for r in result.workloads:
        if r.name == "inventory":
            continue
        if r.command is not None:
            rows.append(("exec", "", "", "", f"exit {r.exit_status}", "", "", "",
                         r.command[:40]))
            continue
        mark = "" if not r.judged else "ok" if r.passed else \
            "MISMATCH" if not r.verdict_matches else "MECHANISM MISMATCH"
        if r.test is not None:  # the kernel's own test: the program (suite), its device
            rows.append((f"{r.name} {r.test}", "", r.client or "", r.predicted or "-",
                         r.observed or "-", "", "", "",
                         mark if r.judged and r.passed else f"{mark} {r.detail[:60]}".strip()))
            continue
        rows.append((r.name, r.provider or "", r.client or "", r.predicted or "-",
                     r.observed or "-", r.mechanism_text, _data(r.data_verified),
                     "" if r.mb_per_s is None else f"{r.mb_per_s:.1f}", mark))
    lines = [f"{result.topology}: kernel {result.kernel.get('release', '?')}, "
             f"{result.qemu.get('accel', '?')}, boot {result.boot_seconds:.1f} s",
             format_table(rows)]
    lines += [f"FINDING: {r.name} {r.provider} <- {r.client}: {r.finding}"
              for r in result.findings]
    verdict = result.verdict.upper()
    n = len(result.judged)
    lines.append(f"{verdict}: {n - len(result.mismatches)}/{n} judged records as predicted "
                 "(verdict and mechanism)"
                 + (f"; {len(result.findings)} finding(s)" if result.findings else "")
                 + (f"; {result.error.splitlines()[0]}" if result.error else "")
                 + (f"; results in {out_dir}" if out_dir else ""))
    return "\n".join(lines)


def _data(verified: bool | None) -> str:
    return "" if verified is None else "yes" if verified else "no"
