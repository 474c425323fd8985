"""The aarch64 machine: QEMU's ``virt`` board with a GICv3 and its generic PCI Express host
(gpex), the Debian arm64 kernel of the x86 image's version, booted straight from its Image.

What differs from x86 for P2PDMA, as drivers/pci/p2pdma.c has it: its allow-list of host
bridges (Intel, Google, NVIDIA Grace) lacks QEMU's gpex and its CPU rule is x86's (AMD Zen),
so on arm64 a pair that does not share a PCIe switch is refused whatever the CPU; the
IOMMU is an SMMUv3.

    >>> AARCH64.machine_option("tcg", AARCH64.viommu("smmuv3"))
    'virt,gic-version=3,iommu=smmuv3'
    >>> AARCH64.machine_option("tcg", AARCH64.viommu("smmuv3"), expanders=True)
    'virt,gic-version=3'
    >>> AARCH64.viommu("smmuv3").device_value("tcg", "hb1", "tb-viommu-hb1")
    'arm-smmuv3,id=tb-viommu-hb1,primary-bus=hb1'
    >>> AARCH64.cpu_option("max", "tcg"), AARCH64.cpu.trusts_root_complex("", 0)
    ('max,pauth-impdef=on', False)
"""

from __future__ import annotations

from .profile import (VIRTIO_BOOT_DEVICES, CpuRule, Firmware, HostBridge, KernelBuild,
                      KernelImage, MachineProfile, RootBus, RootFunction, Viommu)

_STRICT = ("iommu.strict=1", "iommu.passthrough=0")
# arm64 has no iommu=pt (an x86 word): the generic parameter
_PASSTHROUGH = ("iommu.passthrough=1",)

AARCH64 = MachineProfile(
    arch="aarch64",
    qemu_binary="qemu-system-aarch64",
    qemu_package="qemu-system-arm",
    machine_type="virt",
    machine_type_why="the virt board is QEMU's arm64 machine with a PCI Express root complex "
                     "(root ports, switches, expander host bridges) and an SMMUv3",
    machine_options=("gic-version=3",),
    default_cpu="max",
    kvm_only_cpus=("host",),
    tcg_cpu_examples=("max", "neoverse-n1", "cortex-a76"),
    cpu_help_prefix=None,
    # max's architected pointer authentication (QARMA5) is slow to emulate; QEMU's own
    # algorithm behaves the same for the guest
    tcg_cpu_props=(("max", "pauth-impdef=on"),),
    # p2pdma.c's cpu_supports_p2pdma() is x86-only: no arm64 CPU is trusted. The query
    # still runs (it proves the model exists); arm models have no vendor/family.
    cpu=CpuRule(query="query-cpu-model-expansion", vendor_prop="vendor",
                family_prop="family", trusted_vendor=None),
    # No firmware: QEMU loads the Image and hands it the device tree it generates (the
    # fastest boot). The device tree shows one root complex only, so a topology with an
    # expander host bridge (pxb-pcie) boots through UEFI, whose ACPI tables (DSDT, IORT)
    # describe every root complex and which SMMU translates for it.
    firmware=Firmware(fast_bios=None, fast_bios_numbers_expanders=False,
                      boot_protocol="the Image with QEMU's device tree (no firmware); UEFI "
                                    "with ACPI when the topology has an expander host bridge",
                      expander_bios=("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
                                     "edk2-aarch64-code.fd"),
                      expander_bios_package="qemu-efi-aarch64", default_enumerates=False),
    console="ttyAMA0",
    platform_devices=(),
    root_bus=RootBus(
        name="pcie.0", number="0000:00", slots=32,
        fixed=(RootFunction(0x00, 0, "host bridge"),),
        boot_devices=VIRTIO_BOOT_DEVICES,
        spare_slots=1),
    # QEMU's generic PCIe host bridge: not in pci_p2pdma_whitelist[] (Intel, Google, NVIDIA)
    host_bridge=HostBridge(("1b36", "0008"), "the virt host bridge (QEMU's gpex)",
                           allow_listed=False),
    viommus=(
        # QEMU 10.0 makes one with -machine virt,iommu=smmuv3 (on the root bus); QEMU 11.1
        # also has -device arm-smmuv3,primary-bus=BUS: one per root complex, which a
        # topology with expander host bridges needs (validation checks the binary).
        Viommu("smmuv3", "arm-smmuv3", strict=_STRICT, passthrough=_PASSTHROUGH,
               on_root_bus=True, bus_prop="primary-bus", machine_options=("iommu=smmuv3",),
               per_root_complex=True),
        Viommu("virtio", "virtio-iommu-pci", strict=_STRICT, passthrough=_PASSTHROUGH,
               on_root_bus=True, takes_root_slot=True, pci_id=("0x1af4", "0x1057")),
    ),
    max_cpus_without_irq_remap=None,
    kernel_image=KernelImage(format="Image", build_target="Image",
                             path="arch/arm64/boot/Image", direct_elf=None),
    kernel_build=KernelBuild(arch="arm64", cross_compile="aarch64-linux-gnu-",
                             kconfig="arch/arm64/Kconfig", guest_config="kvm_guest.config"),
    kernel_cmdline_max=2048,
    debian_arch="arm64",
    kernel_package="linux-image-arm64",
    image_recipe="arm64",
)
