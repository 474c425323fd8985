"""Handing PCI functions to vfio-pci and back, and whether their IOMMU groups allow it.

VFIO hands out whole IOMMU groups: a group is *viable* only when every device in it is
bound to vfio-pci, to no driver, or to a driver that leaves DMA to the group's owner
(``pcieport``, ``pci-stub``: bridges and stubs).  Before binding anything the group of
each function is checked; a group that would need a foreign device (a disk, a NIC)
taken from its driver is refused and reported, never forced.

Every change is written first to :data:`STATE` (the driver each function had, module
parameters as they were), so :func:`restore` puts everything back whatever happened:
called in a ``finally`` by the sub-command that bound, and by the host afterwards as a
safety net (``p2pdma-guest vfio-restore``).  Every wait is bounded.

    >>> foreign_members({"0000:00:1f.0": "lpc_ich", "0000:00:1f.2": "ahci"}, ["0000:00:1f.2"])
    {'0000:00:1f.0': 'lpc_ich'}
    >>> foreign_members({"0000:03:00.0": "nvme", "0000:04:00.0": "nvme"}, ["0000:03:00.0"])
    {}
"""

import json
import os
import signal
import subprocess
import time

SYS_PCI = "/sys/bus/pci/devices"
IOMMU_GROUPS = "/sys/kernel/iommu_groups"
STATE = "/run/p2pdma-guest-vfio.json"
SYS_MODULE = "/sys/module"
LIB_MODULES = "/lib/modules"
VFIO_DRIVER = "vfio-pci"
# drivers that may stay bound in a group handed to VFIO (driver_managed_dma)
HARMLESS = ("vfio-pci", "pcieport", "pci-stub")
# drivers of the testbed's own endpoints: a group member bound to one is taken along
OWN = ("nvme",)
PARAMS = {"type1": "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
          "iommufd": "/sys/module/iommufd/parameters/allow_unsafe_interrupts"}


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def driver_of(bdf):
    link = f"{SYS_PCI}/{bdf}/driver"
    return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None


def group_of(bdf):
    link = f"{SYS_PCI}/{bdf}/iommu_group"
    return int(os.path.basename(os.path.realpath(link))) if os.path.exists(link) else None


def group_members(number):
    try:
        return sorted(os.listdir(f"{IOMMU_GROUPS}/{number}/devices"))
    except OSError:
        return []


def foreign_members(drivers, ours):
    """Members of a group (``{bdf: driver}``) that are not ``ours`` and hold a driver that
    does not leave DMA to VFIO and is not one of the testbed's own endpoints (:data:`OWN`):
    what makes the group not viable."""
    return {b: d for b, d in drivers.items()
            if b not in ours and d and d not in HARMLESS and d not in OWN}


def groups(bdfs):
    """{bdf: {"group": N, "members": {bdf: driver}, "foreign": {bdf: driver},
    "along": [bdf]}}: ``along`` are members bound to one of :data:`OWN` drivers, which
    go to vfio-pci with ``bdf``."""
    out = {}
    for bdf in bdfs:
        number = group_of(bdf)
        members = {m: driver_of(m) for m in group_members(number)} if number is not None \
            else {}
        out[bdf] = {"group": number, "members": members,
                    "foreign": foreign_members(members, bdfs),
                    "along": [m for m, d in members.items() if m not in bdfs and d in OWN]}
    return out


def builtin(name):
    """True when the kernel has ``name`` built in: its /sys/module entry (modules with
    parameters) or its line in modules.builtin."""
    name = name.replace("-", "_")
    if os.path.isdir(f"{SYS_MODULE}/{name}"):
        return True
    lines = _read(f"{LIB_MODULES}/{os.uname().release}/modules.builtin") or ""
    return any(os.path.basename(line).removesuffix(".ko").replace("-", "_") == name
               for line in lines.splitlines())


