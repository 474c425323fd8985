"""pytest plugin: real guests as fixtures, chosen by a marker.

Installed with the package (``pytest11`` entry point), so a user's test file
needs nothing but the marker and the fixture::

    import pytest

    @pytest.mark.topology("switch-cmb")
    def test_cmb_is_p2pmem(guest):
        assert guest.run("cat /sys/bus/pci/devices/*/p2pmem/size").stdout.split() == ["67108864"] * 2

Guests are shared by every test of a module that asks for the same topology and
shut down at the end of the module.  Options: ``--testbed-kernel=PATH``,
``--testbed-keep`` (leave guests running, print how to reach them),
``--testbed-accel`` and ``--testbed-qemu=NAME|PATH`` (the QEMU every guest runs on, as
``--qemu`` does for ``testbed run``); ``@pytest.mark.topology("switch-cmb", qemu="11.1")``
chooses the QEMU of one topology's guests.  A failing test gets the console tail and the dmesg delta
in its report (and so in ``--junitxml``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from .errors import GuestError, TestbedError
from .guest import instances
from .guest.attach import AttachedGuest, attach
from .guest.boot import BootOptions, boot
from .guest.guest import Guest
from .guest.protocol import GuestLike, qmp_of
from .guest.reinventory import reinventory
from .guest.result import CommandResult
from .kernel.resolve import KernelSpec, resolve_kernel
from .qemu.hotplug import hotplug_slot, replug, unplug
from .qemu.machine import QmpLike
from .qemu.validate import load_checked
from .run.runner import RunOptions, plan, run_workloads
from .spec import resolve
from .spec.model import Topology

_GUEST_KEY = pytest.StashKey["TestbedGuest"]()
_LAST_USE = pytest.StashKey[dict[tuple[str, str], str]]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("p2pdma-testbed", "P2PDMA testbed guests")
    group.addoption("--testbed-kernel", metavar="PATH", default=None,
                    help="boot guests with this kernel (profile:NAME[+NAME][@SRC], "
                         "bzImage, build tree, unpacked package)")
    group.addoption("--testbed-keep", action="store_true", default=False,
                    help="leave guests running after the session and print how to ssh in")
    group.addoption("--testbed-accel", choices=("auto", "kvm", "tcg"), default=None,
                    help="override the topologies' accelerator")
    group.addoption("--testbed-qemu", metavar="NAME|PATH", default=None,
                    help="run every guest on this QEMU: host, an installed QEMU's name or "
                         "version (testbed qemu list), or a path")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "topology(name, qemu=None): the topology (library name "
                                       "or path) the `guest` fixture boots, and on which QEMU")


def _topology_of(item: pytest.Item) -> str | None:
    """The guest a test needs: its topology, and ``@QEMU`` when the marker names one."""
    marker = item.get_closest_marker("topology")
    if marker is None or not marker.args:
        return None
    qemu = marker.kwargs.get("qemu")
    return str(marker.args[0]) + (f"@{qemu}" if qemu else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One guest at a time per module: the tests of a module that use one topology run
    one after another (in their order), and its guest is shut down after the last of them
    instead of idling until the module ends.  Under pytest-xdist with ``--dist
    loadgroup`` each test with a topology marker joins the xdist group of its module and
    topology, so each worker boots each topology once."""
    grouped: list[pytest.Item] = []
    done: set[tuple[str, str]] = set()
    by_key: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        topo = _topology_of(item)
        if topo is not None:
            by_key.setdefault((item.nodeid.split("::")[0], topo), []).append(item)
    for item in items:
        topo = _topology_of(item)
        if topo is None:
            grouped.append(item)
            continue
        key = (item.nodeid.split("::")[0], topo)
        if key not in done:
            done.add(key)
            grouped += by_key[key]
    items[:] = grouped
    config.stash[_LAST_USE] = {key: group[-1].nodeid for key, group in by_key.items()}
    for item in items:
        topo = _topology_of(item)
        if topo is not None and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"{item.nodeid.split('::')[0]}:{topo}"))


