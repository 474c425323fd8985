"""The aarch64 machine (QEMU virt, GICv3, SMMUv3): its profile, the command lines and the
validation it gets, the accelerator choice.  Pure: no QEMU runs (the real guests are
tests/integration/test_arm64.py)."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from testbed.errors import SpecError, UsageError
from testbed.machines import AARCH64, PROFILES, X86_64
from testbed.qemu import accel as accel_mod
from testbed.qemu import cmdline
from testbed.qemu.cmdline import BootMedia, boot_argv, machine_argv
from testbed.qemu.probe import Capabilities
from testbed.qemu import validate
from testbed.qemu.validate import capabilities
from testbed.spec import load_topology
from testbed.spec.model import Topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load

RUN = Path("/run/x")
HOSTBRIDGES = load_topology(Path(__file__).parent / "data" / "hostbridges-smmuv3-arm64.yaml")
MEDIA = BootMedia(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"), cmdline=("quiet",),
                  disk=RUN / "d.qcow2", ssh_port=2222)
BASE = {"pcie-root-port", "x3130-upstream", "xio3130-downstream", "nvme", "nvme-ns",
        "pxb-pcie", "virtio-iommu-pci", "virtio-blk-pci", "virtio-net-pci", "virtio-rng-pci"}


def caps(devices: set[str], version=(10, 0, 2)) -> Capabilities:
    return Capabilities(path="/usr/bin/qemu-system-aarch64", version=version,
                        version_text=f"QEMU emulator version {version}",
                        devices=frozenset(devices), nvme_props=frozenset({"cmb_size_mb"}),
                        nvme_ns_props=frozenset(), cpu_models=frozenset({"max", "neoverse-n1"}))


def topo_of(text: str) -> Topology:
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", Path("/spec"))


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_profile_is_in_the_table_and_says_what_arm64_is():
    assert PROFILES["aarch64"] is AARCH64
    p = AARCH64
    assert (p.qemu_binary, p.machine_type, p.default_cpu, p.console_word) == \
        ("qemu-system-aarch64", "virt", "max", "console=ttyAMA0")
    assert p.debian_arch == "arm64" and p.image_recipe == "arm64"
    assert p.viommu_models == ("none", "smmuv3", "virtio")
    assert not p.host_bridge.allow_listed and p.cpu.trusted_vendor is None
    assert p.kernel_build.make_vars("x86_64", "aarch64") == (
        "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-")
    # arm64 has no iommu=pt: passthrough is the generic word
    assert p.iommu_words("smmuv3", "passthrough") == ("iommu.passthrough=1",)


def test_switch_cmb_arm64_command_line():
    argv = machine_argv(load_topology("switch-cmb-arm64"), "qemu-system-aarch64", RUN, "tcg")
    assert opt(argv, "-machine") == ["virt,gic-version=3"]
    assert opt(argv, "-cpu") == ["max,pauth-impdef=on"]
    assert opt(argv, "-device")[:2] == ["pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0",
                                        "x3130-upstream,id=sw0,bus=rp0"]
    boot = boot_argv(MEDIA, "qemu-system-aarch64", load_topology("switch-cmb-arm64"))
    assert "-bios" not in boot  # the Image with QEMU's device tree: no firmware
    assert "pvpanic" not in boot and opt(boot, "-kernel") == ["/k/vmlinuz"]


def test_a_cpu_named_with_properties_is_left_as_it_is():
    topo = topo_of("""
        machine: {arch: aarch64, cpu: neoverse-n1}
        pcie: [{root_port: rp0, device: {nvme: n0}}]
        """)
    assert opt(machine_argv(topo, "q", RUN, "tcg"), "-cpu") == ["neoverse-n1"]
    assert AARCH64.cpu_option("max", "kvm") == "max"


def test_smmuv3_on_one_root_complex_is_the_machine_option_every_qemu_has():
    topo = load_topology("switch-cmb-arm64-smmuv3")
    argv = machine_argv(topo, "qemu-system-aarch64", RUN, "tcg")
    assert opt(argv, "-machine") == ["virt,gic-version=3,iommu=smmuv3"]
    assert not any(d.startswith("arm-smmuv3") for d in opt(argv, "-device"))
    assert capabilities(topo, caps(BASE), "tcg") == []


def test_smmuv3_per_root_complex_goes_right_after_each_root_bus():
    topo = HOSTBRIDGES
    devs = opt(machine_argv(topo, "qemu-system-aarch64", RUN, "tcg"), "-device")
    assert devs[0] == "arm-smmuv3,id=tb-viommu,primary-bus=pcie.0"
    hb = devs.index("pxb-pcie,id=hb1,bus=pcie.0,bus_nr=128")
    assert devs[hb + 1] == "arm-smmuv3,id=tb-viommu-hb1,primary-bus=hb1"
    assert devs[hb + 2].startswith("pcie-root-port,id=rp1,bus=hb1")
    assert opt(machine_argv(topo, "q", RUN, "tcg"), "-machine") == ["virt,gic-version=3"]


def test_qemu_10_cannot_give_each_root_complex_an_smmu(monkeypatch):
    monkeypatch.setattr(validate, "expander_firmware", lambda binary, profile: Path("/fw"))
    topo = HOSTBRIDGES
    (problem,) = capabilities(topo, caps(BASE), "tcg")
    assert problem.path == "iommu" and "one per root complex" in problem.message
    assert "-device arm-smmuv3" in problem.message and "11.1" in problem.message
    assert capabilities(topo, caps(BASE | {"arm-smmuv3"}, (11, 1, 3)), "tcg") == []


def test_an_expander_boots_through_uefi_and_needs_its_package(monkeypatch, tmp_path):
    topo = HOSTBRIDGES
    fw = tmp_path / "QEMU_EFI.fd"
    fw.write_bytes(b"x")
    monkeypatch.setattr(cmdline, "_data_dirs", lambda binary: (str(tmp_path),))
    profile = replace(AARCH64, firmware=replace(
        AARCH64.firmware, expander_bios=("/nonexistent/x.fd", "QEMU_EFI.fd")))
    assert cmdline.firmware("q", topo, profile) == ["-bios", str(fw)]
    fw.unlink()
    assert cmdline.firmware("q", topo, profile) == []
    monkeypatch.setattr(validate, "expander_firmware", lambda binary, profile: None)
    problems = capabilities(topo, caps(BASE | {"arm-smmuv3"}, (11, 1, 3)), "tcg")
    assert [p.path for p in problems] == ["pcie[1].host_bridge"]
    assert "apt-get install qemu-efi-aarch64" in problems[0].message


def test_x86_keeps_its_firmware_rules():
    assert cmdline.firmware("q", load_topology("hostbridges-cmb-zen")) == []  # SeaBIOS


@pytest.mark.parametrize("text, field, words", [
    ("machine: {arch: aarch64}\niommu: intel\n", "iommu", "intel"),
    ("machine: {arch: aarch64}\niommu: amd\n", "iommu", "amd"),
])
def test_x86_vIOMMUs_do_not_exist_on_arm64(text, field, words):
    with pytest.raises(SpecError) as info:
        topo_of(text + "pcie: [{root_port: rp0, device: {nvme: n0}}]\n")
    assert any(p.path.startswith(field) and words in p.message for p in info.value.problems)


def test_an_arm64_guest_on_this_host_runs_under_tcg(monkeypatch):
    monkeypatch.setattr(accel_mod.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(accel_mod, "kvm_usable", lambda: True)
    monkeypatch.delenv("TESTBED_ACCEL", raising=False)
    a = accel_mod.resolve_accel("auto", None, profile=AARCH64)
    assert a.name == "tcg" and "KVM runs only the host's own architecture" in a.reason
    assert accel_mod.expected_accel("auto", caps(BASE), AARCH64) == "tcg"
    with pytest.raises(UsageError, match="accel kvm requested for an aarch64 guest"):
        accel_mod.resolve_accel("kvm", None, profile=AARCH64)
    assert not accel_mod.foreign_host(X86_64)


def test_profiles_take_their_aarch64_part_and_x86_keeps_its_cache_key():
    from testbed.kernel.profile import profile_set
    arm = profile_set(["vfio-iommufd"], "aarch64")
    x86 = profile_set(["vfio-iommufd"], "x86_64")
    assert arm.name == x86.name == "base+vfio-iommufd"
    assert (arm.wanted["CONFIG_PVH"], arm.wanted["CONFIG_INTEL_IOMMU"]) == ("n", "n")
    assert (arm.wanted["CONFIG_ARM_SMMU_V3"], arm.wanted["CONFIG_SERIAL_AMBA_PL011_CONSOLE"],
            arm.wanted["CONFIG_VFIO_NOIOMMU"]) == ("y", "y", "y")
    assert arm.asked_by("CONFIG_ARM_SMMU_V3") == "base"
    assert x86.wanted["CONFIG_PVH"] == "y" and "CONFIG_ARM_SMMU_V3" not in x86.wanted
    assert x86.digest() == profile_set(["vfio-iommufd"]).digest() != arm.digest()
