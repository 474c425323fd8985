"""`testbed boot --gdb` on a real guest: the gdb command it prints attaches (batch mode),
reads a kernel variable at the address the guest's /proc/kallsyms gives (nokaslr: the
same in both views), detaches, and the guest runs on; the port is in `testbed ps`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

TESTBED = [sys.executable, "-m", "testbed"]


@pytest.fixture
def gdb_binary() -> str:
    found = shutil.which("gdb")
    if found is None:
        reason = "gdb is not installed (scripts/setup-host.sh installs it): the --gdb test " \
                 "did NOT run"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def cli(*args, env, timeout=300):
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_gdb_attaches_reads_a_symbol_and_detaches(real_qemu, gdb_binary, tmp_path):
    env = {**os.environ, "TESTBED_STATE": str(tmp_path / "state")}
    start = time.monotonic()
    res = cli("boot", "switch-cmb", "--detach", "--gdb", "--name", "dbg", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        port = int(re.search(r"gdbstub is on 127\.0\.0\.1:(\d+)", res.stdout).group(1))
        printed = next(line.strip() for line in res.stdout.splitlines()
                       if line.strip().startswith("gdb -q"))
        assert printed == f"gdb -q -ex 'target remote 127.0.0.1:{port}'"  # no symbols here
        assert "linux-image-" in res.stdout and "-dbg" in res.stdout  # how to get them
        ps = cli("ps", env=env).stdout
        assert re.search(rf"^dbg\s+running\s+\d+\s+{port}\s", ps, re.M), ps

        cmdline = cli("ssh", "dbg", "--", "cat", "/proc/cmdline", env=env).stdout
        assert "nokaslr" in cmdline.split()
        kallsyms = cli("ssh", "dbg", "--", "grep", "-w", "linux_banner", "/proc/kallsyms",
                       env=env).stdout
        address = kallsyms.split()[0]
        assert int(address, 16) >= 0xffffffff80000000, kallsyms  # a real kernel address

        # the printed command, in batch mode, with two more commands
        argv = shlex.split(printed)
        argv[1:1] = ["-batch", "-nx"]
        argv += ["-ex", f"x/s 0x{address}", "-ex", "detach"]
        argv[0] = gdb_binary
        attach = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert attach.returncode == 0, attach.stdout + attach.stderr
        assert re.search(rf"0x{address}:\s+\"Linux version ", attach.stdout), attach.stdout
        assert "detached" in attach.stdout + attach.stderr

        after = cli("ssh", "dbg", "--", "uname", "-r", env=env, timeout=60)
        assert after.returncode == 0 and after.stdout.strip(), after.stderr
    finally:
        cli("stop", "dbg", env=env)
    print(f"gdb attach test: {time.monotonic() - start:.1f} s")
    assert "no detached guests" in cli("ps", env=env).stdout
