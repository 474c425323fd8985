"""Boot orchestration against real QEMU and real guests: failure paths, signals,
parallel guests, detached instances."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.errors import BootError
from testbed.guest.boot import BootOptions, boot
from testbed.spec import load_topology

TESTBED = [sys.executable, "-m", "testbed"]


def qemu_pids(under: Path | str = "") -> set[int]:
    """QEMU processes whose command line mentions ``under`` (a test's own state dir)."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64.*{under}"], capture_output=True,
                         text=True)
    return {int(p) for p in out.stdout.split()}


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_bad_init_panics_and_fails_fast_with_console_tail(real_qemu, tmp_path, monkeypatch):
    """A kernel that cannot start init panics; the boot fails on the panic, not on the
    SSH timeout, and the error carries the console tail and where the full log is."""
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    with pytest.raises(BootError) as info:
        boot(load_topology("switch-cmb"),
             options=BootOptions(extra_cmdline=("init=/no/such/init",), timeout=170))
    msg = str(info.value)
    assert "no SSH within" not in msg, msg
    assert "QEMU exited" in msg or "failed to boot" in msg, msg
    assert "last console lines" in msg
    assert "/no/such/init" in msg or "Kernel panic" in msg, msg
    log = Path(msg.rsplit("full console log: ", 1)[1].split()[0])
    # the boot stops at the first fatal line: the initramfs's switch_root failing on the
    # missing init, or the panic after it, whichever the console showed first
    text = log.read_text(errors="replace") if log.is_file() else ""
    assert "/no/such/init" in text or "Kernel panic" in text, text[-2000:]
    assert not qemu_pids(tmp_path)  # nothing left running
    assert not any((tmp_path / "state" / "runs").iterdir())  # run directory removed


