"""The kernel's gcov data (CONFIG_GCOV_KERNEL): reset the counters, hand the .gcda files to
the host.  The host turns them into line counts with gcov and the build tree's .gcno files.

    p2pdma-guest gcov reset  --root /build/tree   # counters to zero (before the workloads)
    p2pdma-guest gcov collect --root /build/tree  # the .gcda files, as a base64 tar in JSON

The kernel shows one ``.gcda`` per profiled object under
``/sys/kernel/debug/gcov/<build tree>/``; each read gives the counters as they are now.
``collect`` does not reset them (the host takes differences between two collects, so no
count is lost between a read and a reset).
"""

import base64
import io
import os
import tarfile
import time

DEBUGFS = "/sys/kernel/debug"
GCOV = f"{DEBUGFS}/gcov"


def _mount():
    """None when debugfs shows the gcov directory, else why not."""
    if not os.path.isdir(GCOV):
        if not os.path.ismount(DEBUGFS):
            import subprocess  # only here: mounting debugfs once per boot
            subprocess.run(["mount", "-t", "debugfs", "none", DEBUGFS], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    if os.path.isdir(GCOV):
        return None
    if not os.path.ismount(DEBUGFS):
        return "debugfs could not be mounted (CONFIG_DEBUG_FS)"
    return f"{GCOV} is missing: the kernel has no gcov support (CONFIG_GCOV_KERNEL)"


def _base(root):
    """The directory under /sys/kernel/debug/gcov that mirrors the build tree ``root``."""
    return GCOV + "/" + root.strip("/") if root else GCOV


def reset(root=""):
    problem = _mount()
    if problem:
        return {"ok": False, "why": problem}
    with open(f"{GCOV}/reset", "w") as f:
        f.write("1")
    base = _base(root)
    return {"ok": True, "found": os.path.isdir(base), "base": base}


def collect(root=""):
    """Every .gcda under the build tree's directory, as a tar (paths relative to it)."""
    start = time.monotonic()
    problem = _mount()
    if problem:
        return {"ok": False, "why": problem}
    base = _base(root)
    if not os.path.isdir(base):
        found = []
        for d, _, files in os.walk(GCOV):
            if any(f.endswith(".gcda") for f in files):
                found.append(d)
        return {"ok": False, "why": f"no gcov data for the build tree {root} in {GCOV} "
                                    f"(found: {', '.join(sorted(found)[:3]) or 'none'})"}
    buf = io.BytesIO()
    n = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for d, _, files in os.walk(base):
            for name in sorted(files):
                if not name.endswith(".gcda"):
                    continue
                path = os.path.join(d, name)
                with open(path, "rb") as f:  # a seq file: its size is not known before
                    data = f.read()
                info = tarfile.TarInfo(os.path.relpath(path, base))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                n += 1
    raw = buf.getvalue()
    return {"ok": True, "files": n, "bytes": len(raw),
            "tar": base64.b64encode(raw).decode(), "seconds": round(time.monotonic() - start, 3)}
