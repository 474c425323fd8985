"""What README "Where new things go" promises, checked on a copy of the package.

An endpoint kind is ONE new module in spec/endpoints/ and ONE row in ENDPOINTS, and the
stages follow (the parser and its errors, the command line, the addresses, the driver the
guest check expects, the oracle, the picture); the toy kind is QEMU's e1000e (Intel
82574L, 8086:10d3, driver e1000e).  A machine is ONE module in machines/ and ONE row in
PROFILES (the spec, the command line, the console word).  Nothing else is edited."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


def add_row(text: str, table: str, name: str, import_line: str) -> str:
    """``text`` with ``name`` appended to the one table tuple ``table`` matches (whatever
    rows it has), and ``import_line`` after the module's docstring-and-future header."""
    found = list(re.finditer(table, text))
    assert len(found) == 1, f"no single table {table!r}: the table moved, update this test"
    rows = found[0].group(1).rstrip(", ")
    start, end = found[0].span(1)
    text = text[:start] + f"{rows}, {name}" + text[end:]
    header = "from __future__ import annotations\n"
    assert header in text
    return text.replace(header, header + import_line + "\n", 1)


PACKAGE = Path(__file__).resolve().parents[2] / "testbed"

MODULE = '''
from dataclasses import dataclass
from pathlib import Path

from .base import Endpoint, EndpointKind


@dataclass(frozen=True)
class E1000e(Endpoint):
    kind = "e1000e"


class E1000eKind(EndpointKind):
    word = "e1000e"
    node = E1000e
    keys = ("e1000e",)
    qemu_device = "e1000e"
    pci_id = ("0x8086", "0x10d3")
    label = "e1000e NIC (82574L)"
    short = "e1000e NIC"
    driver = "e1000e"
    module = "e1000e"
    dma_engine = True
    pair_client = False

    def argv(self, node, bus: str, run_dir: Path) -> list[str]:
        return ["-device", f"e1000e,id={node.name},bus={bus}"]


E1000E = E1000eKind()
'''

TOPOLOGY = """\
name: toy
pcie:
  - root_port: rp0
    device:
      switch: sw0
      downstream: [{nvme: n0, cmb: 2M}, {nvme: n1}, {e1000e: nic0}]
"""

BAD = "pcie:\n  - {e1000e: nic0, cmb: 2M}\n"

PROBE = r'''
import json, sys
from pathlib import Path
from testbed.errors import SpecError
from testbed.qemu.addresses import addresses
from testbed.qemu.cmdline import machine_argv
from testbed.results.picture import topology_dot
from testbed.spec import load_topology
from testbed.spec.endpoints import kind_of
from testbed.verdicts.predict import pairs
topo = load_topology(sys.argv[1])
nic = topo.endpoint("nic0")
argv = machine_argv(topo, "q", Path("/run/x"), "tcg")
try:
    load_topology(sys.argv[2])
    bad = []
except SpecError as exc:
    bad = [f"{p.line}:{p.path}: {p.message}" for p in exc.problems]
import testbed
print(json.dumps({
    "package": testbed.__file__,
    "endpoints": [e.name for e in topo.endpoints()],
    "providers": [p.name for p in topo.providers()],
    "pairs": pairs(topo),
    "device": [a for a in argv if a.startswith("e1000e,")],
    "address": list(addresses(topo)["nic0"].path),
    "driver": kind_of(nic).driver,
    "drawn": "e1000e NIC" in topology_dot(topo),
    "bad": bad,
}))
'''


def test_a_new_endpoint_kind_is_one_module_and_one_row(tmp_path):
    copy = tmp_path / "testbed"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    kinds = copy / "spec" / "endpoints"
    (kinds / "e1000e.py").write_text(MODULE)
    init = kinds / "__init__.py"
    init.write_text(add_row(init.read_text(), r"for k in \(([^)]*)\)\}", "E1000E",
                            "from .e1000e import E1000E"))
    (tmp_path / "toy.yaml").write_text(TOPOLOGY)
    (tmp_path / "bad.yaml").write_text(BAD)
    res = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "toy.yaml"),
                          str(tmp_path / "bad.yaml")], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                                            "HOME": str(tmp_path)}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout)
    assert seen["endpoints"] == ["n0", "n1", "nic0"]
    assert seen["providers"] == ["n0"] and seen["pairs"] == [["n0", "n1"]]
    assert seen["device"] == ["e1000e,id=nic0,bus=sw0-dp2"]
    assert seen["package"].startswith(str(copy)), seen["package"]  # the copy, not the tree
    assert seen["address"] == [8, 0, 16, 0]  # rp0 at 01.0, sw0 up 00.0, its 3rd port 02.0
    assert seen["driver"] == "e1000e" and seen["drawn"]
    assert len(seen["bad"]) == 1 and "2:pcie[0].cmb: unknown key 'cmb'" in seen["bad"][0]


MACHINE = '''
import dataclasses

from .x86_64 import X86_64

# a machine that is x86's in all but its names (what is new for a real one: its own data)
TOY64 = dataclasses.replace(X86_64, arch="toy64", qemu_binary="qemu-system-toy64",
                            machine_type="toyboard", default_cpu="toycpu", console="ttyTOY0")
'''

MACHINE_PROBE = r'''
import json, sys
from pathlib import Path
import testbed
from testbed.errors import SpecError
from testbed.kernel.prepare import base_cmdline
from testbed.qemu.cmdline import machine_argv
from testbed.spec import load_topology
topo = load_topology(sys.argv[1])
try:
    load_topology(sys.argv[2])
    bad = []
except SpecError as exc:
    bad = [f"{p.line}:{p.path}: {p.message}" for p in exc.problems]
print(json.dumps({"package": testbed.__file__,
                  "argv": machine_argv(topo, topo.machine.qemu, Path("/run/x"), "tcg")[:7],
                  "console": [w for w in base_cmdline(topo.profile) if w.startswith("console=")],
                  "bad": bad}))
'''


def test_a_new_machine_is_one_module_and_one_row(tmp_path):
    copy = tmp_path / "testbed"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    machines = copy / "machines"
    (machines / "toy64.py").write_text(MACHINE)
    init = machines / "__init__.py"
    init.write_text(add_row(init.read_text(), r"for p in \(([^)]*)\)\}\)", "TOY64",
                            "from .toy64 import TOY64"))
    (tmp_path / "toy.yaml").write_text("machine: {arch: toy64}\npcie: [{nvme: n0}]\n")
    (tmp_path / "bad.yaml").write_text("machine: {arch: toy65}\npcie: [{nvme: n0}]\n")
    res = subprocess.run([sys.executable, "-c", MACHINE_PROBE, str(tmp_path / "toy.yaml"),
                          str(tmp_path / "bad.yaml")], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                                            "HOME": str(tmp_path)}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout)
    assert seen["package"].startswith(str(copy)), seen["package"]
    assert seen["argv"] == ["qemu-system-toy64", "-machine", "toyboard", "-accel", "tcg",
                            "-cpu", "toycpu"]
    assert seen["console"] == ["console=ttyTOY0"]
    assert len(seen["bad"]) == 1 and "toy64" in seen["bad"][0] and "x86_64" in seen["bad"][0]
