"""Machine profiles: what each supported machine is, as data (see :mod:`.profile`).

A topology names its machine with ``machine: {arch: x86_64}`` (the default); every stage
reads the profile through ``topo.machine.profile``.  Adding a machine is one new module
beside :mod:`.x86_64` and one row in :data:`PROFILES`.

    >>> machine_profile("x86_64").machine_type
    'q35'
    >>> sorted(PROFILES)
    ['aarch64', 'x86_64']
"""

from __future__ import annotations

from types import MappingProxyType

from .profile import (IOMMU_MODES, NATIVE_HOTPLUG, VIOMMU_ID, BootDevice, CpuRule, Firmware,
                      HostBridge, Hotplug, KernelBuild, KernelImage, MachineProfile, RootBus,
                      RootFunction, Viommu)
from .aarch64 import AARCH64
from .x86_64 import X86_64

DEFAULT_ARCH = "x86_64"
# arch -> profile: one row per supported machine
PROFILES = MappingProxyType({p.arch: p for p in (X86_64, AARCH64)})
# every vIOMMU model any machine offers (``none`` first)
IOMMU_MODELS = ("none", *dict.fromkeys(v.model for p in PROFILES.values() for v in p.viommus))


def machine_profile(arch: str = DEFAULT_ARCH) -> MachineProfile:
    """The profile of ``arch`` (KeyError naming the supported ones when there is none)."""
    try:
        return PROFILES[arch]
    except KeyError:
        raise KeyError(f"no machine profile {arch!r} (supported: "
                       f"{', '.join(sorted(PROFILES))})") from None


def profile_for_binary(name: str) -> MachineProfile | None:
    """The profile whose QEMU program ``name`` (a path or a command) is, if any."""
    base = name.rsplit("/", 1)[-1]
    return next((p for p in PROFILES.values() if base.startswith(p.qemu_binary)), None)


__all__ = ["AARCH64", "BootDevice", "CpuRule", "DEFAULT_ARCH", "Firmware", "HostBridge",
           "Hotplug", "IOMMU_MODELS", "IOMMU_MODES", "NATIVE_HOTPLUG", "KernelBuild",
           "KernelImage", "MachineProfile", "PROFILES", "RootBus", "RootFunction", "VIOMMU_ID", "Viommu", "X86_64", "machine_profile",
           "profile_for_binary"]
