"""inventory: the PCI tree (with IOMMU groups and ACS registers), NVMe controllers,
p2pmem providers and the IOMMU groups as JSON."""

import json
import os
import sys
import time

from .iommu import grouping_symbols, iommu_groups
from .sysfs import kernel_config, nvme_controllers, pci_devices, read


MODPROBE_TIMEOUT = 30  # seconds for one driver module to load and probe its devices


def load_modules(names):
    """modprobe each module (a driver that is not built in); {name: error} of the failures."""
    failed = {}
    if names:
        import subprocess  # only here: 0.3 s of imports under TCG, most inventories load nothing
    for name in names:
        try:
            res = subprocess.run(["modprobe", name], capture_output=True, text=True,
                                 timeout=MODPROBE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed[name] = str(exc)
            continue
        if res.returncode != 0:
            failed[name] = (res.stderr or res.stdout).strip()[:300]
    return failed


def inventory(args):
    start = time.monotonic()
    loaded = load_modules(getattr(args, "load", None) or [])
    modules_seconds = time.monotonic() - start
    deadline = start + args.wait
    want_nvme = args.expect_nvme
    while True:
        devices = pci_devices()
        nvmes = nvme_controllers()
        n_nvme_pci = sum(1 for d in devices.values() if d["class"] and d["class"].startswith("0x0108"))
        live = [c for c in nvmes.values() if c["state"] == "live"]
        want_p2p = args.expect_p2pmem
        have_p2p = sum(1 for d in devices.values() if "p2pmem" in d)
        ready = len(live) >= (want_nvme if want_nvme is not None else n_nvme_pci) \
            and (want_p2p is None or have_p2p >= want_p2p)
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    seconds = {"devices scanned and live": round(time.monotonic() - start, 3)}
    if getattr(args, "load", None):
        seconds["modules loaded"] = round(modules_seconds, 3)
    kernel = {"release": os.uname().release, "p2pdma": kernel_config(),
              "cmdline": read("/proc/cmdline")}
    if getattr(args, "grouping_symbols", False):
        kernel["grouping_symbols"] = grouping_symbols()
    doc = {
        "kernel": kernel, "pci": devices, "nvme": nvmes, "ready": ready,
        "iommu_groups": iommu_groups(), "seconds": seconds,
    }
    if loaded:
        doc["module_errors"] = loaded
    if getattr(args, "trace", False):  # set up the P2P tracing in the same process
        from . import trace  # only here: most calls do not trace
        traced = time.monotonic()
        doc["tracing"] = trace.setup()
        seconds["trace setup"] = round(time.monotonic() - traced, 3)
    json.dump(doc, sys.stdout, indent=1)
    print()
    return 0