def test_sigkill_of_the_orchestrator_leaves_no_qemu(real_qemu, tmp_path):
    """QEMU is killed by the kernel when its orchestrator dies (PR_SET_PDEATHSIG)."""
    code = (
        "import sys, time\n"
        "from testbed.guest.boot import boot\n"
        "from testbed.spec import load_topology\n"
        "g = boot(load_topology('switch-cmb'))\n"
        "print(g.qemu.proc.pid, g.run_dir.path, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})
    try:
        line = proc.stdout.readline()
        assert line, "the orchestrator did not boot a guest"
        qemu_pid = int(line.split()[0])
        assert qemu_pid in qemu_pids(tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_gone(qemu_pid), "QEMU outlived its SIGKILLed orchestrator"
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_during_a_command_cleans_up(real_qemu, tmp_path):
    """SIGTERM to `testbed boot` shuts QEMU down and removes the run directory."""
    state = tmp_path / "state"
    proc = subprocess.Popen([*TESTBED, "boot", "switch-cmb", "-c", "sleep 300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TESTBED_STATE": str(state)})
    try:
        seen = []
        for line in proc.stderr:  # progress lines, until the command runs in the guest
            seen.append(line)
            if "is up" in line:
                break
        assert any("is up" in line for line in seen), "".join(seen)
        runs = list((state / "runs").iterdir())
        assert len(runs) == 1
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "Traceback" not in err, err
        assert not runs[0].exists(), "the run directory was left behind"
    finally:
        proc.kill()
        proc.wait()


def run_cli(*args, state: Path, timeout: float = 300, check: bool = True):
    res = subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "TESTBED_STATE": str(state)})
    if check:
        assert res.returncode == 0, f"testbed {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def test_two_detached_guests_in_parallel(real_qemu, tmp_path):
    """Two guests boot at the same time, get distinct ports, answer, and stop cleanly;
    `testbed ssh` passes the command's exit status through; one whose QEMU is killed is
    reported stale and cleaned."""
    state = tmp_path / "state"
    env = {**os.environ, "TESTBED_STATE": str(state)}
    procs = [subprocess.Popen([*TESTBED, "boot", topo, "--detach", "--name", name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for topo, name in (("switch-cmb", "left"), ("rootports-cmb", "right"))]
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            assert p.returncode == 0, err
            assert "testbed ssh" in out
        ps = run_cli("ps", state=state).stdout
        assert "left" in ps and "right" in ps and ps.count("running") == 2, ps
        ports = set()
        for name in ("left", "right"):
            inst = json.loads((state / "instances" / name / "instance.json").read_text())
            ports.add(inst["port"])
            res = run_cli("ssh", name, "--", "cat /sys/bus/pci/devices/*/p2pmem/size", state=state)
            assert res.stdout.split() == ["67108864", "67108864"]
        assert len(ports) == 2
        status = run_cli("ssh", "left", "--", "exit 7", state=state, check=False)
        assert status.returncode == 7
        check_ssh_stdin("left", env)
        monitor = check_hot_unplug_through_the_monitor("left", state, tmp_path)
        check_a_killed_guest_is_reported_stale_and_cleaned("right", "left", state)
    finally:
        for name in ("left", "right"):
            run_cli("stop", name, state=state, check=False)
    assert not (state / "instances" / "left").exists()
    assert "no detached guests" in run_cli("ps", state=state).stdout
    assert not monitor.exists() and not qemu_pids(state)  # torn down, socket and all


def check_hot_unplug_through_the_monitor(name: str, state: Path, tmp_path: Path) -> Path:
    """The detached guest's QEMU serves a second QMP monitor for later commands:
    hot-unplug (device_del / DEVICE_DELETED / device_add) runs with `run --guest` and is
    judged as on a guest the run boots; the monitor is free again afterwards."""
    inst = json.loads((state / "instances" / name / "instance.json").read_text())
    monitor = Path(inst["monitor"])
    assert monitor.is_socket(), inst
    out = tmp_path / "unplug"
    res = run_cli("run", "switch-cmb", "--guest", name, "-w", "hot-unplug", "--pair",
                  "nvme0:nvme1", "--size", "256K", "--out", str(out), state=state, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    (rec,) = [r for r in doc["workloads"] if r["name"] == "hot-unplug"]
    assert (rec["predicted"], rec["observed"]) == ("ok", "ok"), rec["detail"]
    assert rec["data_verified"] is True and "kernel healthy" in rec["detail"]
    steps = {s["step"]: s for s in rec["data"]["steps"]}
    assert steps["device_del"]["event"]["device"] == rec["provider"], steps  # DEVICE_DELETED
    assert "device_add" in steps and "problem" not in steps, steps
    # the guest is back as booted, and the monitor serves the next command
    res = run_cli("ssh", name, "--", "cat /sys/bus/pci/devices/*/p2pmem/published", state=state)
    assert res.stdout.split() == ["1", "1"]
    return monitor


def check_ssh_stdin(name: str, env: dict[str, str]) -> None:
    """`testbed ssh NAME -- CMD` gives CMD this process's standard input, as ssh does:
    binary bytes unchanged, then EOF; an empty input is EOF at once; a command that does
    not read ends the call even while its input stays open."""
    def ssh(*cmd: str, stdin=None, **kw):
        return subprocess.run([*TESTBED, "ssh", name, "--", *cmd], capture_output=True,
                              timeout=120, env=env, stdin=stdin, **kw)
    data = bytes(range(256)) * 64 + os.urandom(300_000) + b"\0\r\n\xff no newline"
    res = ssh("cat", input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data  # every byte back, in order, nothing added
    res = ssh("sh", "-s", input=b"echo from-a-script; exit 5\n")
    assert (res.returncode, res.stdout) == (5, b"from-a-script\n")
    res = ssh("wc -c; echo done >&2", stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout.split(), res.stderr) == (0, [b"0"], b"done\n")
    res = subprocess.run([*TESTBED, "ssh", name, "-n", "--", "cat"], input=b"not sent",
                         capture_output=True, timeout=120, env=env)
    assert (res.returncode, res.stdout) == (0, b"")
    # an input that never ends, to a command that does not read it
    proc = subprocess.Popen([*TESTBED, "ssh", name, "--", "echo ignored-input"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.wait(timeout=60) == 0  # the input pipe is still open here
        assert proc.stdout.read() == b"ignored-input\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()


def check_a_killed_guest_is_reported_stale_and_cleaned(name: str, other: str, state: Path
                                                       ) -> None:
    """A detached guest whose QEMU was killed behind the testbed's back: `testbed ps` says
    stale, removes the instance, and its supervisor ends; the other guest runs on.  (This
    was a test with a switch-cmb guest of its own; any detached guest shows it.)"""
    inst = json.loads((state / "instances" / name / "instance.json").read_text())
    os.kill(inst["qemu"]["pid"], signal.SIGKILL)
    assert wait_gone(inst["qemu"]["pid"])
    time.sleep(1)
    ps = run_cli("ps", state=state).stdout
    assert re.search(rf"^{name}\s+stale", ps, re.M), ps
    assert re.search(rf"^{other}\s+running", ps, re.M), ps
    assert not (state / "instances" / name).exists()
    assert wait_gone(inst["supervisor"]["pid"])


def test_a_stalled_boot_is_retried_once(real_qemu, tmp_path, monkeypatch, caplog):
    """A guest that shows no ready line within the stall limit is booted again (an early
    TCG stall seen on loaded hosts); here the limit is shrunk so the first attempt 'stalls'."""
    import testbed.guest.boot as boot_module
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(boot_module, "STALL_SECONDS", 0.5)
    caplog.set_level("INFO", logger="testbed")
    with boot(load_topology("switch-cmb")) as g:
        assert g.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout.split() == ["67108864"] * 2
    said = [r.getMessage() for r in caplog.records]
    assert sum("QEMU started" in m for m in said) == 2
    assert any("booting the guest once more" in m for m in said)
    assert not qemu_pids(tmp_path)


# Dirty pages of the namespace's block device that only a sync writes back: no periodic
# writeback, and the device stays open (a last close would write it back).
WRITE_AND_HOLD = ("echo 0 > /proc/sys/vm/dirty_writeback_centisecs && "
                  "echo 360000 > /proc/sys/vm/dirty_expire_centisecs && "
                  "dev=$(ls /dev/nvme*n1 | head -n1) && "
                  "(exec 3>$dev; printf kept-by-the-user >&3; exec sleep 100000) "
                  ">/dev/null 2>&1 </dev/null & sleep 1")


def test_a_users_namespace_file_gets_what_the_guest_wrote(real_qemu, tmp_path, monkeypatch):
    """A shutdown skips the guest's clean power-off only when nothing it wrote is kept: a
    namespace file the user named is, so buffered writes to it reach the file."""
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    user = tmp_path / "user-ns.img"
    with open(user, "wb") as f:
        f.truncate(8 << 20)
    topo = tmp_path / "user-ns.yaml"
    topo.write_text("name: user-ns\npcie:\n  - root_port: rp0\n    device:\n"
                    f"      {{nvme: nvme0, namespaces: [{{size: 8M, file: {user}}}]}}\n")
    g = boot(load_topology(str(topo)), options=BootOptions(check_tree=False))
    try:
        assert g.keeps_anything()
        g.check(WRITE_AND_HOLD, timeout=120)
    finally:
        g.shutdown()
    assert b"kept-by-the-user" in user.read_bytes()
    assert not qemu_pids(tmp_path)
