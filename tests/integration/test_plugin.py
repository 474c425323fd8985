"""The pytest plugin as a user meets it: a test file outside the project's suite,
run with plain pytest in a subprocess, against a real guest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

USER_TESTS = '''
import pytest

pytestmark = pytest.mark.topology("switch-cmb")


def test_cmbs_are_p2pmem(guest):
    sizes = guest.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout.split()
    assert sizes == ["67108864", "67108864"]
    guest.check("touch /tmp/booted-once")


def test_same_guest_is_shared(guest):
    assert guest.run("test -e /tmp/booted-once").exit_status == 0  # the first test's guest
    assert guest.topology.name == "switch-cmb"
    assert guest.qmp.cmd("query-status")["status"] == "running"


def test_run_does_not_raise_and_check_does(guest):
    res = guest.run("echo out; echo err >&2; exit 3")
    assert (res.exit_status, res.stdout, res.stderr) == (3, "out\\n", "err\\n")
    with pytest.raises(Exception, match="exit status 3"):
        guest.check("exit 3")


def test_put_and_get(guest, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello guest")
    guest.put(src, "/tmp/a.txt")
    guest.get("/tmp/a.txt", tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "hello guest"


def test_workload_records(guest):
    records = guest.workload("p2p-copy", size=131072)
    assert {(r["provider"], r["client"]) for r in records} == {("nvme0", "nvme1"), ("nvme1", "nvme0")}
    assert all(r["observed"] == r["predicted"] == "ok" and r["data_verified"] for r in records)


def test_this_one_fails_on_purpose(guest):
    guest.run("echo testbed-marker-for-the-report > /dev/kmsg")
    assert guest.run("true").exit_status == 1
'''


def test_user_test_file_runs_with_plain_pytest(real_qemu, tmp_path):
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    junit = tmp_path / "junit.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          f"--junitxml={junit}", "test_user.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})
    out = res.stdout + res.stderr
    assert re.search(r"\b1 failed\b", out) and re.search(r"\b5 passed\b", out), out
    # the failure report carries the console tail and the dmesg delta, in junit too
    assert "testbed: dmesg since the test started" in out
    assert "testbed-marker-for-the-report" in out
    tree = ET.parse(junit)
    failed = [tc for tc in tree.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failed] == ["test_this_one_fails_on_purpose"]
    text = failed[0].find("failure").text
    assert "testbed-marker-for-the-report" in text and "guest console tail" in text
    left = subprocess.run(["pgrep", "-f", f"qemu-system.*{tmp_path}"], capture_output=True)
    assert left.returncode == 1, "QEMU left running after the user's session"


def test_guest_fixture_without_marker_says_what_to_do(tmp_path):
    (tmp_path / "test_nomark.py").write_text("def test_x(guest):\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "test_nomark.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    assert "@pytest.mark.topology" in res.stdout
