"""A guest that never answers a kernel selftest step, for real: the host gives up at the
program's bound plus its margin, the record is an ``error`` naming the program, the run
stops unfinished (never PASS) and QEMU is gone when ``run_topology`` returns.

One real boot of switch-cmb on the CI profile kernel (IOMMUFD_TEST: kselftest:iommu needs
no device) through the runner, in this process so that the bounds can be made short: the
iommufd program's bound is 20 s and the margin 10 s (the load factor pinned to 1).  While
the program runs, a second SSH command SIGSTOPs the guest tool that runs it: the tool never
returns, exactly as when a task it waits for is stuck in the kernel, while the guest's sshd
stays alive (the case a paused VM would not show)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from testbed.run import runner
from testbed.spec import load_topology
from testbed.workloads import kselftest

pytestmark = pytest.mark.profile_kernel

BOUND, MARGIN = 20.0, 10.0
# matches the tool's command line (`p2pdma-guest kselftest --dir ...`) and not this
# pkill's own shell, whose command line holds the bracket
STOP_TOOL = "pkill -STOP -f 'kselftes[t] --dir' && echo stopped"


def test_a_guest_that_never_answers_is_an_error_and_the_run_stops(profile_kernel, tmp_path,
                                                                   monkeypatch):
    iommu = kselftest.KselftestIommu.suite
    short = dataclasses.replace(iommu, programs=tuple(
        dataclasses.replace(p, timeout=BOUND) for p in iommu.programs))
    monkeypatch.setattr(kselftest.KselftestIommu, "suite", short)
    monkeypatch.setattr(kselftest, "SETUP_SECONDS", MARGIN)
    monkeypatch.setattr(kselftest, "host_load", lambda: (0.0, 2))
    booted = []
    real_boot = runner.boot

    def boot(topo, options, caps=None):
        booted.append(real_boot(topo, options=options, caps=caps))
        return booted[0]

    monkeypatch.setattr(runner, "boot", boot)
    stopped: list[float] = []
    real_tool_step = kselftest.tool_step

    def tool_step(ctx, args, timeout=None, quiet=True):
        def stopper() -> None:  # SIGSTOP the tool once it runs
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline and not stopped:
                if "stopped" in ctx.guest.run(STOP_TOOL, timeout=10).stdout:
                    stopped.append(time.monotonic())
                time.sleep(0.5)

        t = threading.Thread(target=stopper, daemon=True)
        t.start()
        start = time.monotonic()
        try:
            return real_tool_step(ctx, args, timeout=timeout, quiet=quiet)
        finally:
            waited.append((time.monotonic() - start, timeout))
            t.join()

    waited: list[tuple[float, float | None]] = []
    monkeypatch.setattr(kselftest, "tool_step", tool_step)

    result, out = runner.run_topology(load_topology("switch-cmb"), runner.RunOptions(
        kernel=profile_kernel, out=tmp_path / "out",
        workloads=("kselftest:iommu", "kselftest:hmm")))

    assert stopped, "the guest tool was never seen running"
    (seconds, host_bound), = waited
    assert host_bound == BOUND + MARGIN
    assert host_bound <= seconds < host_bound + 45  # its own dmesg (<= 30 s) after it
    doc = json.loads((out / "results.json").read_text())
    recs = [(r["name"], r.get("test"), r["observed"]) for r in doc["workloads"]]
    assert recs == [("kselftest:iommu", "iommufd", "error"), ("kselftest:hmm", None, "error")]
    assert doc["workloads"][0]["detail"].startswith(
        f"iommufd hung: the guest did not come back within {host_bound:.0f} s")
    assert doc["workloads"][1]["detail"].startswith("not run: kselftest:iommu: iommufd hung")
    assert doc["finished"] is False and doc["error_kind"] == "guest-hung"
    assert doc["status"] != "pass" and "PASS" not in (out / "report.md").read_text()
    # QEMU is gone: stopped at once, not powered off through the wedged guest
    proc = booted[0].machine.proc
    assert proc is not None and proc.poll() is not None
    assert doc["phases"]["shutdown"] < 15
