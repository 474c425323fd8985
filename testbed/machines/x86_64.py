"""The x86-64 machine: QEMU's q35 (ICH9 chipset, PCI Express root complex).

Every x86 fact the stages need lives here; a stage reads ``topo.machine.profile`` (or
:data:`X86_64` where no topology is at hand) rather than writing "q35" or "ttyS0" itself.

    >>> X86_64.machine_type, X86_64.console_word, X86_64.debian_arch
    ('q35', 'console=ttyS0', 'amd64')
    >>> X86_64.cpu.trusts_root_complex("AuthenticAMD", 0x17)
    True
"""

from __future__ import annotations

from .profile import (NATIVE_HOTPLUG, VIRTIO_BOOT_DEVICES, CpuRule, Firmware, HostBridge,
                      Hotplug, KernelBuild, KernelImage, MachineProfile, RootBus,
                      RootFunction, Viommu)

_STRICT = ("iommu.strict=1", "iommu.passthrough=0")

# q35's default since QEMU 6.1: ACPI owns the hot-plug of root ports AND switch downstream
# ports (QEMU hides the slots' native hot-plug capability and _OSC keeps PCIeHotplug from
# the OS), so only acpiphp sees a device_del; it removes at once (no attention button).
_ACPI_HOTPLUG = Hotplug("acpi", "acpiphp", "CONFIG_HOTPLUG_PCI_ACPI",
                        "q35's ACPI PCI hot-plug (acpiphp drives the root and switch "
                        "downstream ports' slots; _OSC keeps native hot-plug from the OS)",
                        15.0)
# acpi-pci-hotplug-with-bridge-support=off: _OSC hands PCIeHotplug to the OS and every root
# and switch downstream port shows a pciehp slot (measured on 10.0.2, profile kernel 7.3.4)
_NATIVE_HOTPLUG = Hotplug("native", NATIVE_HOTPLUG.driver, NATIVE_HOTPLUG.config,
                          NATIVE_HOTPLUG.how, NATIVE_HOTPLUG.unplug_seconds,
                          ("ICH9-LPC", "acpi-pci-hotplug-with-bridge-support", "off"))

X86_64 = MachineProfile(
    arch="x86_64",
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machine_type="q35",
    machine_type_why="PCIe root ports, switches and the intel/amd vIOMMUs need a PCI "
                     "Express root complex",
    default_cpu="qemu64",
    kvm_only_cpus=("host",),
    tcg_cpu_examples=("EPYC", "Skylake-Server", "qemu64"),
    cpu_help_prefix="x86",
    # CPUID as QEMU will present it: vendor string and family of the expanded model.
    # p2pdma.c trusts the root complex of AMD family 0x17 (Zen) and newer.
    cpu=CpuRule(query="query-cpu-model-expansion", vendor_prop="vendor", family_prop="family",
                trusted_vendor="AuthenticAMD", trusted_vendor_name="AMD",
                trusted_min_family=0x17,
                trusted_label="AMD Zen or newer"),
    # qboot boots a PVH kernel ~1.5 s faster than SeaBIOS under TCG, but gives an expander
    # host bridge's root bus no bus numbers or windows: SeaBIOS (the default) then.
    firmware=Firmware(fast_bios="qboot.rom", fast_bios_numbers_expanders=False,
                      boot_protocol="PVH entry of an uncompressed vmlinux, else the bzImage"),
    console="ttyS0",
    platform_devices=("pvpanic",),  # the ISA pvpanic: a guest panic is seen at once
    root_bus=RootBus(
        name="pcie.0", number="0000:00", slots=32,
        fixed=(RootFunction(0x00, 0, "host bridge"),
               RootFunction(0x1F, 0, "ICH9 LPC", multifunction=True),
               RootFunction(0x1F, 2, "ICH9 AHCI", multifunction=True),
               RootFunction(0x1F, 3, "ICH9 SMBus", multifunction=True)),
        boot_devices=VIRTIO_BOOT_DEVICES,
        spare_slots=1),
    # not in pci_p2pdma_whitelist[]
    host_bridge=HostBridge(("8086", "29c0"), "the q35 host bridge", allow_listed=False),
    # The vIOMMU goes on the command line before every PCI device (older QEMUs insist).
    # Interrupt remapping under KVM needs a userspace IOAPIC (kernel-irqchip=split).
    viommus=(
        Viommu("intel", "intel-iommu", strict=("intel_iommu=on", *_STRICT),
               passthrough=("intel_iommu=on", "iommu=pt"), kvm_props=("intremap=on",),
               kvm_machine_options=("kernel-irqchip=split",),
               off_words=(("intel_iommu", "off"), ("iommu", "off")), remaps_x2apic=True),
        # dma-remap=on: remap the DMA of emulated devices (QEMU 11.x; validation refuses a
        # QEMU without it).  The AMD driver runs whenever QEMU's IVRS table is there: it
        # has no "amd_iommu=on" (it logs "AMD-Vi: Unknown option - 'on'").
        Viommu("amd", "amd-iommu", strict=_STRICT,
               passthrough=("iommu=pt",), props=("dma-remap=on",), takes_root_slot=True,
               pci_id=("0x1022", "0x1419"), kvm_machine_options=("kernel-irqchip=split",),
               off_words=(("amd_iommu", "off"), ("iommu", "off"))),
        Viommu("virtio", "virtio-iommu-pci", strict=_STRICT,
               passthrough=("iommu=pt", "iommu.passthrough=1"), on_root_bus=True,
               takes_root_slot=True, pci_id=("0x1af4", "0x1057")),
    ),
    max_cpus_without_irq_remap=254,
    kernel_image=KernelImage(format="bzImage", build_target="bzImage",
                             path="arch/x86/boot/bzImage", direct_elf="pvh"),
    # ARCH=x86_64 (not x86): a 64-bit configuration whatever the host
    kernel_build=KernelBuild(arch="x86_64", cross_compile="x86_64-linux-gnu-",
                             kconfig="arch/x86/Kconfig", guest_config="kvm_guest.config"),
    kernel_cmdline_max=2048,
    debian_arch="amd64",
    kernel_package="linux-image-amd64",
    image_recipe="default",
    hotplug=(_ACPI_HOTPLUG, _NATIVE_HOTPLUG),
)
