#!/usr/bin/env python3
"""The testbed's speed, measured against a floor in the same run (`make bench`).

Three figures, each printed as it is measured:

1. Floor vs testbed, paired (floor, testbed, floor, testbed, ...) so a drifting machine
   affects both: the *floor* is the same QEMU machine (switch-cmb's devices, the image's
   kernel through qboot and its PVH entry) booting a busybox initramfs that powers off at
   once; the *testbed* is a whole `testbed boot switch-cmb -c true` (start-up, boot, SSH,
   the guest-side tree check, one command, shutdown).  Goal: median ratio <= 1.6.
2. The phase breakdown of one `testbed run switch-cmb -w p2p-copy` (from its
   results.json): interpreter and imports, checks, QEMU start, kernel to ready, SSH
   connect, tree check, each workload, collection, shutdown; "everything else" is the
   wall time that is neither the guest booting nor the judged copies.  Goal: <= 0.5 s.
3. How boot time grows with the number of NVMe controllers (2 to 64, 8 per switch).
4. Kernel profiles: cold builds, a one-file change, the profile kernel's boot
   (bench/kernel.py; ``--skip-kernel`` leaves them out: the cold builds take minutes).

    .venv/bin/python bench/bench.py [--runs 5] [--scaling 2,8,16,32,64] [--skip-scaling]

Timings are wall-clock seconds from Python's monotonic clock around whole processes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.image.build import ensure_image  # noqa: E402
from testbed.kernel.cpio import CpioWriter, read_cpio  # noqa: E402
from testbed.qemu.cmdline import firmware, machine_argv  # noqa: E402
from testbed.qemu.backing import create_backing_files  # noqa: E402
from testbed.qemu.probe import probe  # noqa: E402
from testbed.spec import load_topology  # noqa: E402

TESTBED = [sys.executable, "-m", "testbed"]
FLOOR_INIT = "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"


def floor_initrd(image, dest: Path) -> Path:
    """A busybox initramfs whose init powers the machine off at once."""
    busybox = next(e for e in read_cpio(image.initrd.read_bytes()) if e.name == "bin/busybox")
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/busybox", busybox.data, 0o755)
    cpio.directories("dev")
    cpio.file("init", FLOOR_INIT.encode(), 0o755)
    dest.write_bytes(cpio.finish())
    return dest


def floor_once(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300, check=True)
    return time.monotonic() - start


def testbed_once(topology: str) -> float:
    start = time.monotonic()
    subprocess.run([*TESTBED, "boot", topology, "-q", "-c", "true"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
                   check=True)
    return time.monotonic() - start


def stats(values: list[float]) -> str:
    return (f"min {min(values):.2f}  median {statistics.median(values):.2f}  "
            f"max {max(values):.2f}")


def floor_vs_testbed(runs: int, work: Path) -> None:
    image = ensure_image()
    topo = load_topology("switch-cmb")
    caps = probe(topo.machine.qemu)
    create_backing_files(topo, work)
    initrd = floor_initrd(image, work / "floor.cpio")
    argv = machine_argv(topo, caps.path, work, "tcg") + [
        *firmware(caps.path), "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot", "-serial", "null"]
    floors, tbs, ratios = [], [], []
    testbed_once("switch-cmb")  # warm-up: caches, page cache
    for i in range(runs):
        f = floor_once(argv)
        t = testbed_once("switch-cmb")
        floors.append(f)
        tbs.append(t)
        ratios.append(t / f)
        print(f"  pair {i + 1}: floor {f:.2f} s, testbed {t:.2f} s, ratio {t / f:.2f}",
              flush=True)
    print(f"floor (same devices + kernel, initramfs powers off):  {stats(floors)}")
    print(f"testbed boot switch-cmb -c true:                       {stats(tbs)}")
    print(f"ratio testbed/floor (paired):                          {stats(ratios)}"
          f"   goal <= 1.6")


def phases(work: Path) -> None:
    out = work / "run"
    start = time.monotonic()
    subprocess.run([*TESTBED, "run", "switch-cmb", "-q", "-w", "p2p-copy", "--out", str(out)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    wall = time.monotonic() - start
    data = json.loads((out / "results.json").read_text())
    ph = data.get("phases", {})
    width = max(len(k) for k in ph) if ph else 10
    for name, seconds in ph.items():
        print(f"  {name:<{width}}  {seconds:6.2f} s")
    guest_boot = sum(ph.get(f"boot: {k}", 0.0) for k in ("kernel to ready",))
    copies = ph.get("workload: p2p-copy", 0.0)
    print(f"wall {wall:.2f} s = guest booting {guest_boot:.2f} s + judged copies {copies:.2f} s"
          f" + everything else {wall - guest_boot - copies:.2f} s   goal <= 0.5 s")


SCALING_TEMPLATE = """name: scale-{n}
pcie:
{ports}
"""


def scaling_topology(n: int, path: Path) -> Path:
    lines = []
    per = 8
    for s in range((n + per - 1) // per):
        count = min(per, n - s * per)
        lines.append(f"  - root_port: rp{s}")
        lines.append(f"    device:")
        lines.append(f"      switch: sw{s}")
        lines.append(f"      downstream:")
        for i in range(count):
            lines.append(f"        - {{nvme: n{s * per + i}, cmb: 2M, "
                         f"namespaces: [{{size: 1M}}]}}")
    path.write_text(SCALING_TEMPLATE.format(n=n, ports="\n".join(lines)))
    return path


def scaling(counts: list[int], work: Path) -> None:
    print("  NVMe  boot to SSH-ready  whole boot -c true")
    for n in counts:
        topo = scaling_topology(n, work / f"scale-{n}.yaml")
        start = time.monotonic()
        res = subprocess.run([*TESTBED, "boot", str(topo), "-c", "true"], capture_output=True,
                             text=True, timeout=900)
        wall = time.monotonic() - start
        m = re.search(r"SSH ready after ([\d.]+) s", res.stderr)
        ready = f"{float(m.group(1)):.2f} s" if m else f"failed (exit {res.returncode})"
        print(f"  {n:4d}  {ready:>17}  {wall:8.2f} s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scaling", default="2,8,16,32,64")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-kernel", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TESTBED_STATE", tempfile.mkdtemp(prefix="testbed-bench-state-"))
    print(f"p2pdma-testbed bench, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="testbed-bench-") as tmp:
        work = Path(tmp)
        print("\n1. floor vs testbed", flush=True)
        floor_vs_testbed(args.runs, work)
        print("\n2. phases of `testbed run switch-cmb -w p2p-copy`", flush=True)
        phases(work)
        if not args.skip_scaling:
            print("\n3. boot time by number of NVMe controllers (2M CMBs, 8 per switch)",
                  flush=True)
            scaling([int(x) for x in args.scaling.split(",")], work)
        if not args.skip_kernel:
            from kernel import kernel_figures  # bench/kernel.py, beside this file
            print("\n4. kernel profiles (linux-source-7.3)", flush=True)
            kernel_figures(work, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
