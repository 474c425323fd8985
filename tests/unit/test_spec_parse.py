"""The topology language: shorthands, defaults, positions and the checks against a QEMU binary.

Pure tests: no QEMU is started; the second pass (testbed.qemu.validate) gets a fake ``probe``
callable that returns a :class:`testbed.qemu.probe.Capabilities`.
"""

from __future__ import annotations

import dataclasses

import textwrap
from pathlib import Path

import pytest

from testbed.errors import UsageError
from testbed.errors import QemuNotFound
from testbed.qemu.probe import Capabilities
from testbed.qemu.validate import check_document
from testbed.spec import SpecError
from testbed.spec.model import (DownstreamPort, Iommu, Machine, Namespace, Nvme, Pmr)
from testbed.spec.parse import parse
from testbed.spec.problems import Problem, did_you_mean
from testbed.spec.units import MiB
from testbed.spec.yamlsource import load

G = 1 << 30


def spec(text: str, base_dir: Path | None = None, probe=None):
    """Parse ``text``; with ``probe``, also the second pass against that (fake) QEMU."""
    text = textwrap.dedent(text)
    if probe is None:
        return parse(load(text, "t.yaml"), "t.yaml", base_dir or Path("/nonexistent"))
    return check_document(load(text, "t.yaml"), "t.yaml", base_dir or Path("/nonexistent"),
                          probe)


def problems(text: str, base_dir: Path | None = None, probe=None) -> list[str]:
    """Every problem as 'LINE:COL: path: message' (the file name stripped)."""
    with pytest.raises(SpecError) as info:
        spec(text, base_dir, probe)
    return [str(p).removeprefix("t.yaml:") for p in info.value.problems]


ONE_NVME = """
pcie:
  - root_port: rp0
    device: {nvme: nvme0}
"""


# -- defaults -------------------------------------------------------------------------------

def test_defaults():
    topo = spec(ONE_NVME)
    assert topo.name == "t"  # the file name without .yaml
    assert topo.description == ""
    assert topo.machine == Machine()
    assert topo.machine.qemu == "qemu-system-x86_64" and topo.machine.accel == "auto"
    assert topo.iommu == Iommu(model="none", mode="strict") and not topo.iommu.translating
    assert topo.kernel_cmdline == () and topo.expect == ()
    (nvme,) = topo.nvmes()
    assert nvme == Nvme("nvme0", serial="nvme0", cmb=0, pmr=None,
                        namespaces=(Namespace(size=G, block_size=512, file=None),))


def test_source_is_the_file():
    topo = spec(ONE_NVME, base_dir=Path("/some/dir"))
    assert topo.source == Path("/some/dir/t.yaml")


def test_empty_pcie_list_is_a_bare_machine():
    assert spec("pcie: []\n").pcie == ()


# -- shorthands -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["intel", "amd", "virtio"])
def test_iommu_string_is_the_model_in_strict_mode(model):
    short = spec(f"iommu: {model}\n" + ONE_NVME).iommu
    long = spec(f"iommu: {{model: {model}}}\n" + ONE_NVME).iommu
    assert short == long == Iommu(model=model, mode="strict")
    assert short.translating


@pytest.mark.parametrize("value", ["none", "null", "~", "''"])
def test_iommu_none_spellings(value):
    expected = Iommu() if value != "''" else None
    if expected is None:
        assert problems(f"iommu: {value}\n" + ONE_NVME) == \
            ["1:8: iommu: must be one of none, intel, amd, virtio, got ''"]
    else:
        assert spec(f"iommu: {value}\n" + ONE_NVME).iommu == expected


def test_iommu_passthrough_does_not_translate():
    iommu = spec("iommu: {model: intel, mode: passthrough}\n" + ONE_NVME).iommu
    assert iommu == Iommu("intel", "passthrough") and not iommu.translating


@pytest.mark.parametrize("value, words", [
    ("console=ttyS0 loglevel=7", ("console=ttyS0", "loglevel=7")),
    ("'  spaced   out  '", ("spaced", "out")),
    ("[console=ttyS0, loglevel=7]", ("console=ttyS0", "loglevel=7")),
    ("['a=1 b=2', c]", ("a=1", "b=2", "c")),
    ("[]", ()),
    ("", ()),
    ("[1, 2.5]", ("1", "2.5")),
])
def test_kernel_cmdline_string_or_list(value, words):
    assert spec(f"kernel_cmdline: {value}\n" + ONE_NVME).kernel_cmdline == words


