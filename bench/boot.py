#!/usr/bin/env python3
"""Boot benchmark: boot a topology cold N times under TCG and print min/median/max
seconds from command start to SSH-ready (target: median <= 8 s for switch-cmb).

    .venv/bin/python bench/boot.py [--topology switch-cmb] [--runs 5]

Each run is a fresh `testbed boot ... -c true` process (so probe caches, imports
and QEMU start-up are all counted), timed until the orchestrator reports SSH
ready; the guest image must already be built (`make image`).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time


def one_boot(topology: str) -> tuple[float, float]:
    """(seconds to SSH-ready as seen from the command's start, whole command seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "boot", topology, "--accel", "tcg",
                             "-c", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ready = None
    for line in proc.stderr:
        if ready is None and re.search(r"SSH ready after", line):
            ready = time.monotonic() - start
    proc.wait()
    if proc.returncode != 0 or ready is None:
        raise SystemExit(f"boot of {topology} failed (exit {proc.returncode})")
    return ready, time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="switch-cmb")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    subprocess.run([sys.executable, "-m", "testbed", "image", "build"], check=True)
    ready, total = [], []
    for i in range(args.runs):
        r, t = one_boot(args.topology)
        ready.append(r)
        total.append(t)
        print(f"run {i + 1}: SSH ready {r:.2f} s (command incl. shutdown {t:.2f} s)", flush=True)
    print(f"{args.topology} boot to SSH-ready over {args.runs} cold boots (TCG, "
          f"{os.cpu_count()} cores): min {min(ready):.2f} s, median "
          f"{statistics.median(ready):.2f} s, max {max(ready):.2f} s; whole command median "
          f"{statistics.median(total):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
