"""Reading one field of a topology file: the scalar shapes (strings, integers, sizes,
choices, paths, backing files, names) every part of the tree uses, each problem collected
with its file, line, column and field path rather than raised.  The limits the language
puts on values live here too.

    >>> from .yamlsource import load
    >>> r = FieldReader("t.yaml", Path("."))
    >>> r.size(load("cmb: 64M", "t.yaml").value["cmb"], "cmb") == 64 << 20
    True
    >>> r.size(load("cmb: lots", "t.yaml").value["cmb"], "cmb"), len(r.problems)
    (None, 1)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence, TypeVar

from ..errors import Problem, did_you_mean
from .units import parse_size
from .files import check_backing_file
from .yamlsource import Sourced

C = TypeVar("C", bound=str)  # a choice among strings (Literal values keep their type)

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # always fullmatch
TOPOLOGY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_PREFIX = "tb-"  # the testbed's own QEMU ids (boot disk, NIC, vIOMMU)

SWITCH_MAX_PORTS = 32  # a PCI bus has 32 device slots
MAX_BUSES = 255
MAX_CMB = 4 << 30
MAX_PMR = 4 << 30
MAX_NAMESPACE = 4 << 40  # sparse files: ext4 allows 16T; 4T is plenty for a test
MAX_MEMORY = 1 << 40  # the host's own memory is checked in the second pass
MAX_CMDLINE = 1536  # of the kernel's COMMAND_LINE_SIZE (2048 on x86); the testbed adds its own
MAX_CPUS = 255  # APIC ID 255 and up need x2APIC
BLOCK_SIZES = (512, 4096)

# the structural kinds; the endpoint kinds (nvme, igb, ...) add theirs (spec/endpoints)
KINDS = ("root_port", "switch", "downstream_port", "host_bridge")
TOP_KEYS = ("name", "description", "machine", "iommu", "kernel_cmdline", "pcie", "expect")
MACHINE_KEYS = ("arch", "type", "cpu", "memory", "cpus", "accel", "qemu", "hotplug")
IOMMU_KEYS = ("model", "mode")
KIND_KEYS = {
    "root_port": ("root_port", "device", "acs"),
    "switch": ("switch", "downstream"),
    "downstream_port": ("downstream_port", "device"),
    "host_bridge": ("host_bridge", "bus_nr", "root_ports"),
}
PMR_KEYS = ("size", "file", "create")
NS_KEYS = ("size", "block_size", "file", "create")
EXPECT_KEYS = ("provider", "client", "verdict", "reason", "map_type")



class FieldReader:
    """The parser's state (problems, names seen) and its readers of single values."""

    def __init__(self, filename: str, base_dir: Path):
        self.filename = filename
        self.base_dir = base_dir
        self.node_paths: dict[str, str] = {}
        self.problems: list[Problem] = []
        self.names: dict[str, int] = {}  # name -> line first seen
        self.bus_count = 0
        self.expect_nodes: list = []
        self.serials: dict[str, int] = {}  # NVMe serial -> line first seen
        self.kind_keys: dict[str, tuple[str, ...]] = dict(KIND_KEYS)  # the parser adds more

    # -- reporting --------------------------------------------------------------------------
    def problem(self, node: Sourced | None, path: str, message: str, at_key: str | None = None):
        line, col = (node.line, node.col) if node is not None else (1, 1)
        if at_key is not None and node is not None and at_key in node.key_line:
            line, col = node.key_line[at_key]
        self.problems.append(Problem(self.filename, line, col, path, message))

    # -- generic shapes ---------------------------------------------------------------------
    def mapping(self, node: Sourced, path: str, allowed, what: str) -> dict[str, Sourced] | None:
        if not isinstance(node.value, dict):
            hint = " (the list of devices goes under a 'pcie:' key)" \
                if path == "" and isinstance(node.value, list) else ""
            self.problem(node, path, f"expected {what} (a mapping), got {describe(node.value)}"
                         + hint)
            return None
        for key in node.value:
            if key not in allowed:
                sub = f"{path}.{key}" if path else key
                owners = [k for k, keys in self.kind_keys.items() if key in keys and k != key]
                if owners:
                    hint = (f": {what} has no {key!r} (a key of "
                            f"{' and '.join(o.replace('_', ' ') for o in owners)} entries)")
                else:
                    hint = did_you_mean(key, allowed) or did_you_mean(
                        key, sorted({k for keys in self.kind_keys.values() for k in keys}))
                self.problem(node, sub, f"unknown key {key!r}{hint}", at_key=key)
        return node.value

    def string(self, node: Sourced, path: str) -> str | None:
        if isinstance(node.value, bool) or not isinstance(node.value, (str, int, float)):
            self.problem(node, path, f"expected a string, got {describe(node.value)}")
            return None
        return str(node.value)

    def integer(self, node: Sourced, path: str, lo: int, hi: int) -> int | None:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int):
            self.problem(node, path, f"expected a whole number, got {describe(v)}")
            return None
        if not lo <= v <= hi:
            self.problem(node, path, f"must be between {lo} and {hi}, got {v}")
            return None
        return v

    def boolean(self, node: Sourced, path: str) -> bool | None:
        if not isinstance(node.value, bool):
            self.problem(node, path, f"expected true or false, got {describe(node.value)}")
            return None
        return node.value

    def size(self, node: Sourced, path: str) -> int | None:
        try:
            return parse_size(node.value)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None

    def choice(self, node: Sourced, path: str, choices: Sequence[C]) -> C | None:
        """One of ``choices`` (typed as they are: a tuple of Literal values gives one)."""
        v = node.value
        if v is None and "none" in choices:  # YAML: "none" is a string, but "null"/"~" are not
            v = "none"
        if isinstance(v, bool) or not isinstance(v, str):  # yes/no/on/off/true/false are booleans
            self.problem(node, path, f"must be one of {', '.join(choices)}, got {describe(v)}")
            return None
        for c in choices:
            if c == v:
                return c
        self.problem(node, path, f"must be one of {', '.join(choices)}, got {v!r}"
                     + did_you_mean(v, choices))
        return None

    def path_value(self, node: Sourced, path: str) -> Path | None:
        s = self.string(node, path)
        if s is None:
            return None
        if not s.strip() or "\0" in s:
            self.problem(node, path, f"expected a file path, got {s!r}")
            return None
        try:
            p = Path(s).expanduser()
        except RuntimeError:  # "~user/..." for a user that does not exist
            self.problem(node, path, f"cannot expand {s.split('/')[0]!r} in {s!r}: no such user")
            return None
        p = p if p.is_absolute() else self.base_dir / p
        try:
            if p.is_dir():
                self.problem(node, path, f"{s!r} is a directory, expected a file")
                return None
            if not p.parent.is_dir():
                what = "is not a directory" if p.parent.exists() else "does not exist"
                self.problem(node, path, f"directory {str(p.parent)!r} {what}: create it "
                             "or give another path")
                return None
        except OSError as exc:  # e.g. a file name too long
            self.problem(node, path, f"unusable path {s!r}: {exc.strerror}")
            return None
        return p

    def create_flag(self, m: dict[str, Sourced], path: str) -> bool | None:
        """``create: true|false`` (default false); only meaningful with ``file``."""
        if "create" not in m:
            return False
        v = m["create"].value
        if not isinstance(v, bool):
            self.problem(m["create"], f"{path}.create", f"expected true or false, got "
                         f"{describe(v)}")
            return None
        if "file" not in m:
            self.problem(m["create"], f"{path}.create", "create goes with file: (a file the "
                         "testbed may create); without a file the testbed uses a per-run one",
                         at_key="create")
            return None
        return v

    def backing_file(self, node: Sourced, path: str, file: Path, size: int, create: bool,
                     role: str) -> bool:
        why = check_backing_file(file, size, create, role)
        if why is not None:
            self.problem(node, path, f"{str(node.value)!r} {why}")
            return False
        return True

    def name(self, node: Sourced, path: str, kind: str) -> str | None:
        s = self.string(node, path)
        if s is None:
            return None
        if not NAME_RE.fullmatch(s):
            self.problem(node, path, f"{kind} name {s!r} must start with a letter and use only "
                         "letters, digits, '-' and '_' (at most 32 characters)")
            return None
        if s.startswith(RESERVED_PREFIX):
            self.problem(node, path, f"names starting with {RESERVED_PREFIX!r} are reserved "
                         "for the testbed's own devices")
            return None
        if s in self.names:
            self.problem(node, path, f"duplicate name {s!r} (first used on line {self.names[s]})")
            return None
        self.names[s] = node.line
        return s

def describe(value) -> str:
    """How a bad value reads in a problem: `a mapping`, `a number (3)`, `nothing`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"{type(value).__name__} {value!r}"
