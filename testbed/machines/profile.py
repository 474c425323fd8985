"""What a machine profile says: one frozen description per supported architecture, read by
every stage instead of constants of its own (kunit_tool's ``QemuArchParams`` is the model).

A profile is plain data plus a few pure functions of it; nothing here starts a process or
reads a file.  The x86-64 profile (QEMU's q35) is :mod:`testbed.machines.x86_64`; the table
of profiles is :data:`testbed.machines.PROFILES`.

    >>> from testbed.machines import X86_64
    >>> X86_64.machine_option("kvm", X86_64.viommu("intel"))
    'q35,kernel-irqchip=split'
    >>> X86_64.viommu("virtio").device_value("tcg", X86_64.root_bus.name)
    'virtio-iommu-pci,id=tb-viommu,bus=pcie.0'
    >>> X86_64.root_bus.free_slots(X86_64.viommu("amd"))
    25
"""

from __future__ import annotations

from dataclasses import dataclass

# QEMU id of the vIOMMU (the testbed's ids carry the reserved tb- prefix)
VIOMMU_ID = "tb-viommu"
# The vIOMMU modes every profile offers (the topology's iommu.mode)
IOMMU_MODES = ("strict", "passthrough")


@dataclass(frozen=True)
class Viommu:
    """One vIOMMU model a machine offers: how it goes on the QEMU command line and on the
    guest kernel's, and what it is on the root bus."""

    model: str                      # the topology's word (iommu.model): intel, amd, virtio
    qemu_device: str                # -device NAME (its QOM type; the probe asks for it)
    strict: tuple[str, ...]         # guest kernel words for mode strict (translated DMA)
    passthrough: tuple[str, ...]    # ... and for mode passthrough (identity domains)
    on_root_bus: bool = False       # its -device names the root bus (bus=pcie.0)
    takes_root_slot: bool = False   # it is a PCI function of its own on the root bus
    pci_id: tuple[str, str] | None = None  # that function's vendor, device (sysfs spelling)
    props: tuple[str, ...] = ()     # device properties always set (amd: dma-remap=on)
    kvm_props: tuple[str, ...] = ()  # device properties under KVM (intel: intremap=on)
    kvm_machine_options: tuple[str, ...] = ()  # machine options under KVM
    off_words: tuple[tuple[str, str], ...] = ()  # key=value words that stop its driver
    remaps_x2apic: bool = False     # gives interrupt remapping for vCPUs past the xAPIC limit
    bus_prop: str = "bus"           # the -device property naming its bus (arm-smmuv3: primary-bus)
    # The -machine options that make it instead of a -device (virt's iommu=smmuv3: one on
    # the root bus, every QEMU); used while the machine has a single root complex.
    machine_options: tuple[str, ...] = ()
    # With expander host bridges: one -device per root complex (primary-bus=each root bus),
    # each right after its root bus exists and before the devices on it.
    per_root_complex: bool = False

    def words(self, mode: str) -> tuple[str, ...]:
        """The guest kernel words for ``mode`` (one of :data:`IOMMU_MODES`)."""
        return self.strict if mode == "strict" else self.passthrough

    def device_value(self, accel: str, root_bus: str, qemu_id: str = VIOMMU_ID) -> str:
        """The ``-device`` value under ``accel`` (tcg or kvm)."""
        props = [self.qemu_device, f"id={qemu_id}"]
        if self.on_root_bus:
            props.append(f"{self.bus_prop}={root_bus}")
        props += self.props
        if accel == "kvm":
            props += self.kvm_props
        return ",".join(props)

    def as_machine_option(self, expanders: bool) -> bool:
        """Is it made by -machine options (:attr:`machine_options`) rather than -device?"""
        return bool(self.machine_options) and not expanders

    def device_id(self, root_bus: str | None = None) -> str:
        """Its QEMU id: ``tb-viommu``, or ``tb-viommu-<host bridge>`` for the instance
        of an expander's root complex.

            >>> Viommu("smmuv3", "arm-smmuv3", (), ()).device_id("hb1")
            'tb-viommu-hb1'
        """
        return VIOMMU_ID if root_bus is None else f"{VIOMMU_ID}-{root_bus}"


