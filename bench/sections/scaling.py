"""Boot to SSH-ready and a whole `boot -c true` with 2 to 64 NVMe (2 MiB CMBs, 8 per
x3130 switch)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from bench import TESTBED, Context, Section

TEMPLATE = """name: scale-{n}
pcie:
{ports}
"""


def scaling_topology(n: int, path: Path) -> Path:
    lines = []
    per = 8
    for s in range((n + per - 1) // per):
        count = min(per, n - s * per)
        lines += [f"  - root_port: rp{s}", "    device:", f"      switch: sw{s}",
                  "      downstream:"]
        for i in range(count):
            lines.append(f"        - {{nvme: n{s * per + i}, cmb: 2M, "
                         f"namespaces: [{{size: 1M}}]}}")
    path.write_text(TEMPLATE.format(n=n, ports="\n".join(lines)))
    return path


def run(ctx: Context) -> list[str]:
    print("  NVMe  boot to SSH-ready  whole boot -c true")
    out = []
    for n in [int(x) for x in ctx.args.scaling.split(",") if x]:
        topo = scaling_topology(n, ctx.work / f"scale-{n}.yaml")
        start = time.monotonic()
        res = subprocess.run([*TESTBED, "boot", str(topo), "-c", "true"], capture_output=True,
                             text=True, timeout=900, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - start
        m = re.search(r"SSH ready after ([\d.]+) s", res.stderr)
        ready = f"{float(m.group(1)):.2f} s" if m else f"failed (exit {res.returncode})"
        print(f"  {n:4d}  {ready:>17}  {wall:8.2f} s", flush=True)
        out.append(f"{n} NVMe: SSH-ready {ready}, boot -c true {wall:.2f} s")
    return out[-1:]


def options(p) -> None:
    p.add_argument("--scaling", default="2,8,16,32,64",
                   help="NVMe counts (default: %(default)s)")


SECTION = Section("scaling", "boot time by number of NVMe controllers (2M CMBs, 8 per "
                  "switch)", run, 30, options)
