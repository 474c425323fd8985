"""`testbed boot --share` on a real guest: a read-write share is read and written from the
guest (and the host sees the write), a read-only one is read (a host script runs from
it) and refuses writes; nothing is left running afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

TESTBED = [sys.executable, "-m", "testbed"]

GUEST_SCRIPT = """
cat /mnt/rw/from-host.txt
echo "from the guest" > /mnt/rw/from-guest.txt && echo rw-write-ok
cat /mnt/ro/from-host.txt
/mnt/ro/tool.sh
if touch /mnt/ro/nope 2>/dev/null; then echo ro-write-succeeded; else echo ro-write-refused; fi
findmnt -n -o TARGET,FSTYPE,OPTIONS -t 9p
"""


def test_shared_directories_read_write_and_read_only(real_qemu, tmp_path):
    rw, ro = tmp_path / "work dir", tmp_path / "tools"
    rw.mkdir()
    ro.mkdir()
    (rw / "from-host.txt").write_text("edited on the host\n")
    (ro / "from-host.txt").write_text("a read-only file\n")
    (ro / "tool.sh").write_text("#!/bin/sh\necho tool-ran-in-guest\n")
    (ro / "tool.sh").chmod(0o755)
    state = tmp_path / "state"
    res = subprocess.run([*TESTBED, "boot", "switch-cmb", "--share", f"{rw}:/mnt/rw:rw",
                          "--share", f"{ro}:/mnt/ro", "--command", GUEST_SCRIPT],
                         capture_output=True, text=True, timeout=400,
                         env={**os.environ, "TESTBED_STATE": str(state)})
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[:5] == ["edited on the host", "rw-write-ok", "a read-only file",
                         "tool-ran-in-guest", "ro-write-refused"], res.stdout
    mounts = {line.split()[0]: line.split() for line in lines[5:]}
    assert mounts["/mnt/rw"][1] == mounts["/mnt/ro"][1] == "9p"
    assert "rw" in mounts["/mnt/rw"][2].split(",") and "ro" in mounts["/mnt/ro"][2].split(",")
    assert (rw / "from-guest.txt").read_text() == "from the guest\n"
    assert sorted(p.name for p in ro.iterdir()) == ["from-host.txt", "tool.sh"]
    # nothing left running: no QEMU with this test's state, no 9p helper (there is none)
    left = subprocess.run(["pgrep", "-f", f"qemu-system.*{state}"], capture_output=True,
                          text=True).stdout
    assert not left.strip(), left
