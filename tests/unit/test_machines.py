"""The machine profiles (testbed/machines): the topology names one, every stage reads it.

The byte-for-byte check of the command lines x86/q35 renders is test_argv_golden.py; here:
the profile table itself, the ``machine.arch`` field, and that the root-bus layout the
command line is built from is the one the oracle models (one description, read twice).
"""

from __future__ import annotations

import dataclasses
import importlib
import textwrap
from pathlib import Path

import pytest

import testbed.machines as machines
from testbed.errors import SpecError
from testbed.machines import (DEFAULT_ARCH, IOMMU_MODELS, PROFILES, X86_64, MachineProfile,
                              machine_profile, profile_for_binary)
from testbed.qemu.cmdline import BootMedia, boot_argv, machine_argv
from testbed.qemu.devices import free_root_slots
from testbed.spec import load_topology
from testbed.spec.model import Machine, Topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load
from testbed.verdicts.fabric import from_topology

RUN = Path("/run/x")
MEDIA = BootMedia(kernel=Path("/k"), initrd=None, cmdline=("quiet",), disk=RUN / "d.qcow2",
                  ssh_port=2222)


def topo_of(text: str) -> Topology:
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", Path("/spec"))


def devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_the_table():
    assert DEFAULT_ARCH in PROFILES and machine_profile() is PROFILES[DEFAULT_ARCH]
    assert PROFILES["x86_64"] is X86_64 and X86_64.arch == "x86_64"
    for arch, profile in PROFILES.items():
        assert profile.arch == arch
        assert profile.viommu_models[0] == "none"
        assert set(profile.viommu_models) <= set(IOMMU_MODELS)
    with pytest.raises(KeyError, match="no machine profile 'sparc'.*x86_64"):
        machine_profile("sparc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(X86_64, "machine_type", "pc")


def test_the_x86_profile_says_what_the_stages_used_to_hard_code():
    p = X86_64
    assert (p.qemu_binary, p.machine_type, p.default_cpu, p.console_word) == \
        ("qemu-system-x86_64", "q35", "qemu64", "console=ttyS0")
    assert p.root_bus.name == "pcie.0" and p.root_bus.number == "0000:00"
    assert p.host_bridge.pci_id == ("8086", "29c0") and not p.host_bridge.allow_listed
    assert p.cpu.trusts_root_complex("AuthenticAMD", 0x17)
    assert not p.cpu.trusts_root_complex("AuthenticAMD", 0x15)
    assert not p.cpu.trusts_root_complex("GenuineIntel", 0x19)
    assert (p.kernel_image.format, p.kernel_image.path) == ("bzImage", "arch/x86/boot/bzImage")
    assert (p.kernel_build.arch, p.debian_arch, p.kernel_package) == \
        ("x86_64", "amd64", "linux-image-amd64")
    assert p.kernel_build.make_vars("x86_64", "x86_64") == ()
    assert p.kernel_build.make_vars("aarch64", "x86_64") == \
        ("ARCH=x86_64", "CROSS_COMPILE=x86_64-linux-gnu-")
    assert profile_for_binary("/usr/bin/qemu-system-x86_64") is p
    assert profile_for_binary("qemu-system-riscv64") is None


@pytest.mark.parametrize("model", ["intel", "amd", "virtio"])
def test_each_viommu_is_data(model):
    v = X86_64.viommu(model)
    assert v is not None and v.model == model
    topo = topo_of(f"iommu: {model}\npcie: []\n")
    for accel in ("tcg", "kvm"):
        argv = machine_argv(topo, "q", RUN, accel)
        assert devices(argv)[0] == v.device_value(accel, "pcie.0")
        assert argv[argv.index("-machine") + 1] == X86_64.machine_option(accel, v)
    assert X86_64.iommu_words(model, "strict") == v.strict
    assert X86_64.iommu_words("none", "strict") == ()
    with pytest.raises(KeyError):
        X86_64.viommu("smmuv3")


@pytest.mark.parametrize("iommu", ["none", "intel", "amd", "virtio"])
def test_the_root_bus_layout_is_one_description(iommu):
    """The command line plugs the layout's boot devices into the root bus after the
    topology's devices; the oracle puts the same functions at the slots QEMU gives them."""
    topo = topo_of(f"""
        iommu: {iommu}
        pcie:
          - {{root_port: rp0, device: {{nvme: a}}}}
          - {{nvme: b}}
        """)
    layout = topo.profile.root_bus
    viommu = topo.profile.viommu(iommu)
    on_root = [d for d in devices(machine_argv(topo, "q", RUN, "tcg") + boot_argv(MEDIA, "q", topo))
               if f"bus={layout.name}" in d.split(",")]
    want = ([viommu.qemu_device] if viommu and viommu.on_root_bus else []) + \
        ["pcie-root-port", "nvme"] + [d.qemu_device for d in layout.boot_devices]
    assert [d.split(",")[0] for d in on_root] == want
    fabric = {d.label: d for d in from_topology(topo) if d.parent is None}
    first = layout.first_free_slot(viommu)
    assert fabric["RootPort"].devfn >> 3 == first and fabric["Nvme"].devfn >> 3 == first + 1
    for dev, slot in zip(layout.boot_devices, layout.boot_slots(viommu, 2)):
        assert fabric[dev.label].devfn >> 3 == slot == first + 2 + layout.boot_devices.index(dev)
    for f in layout.fixed:
        assert fabric[f.label].devfn == f.slot << 3 | f.function
    taken = len(layout.fixed_slots) + len(layout.boot_devices) + layout.spare_slots
    assert free_root_slots(topo) == layout.slots - taken - (viommu.takes_root_slot if viommu
                                                            else 0)


def test_arch_defaults_and_the_spec():
    assert Machine().profile is X86_64
    topo = topo_of("machine: {arch: x86_64}\npcie: []\n")
    assert topo.profile is X86_64 and topo.machine.cpu == "qemu64"
    assert topo.machine.qemu == "qemu-system-x86_64"
    assert load_topology("switch-cmb").profile is X86_64  # the default


def test_a_second_profile_is_one_table_row(monkeypatch):
    """What adding a machine takes: a profile and its row; the spec, the command line and the
    oracle follow (the profile here is x86's with another name, type and console)."""
    other = dataclasses.replace(X86_64, arch="toy64", qemu_binary="qemu-system-toy64",
                                machine_type="toyboard", default_cpu="toycpu", console="ttyTOY0")
    # the table row (PROFILES is read-only, and the parser took its keys at import)
    monkeypatch.setattr(machines, "PROFILES", {**PROFILES, "toy64": other})
    parser = importlib.import_module("testbed.spec.parse")  # the package re-exports parse()
    monkeypatch.setattr(parser, "ARCHS", ("x86_64", "toy64"))
    topo = topo_of("machine: {arch: toy64}\npcie: [{nvme: n0}]\n")
    assert isinstance(topo.profile, MachineProfile) and topo.profile is other
    argv = machine_argv(topo, topo.machine.qemu, RUN, "tcg")
    assert argv[:7] == ["qemu-system-toy64", "-machine", "toyboard", "-accel", "tcg",
                        "-cpu", "toycpu"]


def test_arch_errors_name_the_line():
    with pytest.raises(SpecError) as err:
        topo_of("""
            machine:
              arch: arm
              type: virt
            pcie: []
            """)
    text = str(err.value)
    assert "t.yaml:3:9: machine.arch: must be one of x86_64, aarch64, got 'arm'" in text
    assert "t.yaml:4:9: machine.type: only 'q35' is supported (got 'virt')" in text


def test_who_drives_hot_plug_is_machine_data():
    """q35 keeps QEMU's default (ACPI hot-plug: no argument); ``hotplug: native`` hands the
    ports' slots to pciehp with one -global; arm64's virt has native hot-plug only."""
    acpi = topo_of("pcie: [{root_port: rp0, device: {nvme: n0}}]\n")
    assert (acpi.machine.hotplug_mode.name, acpi.machine.hotplug_mode.driver) == \
        ("acpi", "acpiphp")
    native = topo_of("machine: {hotplug: native}\n"
                     "pcie: [{root_port: rp0, device: {nvme: n0}}]\n")
    assert native.machine.hotplug_mode.config == "CONFIG_HOTPLUG_PCI_PCIE"
    a, n = (machine_argv(t, "qemu-system-x86_64", RUN, "tcg") for t in (acpi, native))
    assert "-global" not in a
    assert n == a[:15] + ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"] \
        + a[15:]
    assert native.machine.hotplug_mode.unplug_seconds > \
        acpi.machine.hotplug_mode.unplug_seconds
    arm = topo_of("machine: {arch: aarch64}\npcie: []\n")
    assert arm.profile.hotplug_modes == ("native",) and arm.machine.hotplug_mode.argv == ()
    with pytest.raises(SpecError) as err:
        topo_of("machine: {arch: aarch64, hotplug: acpi}\npcie: []\n")
    assert "t.yaml:1:35: machine.hotplug: must be one of native, got 'acpi'" in str(err.value)
    with pytest.raises(SpecError) as err:
        topo_of("machine:\n  hotplug: yes\npcie: []\n")
    assert "t.yaml:2:12: machine.hotplug: must be one of acpi, native, got a boolean (true)" \
        in str(err.value)
