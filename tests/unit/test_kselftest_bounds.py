"""The host's bound on a kernel selftest: a wedged guest (a program stuck in the kernel,
SIGKILL cannot end it) becomes an ``error`` record naming the program within the
program's own bound plus a margin, the run stops there and the guest is shut down at
once; the run is never PASS.  Bounds scale with the host's load under TCG and with the
user's --timeout.

No QEMU here: the guest is a stand-in that answers like a wedged guest (every command
after the hang times out at the bound it was given, without waiting for it), so what is
checked is the bookkeeping: which bound the host used, what it ran afterwards, what the
run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.guest.result import CommandResult
from testbed.kernel.selftests import SUITES, BuiltSuite
from testbed.spec import load_topology
from testbed.workloads import kselftest
from testbed.workloads.base import DEFAULT_TIMEOUT
from testbed.workloads.kselftest import bounds, time_factor

TOPOLOGY = "switch-cmb-intel-iommu-igb"
CONFIG = "\n".join(f"CONFIG_{o}=y" for o in (
    "PCI", "VFIO", "VFIO_PCI", "IOMMUFD", "VFIO_DEVICE_CDEV", "IOMMUFD_TEST", "HUGETLBFS"))


class WedgedGuest:
    """Answers setup commands; the first kselftest tool call hangs (times out at the bound
    the host gave it) and from then on every command does."""

    def __init__(self, topo, console: Path):
        from testbed.guest.console import Console
        from testbed.qemu.accel import Accel
        from testbed.util.timing import Phases
        self.topology, self.boot_seconds, self.phases = topo, 1.0, Phases()
        self.names = {"nvme0": "0000:03:00.0", "nvme1": "0000:04:00.0", "nic0": "0000:05:00.0"}
        self.inventory = {"kernel": {"release": "7.3.4", "p2pdma": True}}
        console.write_text("booted\n")
        self.console = Console(console)
        self.accel, self.kernel_description, self.argv = Accel("tcg", "test"), "test", []
        self.calls: list[tuple[str, float]] = []
        self.wedged = False
        self.shutdowns: list[bool] = []

    def run(self, command, timeout=60.0, stdin=None):
        command = command if isinstance(command, str) else " ".join(command)
        self.calls.append((command, timeout))
        if self.wedged or " kselftest " in f" {command} ":
            self.wedged = True
            return CommandResult(command, -1, "", "", timeout, True)
        out = CONFIG if "config" in command else ""
        return CommandResult(command, 0, out, "", 0.01)

    def check(self, command, timeout=60.0, stdin=None):
        res = self.run(command, timeout, stdin)
        if not res.ok:
            from testbed.errors import GuestError
            raise GuestError(res.describe())
        return res

    def dmesg_delta(self):
        return self.check(["dmesg"], timeout=30).stdout

    def script(self):
        return None

    def shutdown(self, graceful=True):
        self.shutdowns.append(graceful)
        return 0


@pytest.fixture
def wedged(tmp_path, monkeypatch):
    return wedged_run(tmp_path, monkeypatch, load=1.0)  # an idle 2-core host


def wedged_run(tmp_path, monkeypatch, load: float):
    """A run of kselftest:vfio then kselftest:iommu on a guest that wedges in the first
    program; the selftests' build is replaced by an empty suite directory."""
    from testbed.run import runner
    topo = load_topology(TOPOLOGY)
    guest = WedgedGuest(topo, tmp_path / "console.log")
    monkeypatch.setattr(runner, "boot", lambda topo, options, caps=None: guest)
    monkeypatch.setattr(kselftest, "suite_source", lambda kernel: tmp_path)
    monkeypatch.setattr(kselftest, "build_suite",
                        lambda suite, src: BuiltSuite(suite, tmp_path, src))
    monkeypatch.setattr(kselftest, "host_load", lambda: (load, 2))
    out = tmp_path / "out"
    result, _ = runner.run_topology(topo, runner.RunOptions(
        out=out, workloads=("kselftest:vfio", "kselftest:iommu")))
    return guest, result, out


