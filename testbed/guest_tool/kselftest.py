"""kselftest: run one of the kernel's own test programs (tools/testing/selftests) in the
guest, bounded in time, with the device it needs handed to vfio-pci when asked, and hand
back its output (KTAP / TAP 13, parsed on the host) and how it ended.

- ``--module M`` (repeatable): loaded first (vfio-pci is a module in Debian's kernel); a
  module that is built in or loaded already is fine.
- ``--vfio BDF``: the device's IOMMU group is checked and the device bound to vfio-pci
  (:mod:`vfiobind`: the driver it had is recorded first and given back afterwards,
  whatever happened); ``--unsafe-interrupts`` for a vIOMMU without interrupt remapping.
- ``--hugepages N``: that many 2 MiB huge pages reserved while it runs (the hugetlb
  variants of the DMA mapping tests skip without them), the old count put back.
- the program runs in its own session, stdout and stderr in one stream (the harness logs
  a failed expectation on stderr right before the result line it explains), and is killed
  with everything it started when ``--timeout`` passes.
"""

import os
import signal
import subprocess
import time

from . import vfiobind

MAX_OUTPUT = 512 * 1024
KILL_WAIT = 30  # seconds a killed program gets to go; longer: it is stuck in the kernel
HUGEPAGES = "/proc/sys/vm/nr_hugepages"
DEBUGFS = "/sys/kernel/debug"


def mount_debugfs():
    """Some tests read IOMMU page tables from debugfs: mount it when it is not."""
    if os.path.isdir(f"{DEBUGFS}/iommu") or os.path.ismount(DEBUGFS):
        return None
    res = subprocess.run(["mount", "-t", "debugfs", "none", DEBUGFS], capture_output=True,
                         text=True, timeout=30, check=False)
    return None if res.returncode == 0 else res.stderr.strip()


def reserve_hugepages(count):
    try:
        with open(HUGEPAGES) as f:
            old = f.read().strip()
        with open(HUGEPAGES, "w") as f:
            f.write(str(count))
        with open(HUGEPAGES) as f:
            return old, int(f.read().strip())
    except (OSError, ValueError):
        return None, 0


def run_program(directory, program, args, env, timeout):
    """(output, exit status or None, signal or None, timed_out, seconds)."""
    start = time.monotonic()
    path = os.path.join(directory, program)
    try:
        proc = subprocess.Popen([path, *args], cwd=directory, env=dict(os.environ, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return f"cannot start {path}: {exc}\n", None, None, False, 0.0
    timed_out = False
    try:
        raw, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            raw, _ = proc.communicate(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired as again:  # stuck in the kernel (D state), or
            # something outside its process group holds its output open: do not wait
            raw = (again.output or exc.output or b"") + (
                b"\n# the program's output did not end within %d s of SIGKILL (a task "
                b"stuck in the kernel?)\n" % KILL_WAIT)
    text = raw[-MAX_OUTPUT:].decode(errors="replace")
    rc = proc.returncode
    status, sig = (rc, None) if rc is None or rc >= 0 else (None, -rc)
    return text, status, sig, timed_out, round(time.monotonic() - start, 3)


def _prepare_vfio(args, doc):
    """Hand the device to vfio-pci; an error string when it cannot be."""
    doc["groups"] = vfiobind.groups([args.vfio])
    group = doc["groups"][args.vfio]
    if group["group"] is None:
        return f"{args.vfio} has no IOMMU group (VFIO needs an IOMMU)"
    if group["foreign"]:
        return "its IOMMU group also holds " + ", ".join(
            f"{b} ({d})" for b, d in sorted(group["foreign"].items()))
    if args.unsafe_interrupts:
        doc["unsafe_interrupts"] = {k: vfiobind.allow_unsafe_interrupts(k)
                                    for k in ("type1", "iommufd")}
    doc["bind"] = vfiobind.bind([args.vfio, *group["along"]])
    return "; ".join(doc["bind"]["problems"]) or None


def kselftest(args):
    doc = {"program": args.program, "modules": {}}
    for name in args.module:
        doc["modules"][name] = vfiobind.modprobe(name) or "ok"
    doc["debugfs"] = mount_debugfs() or "ok"
    env = dict(e.split("=", 1) for e in args.env)
    old_pages = None
    if args.hugepages:
        old_pages, doc["hugepages"] = reserve_hugepages(args.hugepages)
    try:
        error = _prepare_vfio(args, doc) if args.vfio else None
        if error:
            doc.update(stage="bind", error=error)
        else:
            out, status, sig, timed_out, seconds = run_program(
                args.dir, args.program, args.arg, env, args.timeout)
            doc.update(output=out, exit_status=status, signal=sig, timed_out=timed_out,
                       seconds=seconds)
    finally:
        if args.vfio:
            doc["restore"] = vfiobind.restore()
        if old_pages is not None:
            reserve_hugepages(old_pages)
    return doc


KUNIT = f"{DEBUGFS}/kunit"


def kunit_results():
    """{"suites": {name: KTAP text}} of the KUnit suites the kernel ran (at boot), from
    debugfs; "error" when there is no KUnit there."""
    suites: dict = {}
    doc = {"debugfs": mount_debugfs() or "ok", "suites": suites}
    if not os.path.isdir(KUNIT):
        return dict(doc, stage="kunit", error=f"no {KUNIT}: the kernel has no KUnit in "
                    "debugfs (CONFIG_KUNIT, CONFIG_KUNIT_DEBUGFS)")
    for name in sorted(os.listdir(KUNIT)):
        try:
            with open(f"{KUNIT}/{name}/results", errors="replace") as f:
                suites[name] = f.read()[-MAX_OUTPUT:]
        except OSError as exc:
            suites[name] = f"# cannot read the results: {exc}\n"
    return doc