def modprobe(name, timeout=30):
    """None when the module is loaded or built in, else why not.  A kernel without a
    modules directory (everything built in) is never asked to load one: a module that is
    not there is not in the kernel."""
    if builtin(name):
        return None
    if not os.path.isdir(f"{LIB_MODULES}/{os.uname().release}"):
        return (f"{name} is not in this kernel (not built in, and the kernel has no "
                f"{LIB_MODULES}/{os.uname().release} to load it from)")
    try:
        res = subprocess.run(["modprobe", name], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"modprobe {name}: {exc}"
    return None if res.returncode == 0 else f"modprobe {name}: {res.stderr.strip()[-200:]}"


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def exit_on_signals():
    """SIGTERM and SIGHUP (the host ending a call, an SSH connection dropped) unwind the
    stack like an exception, so every ``finally`` that gives devices back runs."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)


def _load_state():
    try:
        with open(STATE) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    state.setdefault("drivers", {})
    state.setdefault("params", {})
    return state


def _save_state(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, STATE)


def allow_unsafe_interrupts(kind):
    """Set ``kind``'s (type1 or iommufd) allow_unsafe_interrupts, remembering the old
    value; the old value ('N'/'Y'), None when there is no such parameter."""
    path = PARAMS[kind]
    old = _read(path)
    if old is None:
        return None
    state = _load_state()
    state["params"].setdefault(path, old)
    _save_state(state)
    _write(path, "1")
    return old


def _wait(predicate, seconds, step=0.05):
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def bind(bdfs, timeout=30.0):
    """Bind each function to vfio-pci (recording its driver first); a report with the
    drivers before, each bind's seconds, and ``problems`` (empty when all went well)."""
    report: dict = {"before": {}, "seconds": {}, "problems": []}
    state = _load_state()
    for bdf in bdfs:
        if not os.path.isdir(f"{SYS_PCI}/{bdf}"):
            report["problems"].append(f"{bdf}: no such PCI device in the guest")
            continue
        old = driver_of(bdf)
        report["before"][bdf] = old
        if old == VFIO_DRIVER:
            continue
        state["drivers"].setdefault(bdf, old)
        _save_state(state)
        start = time.monotonic()
        try:
            _write(f"{SYS_PCI}/{bdf}/driver_override", VFIO_DRIVER)
            if old:
                _write(f"{SYS_PCI}/{bdf}/driver/unbind", bdf)
            _write("/sys/bus/pci/drivers_probe", bdf)
        except OSError as exc:
            report["problems"].append(f"{bdf}: binding to {VFIO_DRIVER}: {exc}")
            continue
        if not _wait(lambda: driver_of(bdf) == VFIO_DRIVER, timeout):
            report["problems"].append(f"{bdf}: not bound to {VFIO_DRIVER} after {timeout:.0f} s "
                                      f"(driver: {driver_of(bdf)})")
        report["seconds"][bdf] = round(time.monotonic() - start, 3)
    return report


def _nvme_live(bdf):
    base = "/sys/class/nvme"
    for name in os.listdir(base) if os.path.isdir(base) else []:
        if os.path.basename(os.path.realpath(f"{base}/{name}/device")) == bdf:
            return _read(f"{base}/{name}/state") == "live"
    return False


def restore(timeout=60.0):
    """Give every function recorded in :data:`STATE` back to its driver and the module
    parameters their values; a report (``problems`` empty when everything is back)."""
    state = _load_state()
    report: dict = {"restored": {}, "problems": [], "params": {}}
    for bdf, old in list(state["drivers"].items()):
        if not os.path.isdir(f"{SYS_PCI}/{bdf}"):
            report["restored"][bdf] = "gone (removed from the guest)"
            del state["drivers"][bdf]
            continue
        start = time.monotonic()
        try:
            _write(f"{SYS_PCI}/{bdf}/driver_override", "\n")
            if driver_of(bdf) == VFIO_DRIVER:
                _write(f"{SYS_PCI}/{bdf}/driver/unbind", bdf)
            if old and driver_of(bdf) is None:
                _write("/sys/bus/pci/drivers_probe", bdf)
        except OSError as exc:
            report["problems"].append(f"{bdf}: giving it back to {old}: {exc}")
            continue
        done = _wait(lambda: driver_of(bdf) == old and (old != "nvme" or _nvme_live(bdf)),
                     timeout)
        if not done:
            report["problems"].append(f"{bdf}: not back on {old} after {timeout:.0f} s "
                                      f"(driver: {driver_of(bdf)})")
            continue
        report["restored"][bdf] = f"{old} in {time.monotonic() - start:.2f} s"
        del state["drivers"][bdf]
    for path, old in list(state["params"].items()):
        try:
            _write(path, old)
            report["params"][path] = old
            del state["params"][path]
        except OSError as exc:
            report["problems"].append(f"{path}: {exc}")
    if state["drivers"] or state["params"]:
        _save_state(state)
    elif os.path.exists(STATE):
        os.unlink(STATE)
    return report
