"""``testbed verify`` against a real QEMU: the library matches, and a wrong spec is caught.

Needs qemu-system-x86_64 (the ``real_qemu`` fixture fails under CI without it, and skips
loudly elsewhere).  Every QEMU here starts paused or in firmware only, under TCG, and is shut
down before the test ends.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.paths import topologies_dir
from testbed.qemu.backing import create_backing_files
from testbed.qemu.cmdline import BootMedia, Drive, build
from testbed.qemu.devices import free_root_slots
from testbed.qemu.machine import QemuMachine, QmpSocket
from testbed.qemu.probe import probe
from testbed.qemu.validate import load_checked
from testbed.qemu.verify import _check_bars, _check_qom, verify
from testbed.spec import load_topology
from testbed.spec.model import (DownstreamPort, Iommu, Nvme, Pmr, RootPort, Switch,
                                Topology)
from testbed.util.rundir import RunDir
from testbed.spec.units import MiB


def names_its_qemu(name: str) -> bool:
    """The topology names a QEMU other than its machine's program on PATH (the AMD vIOMMU
    ones: 11.x, the install); an arm64 topology's qemu-system-aarch64 is the host's."""
    topo = load_topology(name)
    return topo.machine.qemu != topo.profile.qemu_binary


# the library topologies that need the install run in its step
LIBRARY = [pytest.param(n, marks=pytest.mark.qemu_install) if names_its_qemu(n) else n
           for n in sorted(p.stem for p in topologies_dir().glob("*.yaml"))]


def qemu_children() -> list[str]:
    """QEMU processes (running or unreaped) whose parent is this test process."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        state, ppid = rest.split()[:2]
        if int(ppid) == os.getpid() and comm.startswith("qemu-system"):
            out.append(f"{stat.parent.name} ({state})")
    return out


@pytest.fixture(autouse=True)
def no_qemu_left_behind():
    yield
    assert qemu_children() == [], "QEMU processes left behind"


def run_verify_cli(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed", "verify", *files],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", LIBRARY)
def test_library_topology_passes_verify(real_qemu, name, request):
    if names_its_qemu(name):
        request.getfixturevalue("installed_qemu")
    out = run_verify_cli(name)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
    assert out.stdout.startswith(f"{name}: ok (QEMU matches the spec")