@dataclass(frozen=True)
class RootFunction:
    """A PCI function the machine itself has on the root bus (not the testbed's)."""

    slot: int
    function: int
    label: str
    multifunction: bool = False

    @property
    def address(self) -> str:
        """``1f.2``: slot and function as a BDF spells them."""
        return f"{self.slot:02x}.{self.function}"


@dataclass(frozen=True)
class BootDevice:
    """A device the testbed plugs into the root bus for every boot (boot disk, NIC, RNG).
    ``role`` tells the command-line builder which backend (``-drive``, ``-netdev``) goes
    with it; ``props`` come before the bus, ``tail`` after it."""

    role: str                  # disk | nic | rng
    qemu_device: str
    props: tuple[str, ...]
    label: str                 # for people, and the oracle's name for the function
    tail: tuple[str, ...] = ()

    def device_value(self, bus: str) -> str:
        return ",".join((self.qemu_device, *self.props, f"bus={bus}", *self.tail))


# The boot disk, the NIC and the RNG every guest gets, in this order, whatever the machine
# (virtio over PCI on q35 and on virt alike); the RNG because sshd needs entropy at once.
VIRTIO_BOOT_DEVICES = (
    BootDevice("disk", "virtio-blk-pci", ("drive=tb-boot", "id=tb-boot-disk"),
               "virtio-blk (boot disk)"),
    BootDevice("nic", "virtio-net-pci", ("netdev=tb-net", "id=tb-nic"), "virtio-net",
               tail=("romfile=",)),
    BootDevice("rng", "virtio-rng-pci", ("id=tb-rng",), "virtio-rng"))


@dataclass(frozen=True)
class RootBus:
    """The ONE root-bus layout: what sits on the root bus besides the topology's devices,
    and in which order QEMU hands out its slots.

    In slot order: the machine's own functions (``fixed``: the host bridge, chipset
    functions), then a vIOMMU that is a PCI function (``Viommu.takes_root_slot``), the
    topology's devices as listed, the ``boot_devices``, then what a boot adds (a custom
    kernel's modules disk: ``spare_slots`` keeps room for it, shared directories)."""

    name: str                          # QEMU's id of the root bus: pcie.0
    number: str                        # the guest's domain:bus of it: 0000:00
    slots: int                         # device slots on the bus
    fixed: tuple[RootFunction, ...]
    boot_devices: tuple[BootDevice, ...]
    spare_slots: int = 1               # kept for the modules disk of a custom kernel

    @property
    def fixed_slots(self) -> tuple[int, ...]:
        return tuple(sorted({f.slot for f in self.fixed}))

    def first_free_slot(self, viommu: Viommu | None = None) -> int:
        """The slot of the first topology device on the root bus."""
        return self.slots_in_order(viommu)[1 if viommu is not None and viommu.takes_root_slot
                                           else 0]

    def slots_in_order(self, viommu: Viommu | None = None) -> list[int]:
        """The free slots in the order QEMU hands them out: the vIOMMU's first (when it takes
        one), then the topology's devices, then the boot devices."""
        return [s for s in range(self.slots) if s not in self.fixed_slots]

    def boot_slots(self, viommu: Viommu | None, topology_devices: int) -> list[int]:
        """The slots of :attr:`boot_devices` after ``topology_devices`` on the root bus."""
        start = (1 if viommu is not None and viommu.takes_root_slot else 0) + topology_devices
        return self.slots_in_order(viommu)[start:start + len(self.boot_devices)]

    def free_slots(self, viommu: Viommu | None = None) -> int:
        """Slots left for the topology's own devices."""
        taken = len(self.fixed_slots) + len(self.boot_devices) + self.spare_slots
        return self.slots - taken - (1 if viommu is not None and viommu.takes_root_slot else 0)


@dataclass(frozen=True)
class HostBridge:
    """The machine's own host bridge, as drivers/pci/p2pdma.c judges it."""

    pci_id: tuple[str, str]   # vendor, device (sysfs spelling without 0x)
    label: str                # "the q35 host bridge"
    allow_listed: bool        # in pci_p2pdma_whitelist[]


