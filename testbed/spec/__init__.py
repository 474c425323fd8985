"""The topology language: YAML files that describe one QEMU machine each.

    >>> topo = load_topology("switch-cmb")          # a name from topologies/
    >>> [n.name for n in topo.nvmes()]
    ['nvme0', 'nvme1']

:func:`load_topology` raises :class:`SpecError` listing every problem as
``FILE:LINE:COL: field: problem``.  It needs nothing but the file: what the QEMU
binary makes of it is checked by :func:`testbed.qemu.validate` (second pass).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Problem, SpecError
from .model import (
    DownstreamPort,
    Endpoint,
    Expectation,
    Igb,
    Iommu,
    Machine,
    Namespace,
    Node,
    Nvme,
    Pmr,
    RootPort,
    Switch,
    Topology,
    walk,
)
from .parse import parse
from .source import library, read_text, resolve
from .yamlsource import load


def load_topology(name_or_path: str | Path) -> Topology:
    """Read, parse and validate one topology (the file alone, no QEMU)."""
    path = resolve(name_or_path)
    text = read_text(path)
    return parse(load(text, str(path)), str(path), path.resolve().parent)


__all__ = ["load_topology", "resolve", "library", "read_text", "SpecError", "Problem",
           "Topology", "Endpoint", "Nvme", "Igb", "Switch", "RootPort", "DownstreamPort", "Namespace", "Pmr",
           "Machine", "Iommu", "Expectation", "Node", "walk"]
