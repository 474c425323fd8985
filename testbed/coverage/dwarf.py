"""What a build's DWARF says about the functions of a source file (pyelftools): which
were compiled out of line (and where, so a name several files define is pinned to this
file's copy), which were inlined everywhere, which module holds the file.

    info = dwarf_functions(Path("/build/vmlinux"), ["drivers/pci/p2pdma.c"], Path("/build"))
    info["drivers/pci/p2pdma.c"].functions["calc_map_type_and_dist"].addr   # link address

Walking a vmlinux's DWARF in Python takes a while (seconds per compile unit), so only the
compile units of the asked files are read, and the answer is cached beside the other
caches, keyed by the ELF file's size and time.  Files that vmlinux does not hold are looked
for in the ``.ko`` files of their directory and the two above it (a module's objects).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import TestbedError
from ..paths import cache_dir
from ..util.files import atomic_write

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class DwarfError(TestbedError):
    kind = "dwarf"


@dataclass(frozen=True)
class DwarfFunction:
    name: str
    addr: int | None  # link-time address of the out-of-line copy (None: there is none)
    inlined: bool  # inlined at least once


@dataclass
class DwarfInfo:
    module: str | None  # None: vmlinux
    text: int | None  # vmlinux's link-time _text (for the guest's KASLR offset)
    functions: dict[str, DwarfFunction] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "text": self.text,
                "functions": {n: asdict(f) for n, f in self.functions.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "DwarfInfo":
        return cls(d.get("module"), d.get("text"),
                   {n: DwarfFunction(**f) for n, f in d.get("functions", {}).items()})


def _attr(die: Any, name: str) -> Any:
    a = die.attributes.get(name)
    return None if a is None else a.value


def _name(die: Any) -> str | None:
    v = _attr(die, "DW_AT_name")
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def cu_path(top: Any) -> str:
    """The compile unit's source path as the compiler saw it (maybe absolute)."""
    return _name(top) or ""


def matches(cu_name: str, rel: str) -> bool:
    """Is the compile unit ``cu_name`` (relative or absolute) the file ``rel``?

    >>> matches("/src/linux/drivers/pci/p2pdma.c", "drivers/pci/p2pdma.c")
    True
    >>> matches("drivers/pci/p2pdma.c", "pci/p2pdma.c"), matches("x/foo.c", "o.c")
    (True, False)
    """
    return cu_name == rel or cu_name.endswith("/" + rel)


def functions_of_cu(cu: Any) -> dict[str, DwarfFunction]:
    """Every function the compile unit defines, by name."""
    names: dict[int, str] = {}
    inlined: set[str] = set()
    addrs: dict[str, int] = {}
    concrete: list[tuple[int, int]] = []  # (abstract origin offset, low_pc)
    top = cu.get_top_DIE()
    for die in top.iter_children():
        if die.tag != "DW_TAG_subprogram":
            continue
        name = _name(die)
        if _attr(die, "DW_AT_declaration"):
            continue
        low = _attr(die, "DW_AT_low_pc")
        if name:
            names[die.offset] = name
            if _attr(die, "DW_AT_inline") in (1, 3):  # DW_INL_inlined, declared_inlined
                inlined.add(name)
            if low is not None:
                addrs.setdefault(name, low)
        elif low is not None:
            origin = die.attributes.get("DW_AT_abstract_origin") or \
                die.attributes.get("DW_AT_specification")
            if origin is not None:
                concrete.append((origin.value + (cu.cu_offset if origin.form.startswith(
                    "DW_FORM_ref") and origin.form != "DW_FORM_ref_addr" else 0), low))
    for off, low in concrete:
        name = names.get(off)
        if name:
            addrs.setdefault(name, low)
    return {n: DwarfFunction(n, addrs.get(n), n in inlined) for n in sorted(set(names.values()))}


def _symbol(elf: Any, name: str) -> int | None:
    tab = elf.get_section_by_name(".symtab")
    if tab is None:
        return None
    syms = tab.get_symbol_by_name(name) or []
    return int(syms[0]["st_value"]) if syms else None


def scan(path: Path, rels: Iterable[str], module: str | None) -> dict[str, DwarfInfo]:
    """The DwarfInfo of each of ``rels`` that the ELF file ``path`` holds."""
    from elftools.common.exceptions import DWARFError, ELFError  # only for coverage runs
    from elftools.elf.elffile import ELFFile  # pyelftools loads in ~0.1 s: not at start-up
    wanted = list(rels)
    out: dict[str, DwarfInfo] = {}
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return out
            dwarf = elf.get_dwarf_info()
            text = _symbol(elf, "_text") if module is None else None
            for cu in dwarf.iter_CUs():
                name = cu_path(cu.get_top_DIE())
                hit = next((r for r in wanted if matches(name, r)), None)
                if hit is None:
                    continue
                out[hit] = DwarfInfo(module, text, functions_of_cu(cu))
                if len(out) == len(wanted):
                    break
    except (OSError, ELFError, DWARFError, KeyError, ValueError) as exc:
        raise DwarfError(f"{path}: unreadable DWARF ({exc})") from None
    return out


def _modules_near(build: Path, rel: str) -> Iterator[Path]:
    d = (build / rel).parent
    seen: set[Path] = set()
    for _ in range(3):
        for ko in sorted(d.glob("*.ko")):
            if ko not in seen:
                seen.add(ko)
                yield ko
        if d == build:
            break
        d = d.parent


def _cache_file(vmlinux: Path, files: list[str]) -> Path:
    st = vmlinux.stat()
    key = json.dumps([CACHE_VERSION, str(vmlinux.resolve()), st.st_size, st.st_mtime_ns, files])
    return cache_dir() / "coverage" / f"dwarf-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def dwarf_functions(vmlinux: Path, files: list[str], build: Path | None
                    ) -> dict[str, DwarfInfo]:
    """What the DWARF of ``vmlinux`` (and the build's modules) says about each file."""
    cache = _cache_file(vmlinux, files)
    if cache.is_file():
        try:
            return {k: DwarfInfo.from_json(v) for k, v in json.loads(cache.read_text()).items()}
        except (ValueError, KeyError, TypeError):
            pass
    log.info("coverage: reading the DWARF of %s for %d file(s)", vmlinux, len(files))
    out = scan(vmlinux, files, None)
    if build is not None:
        for rel in [f for f in files if f not in out]:
            for ko in _modules_near(build, rel):
                found = scan(ko, [rel], ko.stem.replace("-", "_"))
                if found:
                    out.update(found)
                    break
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps({k: v.to_json() for k, v in out.items()}))
    return out