@dataclass(frozen=True)
class CpuRule:
    """How the CPU model's identity is read, and which CPUs Linux trusts for P2P through
    the root complex (p2pdma.c's cpu_supports_p2pdma())."""

    query: str            # the QMP command that expands a CPU model (its props name these)
    vendor_prop: str      # property holding the vendor string
    family_prop: str      # property holding the family number
    trusted_vendor: str | None  # vendor whose newer families are trusted (None: none)
    trusted_vendor_name: str = ""  # its short name, for reasons: AMD
    trusted_min_family: int = 0
    trusted_label: str = ""     # "AMD Zen or newer", for reasons

    def trusts_root_complex(self, vendor: str, family: int) -> bool:
        return self.trusted_vendor is not None and vendor == self.trusted_vendor \
            and family >= self.trusted_min_family


@dataclass(frozen=True)
class Firmware:
    """What the guest firmware is, and how a kernel is handed to it."""

    fast_bios: str | None        # -bios FILE from QEMU's data directories when it has it
    fast_bios_numbers_expanders: bool  # False: an expander host bridge needs the default
    boot_protocol: str           # for people
    # A machine whose default (no firmware: a generated device tree) cannot show an
    # expander host bridge's root bus boots those with this firmware instead (aarch64: UEFI,
    # whose ACPI tables describe every root complex): the first file that exists, absolute
    # or in QEMU's data directories; ``expander_bios_package`` ships it.
    expander_bios: tuple[str, ...] = ()
    expander_bios_package: str = ""
    # Does the machine's default firmware (no -bios) number the buses behind bridges before a
    # kernel runs (x86: SeaBIOS)?  `testbed verify` waits for that; else it runs the
    # expander firmware (aarch64: no firmware at all by default).
    default_enumerates: bool = True


@dataclass(frozen=True)
class KernelImage:
    """The kernel file QEMU's ``-kernel`` boots, and how a build makes it."""

    format: str                  # bzImage | Image
    build_target: str            # make target
    path: str                    # where a build tree has it
    direct_elf: str | None       # "pvh": an uncompressed vmlinux boots through its PVH note


@dataclass(frozen=True)
class KernelBuild:
    """What ``make`` needs to build a kernel for this machine."""

    arch: str                    # make ARCH=
    cross_compile: str           # make CROSS_COMPILE= when the host is another architecture
    kconfig: str                 # a file only a source tree with this architecture has
    guest_config: str            # the tree's own fragment for a virtual-machine guest

    def make_vars(self, host_machine: str, profile_arch: str) -> tuple[str, ...]:
        """``make`` variables for a build on a host whose ``uname -m`` is ``host_machine``:
        none natively, ``ARCH=`` and ``CROSS_COMPILE=`` across architectures.

            >>> KernelBuild("arm64", "aarch64-linux-gnu-", "", "").make_vars("x86_64", "aarch64")
            ('ARCH=arm64', 'CROSS_COMPILE=aarch64-linux-gnu-')
        """
        if host_machine == profile_arch:
            return ()
        return (f"ARCH={self.arch}", f"CROSS_COMPILE={self.cross_compile}")


@dataclass(frozen=True)
class Hotplug:
    """Who drives the PCIe slots' hot-plug on a machine (the topology's machine.hotplug):
    the QEMU global property that chooses it, the guest driver that then sees a
    ``device_del`` and the kernel option that builds it."""

    name: str                    # the topology's machine.hotplug value
    driver: str                  # the guest's hot-plug driver: pciehp, acpiphp
    config: str                  # the kernel option that builds it
    how: str                     # one line for the oracle's reasons
    unplug_seconds: float        # device_del to DEVICE_DELETED, with room for TCG under load
    qemu_global: tuple[str, str, str] | None = None  # (device, property, value); None: default

    @property
    def argv(self) -> tuple[str, ...]:
        """The QEMU arguments that select it (none for the machine's default)."""
        if self.qemu_global is None:
            return ()
        device, prop, value = self.qemu_global
        return ("-global", f"{device}.{prop}={value}")


# Native PCIe hot-plug: the port's slot raises an attention-button event, pciehp waits its
# 5 s abort window, powers the slot off, and QEMU then deletes the device.
NATIVE_HOTPLUG = Hotplug("native", "pciehp", "CONFIG_HOTPLUG_PCI_PCIE",
                         "native PCIe hot-plug (pciehp drives the ports' slots)", 40.0)


