"""Reading the NVMe entries of a topology file: the controller, its CMB and PMR and its
namespaces with their backing files."""

from __future__ import annotations

import re

from .model import (
    Namespace,
    Nvme,
    Pmr,
)
from .units import MiB, format_size, is_power_of_two
from .yamlsource import Sourced
from .fields import (
    BLOCK_SIZES,
    FieldReader,
    MAX_CMB,
    MAX_NAMESPACE,
    MAX_PMR,
    NS_KEYS,
    PMR_KEYS,
)


class DeviceReader(FieldReader):
    """The NVMe part of the parser."""

    def nvme(self, item, m, path, name):
        ok = True
        serial = name
        if "serial" in m:
            serial = self.string(m["serial"], f"{path}.serial")
            if serial is not None and not re.fullmatch(r"[ -~]{1,20}", serial):
                self.problem(m["serial"], f"{path}.serial", f"serial {serial!r} has {len(serial)} "
                             "characters: an NVMe serial is 1 to 20 printable ASCII characters")
                ok = False
                serial = None
        elif name is not None and len(name) > 20:
            self.problem(item, f"{path}.serial", f"missing: the name {name!r} is too long to be "
                         "the serial (at most 20 characters): give a serial", at_key="nvme")
            ok = False
        if serial is not None:
            at = m["serial"] if "serial" in m else m["nvme"]
            if serial in self.serials:
                self.problem(at, f"{path}.serial", f"duplicate NVMe serial {serial!r} (first used "
                             f"on line {self.serials[serial]}): Linux rejects a second controller "
                             "with the same serial")
                ok = False
            else:
                self.serials[serial] = at.line
        cmb: int | None = 0
        if "cmb" in m and m["cmb"].value not in (None, 0, False):
            cmb = self.size(m["cmb"], f"{path}.cmb")
            if cmb is None:
                ok = False
            elif cmb:  # "0M", like 0, means no CMB
                fix = format_size(max(2 * MiB, 1 << (cmb - 1).bit_length()))
                if cmb % (2 * MiB):
                    self.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is not a "
                                 "multiple of 2M: Linux would silently not publish it as p2pmem "
                                 f"(use a power of two of at least 2M, such as {fix})")
                    ok = False
                elif not is_power_of_two(cmb):
                    self.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is not a "
                                 "power of two: QEMU aborts on it (a CMB is a PCI BAR, whose size "
                                 f"must be a power of two): use {fix}, for example")
                    ok = False
                elif cmb > MAX_CMB:
                    self.problem(m["cmb"], f"{path}.cmb", f"CMB size {format_size(cmb)} is larger "
                                 f"than {format_size(MAX_CMB)}")
                    ok = False
        pmr = self.pmr(m["pmr"], f"{path}.pmr") if "pmr" in m and m["pmr"].value is not None else None
        if "pmr" in m and m["pmr"].value is not None and pmr is None:
            ok = False
        namespaces = self.namespaces(m.get("namespaces"), f"{path}.namespaces")
        if namespaces is None:
            ok = False
        if not (ok and name and serial is not None and cmb is not None
                and namespaces is not None):
            return None
        return Nvme(name=name, serial=serial, cmb=cmb, pmr=pmr, namespaces=namespaces)

    def pmr(self, node: Sourced, path: str) -> Pmr | None:
        if isinstance(node.value, dict):
            m = self.mapping(node, path, PMR_KEYS, "PMR settings") or {}
            if "size" not in m:
                self.problem(node, f"{path}.size", "missing: the PMR size, a power of two such as 16M")
                return None
            size_node = m["size"]
            file = self.path_value(m["file"], f"{path}.file") if "file" in m else None
            if "file" in m and file is None:
                return None
            create = self.create_flag(m, path)
            if create is None:
                return None
            spath = f"{path}.size"
        else:
            size_node, file, spath, create = node, None, path, False
        size = self.size(size_node, spath)
        if size is None:
            return None
        if not is_power_of_two(size) or size < 4096:
            up = max(4096, 1 << max(size - 1, 1).bit_length())
            self.problem(size_node, spath, f"PMR size {format_size(size)} must be a power of two "
                         f"(QEMU refuses other sizes), at least 4K: such as {format_size(up)}")
            return None
        if size > MAX_PMR:
            self.problem(size_node, spath, f"PMR size {format_size(size)} is larger than "
                         f"{format_size(MAX_PMR)}")
            return None
        if file is not None and not self.backing_file(m["file"], f"{path}.file", file, size,
                                                      create, "PMR"):
            return None
        return Pmr(size=size, file=file, create=create)

    def namespaces(self, node: Sourced | None, path: str) -> tuple[Namespace, ...] | None:
        if node is None:
            return (Namespace(size=1 << 30),)
        if not isinstance(node.value, list) or not node.value:
            self.problem(node, path, "expected a non-empty list of namespaces, each with a size")
            return None
        if len(node.value) > 32:
            self.problem(node, path, f"{len(node.value)} namespaces: at most 32 are supported")
            return None
        out = []
        for i, ns in enumerate(node.value):
            sub = f"{path}[{i}]"
            m = self.mapping(ns, sub, NS_KEYS, "a namespace")
            if m is None:
                continue
            if "size" not in m:
                self.problem(ns, f"{sub}.size", "missing: the namespace size, such as 1G")
                continue
            size = self.size(m["size"], f"{sub}.size")
            bs = self.integer(m["block_size"], f"{sub}.block_size", 1, 1 << 16) \
                if "block_size" in m else 512
            if bs is not None and bs not in BLOCK_SIZES:
                self.problem(m["block_size"], f"{sub}.block_size", f"block size must be one of "
                             f"{', '.join(map(str, BLOCK_SIZES))}, got {bs}")
                bs = None
            file = self.path_value(m["file"], f"{sub}.file") if "file" in m else None
            create = self.create_flag(m, sub)
            if size is None or bs is None or ("file" in m and file is None) or create is None:
                continue
            if size < MiB or size % bs:
                self.problem(m["size"], f"{sub}.size", f"namespace size {format_size(size)} must "
                             f"be at least 1M and a multiple of the block size {bs}")
                continue
            if size > MAX_NAMESPACE:
                self.problem(m["size"], f"{sub}.size", f"namespace size {format_size(size)} is "
                             f"larger than {format_size(MAX_NAMESPACE)}")
                continue
            if file is not None and not self.backing_file(m["file"], f"{sub}.file", file, size,
                                                          create, "namespace"):
                continue
            out.append(Namespace(size=size, block_size=bs, file=file, create=create))
        return tuple(out) if len(out) == len(node.value) else None
