"""Random topology trees, written as YAML text: validation never crashes, and agrees with an
oracle; every tree it accepts, a real QEMU builds exactly (``verify``).

The generator knows which values it chose are invalid (odd CMB sizes, CMBs that are not a
power of two, PMR sizes that are not a power of two, namespace sizes that do not fit the
block size, planted mistakes), so the pure part checks more than "no traceback": a tree is
accepted exactly when the oracle says it is valid, and every problem points into the file.

Reproducible: derandomized, no example database.  The verify part needs QEMU (see the
``real_qemu`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.qemu.validate import load_checked
from testbed.qemu.verify import verify
from testbed.spec import SpecError, Topology
from testbed.spec.parse import TOP_KEYS

# (YAML value, valid?)
CMB = [(None, True), (0, True), ("2M", True), ("4M", True), ("16M", True), ("64M", True),
       ("128M", True), ("1M", False), ("3M", False), ("6M", False), ("12M", False),
       ("100M", False), ("64Q", False)]
PMR = [(None, True), ("4K", True), ("1M", True), ("16M", True), ({"size": "8M"}, True),
       ("24M", False), ("3M", False), ("2K", False), (1000, False), ({"file": "x"}, False)]
NAMESPACES = [(None, True), ([{"size": "1M"}], True), ([{"size": "2M", "block_size": 4096}], True),
              ([{"size": "8M"}, {"size": 4 << 20, "block_size": 512}], True),
              ([{"size": (1 << 20) + 512}], True),
              ([{"size": (1 << 20) + 512, "block_size": 4096}], False),
              ([{"size": 1000000}], False), ([{"size": "1M", "block_size": 1024}], False),
              ([], False)]
IOMMU = [(None, True), ("none", True), ("intel", True), ("amd", True), ("virtio", True),
         ({"model": "intel", "mode": "passthrough"}, True),
         ({"model": "virtio", "mode": "strict"}, True),
         ("intle", False), ({"mode": "passthrough"}, False)]
MISTAKES = ["duplicate-name", "switch-on-root", "typo-key", "two-devices-on-a-port",
            "downstream-port-on-root", "expect-unknown"]


@dataclass
class Gen:
    """What one drawn topology contains, and whether it should validate."""

    draw: object
    valid_only: bool
    valid: bool = True
    counters: dict = field(default_factory=dict)
    nvmes: list = field(default_factory=list)
    all_names: list = field(default_factory=list)

    def name(self, prefix: str) -> str:
        n = self.counters.get(prefix, 0)
        self.counters[prefix] = n + 1
        self.all_names.append(f"{prefix}{n}")
        return f"{prefix}{n}"

    def pick(self, table):
        """A value from ``table``; an invalid one one time in eight (never if valid_only)."""
        bad = not self.valid_only and self.draw(st.integers(0, 7)) == 0
        value, ok = self.draw(st.sampled_from([t for t in table if t[1] != bad]))
        self.valid &= ok
        return copy.deepcopy(value)  # no shared objects: safe_dump would write YAML aliases

    def nvme(self) -> dict:
        entry = {"nvme": self.name("nvme")}
        self.nvmes.append(entry)
        for key, table in (("cmb", CMB), ("pmr", PMR), ("namespaces", NAMESPACES)):
            value = self.pick(table)
            if value is not None:
                entry[key] = value
        if self.draw(st.booleans()):
            entry["serial"] = f"SN-{entry['nvme']}"
        return entry

    def device(self, depth: int) -> dict:
        """Under a root port (depth 0) mostly a switch, deeper less often; at most 3 deep."""
        if depth < 3 and self.draw(st.integers(0, 2)) < (2 if depth == 0 else 1):
            return self.switch(depth + 1)
        return self.nvme()

    def switch(self, depth: int) -> dict:
        ports = []
        for _ in range(self.draw(st.integers(1, 3))):
            kind = self.draw(st.sampled_from(["device", "device", "port", "empty-port"]))
            if kind == "device":
                ports.append(self.device(depth))
            else:
                port = {"downstream_port": self.name("dp")}
                if kind == "port":
                    port["device"] = self.device(depth)
                ports.append(port)
        return {"switch": self.name("sw"), "downstream": ports}

    def topology(self) -> dict:
        doc: dict = {"name": "random"}
        iommu = self.pick(IOMMU)
        if iommu is not None:
            doc["iommu"] = iommu
        doc["machine"] = {"memory": "512M", "cpus": 1}
        pcie = []
        for _ in range(self.draw(st.integers(1, 4))):
            if self.draw(st.integers(0, 4)) == 0:
                pcie.append(self.nvme())
            else:
                port = {"root_port": self.name("rp")}
                if self.draw(st.integers(0, 5)):
                    port["device"] = self.device(0)
                pcie.append(port)
        doc["pcie"] = pcie
        if len(self.nvmes) >= 2 and self.draw(st.booleans()):
            a, b = self.draw(st.permutations(self.nvmes))[:2]
            doc["expect"] = [{"provider": a["nvme"], "client": b["nvme"],
                              "verdict": self.draw(st.sampled_from(["ok", "rejected"]))}]
        if not self.valid_only and self.draw(st.integers(0, 5)) == 0:
            self.mistake(doc)
        return doc

    def mistake(self, doc: dict) -> None:
        what = self.draw(st.sampled_from(MISTAKES))
        self.valid = False
        if what == "duplicate-name" and len(self.all_names) >= 2 and self.nvmes:
            victim = self.draw(st.sampled_from(self.nvmes))
            victim["nvme"] = self.draw(st.sampled_from(
                [n for n in self.all_names if n != victim["nvme"]]))
            doc.pop("expect", None)  # the renamed nvme may be named there
        elif what == "switch-on-root":
            doc["pcie"].append({"switch": "swx", "downstream": [{"nvme": "nvmex"}]})
        elif what == "typo-key" and self.nvmes:
            self.draw(st.sampled_from(self.nvmes))["cbm"] = "64M"
        elif what == "two-devices-on-a-port":
            doc["pcie"].append({"root_port": "rpx", "device": [{"nvme": "nx0"}, {"nvme": "nx1"}]})
        elif what == "downstream-port-on-root":
            doc["pcie"].append({"downstream_port": "dpx"})
        else:
            doc.setdefault("expect", []).append(
                {"provider": "nvme999", "client": "nvme998", "verdict": "ok"})


@st.composite
def topologies(draw, valid_only: bool = False):
    """(YAML text, the oracle's verdict, the number of NVMe controllers)."""
    gen = Gen(draw, valid_only)
    doc = gen.topology()
    style = draw(st.sampled_from([False, None, True]))  # block, mixed, flow
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=style, width=100)
    return text, gen.valid, len(gen.nvmes)