@dataclass(frozen=True)
class MachineProfile:
    """Everything the testbed knows about one kind of machine."""

    arch: str                    # the topology's machine.arch: x86_64
    qemu_binary: str             # default QEMU program
    qemu_package: str            # the Debian package that ships it
    machine_type: str            # -machine TYPE
    machine_type_why: str        # why it is the only type (for the spec's error)
    default_cpu: str
    kvm_only_cpus: tuple[str, ...]  # CPU models only a hardware accelerator provides
    tcg_cpu_examples: tuple[str, ...]  # models to suggest instead (TCG provides them)
    cpu_help_prefix: str | None  # "-cpu help" prefixes the models with it (x86)
    cpu: CpuRule
    firmware: Firmware
    console: str                 # the serial console device the guest writes to
    platform_devices: tuple[str, ...]  # -device NAME each boot adds off the PCI bus (pvpanic)
    root_bus: RootBus
    host_bridge: HostBridge
    viommus: tuple[Viommu, ...]
    max_cpus_without_irq_remap: int | None  # more vCPUs need a vIOMMU that remaps (x2APIC)
    kernel_image: KernelImage
    kernel_build: KernelBuild
    kernel_cmdline_max: int      # the architecture's COMMAND_LINE_SIZE
    debian_arch: str             # dpkg's name: amd64
    kernel_package: str          # Debian's kernel metapackage for it
    image_recipe: str            # guest-images/<name>: the guest image recipe for it
    machine_options: tuple[str, ...] = ()  # -machine TYPE,OPTIONS always (virt: gic-version=3)
    # CPU model -> properties the testbed adds under TCG (aarch64's max: QEMU's cheap
    # pointer-authentication algorithm instead of the architected one)
    tcg_cpu_props: tuple[tuple[str, str], ...] = ()
    # the hot-plug owners a topology may choose, the machine's default first
    hotplug: tuple[Hotplug, ...] = (NATIVE_HOTPLUG,)

    def cpu_option(self, model: str, accel: str) -> str:
        """The ``-cpu`` value of ``model`` under ``accel``."""
        props = dict(self.tcg_cpu_props).get(model) if accel == "tcg" else None
        return f"{model},{props}" if props else model

    @property
    def console_word(self) -> str:
        return f"console={self.console}"

    @property
    def viommu_models(self) -> tuple[str, ...]:
        """The topology's iommu.model values on this machine (``none`` first)."""
        return ("none", *(v.model for v in self.viommus))

    def viommu(self, model: str) -> Viommu | None:
        """The vIOMMU called ``model`` (None for ``none``; KeyError when there is none)."""
        if model == "none":
            return None
        for v in self.viommus:
            if v.model == model:
                return v
        raise KeyError(f"{self.arch} offers no {model!r} vIOMMU")

    def machine_option(self, accel: str, viommu: Viommu | None, expanders: bool = False) -> str:
        """The ``-machine`` value: the type, its own options, and the options ``accel`` and
        the vIOMMU need (``expanders``: the topology has expander host bridges)."""
        options = list(self.machine_options)
        if viommu is not None and accel == "kvm":
            options += viommu.kvm_machine_options
        if viommu is not None and viommu.as_machine_option(expanders):
            options += viommu.machine_options
        return ",".join([self.machine_type, *options])

    @property
    def hotplug_modes(self) -> tuple[str, ...]:
        """The topology's machine.hotplug values on this machine (the default first)."""
        return tuple(h.name for h in self.hotplug)

    def hotplug_mode(self, name: str | None = None) -> Hotplug:
        """The hot-plug owner ``name`` (None: the machine's default; KeyError when none)."""
        for h in self.hotplug:
            if name is None or h.name == name:
                return h
        raise KeyError(f"{self.arch} offers no {name!r} hot-plug (only "
                       f"{', '.join(self.hotplug_modes)})")

    def iommu_words(self, model: str, mode: str) -> tuple[str, ...]:
        """Guest kernel words for the vIOMMU ``model`` in ``mode`` (none: no words)."""
        viommu = self.viommu(model)
        return viommu.words(mode) if viommu is not None else ()
