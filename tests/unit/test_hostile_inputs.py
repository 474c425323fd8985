"""Hostile or careless input to every command: exit 2 naming the file, field or option, no
traceback, nothing created, nothing started, and a run that did not finish is never PASS.

Commands run in-process through ``testbed.cli.main`` (fast enough for a property test);
QEMU is never started here, and a sentinel makes sure of it.  Pure: no guest.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import cli
from testbed.errors import TestbedError
from testbed.guest import instances
from testbed.guest.instances import NAME_RE
from testbed.run.runner import RunOptions, check_inputs
from testbed.util.process import identify
from testbed.spec import load_topology


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty working directory and state; QEMU must not start."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("TESTBED_ACCEL", raising=False)

    def no_qemu(*args, **kwargs):
        raise AssertionError("QEMU was started for bad input")

    monkeypatch.setattr("testbed.qemu.machine.QemuMachine.launch", no_qemu)
    monkeypatch.setattr(cli, "install_signal_handlers", lambda: None)  # pytest keeps its own
    monkeypatch.setattr("subprocess.Popen.__init__", _only_qemu_probes(no_qemu))
    return work


def _only_qemu_probes(fail):
    import subprocess
    real = subprocess.Popen.__init__

    def init(self, args, *a, **kw):
        argv = [str(x) for x in (args if isinstance(args, (list, tuple)) else [args])]
        if argv and "qemu-system" in argv[0] and not any(
                x in argv for x in ("--version", "help", "-L")) and \
                not any(x.endswith(",help") for x in argv):
            fail()
        if argv and argv[-1:] and "testbed.guest.supervisor" in " ".join(argv):
            fail()
        return real(self, args, *a, **kw)
    return init


def run_cli(args, capsys) -> tuple[int, str]:
    try:
        status = cli.main(args)
    except SystemExit as exc:  # argparse
        status = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return status, out.err


# -- topology files that are not files -------------------------------------------------------

def special(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.yaml"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "zero":
        p.symlink_to("/dev/zero")
    elif kind == "urandom":
        p.symlink_to("/dev/urandom")
    elif kind == "loop":
        p.symlink_to(tmp_path / "loop2.yaml")
        (tmp_path / "loop2.yaml").symlink_to(p)
    elif kind == "dangling":
        p.symlink_to(tmp_path / "nowhere.yaml")
    elif kind == "sparse":
        with open(p, "wb") as f:
            f.truncate(1 << 40)
    elif kind == "socket":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
    return p


@pytest.mark.parametrize("kind, message", [
    ("fifo", "named pipe"), ("zero", "character device"), ("urandom", "character device"),
    ("loop", "loop of symbolic links"), ("dangling", "no such file"),
    ("sparse", "larger than 1 MiB"), ("socket", "socket")])
def test_special_topology_files_are_refused_at_once(tmp_path, kind, message):
    path = special(tmp_path, kind)
    try:
        res = subprocess.run([sys.executable, "-m", "testbed", "validate", "--no-probe",
                              str(path)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate blocked on a {kind}")
    assert res.returncode == 2 and message in res.stderr and str(path) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# -- option values of every command ----------------------------------------------------------

BAD_OPTIONS = [
    (["run", "switch-cmb", "--timeout", "-5"], "--timeout"),
    (["run", "switch-cmb", "--timeout", "0"], "--timeout"),
    (["run", "switch-cmb", "--timeout", "nan"], "--timeout"),
    (["boot", "switch-cmb", "--timeout", "inf"], "--timeout"),
    (["matrix", "-t", "switch-cmb", "-k", "default", "--timeout", "-1"], "--timeout"),
    (["ssh", "x", "--timeout", "nan", "--", "true"], "--timeout"),
    (["run", "switch-cmb", "--kernel", ""], "--kernel"),
    (["boot", "switch-cmb", "--kernel", ""], "--kernel"),
    (["matrix", "-t", "switch-cmb", "-k", ""], "--kernel"),
    (["boot", "switch-cmb", "--detach", "--name", ""], "--name"),
    (["boot", "switch-cmb", "--name", "x"], "--name"),
    (["run", "switch-cmb", "--push", "{tmp}:/root/x"], "--push"),
    (["run", "switch-cmb", "--push", "nofile:/root/x"], "--push"),
    (["run", "switch-cmb", "--push", "justone"], "--push"),
    (["run", "switch-cmb", "--size", "3K"], "--size"),
    (["run", "switch-cmb", "--size", "1T"], "--size"),
    (["run", "switch-cmb", "-w", "nope"], "--workload"),
    (["run", "switch-cmb", "--out", "{file}"], "--out"),
    (["matrix", "-t", "switch-cmb", "-k", "default", "--out", "{file}"], "--out"),
    (["run", "switch-cmb", "--guest", "nope"], "nope"),
    (["validate", ""], "empty"),
    (["render", "switch-cmb", "--run-dir", ""], "--run-dir"),
    (["render", "switch-cmb", "--format", "svg", "--boot"], "--boot"),
    (["render", "switch-cmb", "--format", "dot", "--json"], "--json"),
    (["render", "switch-cmb", "--format", "dot", "-o", "{tmp}"], "-o"),
    (["render", "switch-cmb", "--format", "svg", "-o", "{tmp}/no/such/dir/x.svg"], "-o"),
    (["render", "switch-cmb", "--format", "tiff"], "--format"),
    (["run", "switch-cmb", "--format", "tap"], "--format"),
    (["run", "switch-cmb", "--kernel", "{file}"], "--kernel"),
    (["kernel", "build", "{tmp}"], "{tmp}"),
]


@pytest.mark.parametrize("args, named", BAD_OPTIONS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_option_values(args, named, sandbox, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("not a directory, not a kernel\n")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(f)) for a in args]
    status, err = run_cli(args, capsys)
    assert status == 2, err
    assert named.replace("{tmp}", str(tmp_path)) in err, err
    assert "Traceback" not in err
    assert list(sandbox.iterdir()) == [], "nothing may be created for bad input"


def test_bad_testbed_accel_creates_nothing(sandbox, monkeypatch, capsys):
    monkeypatch.setenv("TESTBED_ACCEL", "warp")
    for args in (["run", "switch-cmb"], ["boot", "switch-cmb", "-c", "true"],
                 ["matrix", "-t", "switch-cmb", "-k", "default"]):
        status, err = run_cli(args, capsys)
        assert status == 2 and "TESTBED_ACCEL" in err, err
    assert list(sandbox.iterdir()) == []


def test_render_replaces_only_whole_path_prefixes(sandbox, capsys):
    status = cli.main(["render", "switch-cmb", "--run-dir", "q"])
    out = capsys.readouterr().out
    assert status == 0 and "q35" in out and '"$RUN_DIR"35' not in out


# -- a run that did not finish is never PASS -------------------------------------------------

class _FakeGuest:
    """Just enough of a guest for the runner's bookkeeping (no QEMU: this is a unit test of
    what the runner writes when a workload crashes, not of a guest)."""

    def __init__(self, topo, console: Path):
        from testbed.guest.console import Console
        from testbed.qemu.accel import Accel
        self.topology, self.names, self.boot_seconds = topo, {}, 1.0
        self.inventory = {"kernel": {"release": "7.3.4", "p2pdma": True}}
        console.write_text("booted\n")
        self.console = Console(console)
        self.accel, self.kernel_description, self.argv = Accel("tcg", "test"), "test", []
        from testbed.util.timing import Phases
        self.phases = Phases()

    def run(self, command, timeout=60.0, stdin=None):
        from testbed.guest.result import CommandResult
        return CommandResult(str(command), 0, "", "", 0.0)

    def script(self):
        return None

    def shutdown(self, graceful=True):
        return 0


@pytest.mark.parametrize("crash", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_a_crashed_run_is_never_pass(tmp_path, monkeypatch, crash):
    from testbed.run import runner
    topo = load_topology("switch-cmb")
    monkeypatch.setattr(runner, "boot",
                        lambda topo, options, caps=None: _FakeGuest(topo, tmp_path / "console.log"))

    def explode(*a, **kw):
        raise crash

    monkeypatch.setattr(runner, "run_workloads", explode)
    out = tmp_path / "out"
    if isinstance(crash, KeyboardInterrupt):  # an interrupt ends the command
        with pytest.raises(type(crash)):
            runner.run_topology(topo, runner.RunOptions(out=out, workloads=("inventory",)))
    else:  # a defect is a broken run, its traceback kept beside the results
        result, _ = runner.run_topology(topo, runner.RunOptions(out=out,
                                                                workloads=("inventory",)))
        assert result.error_kind == "internal" and "a bug" in result.error
        assert "RuntimeError: a bug" in (out / "traceback.txt").read_text()
    data = json.loads((out / "results.json").read_text())
    assert data["status"] in ("incomplete", "fail") and data["finished"] is False
    assert "PASS" not in (out / "report.md").read_text()
    assert 'errors="1"' in (out / "junit.xml").read_text()


# -- a property: names, sizes, paths and option values from each kind -----------------------

NAMES = st.one_of(st.sampled_from(["..", ".", "/", "~", "", " ", "a/b", "-x", "x\n", "\x00"]),
                  st.text(min_size=1, max_size=70)).filter(lambda s: not NAME_RE.fullmatch(s))
def _valid_transfer_size(text: str) -> bool:
    from testbed.commands.options import transfer_size
    try:
        transfer_size(text)
    except Exception:
        return False
    return True


SIZES = st.one_of(st.sampled_from(["-1", "0", "1T", "3K", "1.5M", "9" * 30, "M", "nan", ""]),
                  st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str)
                  ).filter(lambda s: not _valid_transfer_size(s))
SECONDS = st.one_of(st.sampled_from(["-5", "0", "nan", "inf", "-inf", "1e999", "x", ""]),
                    st.floats(max_value=0).map(str))
PATHS = st.sampled_from(["/dev/zero", "/proc/self/status", "/", "", "/etc/passwd"])


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(
    NAMES.map(lambda n: (["stop", n], None)),
    NAMES.map(lambda n: (["ssh", n, "--", "true"], None)),
    NAMES.map(lambda n: (["run", "switch-cmb", "--guest", n], None)),
    NAMES.map(lambda n: (["boot", "switch-cmb", "--detach", "--name", n], None)),
    SIZES.map(lambda s: (["run", "switch-cmb", "--size", s], "--size")),
    SECONDS.map(lambda s: (["run", "switch-cmb", "--timeout", s], "--timeout")),
    SECONDS.map(lambda s: (["boot", "switch-cmb", "--timeout", s], "--timeout")),
    PATHS.map(lambda p: (["run", "switch-cmb", "--kernel", p], "--kernel")),
    PATHS.map(lambda p: (["run", "switch-cmb", "--out", p], "--out")),
    PATHS.map(lambda p: (["validate", p], None)),
    st.sampled_from(["/nonexistent/x", "."]).map(lambda p: (["validate", p], None)),
))
def test_the_contract_holds_for_generated_values(case, sandbox, capsys):
    args, named = case
    try:
        status, err = run_cli(args, capsys)
    except TestbedError as exc:  # pragma: no cover - main() must catch these
        pytest.fail(f"{args}: escaped main(): {exc!r}")
    if status == 0 and args[0] == "stop":
        pytest.fail(f"stop {args[1]!r} succeeded in an empty state")
    assert status == 2, (args, err)
    assert "Traceback" not in err
    if named:
        assert named in err, (args, err)
    assert [p for p in sandbox.iterdir()] == [], args


def test_the_sandbox_refuses_to_start_qemu(sandbox):
    from testbed.qemu.machine import QemuMachine, QmpSocket
    with pytest.raises(AssertionError, match="QEMU was started"):
        QemuMachine(["qemu-system-x86_64"], sandbox, QmpSocket.in_dir(sandbox)).launch()


def test_generated_sizes_in_topologies(tmp_path):
    """A size in any field, from any of the kinds above, is a clean SpecError."""
    from testbed.errors import SpecError
    for field, template in (("memory", "machine: {{memory: {v}}}\npcie: []\n"),
                            ("cmb", "pcie: [{{nvme: n0, cmb: {v}}}]\n"),
                            ("pmr", "pcie: [{{nvme: n0, pmr: {v}}}]\n"),
                            ("size", "pcie: [{{nvme: n0, namespaces: [{{size: {v}}}]}}]\n")):
        for v in ("-1", "0x10", "1e9", "9" * 30, "1P", "7", "true", "[1]", "{a: 1}"):
            p = tmp_path / f"{field}.yaml"
            p.write_text(template.format(v=v))
            try:
                load_topology(p)
            except SpecError as exc:
                assert all(pr.line >= 1 for pr in exc.problems)
            else:
                assert field == "memory" and v == "9" * 30 or v in ("0x10", "1e9", "7"), (field, v)
    assert stat.S_ISDIR(tmp_path.stat().st_mode)


def _ready_instance(name: str, monitor: str) -> None:
    """A ready instance whose 'supervisor' and 'QEMU' are this process (alive, ours)."""
    inst = instances.create(name)
    inst.status = "ready"
    inst.supervisor = inst.qemu = identify(os.getpid())
    inst.monitor = monitor
    inst.save()


def test_a_workload_a_detached_guest_cannot_run_is_refused_before_the_run(sandbox, capsys):
    """hot-unplug drives QEMU's QMP: a detached guest whose QEMU offers no second monitor
    (booted by an older testbed) is refused up front with the reason (exit 2), not run and
    judged a mismatch; an unknown guest is refused too."""
    _ready_instance("g", monitor="")
    status, err = run_cli(["run", "rootports-cmb-zen", "--guest", "g", "-w", "hot-unplug"],
                          capsys)
    assert status == 2 and "hot-unplug" in err and "QMP" in err and "--guest" in err, err
    assert list(sandbox.iterdir()) == []
    status, err = run_cli(["run", "rootports-cmb-zen", "--guest", "nobody", "-w",
                           "hot-unplug"], capsys)
    assert status == 2 and "no instance named 'nobody'" in err, err


def test_a_qmp_workload_passes_the_checks_on_a_guest_with_a_monitor(sandbox):
    _ready_instance("g", monitor=str(sandbox / "monitor.sock"))
    topo = load_topology(Path(__file__).parents[2] / "topologies" / "rootports-cmb-zen.yaml")
    assert check_inputs(topo, RunOptions(workloads=("hot-unplug",), guest_name="g")) == \
        ["hot-unplug"]
