"""Hostile or careless use of detached-instance commands must never touch anything outside
the testbed's own state: canary directories, files and processes prove it.

Pure: no QEMU is started; the commands run for real (``python -m testbed``) against a
private TESTBED_STATE, with forged state files where a stale or hostile one is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.util.process import identify

TESTBED = [sys.executable, "-m", "testbed"]


@pytest.fixture
def state(tmp_path):
    s = tmp_path / "state"
    (s / "instances").mkdir(parents=True)
    return s


@pytest.fixture
def canary(tmp_path):
    """A directory full of things a bug could delete."""
    d = tmp_path / "canary"
    (d / "sub").mkdir(parents=True)
    (d / "precious.txt").write_text("do not delete\n")
    (d / "sub" / "more.txt").write_text("nor this\n")
    return d


def intact(canary: Path) -> bool:
    return (canary / "precious.txt").read_text() == "do not delete\n" and \
        (canary / "sub" / "more.txt").read_text() == "nor this\n"


def cli(state: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "TESTBED_STATE": str(state),
                                        "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


@pytest.mark.parametrize("name", ["../..", "..", ".", "/CANARY", "a/b", "~", "", " x", "x ",
                                  "x\n", "-x", "a\tb", "\x1b[31m", "é", "x" * 65])
@pytest.mark.parametrize("command", [("stop",), ("ssh",), ("boot", "--detach", "--name"),
                                     ("run", "switch-cmb", "--guest")])
def test_instance_names_are_checked_everywhere(state, canary, name, command):
    name = name.replace("/CANARY", str(canary))
    args = [*command, name]
    if command[0] == "ssh":
        args += ["--", "true"]
    res = cli(state, *args, cwd=canary)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "name" in res.stderr.lower() or "--guest" in res.stderr, res.stderr
    assert intact(canary)
    assert not list(Path(canary).glob("runs")), "nothing may be created before the check"


def test_stop_of_a_relative_path_never_deletes_it(state, canary, tmp_path):
    (state / "instances").rmdir()  # no instances dir at all
    for target in ("../../canary", str(canary), "."):
        res = cli(state, "stop", target, cwd=canary)
        assert res.returncode == 2 and "Traceback" not in res.stderr
    assert intact(canary)


def sleeper(**popen) -> subprocess.Popen:
    """A ``sleep 300`` child, returned once it runs sleep: right after fork its command
    line is still this interpreter's, and an identity taken then never matches again
    (under load that window is long enough to make a test flaky)."""
    proc = subprocess.Popen(["sleep", "300"], **popen)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        me = identify(proc.pid)
        if me is not None and me.cmdline == "sleep 300":
            return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("sleep 300 did not start within 30 s")


def forge(state: Path, name: str, **fields) -> Path:
    d = state / "instances" / name
    d.mkdir()
    (d / "instance.json").write_text(json.dumps({"name": name, "status": "ready", **fields}))
    return d


def test_ps_never_signals_a_reused_pid_nor_deletes_a_foreign_run_dir(state, canary):
    """A 'ready' instance whose QEMU is gone: its recorded supervisor PID now belongs to
    another process (a canary), and its run_dir points at a canary directory."""
    victim = sleeper()
    try:
        me = identify(victim.pid)
        assert me is not None
        fake = {"pid": victim.pid, "start_ticks": me.start_ticks + 12345, "cmdline": me.cmdline}
        forge(state, "ghost", supervisor=fake, qemu=fake, run_dir=str(canary))
        res = cli(state, "ps")
        assert res.returncode == 0 and "Traceback" not in res.stderr
        assert "ghost" in res.stdout and "stale" in res.stdout
        time.sleep(0.2)
        assert victim.poll() is None, "ps signalled a process that is not the testbed's"
        assert intact(canary)
        assert not (state / "instances" / "ghost").exists()
        # the old format (bare PIDs) is not trusted either
        forge(state, "old", supervisor_pid=victim.pid, qemu_pid=victim.pid,
              run_dir=str(canary))
        res = cli(state, "stop", "old")
        assert res.returncode == 0 and "Traceback" not in res.stderr
        assert victim.poll() is None and intact(canary)
    finally:
        victim.kill()
        victim.wait()


def test_run_dir_inside_the_state_is_removed_only_with_the_marker(state):
    runs = state / "runs"
    unmarked = runs / "looks-like-a-run"
    unmarked.mkdir(parents=True)
    (unmarked / "data").write_text("x")
    forge(state, "stale", run_dir=str(unmarked))
    assert cli(state, "stop", "stale").returncode == 0
    assert (unmarked / "data").exists(), "a directory without the testbed's marker was deleted"


@pytest.mark.parametrize("content", ["", "{", "[]", "null", '{"name": "other"}',
                                     '{"name": "bad", "port": "x"}',
                                     '{"name": "bad", "ssh": [1, 2]}', "\x00\xff"])
def test_malformed_state_files_are_reported_not_a_traceback(state, content):
    d = state / "instances" / "bad"
    d.mkdir()
    (d / "instance.json").write_text(content, errors="surrogateescape") if content != "\x00\xff" \
        else (d / "instance.json").write_bytes(b"\x00\xff")
    ps = cli(state, "ps")
    assert ps.returncode == 0 and "Traceback" not in ps.stderr
    assert "bad" in ps.stdout and "broken" in ps.stdout
    ssh = cli(state, "ssh", "bad", "--", "true")
    assert ssh.returncode == 1 and "broken" in ssh.stderr and "Traceback" not in ssh.stderr
    stop = cli(state, "stop", "bad")
    assert stop.returncode == 0 and "Traceback" not in stop.stderr
    assert not d.exists()


def test_a_symlinked_instance_directory_is_not_followed(state, canary):
    (state / "instances" / "link").symlink_to(canary)
    res = cli(state, "stop", "link")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert intact(canary)
    cli(state, "ps")
    assert intact(canary)


def test_stale_supervisor_signal_goes_only_to_the_recorded_process(state):
    """The identity check in the other direction: the real recorded process is signalled."""
    proc = sleeper(start_new_session=True)
    try:
        me = identify(proc.pid)
        forge(state, "mine", status="booting", supervisor=me.to_json())
        assert cli(state, "stop", "mine").returncode == 0
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
