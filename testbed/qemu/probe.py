"""What a QEMU binary can do: version, devices, NVMe properties, CPU models, accelerators.

Probed once per binary (path, size and mtime, and for a QEMU in a private root its loader:
:meth:`testbed.qemu.binary.Qemu.identity`) and cached, so validation does not start QEMU
every time.  ``probe`` takes a :class:`~testbed.qemu.binary.Qemu` or what names one
(``host``, an installed QEMU's name or version, a path, a program on PATH:
:func:`testbed.qemu.installed.resolve_qemu`).

    >>> caps = probe("qemu-system-x86_64")                     # doctest: +SKIP
    >>> caps.version >= (7, 2), "pmrdev" in caps.nvme_props    # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import QemuNotFound
from ..machines import PROFILES, X86_64, CpuRule, profile_for_binary
from ..paths import cache_dir
from ..spec.model import Topology
from ..util.files import JsonCache
from .binary import Qemu
from .cmdline import bare_argv
from .installed import resolve_qemu
from .machine import QemuMachine, QmpSocket

PROBE_TIMEOUT = 30
_FORMAT = 6


@dataclass(frozen=True)
class Capabilities:
    path: str  # the QEMU program
    version: tuple[int, int, int]
    version_text: str
    devices: frozenset[str] = field(default_factory=frozenset)
    nvme_props: frozenset[str] = field(default_factory=frozenset)
    nvme_ns_props: frozenset[str] = field(default_factory=frozenset)
    cpu_models: frozenset[str] = field(default_factory=frozenset)
    # properties of other devices the testbed may set (e.g. pcie-root-port's disable-acs,
    # amd-iommu's dma-remap), by device
    device_props: dict[str, frozenset[str]] = field(default_factory=dict, hash=False,
                                                     compare=False)
    accels: frozenset[str] = field(default_factory=frozenset)  # -accel help: tcg, kvm, ...
    # how to run it (a private root's QEMU runs through the root's loader); None: ``path``
    qemu: Qemu | None = field(default=None, hash=False, compare=False)

    def props(self, device: str) -> frozenset[str]:
        """The properties of ``device`` the probe asked for (none when it did not ask)."""
        if device == "nvme":
            return self.nvme_props
        if device == "nvme-ns":
            return self.nvme_ns_props
        return self.device_props.get(device, frozenset())

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def runner(self) -> Qemu:
        """The QEMU to start: what the command-line builder and QemuMachine take."""
        return self.qemu or Qemu(self.path, self.path)

    def describe(self) -> str:
        q = self.qemu
        where = f"{q.name}, root {q.root}" if q is not None and q.root else self.path
        return f"QEMU {self.version_str} ({where})"


def find_binary(name: str) -> str:
    """Absolute path of ``name`` (a path or a command on PATH), or QemuNotFound."""
    path = name if os.sep in name else shutil.which(name)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        profile = profile_for_binary(name)
        pkg = f" (Debian package {profile.qemu_package})" if profile is not None else ""
        raise QemuNotFound(f"QEMU binary {name!r} not found or not executable{pkg}")
    return os.path.realpath(path)




# devices whose properties the testbed asks for (beyond nvme / nvme-ns)
PROPS_OF = ("pcie-root-port", "amd-iommu", "intel-iommu")
# the boards' own devices (not in "-device help"), for -global properties: q35's ICH9-LPC
# (machine.hotplug); another QEMU program answers with nothing
BOARD_PROPS_OF = ("ICH9-LPC",)


# a model in "-cpu help": indented, after the architecture's prefix where it prints one
_CPU_LINE = r"^(?:(?:%s)\s+)?\s+(\S+)" % "|".join(
    re.escape(p.cpu_help_prefix) for p in PROFILES.values() if p.cpu_help_prefix)


def _props(text: str) -> frozenset[str]:
    return frozenset(m.group(1) for m in re.finditer(r"^\s+([\w.-]+)=<", text, re.M))


def _probe_uncached(q: Qemu) -> Capabilities:
    def run(*args: str) -> str:
        return q.run(args, timeout=PROBE_TIMEOUT)

    lines = run("--version").splitlines()
    version_text = lines[0].strip() if lines else ""
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", version_text)
    if not m:
        raise QemuNotFound(f"{q.describe()} does not look like QEMU: its --version printed "
                           f"{version_text[:100]!r}")
    devices = frozenset(re.findall(r'^name "([^"]+)"', run("-device", "help"), re.M))
    nvme = _props(run("-device", "nvme,help")) if "nvme" in devices else frozenset()
    ns = _props(run("-device", "nvme-ns,help")) if "nvme-ns" in devices else frozenset()
    cpus = frozenset(re.findall(_CPU_LINE, run("-cpu", "help")
                                .split("Recognized CPUID flags")[0], re.M)) - {"Available"}
    other = {d: _props(run("-device", f"{d},help")) for d in PROPS_OF if d in devices}
    for d in BOARD_PROPS_OF:
        try:
            other[d] = _props(run("-device", f"{d},help"))
        except QemuNotFound:
            other[d] = frozenset()
    accels = frozenset(line.strip() for line in run("-accel", "help").splitlines()[1:]
                       if line.strip())
    return Capabilities(path=q.binary, version=_version(m), version_text=version_text,
                        devices=devices, nvme_props=nvme, nvme_ns_props=ns,
                        cpu_models=cpus | {"host", "max"}, device_props=other,
                        accels=accels, qemu=q)


def _version(m: re.Match[str]) -> tuple[int, int, int]:
    major, minor, micro = (int(x) for x in m.groups())
    return (major, minor, micro)


def probe(name: str | Qemu = X86_64.qemu_binary, program: str | None = None) -> Capabilities:
    """Capabilities of the QEMU ``name`` (a :class:`Qemu`, or what names one; ``program``:
    which of an installation's programs, default the x86 one), cached per identity."""
    q = name if isinstance(name, Qemu) else \
        resolve_qemu(name, program or X86_64.qemu_binary)
    key = hashlib.sha256(f"{_FORMAT}:{q.identity()}".encode()).hexdigest()
    cache = JsonCache(cache_dir() / "probe" / f"qemu-{key[:20]}.json")
    data = cache.load()
    try:
        major, minor, micro = (int(x) for x in data["version"])
        return Capabilities(path=q.binary, version=(major, minor, micro),
                            version_text=data["version_text"],
                            devices=frozenset(data["devices"]),
                            nvme_props=frozenset(data["nvme_props"]),
                            nvme_ns_props=frozenset(data["nvme_ns_props"]),
                            cpu_models=frozenset(data["cpu_models"]),
                            device_props={k: frozenset(v) for k, v in
                                          data["device_props"].items()},
                            accels=frozenset(data["accels"]), qemu=q)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache yet, or one from an older format
    caps = _probe_uncached(q)
    data = asdict(caps)
    data.pop("qemu")
    for k in ("devices", "nvme_props", "nvme_ns_props", "cpu_models", "accels"):
        data[k] = sorted(data[k])
    data["device_props"] = {k: sorted(v) for k, v in caps.device_props.items()}
    cache.store(data)
    return caps


def probe_for(topo: Topology) -> Capabilities:
    """The capabilities of the QEMU a topology runs on: its ``machine.qemu``, and of an
    installation the program of its machine profile (qemu-system-aarch64 for arm64)."""
    return probe(topo.machine.qemu, topo.profile.qemu_binary)


@dataclass(frozen=True)
class CpuInfo:
    """What the guest's CPU will say it is: vendor and family (from QEMU itself, as the
    machine profile's :class:`~testbed.machines.CpuRule` reads them)."""

    model: str
    vendor: str  # "AuthenticAMD", "GenuineIntel", ...
    family: int


def cpu_info(caps: Capabilities, model: str, rule: CpuRule = X86_64.cpu) -> CpuInfo:
    """Vendor and family of a CPU model, asked of QEMU over QMP (cached)."""
    key = hashlib.sha256(f"{caps.runner.identity()}|{caps.version_text}|{model}".encode()
                         ).hexdigest()[:20]
    cache = JsonCache(cache_dir() / "probe" / f"cpu-{key}.json")
    d = cache.load()
    try:
        return CpuInfo(d["model"], d["vendor"], d["family"])
    except (KeyError, TypeError):
        pass
    with tempfile.TemporaryDirectory(prefix="cpu-probe-") as tmp:
        sock = QmpSocket.in_dir(Path(tmp))
        vm = QemuMachine(bare_argv(caps.runner, sock.path), Path(tmp), sock, name="cpu probe",
                         env=caps.runner.environ())
        vm.launch()
        try:
            props = vm.qmp(rule.query, type="full", model={"name": model})["model"]["props"]
        finally:
            vm.shutdown()
    info = CpuInfo(model, str(props.get(rule.vendor_prop, "")),
                   int(props.get(rule.family_prop, 0)))
    cache.store(asdict(info))
    return info
