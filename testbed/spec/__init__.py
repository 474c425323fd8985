"""The topology language: YAML files that describe one QEMU machine each.

    >>> topo = load_topology("switch-cmb")          # a name from topologies/
    >>> [n.name for n in topo.nvmes()]
    ['nvme0', 'nvme1']

:func:`load_topology` raises :class:`SpecError` listing every problem as
``FILE:LINE:COL: field: problem``.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import topologies_dir
from .model import (DownstreamPort, Expectation, Iommu, Machine, Namespace, Node, Nvme, Pmr,
                    RootPort, Switch, Topology, walk)
from .parse import parse
from .problems import Problem, SpecError
from .yamlsource import load

MAX_FILE_BYTES = 1 << 20


def library() -> dict[str, Path]:
    """The topologies shipped in ``topologies/``, by name."""
    return {p.stem: p for p in sorted(topologies_dir().glob("*.yaml"))}


def resolve(name_or_path: str | Path) -> Path:
    """A library name (``switch-cmb``) or a path -> the file's path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(name_or_path):
        return p
    lib = library()
    if str(name_or_path) in lib:
        return lib[str(name_or_path)]
    from .problems import did_you_mean
    raise SpecError([Problem(str(name_or_path), 1, 1, "", "no such topology file or library "
                             f"name{did_you_mean(str(name_or_path), lib)}; library: "
                             f"{', '.join(lib) or '(empty)'}")])


def read_text(path: Path) -> str:
    """The file as text, or SpecError for a missing, unreadable or binary file."""
    where = str(path)
    try:
        if path.is_dir():
            raise SpecError([Problem(where, 1, 1, "", "is a directory, not a topology file")])
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        raise SpecError([Problem(where, 1, 1, "", "no such file")]) from None
    except OSError as exc:
        raise SpecError([Problem(where, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError([Problem(where, 1, 1, "", "file is larger than 1 MiB: not a topology")])
    if b"\0" in data:
        raise SpecError([Problem(where, 1, 1, "", "binary data (NUL bytes): not a YAML file")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = len(data[data.rfind(b"\n", 0, exc.start) + 1: exc.start].decode("utf-8")) + 1
        raise SpecError([Problem(where, line, col, "", f"not UTF-8 text (byte "
                                 f"{data[exc.start]:#04x}): save the file as UTF-8")]) from None


def load_topology(name_or_path: str | Path, probe_qemu: bool = True) -> Topology:
    """Read, parse and validate one topology.

    With ``probe_qemu`` (the default) the file is also checked against the QEMU
    binary it names (devices and NVMe properties that binary has).
    """
    path = resolve(name_or_path)
    text = read_text(path)
    probe = None
    if probe_qemu:
        from ..qemu.probe import probe
    return parse(load(text, str(path)), str(path), path.resolve().parent, probe=probe)


__all__ = ["load_topology", "resolve", "library", "SpecError", "Problem", "Topology", "Nvme",
           "Switch", "RootPort", "DownstreamPort", "Namespace", "Pmr", "Machine", "Iommu",
           "Expectation", "Node", "walk"]