def load_text(text: str, probe_qemu: bool) -> Topology:
    with tempfile.TemporaryDirectory(prefix="spec-prop-") as tmp:
        path = Path(tmp) / "random.yaml"
        path.write_text(text)
        return load_checked(path, probe_qemu=probe_qemu)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_validation_never_crashes_and_agrees_with_the_oracle(case):
    text, valid, nvmes = case
    lines = text.count("\n") or 1
    try:
        topo = load_text(text, probe_qemu=False)
    except SpecError as exc:
        assert not valid, f"rejected a valid topology:\n{text}\n{exc}"
        assert exc.problems
        for p in exc.problems:
            assert 1 <= p.line <= lines + 1 and p.col >= 1, f"{p} points outside the file:\n{text}"
            assert p.path.split(".")[0].split("[")[0] in TOP_KEYS or p.path == "", p
            assert p.message and "\n" not in p.message, p
        return
    assert valid, f"accepted an invalid topology:\n{text}"
    doc = yaml.safe_load(text)
    assert len(topo.nvmes()) == nvmes, text
    names = [n.name for n in topo.nodes()]
    assert len(names) == len(set(names)), names
    for n in topo.nvmes():
        assert topo.upstream_path(n.name)[-1] in topo.pcie
    assert topo.name == doc["name"]


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(topologies(valid_only=True))
def test_every_accepted_tree_passes_verify(real_qemu, case):
    text, valid, nvmes = case
    assert valid
    from hypothesis import assume
    from testbed.qemu.probe import probe
    # a QEMU whose amd-iommu cannot remap DMA refuses `iommu: amd` (a model limit)
    assume("amd" not in text or "dma-remap" in probe().device_props.get("amd-iommu", ()))
    topo = load_text(text, probe_qemu=True)  # also checks the spec against this QEMU
    assert len(topo.nvmes()) == nvmes
    assert verify(topo) == [], text


LIBRARY_TEXTS = [p.read_text() for p in sorted((Path(__file__).resolve().parents[2]
                                                / "topologies").glob("*.yaml"))]
YAMLISH = st.sampled_from(list(":-[]{},#&*!|>'\"%@` \t\n") + ["\r", "\x85", "\u2028", "\x07",
                          "<<", "~", "null", "yes", "0x", "1e3", "64M", "!!int ", "- ", ": ",
                          "    ", "nvme", "switch", "root_port", "downstream_port", "device"])


@st.composite
def mangled_library_files(draw):
    """A library topology with a few random edits: insertions of YAML-ish text, deletions."""
    text = draw(st.sampled_from(LIBRARY_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + "".join(draw(st.lists(YAMLISH, min_size=1, max_size=4))) + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
    return text


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mangled_library_files())
def test_mangled_files_never_raise_anything_but_spec_error(text):
    lines = len(text.splitlines()) + 1
    try:
        load_text(text, probe_qemu=False)
    except SpecError as exc:
        for p in exc.problems:
            assert 1 <= p.line <= lines + text.count("\r") and p.col >= 1, str(p)
            assert p.message and "\n" not in p.message, str(p)
