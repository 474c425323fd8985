"""The NVMe endpoint kind: QEMU's ``nvme`` controller with its namespaces (``nvme-ns``), an
optional controller memory buffer (CMB, BAR2: the P2P memory Linux publishes as p2pmem) and
persistent memory region (PMR, BAR4, backed by a file).  The guest's ``nvme`` driver binds
it; the P2P workloads use it as a client (NVMe I/O into a provider's p2pmem).

    >>> n = Nvme("nvme0", serial="S0", cmb=64 << 20)
    >>> NVME.argv(n, "rp0", Path("/run/x"))[:2]
    ['-device', 'nvme,id=nvme0,serial=S0,bus=rp0,cmb_size_mb=64']
    >>> n.p2p_memory == 64 << 20, [b.index for b in NVME.bars(n)]
    (True, [2])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..fields import (BLOCK_SIZES, MAX_CMB, MAX_NAMESPACE, MAX_PMR, NS_KEYS, PMR_KEYS,
                      FieldReader)
from ..units import MiB, format_size, is_power_of_two
from ..yamlsource import Sourced
from .base import Bar, BackingFile, Endpoint, EndpointKind, Need, escape

CMB_BAR, PMR_BAR = 2, 4  # QEMU's NVMe puts the CMB in BAR2 and the PMR in BAR4
NVME_NAMESPACE = "nvme-ns"


@dataclass(frozen=True)
class Namespace:
    size: int
    block_size: int = 512
    file: Path | None = None  # None: a sparse image is created per run
    create: bool = False  # the testbed may create ``file`` when it is missing


@dataclass(frozen=True)
class Pmr:
    size: int
    file: Path | None = None  # None: a file in the run directory (survives guest reboots)
    create: bool = False  # the testbed may create ``file`` when it is missing


@dataclass(frozen=True)
class Nvme(Endpoint):
    """An NVMe controller: an endpoint, optionally with a CMB and a PMR."""

    serial: str = ""
    cmb: int = 0  # bytes; 0 = no controller memory buffer
    pmr: Pmr | None = None
    namespaces: tuple[Namespace, ...] = (Namespace(size=1 << 30),)

    kind = "nvme"

    @property
    def p2p_memory(self) -> int:
        return self.cmb


# -- QEMU ids and files ----------------------------------------------------------------------

def namespace_path(nvme: Nvme, index: int, run_dir: Path) -> Path:
    ns = nvme.namespaces[index]
    return ns.file or run_dir / f"{nvme.name}-ns{index + 1}.img"


def pmr_path(nvme: Nvme, run_dir: Path) -> Path:
    assert nvme.pmr is not None
    return nvme.pmr.file or run_dir / f"{nvme.name}-pmr.img"


def pmr_backend(nvme: Nvme) -> str:
    return f"tb-{nvme.name}-pmr"


def namespace_drive(nvme: Nvme, index: int) -> str:
    return f"tb-{nvme.name}-ns{index + 1}"


def nvme_device(nvme: Nvme, bus: str) -> dict[str, str | int]:
    """The NVMe controller's device properties (typed, as QMP ``device_add`` takes them;
    the command line joins them): id, serial, bus, CMB size, PMR backend."""
    props: dict[str, str | int] = {"driver": "nvme", "id": nvme.name, "serial": nvme.serial,
                                   "bus": bus}
    if nvme.cmb:
        props["cmb_size_mb"] = nvme.cmb // MiB
    if nvme.pmr:
        props["pmrdev"] = pmr_backend(nvme)
    return props


def nvme_argv(nvme: Nvme, bus: str, run_dir: Path) -> list[str]:
    """``-object``/``-drive``/``-device`` options of one NVMe and its namespaces."""
    out: list[str] = []
    if nvme.pmr:
        out += ["-object", f"memory-backend-file,id={pmr_backend(nvme)},share=on,"
                f"mem-path={escape(str(pmr_path(nvme, run_dir)))},size={nvme.pmr.size}"]
    props = nvme_device(nvme, bus)
    out += ["-device", ",".join([str(props.pop("driver"))] + [
        f"{k}={escape(str(v))}" for k, v in props.items()])]
    for i, ns in enumerate(nvme.namespaces):
        drive = namespace_drive(nvme, i)
        out += ["-drive", f"file={escape(str(namespace_path(nvme, i, run_dir)))},if=none,"
                f"id={drive},format=raw,cache=writeback",
                "-device", f"{NVME_NAMESPACE},drive={drive},bus={nvme.name},nsid={i + 1}"
                + (f",logical_block_size={ns.block_size},physical_block_size={ns.block_size}"
                   if ns.block_size != 512 else "")]
    return out


# -- the kind --------------------------------------------------------------------------------

class NvmeKind(EndpointKind):
    word = "nvme"
    node = Nvme
    keys = ("nvme", "serial", "cmb", "pmr", "namespaces")
    qemu_device = "nvme"
    extra_devices = (NVME_NAMESPACE,)
    pci_id = ("0x1b36", "0x0010")
    label = "NVMe controller"
    short = "NVMe"
    driver = "nvme"
    module = None  # the image's initramfs loads it
    p2p_bar = CMB_BAR
    pair_client = True
    no_acs = "only a root port can switch ACS off: an NVMe endpoint has no ACS capability"

    def argv(self, node: Any, bus: str, run_dir: Path) -> list[str]:
        return nvme_argv(node, bus, run_dir)

    def backing_files(self, node: Any, run_dir: Path) -> list[BackingFile]:
        out = [BackingFile(namespace_path(node, i, run_dir), ns.size, "namespace", node.name,
                           ns.file is not None, ns.create)
               for i, ns in enumerate(node.namespaces)]
        if node.pmr:
            out.append(BackingFile(pmr_path(node, run_dir), node.pmr.size, "PMR", node.name,
                                   node.pmr.file is not None, node.pmr.create))
        return out

    def details(self, node: Any) -> str:
        sizes = [f"CMB {format_size(node.cmb)}" if node.cmb else "no CMB"]
        if node.pmr:
            sizes.append(f"PMR {format_size(node.pmr.size)}")
        return " · ".join(sizes)

    def needs(self, node: Any, base: str) -> list[Need]:
        out = []
        if node.cmb:
            out.append(Need(f"{base}.cmb", "nvme", "cmb_size_mb"))
        if node.pmr:
            out.append(Need(f"{base}.pmr", "nvme", "pmrdev"))
        out += [Need(f"{base}.namespaces[{i}].block_size", NVME_NAMESPACE, "logical_block_size")
                for i, ns in enumerate(node.namespaces) if ns.block_size != 512]
        return out

    def bars(self, node: Any) -> list[Bar]:
        out = [Bar(CMB_BAR, node.cmb or None, "CMB")]
        if node.pmr:
            out.append(Bar(PMR_BAR, node.pmr.size, "PMR"))
        return out

    def guest_problems(self, node: Any, bdf: str, inventory: Mapping[str, Any],
                       p2pdma: bool) -> list[str]:
        diffs = []
        serials = {c.get("bdf"): c.get("serial") for c in inventory.get("nvme", {}).values()}
        if bdf in serials and serials[bdf] != node.serial:
            diffs.append(f"{node.name}: the NVMe controller at {bdf} has serial "
                         f"{serials[bdf]!r}, the spec says {node.serial!r}")
        if not p2pdma:
            return diffs  # no p2pmem to check on a kernel without CONFIG_PCI_P2PDMA
        p2p = inventory.get("pci", {}).get(bdf, {}).get("p2pmem")
        if node.cmb and not p2p:
            diffs.append(f"{node.name}: its {format_size(node.cmb)} CMB is not published as "
                         f"p2pmem at {bdf}")
        elif node.cmb and int(p2p.get("size") or 0) != node.cmb:
            diffs.append(f"{node.name}: p2pmem size {p2p.get('size')} at {bdf}, the CMB is "
                         f"{node.cmb} bytes")
        elif not node.cmb and p2p:
            diffs.append(f"{node.name}: publishes p2pmem at {bdf} but has no CMB in the spec")
        return diffs

    # -- reading the entry -----------------------------------------------------------------
    def read(self, reader: FieldReader, item: Sourced, m: dict[str, Sourced], path: str,
             name: str | None) -> Endpoint | None:
        ok = True
        serial = name
        if "serial" in m:
            serial = reader.string(m["serial"], f"{path}.serial")
            if serial is not None and not re.fullmatch(r"[ -~]{1,20}", serial):
                reader.problem(m["serial"], f"{path}.serial", f"serial {serial!r} has "
                               f"{len(serial)} characters: an NVMe serial is 1 to 20 printable "
                               "ASCII characters")
                ok = False
                serial = None
        elif name is not None and len(name) > 20:
            reader.problem(item, f"{path}.serial", f"missing: the name {name!r} is too long to "
                           "be the serial (at most 20 characters): give a serial", at_key="nvme")
            ok = False
        if serial is not None:
            at = m["serial"] if "serial" in m else m["nvme"]
            if serial in reader.serials:
                reader.problem(at, f"{path}.serial", f"duplicate NVMe serial {serial!r} (first "
                               f"used on line {reader.serials[serial]}): Linux rejects a second "
                               "controller with the same serial")
                ok = False
            else:
                reader.serials[serial] = at.line
        cmb = self._cmb(reader, m, path)
        if cmb is None:
            ok = False
        has_pmr = "pmr" in m and m["pmr"].value is not None
        pmr = _pmr(reader, m["pmr"], f"{path}.pmr") if has_pmr else None
        if has_pmr and pmr is None:
            ok = False
        namespaces = _namespaces(reader, m.get("namespaces"), f"{path}.namespaces")
        if namespaces is None:
            ok = False
        if not (ok and name and serial is not None and cmb is not None
                and namespaces is not None):
            return None
        return Nvme(name=name, serial=serial, cmb=cmb, pmr=pmr, namespaces=namespaces)

    @staticmethod
    def _cmb(reader: FieldReader, m: dict[str, Sourced], path: str) -> int | None:
        if "cmb" not in m or m["cmb"].value in (None, 0, False):
            return 0
        cmb = reader.size(m["cmb"], f"{path}.cmb")
        if not cmb:  # "0M", like 0, means no CMB
            return cmb
        fix = format_size(max(2 * MiB, 1 << (cmb - 1).bit_length()))
        if cmb % (2 * MiB):
            reader.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is not a "
                           "multiple of 2M: Linux would silently not publish it as p2pmem "
                           f"(use a power of two of at least 2M, such as {fix})")
        elif not is_power_of_two(cmb):
            reader.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is not a "
                           "power of two: QEMU aborts on it (a CMB is a PCI BAR, whose size "
                           f"must be a power of two): use {fix}, for example")
        elif cmb > MAX_CMB:
            reader.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is larger "
                           f"than {format_size(MAX_CMB)}")
        else:
            return cmb
        return None


def _pmr(reader: FieldReader, node: Sourced, path: str) -> Pmr | None:
    if isinstance(node.value, dict):
        m = reader.mapping(node, path, PMR_KEYS, "PMR settings") or {}
        if "size" not in m:
            reader.problem(node, f"{path}.size", "missing: the PMR size, a power of two such "
                           "as 16M")
            return None
        size_node = m["size"]
        file = reader.path_value(m["file"], f"{path}.file") if "file" in m else None
        if "file" in m and file is None:
            return None
        create = reader.create_flag(m, path)
        if create is None:
            return None
        spath = f"{path}.size"
    else:
        size_node, file, spath, create = node, None, path, False
    size = reader.size(size_node, spath)
    if size is None:
        return None
    if not is_power_of_two(size) or size < 4096:
        up = max(4096, 1 << max(size - 1, 1).bit_length())
        reader.problem(size_node, spath, f"PMR size {format_size(size)} must be a power of two "
                       f"(QEMU refuses other sizes), at least 4K: such as {format_size(up)}")
        return None
    if size > MAX_PMR:
        reader.problem(size_node, spath, f"PMR size {format_size(size)} is larger than "
                       f"{format_size(MAX_PMR)}")
        return None
    if file is not None and not reader.backing_file(m["file"], f"{path}.file", file, size,
                                                    create, "PMR"):
        return None
    return Pmr(size=size, file=file, create=create)


def _namespaces(reader: FieldReader, node: Sourced | None,
                path: str) -> tuple[Namespace, ...] | None:
    if node is None:
        return (Namespace(size=1 << 30),)
    if not isinstance(node.value, list) or not node.value:
        reader.problem(node, path, "expected a non-empty list of namespaces, each with a size")
        return None
    if len(node.value) > 32:
        reader.problem(node, path, f"{len(node.value)} namespaces: at most 32 are supported")
        return None
    out = []
    for i, ns in enumerate(node.value):
        sub = f"{path}[{i}]"
        m = reader.mapping(ns, sub, NS_KEYS, "a namespace")
        if m is None:
            continue
        if "size" not in m:
            reader.problem(ns, f"{sub}.size", "missing: the namespace size, such as 1G")
            continue
        size = reader.size(m["size"], f"{sub}.size")
        bs = reader.integer(m["block_size"], f"{sub}.block_size", 1, 1 << 16) \
            if "block_size" in m else 512
        if bs is not None and bs not in BLOCK_SIZES:
            reader.problem(m["block_size"], f"{sub}.block_size", f"block size must be one of "
                           f"{', '.join(map(str, BLOCK_SIZES))}, got {bs}")
            bs = None
        file = reader.path_value(m["file"], f"{sub}.file") if "file" in m else None
        create = reader.create_flag(m, sub)
        if size is None or bs is None or ("file" in m and file is None) or create is None:
            continue
        if size < MiB or size % bs:
            reader.problem(m["size"], f"{sub}.size", f"namespace size {format_size(size)} must "
                           f"be at least 1M and a multiple of the block size {bs}")
            continue
        if size > MAX_NAMESPACE:
            reader.problem(m["size"], f"{sub}.size", f"namespace size {format_size(size)} is "
                           f"larger than {format_size(MAX_NAMESPACE)}")
            continue
        if file is not None and not reader.backing_file(m["file"], f"{sub}.file", file, size,
                                                        create, "namespace"):
            continue
        out.append(Namespace(size=size, block_size=bs, file=file, create=create))
    return tuple(out) if len(out) == len(node.value) else None


NVME = NvmeKind()