class TestbedGuest:
    """What a test sees as ``guest``: commands, files, dmesg, workloads, QMP."""

    __test__ = False

    def __init__(self, guest: GuestLike, topology: Topology, kernel: KernelSpec | None = None):
        self._guest = guest
        self.topology = topology
        self.kernel = kernel  # the kernel it booted (None: the image's)
        self._mark = 0
        self.hung: str | None = None  # a workload found it wedged: shut down, not reused

    # commands
    def run(self, cmd: str | list[str], timeout: float = 60.0) -> CommandResult:
        """Run ``cmd``; the result has exit_status, stdout, stderr; never raises on failure."""
        return self._guest.run(cmd, timeout=timeout)

    def check(self, cmd: str | list[str], timeout: float = 60.0) -> CommandResult:
        """Run ``cmd``; raise GuestError with its output unless it exits 0."""
        return self._guest.check(cmd, timeout=timeout)

    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None:
        """Copy a file into the guest (its mode is kept unless ``mode`` is given)."""
        self._guest.put(local, remote, mode)

    def get(self, remote: str, local: str | Path) -> None:
        self._guest.get(remote, local)

    def dmesg(self) -> str:
        return self._guest.dmesg()

    def dmesg_since_test_start(self) -> str:
        lines = self._guest.dmesg().splitlines()
        return "\n".join(lines[self._mark:])

    def workload(self, name: str, **options: Any) -> list[dict[str, Any]]:
        """Run a workload (``p2p-copy``, ``fio``, ``hot-unplug``, ...); the records ``testbed
        run`` writes.  Options are :class:`RunOptions` fields: ``size``, ``fio_args``,
        ``pairs=(("nvme0", "nvme1"),)``, ``inject=("corrupt",)`` ..."""
        opts = RunOptions(**{"kernel": self.kernel, **options})
        plan(self.topology, dataclasses.replace(opts, workloads=(name,)))  # bad input raises
        records, ctx = run_workloads(self._guest, self.topology, [name], opts)
        if ctx.hung is not None:  # wedged: stop it now; later tests of it fail at once
            self.hung = str(ctx.hung)
            self._guest.shutdown(graceful=False)
            raise ctx.hung
        return [r.to_json() for r in records]

    # QMP hot-plug (a guest this process booted; the slot a root or downstream port)
    def unplug(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """QMP ``device_del`` of NVMe ``name`` and wait for ``DEVICE_DELETED``; the step."""
        return unplug(self._qmp(), hotplug_slot(self.topology, name), timeout)

    def replug(self, name: str, wait: float = 30.0) -> dict[str, Any]:
        """``device_add`` NVMe ``name`` back (namespace 1 through ``drive=``), wait until the
        guest shows the topology again (p2pmem published) and refresh ``names``; the step,
        with ``tree_differences`` (empty when all is back)."""
        step = replug(self._qmp(), hotplug_slot(self.topology, name), self._guest.run_path)
        step["tree_differences"] = reinventory(self._guest, wait)
        return step

    def _qmp(self) -> QmpLike:
        qmp = qmp_of(self._guest)
        if qmp is None:
            raise GuestError("this guest has no QMP connection here (attached instance)")
        return qmp

    @property
    def qmp(self) -> Any:
        """The qemu.qmp client of this guest's QEMU (``guest.qmp.cmd("query-pci")``)."""
        monitor = self._guest.machine.monitor if isinstance(self._guest, Guest) else None
        if monitor is None:
            raise GuestError("this guest has no QMP connection here (attached instance)")
        return monitor

    @property
    def names(self) -> dict[str, str]:
        """Spec device name -> guest PCI address."""
        return dict(self._guest.names)

    @property
    def inventory(self) -> dict[str, Any]:
        return self._guest.inventory

    def console_tail(self, lines: int = 40) -> str:
        return self._guest.console.tail(lines)

    def restart(self) -> float:
        return self._guest.restart()

    def _start_test(self) -> None:
        try:
            self._mark = len(self._guest.dmesg().splitlines())
        except TestbedError:
            self._mark = 0


class _ModuleGuests:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.guests: dict[str, TestbedGuest] = {}
        self.failed: dict[str, str] = {}

    def _key(self, spec: str, qemu: str | None) -> str:
        return str(resolve(spec).resolve()) + (f"@{qemu}" if qemu else "")

    def get(self, spec: str, qemu: str | None = None) -> TestbedGuest:
        """The guest of topology ``spec``, on ``qemu`` (the marker's, else --testbed-qemu,
        else the topology's own)."""
        qemu = qemu or self.config.getoption("--testbed-qemu")
        key = self._key(spec, qemu)
        if key in self.guests and self.guests[key].hung:
            pytest.fail(f"topology {spec}: its guest hung in an earlier test and was shut "
                        f"down:\n{self.guests[key].hung}", pytrace=False)
        if key in self.failed:
            pytest.fail(f"topology {spec}: an earlier boot in this module failed:\n"
                        f"{self.failed[key]}", pytrace=False)
        if key not in self.guests:
            topo = load_checked(spec, qemu=qemu)
            opt = self.config.getoption
            kernel = resolve_kernel(opt("--testbed-kernel"), topo.profile) \
                if opt("--testbed-kernel") else None
            try:
                self.guests[key] = TestbedGuest(self._boot(topo, kernel), topo, kernel)
            except TestbedError as exc:
                self.failed[key] = str(exc)
                pytest.fail(f"topology {spec}: {exc}", pytrace=False)
        return self.guests[key]

    def _boot(self, topo: Topology, kernel: KernelSpec | None) -> GuestLike:
        opt = self.config.getoption
        if opt("--testbed-keep"):
            return _boot_detached(topo, opt("--testbed-kernel"), opt("--testbed-accel"))
        return boot(topo, options=BootOptions(kernel=kernel, accel=opt("--testbed-accel")))

    def release(self, spec: str, qemu: str | None = None) -> None:
        """The module's last test of this topology is done: shut its guest down now."""
        g = self.guests.pop(self._key(spec, qemu or self.config.getoption("--testbed-qemu")),
                            None)
        if g is not None:
            self._close_one(g)

    def _close_one(self, g: "TestbedGuest") -> None:
        keep = self.config.getoption("--testbed-keep")
        if keep and isinstance(g._guest, AttachedGuest):
            name = g._guest.instance_name
            sys.stderr.write(f"\ntestbed: guest {g.topology.name} left running: "
                             f"testbed ssh {name}  (testbed stop {name})\n")
        if not g.hung:  # (a hung guest was shut down already)
            g._guest.shutdown()

    def close(self) -> None:
        for g in self.guests.values():
            self._close_one(g)
        self.guests.clear()


def _boot_detached(topo: Topology, kernel: str | None, accel: str | None) -> AttachedGuest:
    """--testbed-keep: the guest runs under a supervisor and outlives the session."""
    name = instances.free_name(f"pytest-{topo.name}")
    argv = [sys.executable, "-m", "testbed", "boot", str(topo.source), "--detach", "--name", name,
            "--qemu", topo.machine.qemu]
    if kernel:
        argv += ["--kernel", kernel]
    if accel:
        argv += ["--accel", accel]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise GuestError(f"detached boot failed: {res.stderr.strip()}")
    return attach(instances.get_ready(name), topo)


@pytest.fixture(scope="module")
def _testbed_module_guests(request: pytest.FixtureRequest) -> Iterator[_ModuleGuests]:
    pool = _ModuleGuests(request.config)
    yield pool
    pool.close()


@pytest.fixture
def guest(request: pytest.FixtureRequest, _testbed_module_guests: _ModuleGuests) -> TestbedGuest:
    """A booted guest of the topology named by ``@pytest.mark.topology(...)``."""
    marker = request.node.get_closest_marker("topology")
    if marker is None or not marker.args:
        pytest.fail("the `guest` fixture needs @pytest.mark.topology(\"NAME\") on the test, "
                    "its class or its module", pytrace=False)
    spec = marker.args[0]
    if isinstance(spec, (str, os.PathLike)) and not Path(spec).is_absolute() and \
            str(spec).endswith((".yaml", ".yml")) and not Path(spec).exists():
        spec = Path(request.node.fspath).parent / spec
    qemu = marker.kwargs.get("qemu")
    g = _testbed_module_guests.get(str(spec), qemu)
    g._start_test()
    request.node.stash[_GUEST_KEY] = g
    key = (request.node.nodeid.split("::")[0], _topology_of(request.node) or "")
    if request.config.stash.get(_LAST_USE, {}).get(key) == request.node.nodeid:
        request.addfinalizer(lambda: _testbed_module_guests.release(str(spec), qemu))
    return g


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    g = item.stash.get(_GUEST_KEY, None)
    if g is None:
        return
    try:
        console = g.console_tail(40)
    except Exception as exc:  # never hide the test's own failure
        console = f"(console unavailable: {exc})"
    try:
        dmesg = g.dmesg_since_test_start()[-6000:]
    except Exception as exc:
        dmesg = f"(dmesg unavailable: {exc})"
    for title, text in (("testbed: guest console tail", console),
                        ("testbed: dmesg since the test started", dmesg)):
        if hasattr(report.longrepr, "addsection"):  # terminal and --junitxml failure text
            report.longrepr.addsection(title, text)
        else:
            report.sections.append((title, text))
    item.user_properties.append(("testbed_console_tail", console))
    item.user_properties.append(("testbed_dmesg_delta", dmesg))
