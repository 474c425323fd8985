"""The KVM probe's timing logic (testbed.qemu.accel.probe_kvm), with stand-in programs
for the probe guest: a boot never waits more than PROBE_QUICK for it, a slow probe
finishes in the background and caches its verdict, and a probe still running when
the process exits is killed without caching a verdict it never reached."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed.machines import X86_64
from testbed.qemu import accel


class _Runner:
    def environ(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin"}

    def identity(self) -> str:
        return "stand-in"


class _Caps:
    runner = _Runner()
    version_text = "stand-in 1.0"


GUEST = accel.ProbeGuest(Path("/nonexistent/kernel"), None, (), X86_64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _program(monkeypatch, script: str) -> None:
    """The probe guest is ``sh -c script`` with $1 = the console file."""
    def argv(runner, name, kernel, initrd, cmdline, console, profile):
        return ["sh", "-c", script, "probe", str(console)]
    monkeypatch.setattr(accel, "probe_argv", argv)


def test_a_quick_answer_is_used_and_cached(cache, monkeypatch):
    _program(monkeypatch, f'echo {accel.PROBE_MARKER} > "$1"')
    got = accel.probe_kvm(_Caps(), GUEST, timeout=5, quick=3)
    assert got.name == "kvm" and "booted a guest" in got.reason
    again = accel.probe_kvm(_Caps(), GUEST, timeout=5, quick=3)
    assert again.name == "kvm" and again.reason.endswith("(cached probe)")


def test_a_failed_probe_is_tcg(cache, monkeypatch):
    _program(monkeypatch, 'echo "no KVM here" >&2; exit 1')
    got = accel.probe_kvm(_Caps(), GUEST, timeout=5, quick=3)
    assert got.name == "tcg" and "status 1" in got.reason and "no KVM here" in got.reason


def test_a_slow_probe_does_not_hold_the_boot_and_caches_later(cache, monkeypatch):
    _program(monkeypatch, f'sleep 3; echo {accel.PROBE_MARKER} > "$1"')
    start = time.monotonic()
    got = accel.probe_kvm(_Caps(), GUEST, timeout=20, quick=0.2)
    assert time.monotonic() - start < 2.5  # did not wait for the probe's 3 s
    assert got.name == "tcg" and "background" in got.reason
    assert accel._cached(_Caps()) is None
    deadline = time.monotonic() + 15
    while accel._cached(_Caps()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    cached = accel._cached(_Caps())
    assert cached is not None and cached.name == "kvm"


def test_a_hung_probe_is_killed_at_its_timeout_and_cached_as_tcg(cache, monkeypatch):
    _program(monkeypatch, "exec sleep 30")
    got = accel.probe_kvm(_Caps(), GUEST, timeout=0.6, quick=0.1)
    assert got.name == "tcg"
    deadline = time.monotonic() + 10
    while accel._cached(_Caps()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    cached = accel._cached(_Caps())
    assert cached is not None and cached.name == "tcg" and "hung" in cached.reason
    assert not accel._RUNNING


def test_a_probe_running_at_exit_is_killed_and_caches_nothing(cache, tmp_path):
    """A process that ends while its probe is still running: the probe dies with it."""
    pidfile = tmp_path / "probe.pid"
    child = textwrap.dedent(f"""
        from pathlib import Path
        from testbed.machines import X86_64
        from testbed.qemu import accel
        class R:
            def environ(self): return {{"PATH": "/usr/bin:/bin"}}
            def identity(self): return "stand-in"
        class C:
            runner = R()
            version_text = "stand-in 1.0"
        accel.probe_argv = lambda *a: ["sh", "-c", 'echo $$ > {pidfile}; exec sleep 30']
        got = accel.probe_kvm(C(), accel.ProbeGuest(Path("/x"), None, (), X86_64),
                              timeout=30, quick=0.3)
        assert got.name == "tcg"
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=30)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"
    assert not list((cache / "cache").glob("probe/kvm-*.json"))