def test_kernel_cmdline_string_equals_list():
    a = spec("kernel_cmdline: nokaslr iommu.strict=1\n" + ONE_NVME)
    b = spec("kernel_cmdline: [nokaslr, iommu.strict=1]\n" + ONE_NVME)
    assert a.kernel_cmdline == b.kernel_cmdline == ("nokaslr", "iommu.strict=1")


def test_kernel_cmdline_bad_types():
    assert problems("kernel_cmdline: {a: b}\n" + ONE_NVME) == \
        ["1:17: kernel_cmdline: expected a string or a list of strings, got a mapping"]
    assert problems("kernel_cmdline: [ok, [nested]]\n" + ONE_NVME) == \
        ["1:22: kernel_cmdline[1]: expected a string, got a list"]


SWITCH = """
pcie:
  - root_port: rp0
    device:
      switch: sw0
      downstream:
        - nvme: nvme0
        - downstream_port: mine
          device: {nvme: nvme1}
        - switch: sw1
          downstream:
            - {nvme: nvme2}
        - downstream_port: empty
"""


def test_implied_downstream_port_names():
    topo = spec(SWITCH)
    sw0 = topo.pcie[0].device
    assert [p.name for p in sw0.ports] == ["sw0-dp0", "mine", "sw0-dp2", "empty"]
    assert sw0.ports[0] == DownstreamPort("sw0-dp0", Nvme("nvme0", "nvme0"))
    assert sw0.ports[2].device.ports == (DownstreamPort("sw1-dp0", Nvme("nvme2", "nvme2")),)
    assert sw0.ports[3].device is None and sw0.ports[3].children == ()
    # implied names are names: taken for good, usable in lookups
    assert topo.find("sw1-dp0").device.name == "nvme2"


def test_implied_port_name_collides_with_a_device_name():
    text = SWITCH.replace("nvme: nvme1", "nvme: sw0-dp0")
    assert problems(text) == [
        "9:26: pcie[0].device.downstream[1].device.nvme: duplicate name 'sw0-dp0' "
        "(first used on line 7)"]


def test_port_device_as_single_item_list_or_null():
    topo = spec("""
        pcie:
          - root_port: rp0
            device: [{nvme: nvme0}]
          - root_port: rp1
            device: []
          - root_port: rp2
            device:
          - root_port: rp3
        """)
    assert [p.device for p in topo.pcie[1:]] == [None, None, None]
    assert topo.pcie[0].device == Nvme("nvme0", "nvme0")


def test_nvme_on_the_root_complex():
    topo = spec("pcie: [{nvme: nvme0, cmb: 64M}]\n")
    assert topo.pcie == (Nvme("nvme0", "nvme0", cmb=64 * MiB),)
    assert topo.parents() == {"nvme0": None}


def test_pmr_shorthand_and_mapping(tmp_path):
    short = spec("pcie: [{nvme: nvme0, pmr: 16M}]\n").nvmes()[0].pmr
    assert short == Pmr(size=16 * MiB, file=None)
    long = spec("pcie: [{nvme: nvme0, pmr: {size: 16M, file: pmr.img, create: true}}]\n",
                base_dir=tmp_path).nvmes()[0].pmr
    assert long == Pmr(size=16 * MiB, file=tmp_path / "pmr.img",  # relative to the spec file
                       create=True)


def test_file_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "img").mkdir()
    topo = spec("""
        pcie:
          - nvme: nvme0
            namespaces:
              - {size: 1G, file: img/a.img, create: true}
              - {size: 1G, file: ~/img/b.img, create: true}
              - {size: 1G, file: /tmp/c.img, create: true}
        """, base_dir=tmp_path)
    assert [ns.file for ns in topo.nvmes()[0].namespaces] == [
        tmp_path / "img/a.img", tmp_path / "img/b.img", Path("/tmp/c.img")]


