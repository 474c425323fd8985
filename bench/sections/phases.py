"""The phases of `testbed run switch-cmb -w p2p-copy` and "everything else": the wall time
that is neither the guest booting nor the judged copies (goal: <= 0.5 s)."""

from __future__ import annotations

import json
import statistics

from bench import TESTBED, Context, Section, timed

GOAL = 0.5


def one(ctx: Context, i: int) -> tuple[float, float, float, dict[str, float]]:
    out = ctx.work / f"run{i}"
    t = timed([*TESTBED, "run", "switch-cmb", "-q", "-w", "p2p-copy", "--out", str(out)],
              timeout=900, check=False)
    ph = json.loads((out / "results.json").read_text()).get("phases", {})
    booting = ph.get("boot: kernel to ready", 0.0)
    copies = ph.get("workload: p2p-copy", 0.0)
    return t.wall, booting, copies, ph


def run(ctx: Context) -> list[str]:
    runs = [one(ctx, i) for i in range(max(1, ctx.args.phase_runs))]
    rest = [wall - booting - copies for wall, booting, copies, _ in runs]
    # the run whose "everything else" is the median one, phase by phase
    wall, booting, copies, ph = sorted(runs, key=lambda r: r[0] - r[1] - r[2])[len(runs) // 2]
    width = max((len(k) for k in ph), default=10)
    for name, seconds in ph.items():
        print(f"  {name:<{width}}  {seconds:6.2f} s")
    median = statistics.median(rest)
    print(f"wall {wall:.2f} s = guest booting {booting:.2f} s + judged copies {copies:.2f} s"
          f" + everything else {wall - booting - copies:.2f} s   goal <= {GOAL} s")
    if len(runs) > 1:
        print(f"everything else over {len(runs)} runs: "
              + ", ".join(f"{r:.2f}" for r in rest) + f" s (median {median:.2f} s)")
    return [f"testbed run switch-cmb -w p2p-copy: everything else median {median:.2f} s of "
            f"{statistics.median(r[0] for r in runs):.2f} s wall; goal <= {GOAL} s"]


def options(p) -> None:
    p.add_argument("--phase-runs", type=int, default=3,
                   help="runs of `testbed run` for the phases (default: %(default)s)")


SECTION = Section("phases", "phases of `testbed run switch-cmb -w p2p-copy`", run, 20,
                  options)