def test_a_hung_program_is_an_error_naming_it_within_its_bound_plus_a_margin(wedged):
    guest, result, out = wedged
    first = SUITES["vfio"].programs[0]
    inner, outer = bounds(first, 1.0)
    assert (inner, outer) == (first.timeout, first.timeout + kselftest.SETUP_SECONDS)
    tool = [(c, t) for c, t in guest.calls if " kselftest " in f" {c} "]
    # one program ran: the guest was given its bound, the host waited that plus the margin
    assert len(tool) == 1 and f"--timeout {inner}" in tool[0][0] and tool[0][1] == outer
    assert "TESTBED_KSFT_TIMEOUT_FACTOR" not in tool[0][0]  # factor 1: the harness's own
    doc = json.loads((out / "results.json").read_text())
    recs = doc["workloads"]
    hung = recs[0]
    assert (hung["name"], hung["test"], hung["observed"]) == \
        ("kselftest:vfio", first.name, "error")
    assert hung["detail"].startswith(f"{first.name} hung: the guest did not come back "
                                     f"within {outer:.0f} s")
    assert hung["data"]["host_bound"] == outer and not hung["passed"]


def test_the_run_stops_and_the_guest_is_shut_down_at_once(wedged):
    guest, result, out = wedged
    after = guest.calls[[i for i, (c, _) in enumerate(guest.calls)
                         if " kselftest " in f" {c} "][0] + 1:]
    # after the hang: its dmesg (bounded) and the run's final dmesg; no other program,
    # no cleanup in the wedged guest, nothing of the next workload
    assert [c for c, _ in after] == ["dmesg", "dmesg"] and all(t <= 30 for _, t in after)
    assert guest.shutdowns == [False]  # QEMU quits; a wedged guest cannot power off
    assert result.error_kind == "guest-hung" and not result.finished
    assert "vfio_dma_mapping_test hung" in result.error


def test_what_did_not_run_is_an_error_and_the_run_is_never_pass(wedged):
    guest, result, out = wedged
    doc = json.loads((out / "results.json").read_text())
    assert doc["finished"] is False and doc["status"] != "pass"
    names = [(r["name"], r.get("test"), r["observed"]) for r in doc["workloads"]]
    assert names == [("kselftest:vfio", "vfio_dma_mapping_test", "error"),
                     ("kselftest:iommu", None, "error")]
    assert doc["workloads"][1]["detail"].startswith("not run: kselftest:vfio: "
                                                    "vfio_dma_mapping_test hung")
    assert "PASS" not in (out / "report.md").read_text()
    assert 'errors="0"' not in (out / "junit.xml").read_text()


def test_on_a_busy_host_the_guest_the_harness_and_the_host_wait_longer(tmp_path,
                                                                        monkeypatch):
    guest, result, out = wedged_run(tmp_path, monkeypatch, load=6.0)  # 3 per core
    first = SUITES["vfio"].programs[0]
    (command, waited), = [(c, t) for c, t in guest.calls if " kselftest " in f" {c} "]
    assert f"--timeout {first.timeout * 3}" in command
    assert "--env TESTBED_KSFT_TIMEOUT_FACTOR=3 " in command + " "
    assert waited == (first.timeout + kselftest.SETUP_SECONDS) * 3
    assert result.error_kind == "guest-hung"


