"""What a QEMU binary can do: version, devices, NVMe properties.

Probed once per binary (path, size and mtime) and cached, so validation does
not start QEMU every time.

    >>> caps = probe("qemu-system-x86_64")                     # doctest: +SKIP
    >>> caps.version >= (7, 2), "pmrdev" in caps.nvme_props    # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import QemuError
from ..paths import cache_dir

PROBE_TIMEOUT = 30
_FORMAT = 2


class QemuNotFound(QemuError):
    """The QEMU binary does not exist or does not run."""


@dataclass(frozen=True)
class Capabilities:
    path: str
    version: tuple[int, int, int]
    version_text: str
    devices: frozenset[str] = field(default_factory=frozenset)
    nvme_props: frozenset[str] = field(default_factory=frozenset)
    nvme_ns_props: frozenset[str] = field(default_factory=frozenset)
    cpu_models: frozenset[str] = field(default_factory=frozenset)

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def describe(self) -> str:
        return f"QEMU {self.version_str} ({self.path})"


def find_binary(name: str) -> str:
    """Absolute path of ``name`` (a path or a command on PATH), or QemuNotFound."""
    path = name if os.sep in name else shutil.which(name)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        pkg = " (Debian package qemu-system-x86)" if "qemu-system-x86" in name else ""
        raise QemuNotFound(f"QEMU binary {name!r} not found or not executable{pkg}")
    return os.path.realpath(path)


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QemuNotFound(f"cannot run {argv[0]}: {exc}") from None
    if out.returncode != 0:
        raise QemuNotFound(f"{' '.join(argv)} failed: {(out.stderr or out.stdout).strip()[:300]}")
    return out.stdout


def _props(text: str) -> frozenset[str]:
    return frozenset(m.group(1) for m in re.finditer(r"^\s+([\w.-]+)=<", text, re.M))


def _probe_uncached(path: str) -> Capabilities:
    version_text = _run([path, "--version"]).splitlines()[0].strip()
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", version_text)
    if not m:
        raise QemuNotFound(f"{path} does not look like QEMU: {version_text[:100]!r}")
    devices = frozenset(re.findall(r'^name "([^"]+)"', _run([path, "-device", "help"]), re.M))
    nvme = _props(_run([path, "-device", "nvme,help"])) if "nvme" in devices else frozenset()
    ns = _props(_run([path, "-device", "nvme-ns,help"])) if "nvme-ns" in devices else frozenset()
    cpus = frozenset(re.findall(r"^(?:x86\s+)?\s+(\S+)", _run([path, "-cpu", "help"])
                                .split("Recognized CPUID flags")[0], re.M)) - {"Available"}
    return Capabilities(path=path, version=tuple(int(x) for x in m.groups()),
                        version_text=version_text, devices=devices, nvme_props=nvme,
                        nvme_ns_props=ns, cpu_models=cpus | {"host", "max"})


def probe(name: str = "qemu-system-x86_64") -> Capabilities:
    """Capabilities of the QEMU binary ``name``, cached per binary identity."""
    path = find_binary(name)
    st = os.stat(path)
    key = hashlib.sha256(f"{_FORMAT}:{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    cache = cache_dir() / "probe" / f"qemu-{key[:20]}.json"
    try:
        data = json.loads(cache.read_text())
        return Capabilities(path=data["path"], version=tuple(data["version"]),
                            version_text=data["version_text"],
                            devices=frozenset(data["devices"]),
                            nvme_props=frozenset(data["nvme_props"]),
                            nvme_ns_props=frozenset(data["nvme_ns_props"]),
                            cpu_models=frozenset(data["cpu_models"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    caps = _probe_uncached(path)
    data = asdict(caps)
    for k in ("devices", "nvme_props", "nvme_ns_props", "cpu_models"):
        data[k] = sorted(data[k])
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only cache only costs speed
    return caps


@dataclass(frozen=True)
class CpuInfo:
    """What the guest's CPUID will say: vendor and family (from QEMU itself)."""

    model: str
    vendor: str  # "AuthenticAMD", "GenuineIntel", ...
    family: int

    @property
    def amd_zen_or_newer(self) -> bool:
        return self.vendor == "AuthenticAMD" and self.family >= 0x17


def cpu_info(caps: Capabilities, model: str) -> CpuInfo:
    """Vendor and family of a CPU model, asked of QEMU over QMP (cached)."""
    cache = cache_dir() / "probe" / f"cpu-{hashlib.sha256(f'{caps.path}|{caps.version_text}|{model}'.encode()).hexdigest()[:20]}.json"
    try:
        d = json.loads(cache.read_text())
        return CpuInfo(d["model"], d["vendor"], d["family"])
    except (OSError, ValueError, KeyError):
        pass
    import tempfile
    from .machine import QemuMachine
    with tempfile.TemporaryDirectory(prefix="cpu-probe-") as tmp:
        vm = QemuMachine([caps.path, "-machine", "none", "-accel", "tcg", "-S", "-nodefaults",
                          "-display", "none"], Path(tmp), name="cpu probe")
        vm.launch()
        try:
            props = vm.qmp("query-cpu-model-expansion", type="full",
                           model={"name": model})["model"]["props"]
        finally:
            vm.shutdown()
    info = CpuInfo(model, str(props.get("vendor", "")), int(props.get("family", 0)))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(asdict(info)))
    except OSError:
        pass
    return info