@pytest.mark.parametrize("value, message", [
    ('""', "expected a file path, got ''"),
    ('"a\\0b"', "expected a file path, got 'a\\x00b'"),
    ("/tmp", "'/tmp' is a directory, expected a file"),
    ("{file}/x", "directory '{file}' is not a directory"),
    ("/no/such/dir/x", "directory '/no/such/dir' does not exist"),
    ("~no-such-user-xyz/x", "cannot expand '~no-such-user-xyz'"),
    ("/tmp/" + "a" * 300 + "/x", "unusable path"),
    ("[a]", "expected a string, got a list"),
])
def test_bad_file_paths(value, message, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    value, message = value.replace("{file}", str(file)), message.replace("{file}", str(file))
    (p,) = problems(f"pcie: [{{nvme: nvme0, pmr: {{size: 16M, file: {value}}}}}]\n")
    assert p.startswith("1:45: pcie[0].pmr.file: ") and message in p, p


@pytest.mark.parametrize("value", ["0", "0M", "null", "false", "~"])
def test_cmb_zero_or_null_means_none(value):
    assert spec(f"pcie: [{{nvme: nvme0, cmb: {value}}}]\n").nvmes()[0].cmb == 0


@pytest.mark.parametrize("value, mib", [("2M", 2), ("64M", 64), ("1G", 1024), ("4G", 4096),
                                        ("4194304", 4)])
def test_cmb_sizes(value, mib):
    assert spec(f"pcie: [{{nvme: nvme0, cmb: {value}}}]\n").nvmes()[0].cmb == mib * MiB


def test_namespaces():
    (nvme,) = spec("""
        pcie:
          - nvme: nvme0
            namespaces:
              - size: 1M
              - {size: 2G, block_size: 4096}
        """).nvmes()
    assert nvme.namespaces == (Namespace(MiB, 512), Namespace(2 * G, 4096))


def test_serial_defaults_to_name_and_may_be_given():
    a, b, c = spec("""
        pcie:
          - nvme: nvme0
          - {nvme: nvme1, serial: "SN 0001,x"}
          - {nvme: nvme2, serial: 1234}
        """).nvmes()
    assert (a.serial, b.serial, c.serial) == ("nvme0", "SN 0001,x", "1234")


def test_long_name_needs_an_explicit_serial():
    name = "a" * 21
    assert problems(f"pcie: [{{nvme: {name}}}]\n") == [
        f"1:9: pcie[0].serial: missing: the name {name!r} is too long to be the serial "
        "(at most 20 characters): give a serial"]
    assert spec(f"pcie: [{{nvme: {name}, serial: s}}]\n").nvmes()[0].name == name


def test_a_serial_may_not_repeat_another_nvmes_default():
    assert problems("pcie: [{nvme: nvme0}, {nvme: nvme1, serial: nvme0}]\n") == [
        "1:45: pcie[1].serial: duplicate NVMe serial 'nvme0' (first used on line 1): Linux "
        "rejects a second controller with the same serial"]


def test_names_are_unique_across_kinds():
    assert problems("""
        pcie:
          - root_port: x
            device: {nvme: x}
        """) == ["4:20: pcie[0].device.nvme: duplicate name 'x' (first used on line 3)"]


@pytest.mark.parametrize("name", ["0abc", "a b", "a.b", "a,b", "a" * 33, "ü"])
def test_bad_names(name):
    (p,) = problems(f"pcie: [{{root_port: '{name}'}}]\n")
    assert "must start with a letter and use only letters, digits, '-' and '_'" in p


def test_expectations():
    topo = spec("""
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream: [{nvme: a, cmb: 64M}, {nvme: b}]
        expect:
          - {provider: a, client: b, verdict: ok}
          - {provider: a, client: b, verdict: rejected, reason: because}
        """)
    assert [(e.provider, e.client, e.verdict, e.reason) for e in topo.expect] == [
        ("a", "b", "ok", "stated in the topology file"), ("a", "b", "rejected", "because")]


def test_expectation_missing_fields():
    assert problems(ONE_NVME + "expect: [{provider: nvme0}]\n") == [
        "5:10: expect[0].client: missing", "5:10: expect[0].verdict: missing"]


# -- positions ----------------------------------------------------------------------------

def test_yamlsource_positions():
    doc = load("a:\n  bb: [1, {c: x}]\n", "f.yaml")
    bb = doc.value["a"].value["bb"]
    assert (bb.line, bb.col) == (2, 7)
    assert doc.value["a"].key_line["bb"] == (2, 3)
    c = bb.value[1].value["c"]
    assert (c.value, c.line, c.col) == ("x", 2, 15)
    assert doc.plain() == {"a": {"bb": [1, {"c": "x"}]}}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_positions_with_any_line_ending(newline):
    text = newline.join(["# comment", "pcie:", "  - {nvme: nvme0, cmb: 3M}", ""])
    (p,) = problems(text)
    assert p.startswith("3:24: pcie[0].cmb: CMB size 3M"), p


def test_positions_count_only_real_line_breaks():
    # PyYAML starts a new line at U+0085/U+2028/U+2029; editors (and these positions) do not
    text = "description: \u2028 \x85 x\npcie:\n  - {nvme: nvme0, cmb: 3M}\n"
    assert problems(text) == ["3:24: pcie[0].cmb: CMB size 3M is not a multiple of 2M: Linux "
                              "would silently not publish it as p2pmem (use a power of two of at "
                              "least 2M, such as 4M)"]
    bom = "\ufeffpcie: [{nvme: nvme0, cmb: 3M}]\n"
    assert problems(bom)[0].startswith("1:27: pcie[0].cmb")


def test_unknown_key_is_reported_at_the_key():
    assert problems("""
        pcie:
          - root_port: rp0
            device:
              nvme: nvme0
              namespace: [{size: 1G}]
        """) == ["6:7: pcie[0].device.namespace: unknown key 'namespace' "
                 "(did you mean 'namespaces'?)"]


def test_yaml_tags_and_merge_keys():
    assert problems("""
        base: &b {nvme: nvme0}
        pcie:
          - <<: *b
          - {nvme: nvme1, cmb: !!float x}
          - ? [complex, key]
            : 1
        """) == [
        "4:5: pcie[0]: merge keys ('<<') are not supported",
        "5:24: pcie[1].cmb: bad value: 'x' is not a valid !!float value (remove the '!!float' tag "
        "and write a plain value)",
        "6:7: pcie[2]: keys must be plain words",
    ]


@pytest.mark.parametrize("value", ["!!bool maybe", "!!timestamp nope", "!!int 1.5",
                                   "!!python/object:os.system x"])
def test_bad_tags_never_raise_anything_but_spec_error(value):
    (p,) = problems(f"machine: {{cpus: {value}}}\n" + ONE_NVME)
    assert p.startswith("1:17: machine.cpus: bad value: ") and "\n" not in p


def test_problem_order_and_text():
    p = Problem("f.yaml", 3, 5, "machine.memory", "too small")
    assert str(p) == "f.yaml:3:5: machine.memory: too small"
    assert str(Problem("f.yaml", 1, 1, "", "file is empty")) == "f.yaml:1:1: file is empty"
    err = SpecError([p, Problem("f.yaml", 1, 9, "x", "b"), Problem("f.yaml", 1, 2, "y", "a")])
    assert [(q.line, q.col) for q in err.problems] == [(1, 2), (1, 9), (3, 5)]
    assert isinstance(err, UsageError) and err.exit_status == 2


def test_did_you_mean():
    assert did_you_mean("cbm", ["cmb", "pmr", "serial"]) == " (did you mean 'cmb'?)"
    assert did_you_mean("xyzzy", ["cmb", "pmr"]) == ""


# -- checks against the QEMU binary (a fake probe: no QEMU is started) -----------------------

FULL_DEVICES = frozenset({"pcie-root-port", "x3130-upstream", "xio3130-downstream", "nvme",
                          "nvme-ns", "intel-iommu", "amd-iommu", "virtio-iommu-pci"})
FULL_NVME = frozenset({"serial", "cmb_size_mb", "pmrdev", "drive"})
FULL_NS = frozenset({"drive", "nsid", "logical_block_size", "physical_block_size"})


def fake_probe(version=(10, 0, 0), devices=FULL_DEVICES, nvme=FULL_NVME, ns=FULL_NS,
               root_port=frozenset({"chassis", "slot", "disable-acs"})):
    calls = []

    def probe(binary, program=None):
        calls.append(binary)
        return Capabilities(path=f"/opt/qemu-{'.'.join(map(str, version))}/bin/{binary}",
                            version=version, version_text=f"QEMU emulator version {version}",
                            devices=devices, nvme_props=nvme, nvme_ns_props=ns,
                            device_props={"pcie-root-port": root_port})
    probe.calls = calls
    return probe


EVERYTHING = """
machine: {qemu: my-qemu}
iommu: intel
pcie:
  - root_port: rp0
    device:
      switch: sw0
      downstream:
        - nvme: nvme0
          cmb: 64M
          pmr: 16M
          namespaces: [{size: 1G, block_size: 4096}]
"""


def test_probe_is_asked_about_the_named_binary():
    probe = fake_probe()
    spec(EVERYTHING, probe=probe)
    assert probe.calls == ["my-qemu"]


def test_qemu_without_pmrdev_names_the_version():
    old = fake_probe(version=(5, 0, 0), nvme=FULL_NVME - {"pmrdev"})
    assert problems(EVERYTHING, probe=old) == [
        "11:16: pcie[0].device.downstream[0].pmr: QEMU 5.0.0 (/opt/qemu-5.0.0/bin/my-qemu) "
        "lacks the nvme property 'pmrdev'"]


def test_native_hotplug_needs_the_ich9_property():
    """machine.hotplug: native sets an ICH9-LPC global; a QEMU without it is refused at the
    line, a QEMU with it (probed from "-device ICH9-LPC,help") is not."""
    text = "machine:\n  qemu: my-qemu\n  hotplug: native\npcie: [{root_port: rp0}]\n"
    assert problems(text, probe=fake_probe()) == [
        "3:12: machine.hotplug: QEMU 10.0.0 (/opt/qemu-10.0.0/bin/my-qemu) lacks the ICH9-LPC "
        "property 'acpi-pci-hotplug-with-bridge-support', which hotplug: native sets (QEMU "
        "6.1 or newer has it)"]

    def probe(binary, program=None):
        caps = fake_probe()(binary, program)
        return dataclasses.replace(caps, device_props={
            **caps.device_props, "ICH9-LPC": frozenset({"acpi-pci-hotplug-with-bridge-support"})})
    assert spec(text, probe=probe).machine.hotplug == "native"
    assert spec(text.replace("native", "acpi"), probe=fake_probe()).machine.hotplug == "acpi"


def test_qemu_without_cmb_or_block_size():
    old = fake_probe(version=(2, 11, 0), nvme=FULL_NVME - {"cmb_size_mb", "pmrdev"},
                     ns=FULL_NS - {"logical_block_size"})
    out = problems(EVERYTHING, probe=old)
    assert [p.split(": ")[1] for p in out] == [
        "pcie[0].device.downstream[0].cmb", "pcie[0].device.downstream[0].pmr",
        "pcie[0].device.downstream[0].namespaces[0].block_size"]
    assert all("QEMU 2.11.0 (/opt/qemu-2.11.0/bin/my-qemu) lacks the " in p for p in out)
    assert "nvme-ns property 'logical_block_size'" in out[2]


def test_qemu_without_devices():
    bare = fake_probe(devices=frozenset({"nvme", "nvme-ns", "pcie-root-port"}))
    assert problems(EVERYTHING, probe=bare) == [
        "3:8: iommu: QEMU 10.0.0 (/opt/qemu-10.0.0/bin/my-qemu) has no 'intel-iommu' device",
        "7:7: pcie[0].device.switch: QEMU 10.0.0 (/opt/qemu-10.0.0/bin/my-qemu) has no "
        "'x3130-upstream' device",
        "7:7: pcie[0].device.switch: QEMU 10.0.0 (/opt/qemu-10.0.0/bin/my-qemu) has no "
        "'xio3130-downstream' device",
    ]


def test_full_qemu_accepts_everything():
    topo = spec(EVERYTHING, probe=fake_probe())
    assert topo.nvmes()[0].pmr == Pmr(16 * MiB)


def test_missing_qemu_is_reported_even_with_other_machine_problems():
    def probe(binary, program=None):
        raise QemuNotFound(f"QEMU binary {binary!r} not found or not executable")

    assert problems("""
        machine: {qemu: /opt/nope, accel: bogus}
        pcie: []
        """, probe=probe) == [
        "2:17: machine.qemu: QEMU binary '/opt/nope' not found or not executable",
        "2:35: machine.accel: must be one of auto, kvm, tcg, got 'bogus'",
    ]


# -- ACS on root ports -----------------------------------------------------------------------

ACS_OFF = """
iommu: intel
pcie:
  - root_port: rp0
    acs: false
    device: {nvme: nvme0}
  - root_port: rp1
    acs: true
    device: {nvme: nvme1}
"""


def test_acs_is_a_root_port_boolean():
    topo = spec(ACS_OFF, probe=fake_probe())
    assert [(p.name, p.acs) for p in topo.pcie] == [("rp0", False), ("rp1", True)]
    assert spec("pcie: [{root_port: rp0}]").pcie[0].acs is True  # the default: QEMU's ACS


def test_acs_false_needs_a_qemu_with_disable_acs():
    old = fake_probe(version=(2, 12, 0), root_port=frozenset({"chassis", "slot"}))
    assert problems(ACS_OFF, probe=old) == [
        "5:10: pcie[0].acs: QEMU 2.12.0 (/opt/qemu-2.12.0/bin/qemu-system-x86_64) lacks the "
        "pcie-root-port property 'disable-acs'"]
    assert spec(ACS_OFF.replace("acs: false", "acs: true"), probe=old).pcie[0].acs is True