def test_bounds_scale_with_the_load_under_tcg_and_with_the_users_timeout():
    assert time_factor("tcg", DEFAULT_TIMEOUT, load=1.5, cpus=2) == 1.0  # idle: nominal
    assert time_factor("tcg", DEFAULT_TIMEOUT, load=5.0, cpus=2) == 2.5  # 2.5 runnable/core
    assert time_factor("tcg", DEFAULT_TIMEOUT, load=80.0, cpus=2) == kselftest.MAX_LOAD_FACTOR
    assert time_factor("kvm", DEFAULT_TIMEOUT, load=80.0, cpus=2) == 1.0  # native speed
    assert time_factor("tcg", 2 * DEFAULT_TIMEOUT, load=0.0, cpus=2) == 2.0  # --timeout 240
    assert time_factor("tcg", DEFAULT_TIMEOUT / 2, load=0.0, cpus=2) == 1.0  # never below
    driver = next(p for p in SUITES["vfio"].programs if p.name == "vfio_pci_driver_test")
    inner, outer = bounds(driver, 2.5)
    assert inner == driver.timeout * 2.5 and outer == inner + kselftest.SETUP_SECONDS * 2.5


def test_every_suite_program_has_a_finite_host_bound():
    worst = time_factor("tcg", DEFAULT_TIMEOUT, load=1e9, cpus=1)
    for suite in SUITES.values():
        for p in suite.programs:
            inner, outer = bounds(p, worst)
            assert 0 < inner < outer <= (p.timeout + kselftest.SETUP_SECONDS) * worst


def test_the_guest_tool_does_not_wait_forever_for_a_program_that_will_not_die(
        tmp_path, monkeypatch):
    """SIGKILL cannot end a task stuck in the kernel; here a process outside the program's
    group holds its output open the same way: the tool gives up after KILL_WAIT."""
    from testbed.guest_tool import kselftest as tool
    monkeypatch.setattr(tool, "KILL_WAIT", 1)
    script = tmp_path / "stuck"
    pidfile = tmp_path / "pid"
    script.write_text("#!/bin/sh\necho 'TAP version 13'\n"
                      f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' &\nsleep 60\n")
    script.chmod(0o755)
    try:
        out, status, sig, timed_out, seconds = tool.run_program(
            str(tmp_path), "stuck", [], {}, 1.0)
        assert timed_out and seconds < 10 and "did not end within 1 s of SIGKILL" in out
        assert "TAP version 13" in out
    finally:
        import os
        import signal
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_the_harness_timeout_shim_scales_a_poll_that_waits_and_nothing_else(tmp_path):
    """The shim linked into every selftest program: poll()'s timeout times the factor in
    the environment; an answered poll() returns at once; no factor, no change."""
    import os
    import subprocess
    import time
    from testbed.kernel.selftests import TIMEOUT_FACTOR_ENV, TIMEOUT_SHIM
    main = tmp_path / "main.c"
    main.write_text(
        "#include <poll.h>\n#include <unistd.h>\n#include <stdio.h>\n"
        "int main(int argc, char **argv) {\n"
        "  int fds[2]; struct pollfd p; if (pipe(fds)) return 2;\n"
        "  if (argc > 1 && write(fds[1], \"x\", 1) != 1) return 2;\n"
        "  p.fd = fds[0]; p.events = POLLIN;\n"
        "  printf(\"%d\\n\", poll(&p, 1, 200)); return 0; }\n")
    prog = tmp_path / "prog"
    subprocess.run(["gcc", "-O2", "-Wall", str(main), str(TIMEOUT_SHIM),
                    "-Wl,--wrap=poll", "-o", str(prog)], check=True, timeout=120)

    def seconds(factor: str | None, *args: str) -> tuple[float, str]:
        env = dict(os.environ)
        env.pop(TIMEOUT_FACTOR_ENV, None)
        if factor is not None:
            env[TIMEOUT_FACTOR_ENV] = factor
        start = time.monotonic()
        out = subprocess.run([str(prog), *args], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
        return time.monotonic() - start, out

    plain, out = seconds(None)
    assert out == "0" and 0.19 < plain < 1.0  # timed out after 200 ms
    scaled, out = seconds("6")
    assert out == "0" and scaled >= 1.19  # 6 x 200 ms
    answered, out = seconds("50", "ready")
    assert out == "1" and answered < 1.0  # an answered poll is not delayed
    for junk in ("", "abc", "0.5", "-3"):
        t, out = seconds(junk)
        assert out == "0" and t < 1.0, junk