def test_verify_cli_rejects_bad_input_before_starting_qemu(real_qemu, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pcie:\n  - {nvme: nvme0, cmb: 3M}\n")
    out = run_verify_cli("switch-cmb", str(bad))
    assert out.returncode == 2 and out.stdout == ""  # not even switch-cmb was started
    assert f"{bad}:2:24: pcie[0].cmb: CMB size 3M is not a multiple of 2M" in out.stderr


# -- verify can fail: the machine QEMU runs is not the machine the spec claims ------------------

def verify_claim(real: Topology, claimed: Topology, bars: bool = True) -> list[str]:
    """Start QEMU for ``real`` and check it against ``claimed`` -- what verify() does, with
    the two specs pulled apart so that a mismatch must be found.

    ``bars=False`` checks the QOM tree only: a claimed device that QEMU does not have makes
    the BAR check wait its full enumeration timeout (30 s) for it."""
    caps = probe(real.machine.qemu)
    with RunDir.create(f"verify-claim-{real.name}") as run:
        create_backing_files(real, run.path)
        sock = QmpSocket.in_dir(run.path)
        vm = QemuMachine(build(real, caps.path, run.path, "tcg", qmp=sock.path, paused=True),
                         run.path, sock, name=f"verify {real.name}")
        vm.launch()
        try:
            diffs = _check_qom(vm, claimed)
            if bars:
                vm.qmp("cont")
                diffs += _check_bars(vm, claimed)
        finally:
            vm.shutdown()
        assert not vm.is_running()
    return diffs


def with_nvme(topo: Topology, name: str, **changes) -> Topology:
    """``topo`` with the NVMe called ``name`` changed (the tree is immutable: rebuild it)."""
    def rebuild(node):
        if isinstance(node, Nvme):
            return dataclasses.replace(node, **changes) if node.name == name else node
        if isinstance(node, Switch):
            return dataclasses.replace(node, ports=tuple(rebuild(p) for p in node.ports))
        return dataclasses.replace(node, device=rebuild(node.device) if node.device else None)
    return dataclasses.replace(topo, pcie=tuple(rebuild(n) for n in topo.pcie))


@pytest.fixture(scope="module")
def switch_cmb() -> Topology:
    return load_topology("switch-cmb")


def test_the_honest_claim_matches(real_qemu, switch_cmb):
    assert verify_claim(switch_cmb, switch_cmb) == []


def test_wrong_specs_are_caught(real_qemu, switch_cmb):
    """One QEMU per claim would be slow; instead one QEMU per *real* machine, and several
    false claims about it.  Each claim must yield exactly the difference it plants."""
    pmr = load_topology("nvme-pmr")
    claims = {
        "bigger CMB": (switch_cmb, with_nvme(switch_cmb, "nvme0", cmb=128 * MiB),
                       ["nvme0: CMB BAR2 is 64M, the spec says 128M"]),
        "CMB that is not there": (with_nvme(switch_cmb, "nvme1", cmb=0), switch_cmb,
                                  ["nvme1: no CMB BAR2 (spec: 64M)"]),
        "no CMB although there is one": (switch_cmb, with_nvme(switch_cmb, "nvme1", cmb=0),
                                         ["nvme1: has a BAR2 but the spec gives no CMB"]),
        "PMR size": (pmr, with_nvme(pmr, "nvme0", pmr=Pmr(32 * MiB)),
                     ["nvme0: PMR BAR4 is 16M, the spec says 32M"]),
        "PMR that is not there": (with_nvme(pmr, "nvme0", pmr=None), pmr,
                                  ["nvme0: no PMR BAR4 (spec: 16M)"]),
    }
    for what, (real, claimed, want) in claims.items():
        assert verify_claim(real, claimed) == want, what


def test_wrong_tree_is_caught(real_qemu, switch_cmb):
    """A spec with the two controllers swapped between the switch's ports."""
    n0, n1 = switch_cmb.nvmes()
    swapped = dataclasses.replace(switch_cmb, pcie=(
        RootPort("rp0", Switch("sw0", (DownstreamPort("sw0-dp0", n1),
                                       DownstreamPort("sw0-dp1", n0)))),))
    assert verify_claim(switch_cmb, swapped) == [
        "nvme1: plugged into sw0-dp1, the spec says sw0-dp0",
        "nvme0: plugged into sw0-dp0, the spec says sw0-dp1"]


def test_root_port_acs_is_checked(real_qemu, switch_cmb):
    """acs: false is QEMU's disable-acs=on, and verify reads it back over QMP."""
    rp0 = switch_cmb.pcie[0]
    off = dataclasses.replace(switch_cmb, pcie=(dataclasses.replace(rp0, acs=False),))
    assert verify_claim(off, off, bars=False) == []
    assert verify_claim(switch_cmb, off, bars=False) == [
        "rp0: QEMU has disable-acs=off, the spec says acs: false"]
    assert verify_claim(off, switch_cmb, bars=False) == [
        "rp0: QEMU has disable-acs=on, the spec says acs: true"]


def test_invented_device_is_caught(real_qemu, switch_cmb):
    extra = dataclasses.replace(switch_cmb, pcie=switch_cmb.pcie + (RootPort("rp9"),))
    diffs = verify_claim(switch_cmb, extra, bars=False)
    assert len(diffs) == 1 and diffs[0].startswith("rp9: not found in QEMU"), diffs


def test_wrong_device_type_is_caught(real_qemu):
    real = Topology("t", pcie=(RootPort("a", Nvme("n", "n", cmb=2 * MiB)),))
    claimed = Topology("t", pcie=(RootPort("a", Switch("n")),))
    assert verify_claim(real, claimed) == ["n: QEMU made a nvme, the spec says x3130-upstream"]


def test_verify_api(real_qemu):
    topo = load_topology("rootports-cmb")
    assert verify(topo, binary=real_qemu) == []
    assert qemu_children() == []


# -- the parser's limits are QEMU's limits ------------------------------------------------------

@pytest.mark.parametrize("iommu", ["none", "intel",
                                   # amd-iommu with dma-remap: QEMU 11.x (the install)
                                   pytest.param("amd", marks=pytest.mark.qemu_install),
                                   "virtio"])
def test_root_complex_limit_is_real(real_qemu, tmp_path, iommu, image, request):
    """As many root ports as the parser allows fit on q35's root bus (with the two slots the
    testbed keeps for its boot disk, NIC, RNG and a custom kernel's modules disk still free) --
    and one more does not validate."""
    slots = free_root_slots(Topology("slots", iommu=Iommu(iommu)))
    qemu = request.getfixturevalue("installed_qemu").name if iommu == "amd" else None
    lines = [f"iommu: {iommu}", "machine: {memory: 512M" + (f", qemu: {qemu}" if qemu else "")
             + "}", "pcie:"]
    lines += [f"  - {{root_port: rp{i}, device: {{nvme: n{i}, namespaces: [{{size: 1M}}]}}}}"
              for i in range(slots)]
    spec = tmp_path / "full.yaml"
    spec.write_text("\n".join(lines) + "\n")
    topo = load_topology(spec)
    assert verify(topo) == []
    # everything the testbed adds on the root bus when it boots a guest (from the one
    # command-line builder: boot disk, NIC, RNG, a custom kernel's modules disk) must fit
    caps = probe(topo.machine.qemu)
    with RunDir.create("verify-root-full") as run:
        create_backing_files(topo, run.path)
        disk = run.path / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
        (run.path / "modules.img").write_bytes(bytes(4096))
        media = BootMedia(kernel=image.kernel, initrd=image.initrd, cmdline=(), disk=disk,
                          ssh_port=1,
                          drives=(Drive(run.path / "modules.img", "tb-modules", "tb-modules"),))
        sock = QmpSocket.in_dir(run.path)
        with QemuMachine(build(topo, caps.runner, run.path, "tcg", media=media, qmp=sock.path,
                               paused=True), run.path, sock, name="root-full",
                         env=caps.runner.environ()) as vm:
            assert vm.query_status() == "prelaunch"
    spec.write_text("\n".join(lines + ["  - {root_port: rpx, device: {nvme: nx}}"]) + "\n")
    from testbed.spec import SpecError
    with pytest.raises(SpecError, match="too many devices on the root complex"):
        load_checked(spec, probe_qemu=False)


def test_switch_port_limit_is_real(real_qemu, tmp_path):
    spec = tmp_path / "wide.yaml"
    spec.write_text(textwrap.dedent("""\
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream:
        """) + "".join(f"        - {{nvme: n{i}, namespaces: [{{size: 1M}}]}}\n"
                       for i in range(32)))
    assert verify(load_topology(spec)) == []


def test_understated_cmb_is_caught(real_qemu, switch_cmb):
    assert verify_claim(switch_cmb, with_nvme(switch_cmb, "nvme0", cmb=32 * MiB)) != []
