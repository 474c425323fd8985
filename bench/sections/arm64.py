"""The arm64 guest beside the x86 one, paired in the same run (so a drifting machine
affects every column alike); each round:

- the x86 whole boot: `testbed boot switch-cmb -c true`;
- the arm64 floor: switch-cmb-arm64's machine (virt, the same devices), the arm64 image's
  kernel and a busybox initramfs that powers off at once (no firmware, as the testbed);
- the arm64 whole boot: `testbed boot switch-cmb-arm64 -c true`, and its SSH-ready time
  (the "SSH ready after" line).

Goal: the arm64 whole boot <= 2x the x86 one (median of the paired ratios).  The first
call builds the arm64 image when it is not cached (not timed; many minutes).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path

from bench import TESTBED, Context, Section, stats, timed
from sections.ratio import floor_initrd
from testbed.image.build import ensure_image
from testbed.machines import AARCH64
from testbed.qemu.backing import create_backing_files
from testbed.qemu.cmdline import firmware, machine_argv
from testbed.qemu.probe import probe
from testbed.spec import load_topology

GOAL = 2.0
TOPOLOGY = "switch-cmb-arm64"


def floor_argv(work: Path) -> list[str]:
    image = ensure_image(profile=AARCH64)
    topo = load_topology(TOPOLOGY)
    caps = probe(topo.machine.qemu)
    create_backing_files(topo, work)
    initrd = floor_initrd(image, work / "floor-arm64.cpio")
    return machine_argv(topo, caps.path, work, "tcg") + [
        *firmware(caps.path, topo), "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", f"{AARCH64.console_word} panic=-1 quiet", "-no-reboot", "-serial", "null"]


def boot(topology: str) -> tuple[float, float | None]:
    """(whole `boot -c true` wall seconds, SSH ready after seconds)."""
    start = time.monotonic()
    res = subprocess.run([*TESTBED, "boot", topology, "-c", "true"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         timeout=900, check=True)
    wall = time.monotonic() - start
    m = re.search(r"SSH ready after ([\d.]+) s", res.stderr)
    return wall, float(m.group(1)) if m else None


def run(ctx: Context) -> list[str]:
    floor = floor_argv(ctx.work)
    boot(TOPOLOGY)  # warm-up: probes, page cache
    x86: list[float] = []
    floors: list[float] = []
    arm: list[float] = []
    ready: list[float] = []
    ratios: list[float] = []
    for i in range(ctx.args.runs):
        x, _ = boot("switch-cmb")
        f = timed(floor, timeout=900).wall
        a, r = boot(TOPOLOGY)
        x86.append(x)
        floors.append(f)
        arm.append(a)
        ready += [r] if r is not None else []
        ratios.append(a / x)
        print(f"  round {i + 1}: x86 {x:.2f} s, arm64 floor {f:.2f} s, arm64 {a:.2f} s "
              f"(SSH ready {r if r is not None else '?'} s), arm64/x86 {a / x:.2f}", flush=True)
    print(f"x86   testbed boot switch-cmb -c true:        {stats(x86)}")
    print(f"arm64 floor (same devices, initramfs off):    {stats(floors)}")
    if ready:
        print(f"arm64 boot {TOPOLOGY}: SSH ready:       {stats(ready)}")
    print(f"arm64 testbed boot {TOPOLOGY} -c true:  {stats(arm)}")
    print(f"ratio arm64/x86 whole boot (paired):          {stats(ratios)}   goal <= {GOAL}")
    med = statistics.median
    return [f"arm64 boot -c true {med(arm):.1f} s (floor {med(floors):.1f} s), x86 "
            f"{med(x86):.1f} s: arm64/x86 median {med(ratios):.2f}; goal <= {GOAL}"]


SECTION = Section("arm64", "arm64 guest vs x86 (`testbed boot switch-cmb-arm64 -c true`)", run,
                  50)
