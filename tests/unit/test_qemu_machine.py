"""QemuMachine without QEMU: the QMP event queue (events nobody waited for are kept, as
QEMUMachine keeps them), the launch hooks, the QMP socket's place.  A real QEMU drives the
same code in tests/integration (test_verify.py, the hot-unplug tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testbed.errors import QemuStartError
from testbed.qemu.machine import UNIX_PATH_MAX, QemuMachine, QmpSocket
from testbed.qemu.monitor import Monitor


class FakeMonitor:
    """What QemuMachine asks of qemu.qmp's legacy client for events."""

    def __init__(self, events):
        self.pending = list(events)
        self.pulled = 0

    def pull_event(self, wait=False):
        self.pulled += 1
        return self.pending.pop(0) if self.pending else None

    def get_events(self, wait=False):
        out, self.pending = self.pending, []
        return out

    def clear_events(self):
        pass

    def close(self):
        pass


def machine(tmp_path: Path, events) -> tuple[QemuMachine, FakeMonitor]:
    vm = QemuMachine(["true"], tmp_path, QmpSocket.in_dir(tmp_path))
    monitor = FakeMonitor(events)
    setattr(vm, "_mon", Monitor(monitor, "qemu"))  # a stand-in for qemu.qmp's client
    return vm, monitor


def ev(name: str, **data) -> dict:
    return {"event": name, "data": data}


def test_events_that_did_not_match_stay_queued(tmp_path):
    vm, monitor = machine(tmp_path, [ev("STOP"), ev("DEVICE_DELETED", device="a"),
                                     ev("DEVICE_DELETED", device="b"), ev("RESUME")])
    got = vm.event_wait("DEVICE_DELETED", timeout=5, match=lambda e: e["data"]["device"] == "b")
    assert got == ev("DEVICE_DELETED", device="b")
    pulled = monitor.pulled
    # the earlier ones were kept: a later wait finds them without asking QEMU again
    assert vm.event_wait("DEVICE_DELETED", timeout=5) == ev("DEVICE_DELETED", device="a")
    assert vm.event_wait("STOP", timeout=5) == ev("STOP")
    assert monitor.pulled == pulled
    assert vm.event_wait("RESUME", timeout=5) == ev("RESUME")
    assert vm.event_wait("RESUME", timeout=0.05) is None


def test_events_and_clear_events(tmp_path):
    vm, _ = machine(tmp_path, [ev("A"), ev("B")])
    assert vm.event_wait("B", timeout=5) == ev("B")
    assert vm.events() == [ev("A")] and vm.events() == []
    vm2, _ = machine(tmp_path, [ev("A")])
    assert vm2.event_wait("Z", timeout=0.05) is None
    vm2.clear_events()
    assert vm2.events() == []


class Hooked(QemuMachine):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    def pre_launch(self) -> None:
        self.calls.append("pre")

    def post_launch(self) -> None:
        self.calls.append("post")

    def post_shutdown(self) -> None:
        self.calls.append("shutdown")


def test_launch_hooks_run_and_a_failed_launch_still_shuts_down(tmp_path):
    vm = Hooked([shutil.which("true") or "/bin/true"], tmp_path, QmpSocket.in_dir(tmp_path),
                name="not qemu")
    with pytest.raises(QemuStartError, match="before QMP came up"):
        vm.launch(timeout=10)
    assert vm.calls == ["pre", "shutdown"]  # no post_launch: QMP never came up
    assert not vm.qmp_path.exists()


def test_a_deep_run_directory_gets_a_short_private_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = QmpSocket.in_dir(deep)
    assert sock.private_dir is not None and len(str(sock.path).encode()) < UNIX_PATH_MAX
    assert sock.private_dir.is_dir()
    sock.remove()
    assert not sock.private_dir.exists()
    near = QmpSocket.in_dir(tmp_path)
    assert near == QmpSocket(tmp_path / "qmp.sock")
